//! `metarm-adapt`: MetaRM. Adapts a fitted reward model to the current policy's output
//! distribution without new labels: each step spreads the rewards of the policy's own
//! responses apart by one step of gradient ascent on the difference loss, then follows the
//! Bradley-Terry loss of the labelled pairs evaluated there (`rl::metarm`).
//!
//! `steps: 0` passes the reward model through with the same diagnostics, so an experiment
//! can compare "adapted" and "not adapted" with one stage kind.

use std::collections::BTreeMap;

use arrow::array::ArrayRef;
use candle_core::Tensor;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::lm::{self, failed};
use super::{Kind, ParamError, Port, Signature, StageContext, StageError};
use crate::artifact::ArtifactType;
use crate::artifact::candidates::{Candidate, read_candidates};
use crate::artifact::table::{Column, ColumnType::*, TableKind, TableRow, col};
use crate::model::reward::RewardModel;
use crate::model::tokenizer;
use crate::model::train::{Schedule, Trainer};
use crate::policy::feedback::Pair;
use crate::policy::meta::ModelMeta;
use crate::policy::reward::{
    Assessment, Scorer, assess, head_weights, is_held_out, pack_batches, pair_groups,
    save_reward_model,
};
use crate::rl::{metarm, reward};

pub struct MetarmAdapt;

fn default_steps() -> usize {
    50
}
fn default_batch() -> usize {
    16
}
fn default_meta_prompts() -> usize {
    8
}
fn default_k() -> usize {
    4
}
fn default_eta() -> f64 {
    0.5
}
fn default_lr() -> f64 {
    5e-5
}
fn default_clip() -> f64 {
    1.0
}
fn default_held_out() -> f64 {
    0.1
}
fn default_true() -> bool {
    true
}
fn default_checkpoint_every() -> usize {
    25
}

/// How the meta-gradient treats the inner step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetaOrder {
    /// ∇L(θ') applied at θ (first-order MAML).
    #[default]
    First,
    /// (I + η∇²J) ∇L(θ'), the Hessian-vector product by central differences of ∇J (two
    /// more backward passes per step).
    Second,
}

/// Parameters of a `metarm-adapt` stage.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetarmParams {
    /// Meta steps; 0 passes the reward model through unchanged (with the diagnostics).
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Labelled pairs per step (the preference batch X_t).
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    /// Prompts per step in the meta batch X_s of the policy's responses.
    #[serde(default = "default_meta_prompts")]
    #[schemars(range(min = 1))]
    pub meta_prompts: usize,
    /// Responses per prompt in the meta batch (distinct ones; prompts with fewer than two
    /// are skipped).
    #[serde(default = "default_k")]
    #[schemars(range(min = 2))]
    pub k: usize,
    /// η, the step size of the gradient ascent on the difference loss (plain gradient, no
    /// optimiser state). 0 makes the step plain Bradley-Terry training on the same batches,
    /// the control for MetaRM. On the quickstart's reward model 0.5 raises J on a meta
    /// batch from about 0.57 to 0.78 (0.05: to 0.64).
    #[serde(default = "default_eta")]
    #[schemars(range(min = 0))]
    pub eta: f64,
    /// α, the learning rate of the outer step (AdamW, constant after warm-up).
    #[serde(default = "default_lr")]
    #[schemars(range(min = 0))]
    pub lr: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub weight_decay: f64,
    #[serde(default = "default_clip")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_grad_norm: f64,
    /// `first` (default) or `second`.
    #[serde(default)]
    pub order: MetaOrder,
    /// The share of prompts held out of the preference batches (by the same hash as
    /// `reward-fit`, so the same prompts stay held out).
    #[serde(default = "default_held_out")]
    #[schemars(range(min = 0), extend("exclusiveMaximum" = 1))]
    pub held_out_fraction: f64,
    /// Use the comparisons' `margin` column in the Bradley-Terry loss.
    #[serde(default = "default_true")]
    pub use_margin: bool,
    #[serde(default = "default_checkpoint_every")]
    #[schemars(range(min = 1))]
    pub checkpoint_every: usize,
    /// Free-form labels copied into `summary.json` (`tags`).
    #[serde(default)]
    pub tags: BTreeMap<String, Value>,
    #[serde(default = "lm::default_device")]
    pub device: String,
}

pub static METARM_HISTORY: TableKind = TableKind {
    name: "metarm-history",
    version: 1,
    doc: "per-step statistics of a `metarm-adapt` stage",
    columns: &[
        Column::new("step", UInt64, false, "1-based step"),
        Column::new(
            "difference_loss",
            Float64,
            false,
            "J(θ): mean σ(|r_i - r_j|) over the meta batch's pairs, before the inner step",
        ),
        Column::new(
            "difference_loss_after",
            Float64,
            false,
            "J(θ') on the same meta batch, after the inner step θ' = θ + η∇J",
        ),
        Column::new(
            "loss",
            Float64,
            false,
            "Bradley-Terry loss of the preference batch at θ'",
        ),
        Column::new("difference_grad_norm", Float64, false, "norm of ∇J(θ)"),
        Column::new(
            "grad_norm",
            Float64,
            false,
            "norm of the meta-gradient before clipping",
        ),
        Column::new("lr", Float64, false, "outer learning rate α"),
    ],
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetaRow {
    pub step: u64,
    pub difference_loss: f64,
    pub difference_loss_after: f64,
    pub loss: f64,
    pub difference_grad_norm: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

impl TableRow for MetaRow {
    const KIND: &'static TableKind = &METARM_HISTORY;
    fn columns(rows: &[Self]) -> Vec<ArrayRef> {
        vec![
            col::u64(rows.iter().map(|r| r.step)),
            col::f64(rows.iter().map(|r| r.difference_loss)),
            col::f64(rows.iter().map(|r| r.difference_loss_after)),
            col::f64(rows.iter().map(|r| r.loss)),
            col::f64(rows.iter().map(|r| r.difference_grad_norm)),
            col::f64(rows.iter().map(|r| r.grad_norm)),
            col::f64(rows.iter().map(|r| r.lr)),
        ]
    }
}

impl Kind for MetarmAdapt {
    const NAME: &'static str = "metarm-adapt";

    // 2: the model computes through hone's fused CPU kernels (model::kernels), which
    // round differently from the composed ops.
    const VERSION: u32 = 2;

    const SUMMARY: &'static str = "adapt a reward model to the policy's shifted outputs (MetaRM: a meta step on the difference loss, then Bradley-Terry)";

    type Params = MetarmParams;

    fn signature(&self, p: &MetarmParams, _inputs: &[&str]) -> Result<Signature, Vec<ParamError>> {
        let mut errors = Vec::new();
        lm::check_device(&p.device, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut oracle = Port::new("oracle", ArtifactType::Table(Some("oracle".into())));
        oracle.required = false;
        Ok(Signature {
            inputs: vec![
                Port::new("reward_model", ArtifactType::RewardModel),
                lm::feedback_port(),
                Port::new("candidates", ArtifactType::Table(Some("candidates".into()))),
                oracle,
            ],
            open_inputs: false,
            outputs: vec![
                Port::new("reward_model", ArtifactType::RewardModel),
                Port::new("metrics", ArtifactType::Metrics),
            ],
            deps: Vec::new(),
        })
    }

    fn run(&self, p: &MetarmParams, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let device = lm::device(&p.device)?;
        let rm_dir = ctx.workspace.join(&ctx.inputs["reward_model"][0]);
        let rm = RewardModel::load(&rm_dir, ctx.seed, &device).map_err(failed)?;
        let tok = tokenizer::load(&rm_dir.join("tokenizer.json")).map_err(failed)?;
        let meta = ModelMeta::read(&rm_dir)?;
        let template = lm::reward_template(meta.as_ref(), None, &rm_dir)?;
        let format = crate::policy::reward::reward_format(&rm_dir, &template)?;
        let eot = lm::end_of_text(&rm.base.config, &tok);

        let data = lm::read_feedback(ctx, p.use_margin)?;
        let (train_pairs, test_pairs): (Vec<Pair>, Vec<Pair>) = data
            .pairs
            .into_iter()
            .partition(|pair| !is_held_out(&pair.prompt_id, p.held_out_fraction));
        if train_pairs.is_empty() && p.steps > 0 {
            return Err(failed(
                "no training pairs in the bound feedback (comparisons and rankings)",
            ));
        }
        let candidates_path = ctx.workspace.join(&ctx.inputs["candidates"][0]);
        let candidates = read_candidates(&candidates_path).map_err(failed)?;
        let groups = meta_groups(&candidates, p.k);
        if groups.is_empty() {
            return Err(failed(format!(
                "`{}`: no prompt has two different responses, so there is nothing to tell apart",
                candidates_path.display()
            )));
        }
        let oracle = ctx
            .inputs
            .get("oracle")
            .and_then(|o| o.first())
            .map(|o| ctx.workspace.join(o));

        // How the reward model ranks and spreads the policy's responses. A fresh scorer
        // each time: it reads the variables' storage, but caches features.
        let diagnose = || -> Result<Assessment, StageError> {
            let mut scorer = Scorer::new(&rm, &tok, &format, eot, &device)?;
            let head = head_weights(&rm)?;
            let mut a = assess(
                ctx,
                &mut scorer,
                &head,
                &train_pairs,
                &test_pairs,
                oracle.as_deref(),
            )?;
            a.metrics.insert(
                "policy_samples".into(),
                spread(ctx, &mut scorer, &head, &candidates, &groups)?,
            );
            Ok(a)
        };
        let before = diagnose()?.metrics;

        let rows = if p.steps == 0 {
            Vec::new()
        } else {
            adapt(
                ctx,
                p,
                &rm,
                &tok,
                &format,
                &train_pairs,
                &candidates,
                &groups,
            )?
        };

        let after = diagnose()?;
        let offset = after.offset;

        let mut summary = json!({
            "steps": p.steps,
            "order": p.order,
            "eta": p.eta,
            "lr": p.lr,
            "train_pairs": train_pairs.len(),
            "held_out_pairs": test_pairs.len(),
            "meta_prompts_available": groups.len(),
            "before": Value::Object(before),
            "tags": p.tags,
        });
        let object = summary.as_object_mut().expect("an object");
        object.extend(after.metrics);
        if let Some(last) = rows.last() {
            object.insert("final_loss".into(), json!(last.loss));
        }
        tracing::info!(
            held_out = %summary["held_out"],
            spread = %summary["policy_samples"],
            "reward model adapted"
        );

        let out = ctx.workspace.join(&ctx.outputs["reward_model"]);
        let meta_out = ModelMeta {
            stage: Some("metarm-adapt".into()),
            reward_offset: Some(offset),
            template: Some(template.clone()),
            ..meta.unwrap_or_default()
        };
        save_reward_model(&rm, &tok, &out, &meta_out, &rm_dir, false)?;

        let provenance = ctx.provenance();
        lm::write_summary_and_table(
            &ctx.workspace.join(&ctx.outputs["metrics"]),
            &summary,
            "history.parquet",
            &rows,
            &provenance,
        )
    }
}

/// The meta set: for each prompt (in first-seen order), the indices of up to `k` distinct
/// responses; prompts with fewer than two are left out (identical responses cannot be told
/// apart).
fn meta_groups(candidates: &[Candidate], k: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate() {
        let group = groups.entry(c.prompt_id.as_str()).or_insert_with(|| {
            order.push(c.prompt_id.as_str());
            Vec::new()
        });
        if group.len() < k && !group.iter().any(|&j| candidates[j].response == c.response) {
            group.push(i);
        }
    }
    order
        .into_iter()
        .map(|id| groups.remove(id).unwrap_or_default())
        .filter(|g| g.len() >= 2)
        .collect()
}

/// How far apart the reward model puts each prompt's responses: the difference loss, the
/// mean |r_i - r_j| over the pairs, and the standard deviation of all the rewards.
fn spread(
    ctx: &StageContext<'_>,
    scorer: &mut Scorer,
    head: &[f64],
    candidates: &[Candidate],
    groups: &[Vec<usize>],
) -> Result<Value, StageError> {
    let items: Vec<(&str, &str)> = groups
        .iter()
        .flatten()
        .map(|&i| {
            (
                candidates[i].prompt.as_str(),
                candidates[i].response.as_str(),
            )
        })
        .collect();
    let rewards: Vec<f64> = scorer
        .features(ctx, &items)?
        .iter()
        .map(|f| f.iter().zip(head).map(|(a, b)| a * b).sum())
        .collect();
    let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
    let pairs = metarm::within_group_pairs(&sizes);
    let gaps: Vec<f64> = pairs
        .iter()
        .map(|&(i, j)| (rewards[i as usize] - rewards[j as usize]).abs())
        .collect();
    let n = gaps.len().max(1) as f64;
    let mean = rewards.iter().sum::<f64>() / rewards.len().max(1) as f64;
    let var = rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rewards.len().max(1) as f64;
    Ok(json!({
        "prompts": groups.len(),
        "pairs": pairs.len(),
        "difference_loss": gaps.iter().map(|g| 1.0 / (1.0 + (-g).exp())).sum::<f64>() / n,
        "mean_gap": gaps.iter().sum::<f64>() / n,
        "reward_std": var.sqrt(),
    }))
}

/// The batches of every step: preference batches of whole prompt groups, reshuffled each
/// pass; meta batches of prompts (`groups` of candidates), reshuffled each pass. Both drawn
/// from the stage's seed, enough for every step.
fn batch_plan(
    p: &MetarmParams,
    train_pairs: &[Pair],
    groups: &[Vec<usize>],
    seed: u64,
) -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
    let prompt_groups = pair_groups(train_pairs);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pref_batches: Vec<Vec<usize>> = Vec::new();
    while pref_batches.len() < p.steps {
        pref_batches.extend(pack_batches(&prompt_groups, p.batch_size, &mut rng));
    }
    let mut meta_batches: Vec<Vec<usize>> = Vec::new();
    while meta_batches.len() < p.steps {
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.shuffle(&mut rng);
        meta_batches.extend(order.chunks(p.meta_prompts).map(<[usize]>::to_vec));
    }
    (pref_batches, meta_batches)
}

/// Runs the meta steps on `rm` in place; returns one row per step. Resumable: the model,
/// the optimiser and the rows are checkpointed every `checkpoint_every` steps.
#[expect(
    clippy::too_many_arguments,
    reason = "the model, its data and its settings"
)]
fn adapt(
    ctx: &StageContext<'_>,
    p: &MetarmParams,
    rm: &RewardModel,
    tok: &tokenizers::Tokenizer,
    format: &crate::policy::chat::PromptFormat,
    train_pairs: &[Pair],
    candidates: &[Candidate],
    groups: &[Vec<usize>],
) -> Result<Vec<MetaRow>, StageError> {
    let device = rm.head.device().clone();
    let eot = lm::end_of_text(&rm.base.config, tok);
    let context = rm.base.config.context_len();
    let encode = |prompt: &str, response: &str| {
        lm::reward_input(tok, format, prompt, response, context, eot)
    };
    let (pref_batches, meta_batches) = batch_plan(p, train_pairs, groups, ctx.seed);

    let schedule = Schedule {
        peak_lr: p.lr,
        warmup_steps: p.warmup_steps.min(p.steps),
        total_steps: p.steps,
        final_fraction: 1.0,
    };
    let named = crate::policy::train::reward_model_vars(rm);
    let vars: Vec<candle_core::Var> = named.iter().map(|(_, v)| v.clone()).collect();
    let mut trainer =
        Trainer::new(named, schedule, p.weight_decay, Some(p.max_grad_norm)).map_err(failed)?;
    let resume = lm::ResumeState::new(ctx.resume_dir);
    let mut rows: Vec<MetaRow> = match resume.restore_with(&rm.base, &mut trainer)? {
        Some((_, extra)) => serde_json::from_value(extra).map_err(failed)?,
        None => Vec::new(),
    };
    let model = &rm.base.model;
    let head = rm.head.as_tensor();
    let order = match p.order {
        MetaOrder::First => metarm::Order::First,
        MetaOrder::Second => metarm::Order::Second,
    };
    while trainer.step < p.steps {
        if ctx.cancelled() {
            return Err(StageError::Cancelled);
        }
        let step = trainer.step;
        // X_s: the chosen prompts' responses, and their within-prompt pairs.
        let meta_groups: Vec<&Vec<usize>> =
            meta_batches[step].iter().map(|&g| &groups[g]).collect();
        let meta_seqs = meta_groups
            .iter()
            .flat_map(|g| g.iter())
            .map(|&i| encode(&candidates[i].prompt, &candidates[i].response))
            .collect::<Result<Vec<_>, _>>()?;
        let sizes: Vec<usize> = meta_groups.iter().map(|g| g.len()).collect();
        let meta_pairs = metarm::within_group_pairs(&sizes);
        // X_t: labelled pairs, chosen then rejected.
        let batch = &pref_batches[step];
        let mut pref_seqs = Vec::with_capacity(batch.len() * 2);
        for &i in batch {
            pref_seqs.push(encode(&train_pairs[i].prompt, &train_pairs[i].chosen)?);
            pref_seqs.push(encode(&train_pairs[i].prompt, &train_pairs[i].rejected)?);
        }
        let margins: Vec<f32> = batch
            .iter()
            .map(|&i| train_pairs[i].margin as f32)
            .collect();
        let margin = Tensor::new(margins.as_slice(), &device).map_err(failed)?;
        let n = batch.len();
        let lr = trainer.lr();
        let (grads, stats) = metarm::meta_gradient(
            &vars,
            p.eta,
            order,
            || {
                let r = rm.rewards(model, head, &meta_seqs, eot, &device)?;
                metarm::difference_loss(&r, &meta_pairs)
            },
            || {
                let r = rm
                    .rewards(model, head, &pref_seqs, eot, &device)?
                    .reshape((n, 2))?;
                let chosen = r.narrow(1, 0, 1)?.squeeze(1)?;
                let rejected = r.narrow(1, 1, 1)?.squeeze(1)?;
                reward::bradley_terry_loss(&chosen, &rejected, Some(&margin))
            },
        )
        .map_err(failed)?;
        let grad_norm = trainer.step_with(grads).map_err(failed)?;
        rows.push(MetaRow {
            step: trainer.step as u64,
            difference_loss: stats.difference,
            difference_loss_after: stats.difference_after,
            loss: stats.loss,
            difference_grad_norm: stats.difference_grad_norm,
            grad_norm,
            lr,
        });
        ctx.headline("difference_loss", stats.difference);
        ctx.report(trainer.step as u64, p.steps as u64);
        if trainer.step.is_multiple_of(10) || trainer.step == p.steps {
            tracing::info!(
                step = trainer.step,
                steps = p.steps,
                difference_loss = stats.difference,
                loss = stats.loss,
                "meta steps"
            );
        }
        if trainer.step.is_multiple_of(p.checkpoint_every) && trainer.step < p.steps {
            resume.save_with(
                &rm.base,
                &trainer,
                &[],
                serde_json::to_value(&rows).map_err(failed)?,
            )?;
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(prompt_id: &str, response: &str) -> Candidate {
        Candidate {
            prompt_id: prompt_id.into(),
            prompt: format!("prompt {prompt_id}"),
            response: response.into(),
            sample: 0,
            token_ids: None,
            logprob_sum: None,
            seed: 0,
        }
    }

    #[test]
    fn meta_groups_keep_distinct_responses_up_to_k() {
        let c = vec![
            candidate("b", "x"),
            candidate("a", "y"),
            candidate("b", "x"), // a duplicate: dropped
            candidate("b", "z"),
            candidate("a", "y"), // `a` has one distinct response: left out
            candidate("c", "1"),
            candidate("c", "2"),
            candidate("c", "3"),
        ];
        assert_eq!(meta_groups(&c, 4), vec![vec![0, 3], vec![5, 6, 7]]);
        assert_eq!(meta_groups(&c, 2), vec![vec![0, 3], vec![5, 6]]);
    }
}
