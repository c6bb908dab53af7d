//! `reward-fit`: a reward model from human feedback. Bradley-Terry on pairs (rankings as all
//! their pairs, one prompt's pairs in one batch; optional margins), an ordered-logit
//! likelihood for 1-5 scores with learned thresholds, and flags as evidence of low reward.
//! Held-out accuracy, log loss and calibration; with the HHH oracle, the rank correlation
//! with the true reward.

use std::collections::BTreeMap;

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::lm::{self, failed};
use super::{Kind, ParamError, Port, Signature, StageContext, StageError};
use crate::artifact::ArtifactType;
use crate::model::reward::RewardModel;
use crate::model::tokenizer;
use crate::model::train::{Schedule, Trainer};
use crate::policy::feedback::{FlagItem, Pair, ScoreItem};
use crate::policy::meta::ModelMeta;
use crate::policy::reward::{
    Scorer, assess, head_weights, is_held_out, pack_batches, pair_groups, save_reward_model,
};
use crate::rl::reward;
use crate::spec::node::PathSeg;

pub struct RewardFit;

fn default_epochs() -> usize {
    1
}
fn default_batch() -> usize {
    16
}
fn default_lr() -> f64 {
    5e-4
}
fn default_warmup() -> usize {
    10
}
fn default_clip() -> f64 {
    1.0
}
fn default_template() -> String {
    crate::policy::reward::DEFAULT_REWARD_TEMPLATE.into()
}
fn default_held_out() -> f64 {
    0.1
}
fn default_true() -> bool {
    true
}
fn default_scores_weight() -> f64 {
    1.0
}
fn default_flags_weight() -> f64 {
    0.5
}
fn default_ensemble() -> usize {
    1
}
fn default_checkpoint_every() -> usize {
    100
}
fn default_head_l2() -> f64 {
    1.0
}

/// What `reward-fit` trains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrainMode {
    /// Fine-tune the backbone and the head together (AdamW, the losses above).
    #[default]
    Full,
    /// Keep the backbone frozen and fit only the linear head on its last-layer features, by
    /// exact L2-regularised maximum likelihood of Bradley-Terry on the pairs (Newton's
    /// method; ODPO's linear-reward setting). Seconds instead of minutes; scores and flags
    /// are not used.
    Head,
}

/// Parameters of a `reward-fit` stage.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardFitParams {
    #[serde(default = "default_epochs")]
    #[schemars(range(min = 1))]
    pub epochs: usize,
    /// Stop after this many steps (default: all epochs).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Pairs per step (a prompt's pairs stay together, so a batch may hold a few more).
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    #[serde(default = "default_lr")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub lr: f64,
    #[serde(default = "default_warmup")]
    pub warmup_steps: usize,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub weight_decay: f64,
    #[serde(default = "default_clip")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_grad_norm: f64,
    /// The text the reward model reads: `{prompt}` and `{response}` are replaced; the
    /// reward is read at the end-of-text token appended to it.
    #[serde(default = "default_template")]
    pub template: String,
    /// The share of prompts (by a hash of their id) held out for evaluation.
    #[serde(default = "default_held_out")]
    #[schemars(range(min = 0), extend("exclusiveMaximum" = 1))]
    pub held_out_fraction: f64,
    /// Use the comparisons' `margin` column in the Bradley-Terry loss.
    #[serde(default = "default_true")]
    pub use_margin: bool,
    /// Weight of the ordinal loss on 1-5 scores (0 ignores scores).
    #[serde(default = "default_scores_weight")]
    pub scores_weight: f64,
    /// Weight of the flag loss (0 ignores flags).
    #[serde(default = "default_flags_weight")]
    pub flags_weight: f64,
    #[serde(default = "default_checkpoint_every")]
    #[schemars(range(min = 1))]
    pub checkpoint_every: usize,
    /// Train this many reward models (member 0 on all pairs, the others on bootstrap
    /// resamples with their own seeds), for `odpo-select`'s `uncertainty`. Member 0 is the
    /// reward model; all are saved under `members/K/`.
    #[serde(default = "default_ensemble")]
    #[schemars(range(min = 1))]
    pub ensemble: usize,
    /// `full` (default) fine-tunes the backbone; `head` fits only the linear head.
    #[serde(default)]
    pub train: TrainMode,
    /// The ridge of `train: head`: the objective is the summed Bradley-Terry negative
    /// log-likelihood + head_l2/2 · |w|².
    #[serde(default = "default_head_l2")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub head_l2: f64,
    /// Free-form labels copied into `summary.json` (`tags`), for experiments that collect
    /// many runs (the `aggregate` stage groups by them).
    #[serde(default)]
    pub tags: BTreeMap<String, Value>,
    /// Train a LoRA adapter and the head instead of every weight (`train: full` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<lm::AdapterParams>,
    #[serde(default = "lm::default_device")]
    pub device: String,
}

impl Kind for RewardFit {
    const NAME: &'static str = "reward-fit";

    // 2: AdamW computed in one fused f64 pass (outputs differ in the last bits).
    // 3: oracle pair accuracy, tags and the train mode in the summary.
    // 4: the model computes through hone's fused CPU kernels (model::kernels), which
    // round differently from the composed ops.
    const VERSION: u32 = 4;

    const SUMMARY: &'static str = "fit a reward model (Bradley-Terry, ordinal scores, flags) on a causal-LM backbone, or only its linear head";

    type Params = RewardFitParams;

    fn signature(
        &self,
        p: &RewardFitParams,
        inputs: &[&str],
    ) -> Result<Signature, Vec<ParamError>> {
        let key = |k: &str| vec![PathSeg::Key(k.into())];
        let mut errors = Vec::new();
        if !p.template.contains("{prompt}") || !p.template.contains("{response}") {
            errors.push(ParamError::new(
                key("template"),
                "`template` must contain `{prompt}` and `{response}`",
            ));
        }
        lm::check_device(&p.device, &mut errors);
        if p.adapter.is_some() && p.train == TrainMode::Head {
            errors.push(ParamError::new(
                key("adapter"),
                "`train: head` fits the head alone on a frozen backbone: an adapter would not train; use `train: full`",
            ));
        }
        let init_bound = inputs.contains(&"init");
        if init_bound && inputs.contains(&"model") {
            errors.push(ParamError::new(
                Vec::new(),
                "bind `model` (a causal LM: a fresh head) or `init` (a reward model to go on from), not both",
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut oracle = Port::new("oracle", ArtifactType::Table(Some("oracle".into())));
        oracle.required = false;
        let mut model = Port::new("model", ArtifactType::CausalLm);
        model.required = !init_bound;
        let mut init = Port::new("init", ArtifactType::RewardModel);
        init.required = false;
        Ok(Signature {
            inputs: vec![model, init, lm::feedback_port(), oracle],
            open_inputs: false,
            outputs: vec![
                Port::new("reward_model", ArtifactType::RewardModel),
                Port::new("metrics", ArtifactType::Metrics),
            ],
            deps: Vec::new(),
        })
    }

    fn run(&self, p: &RewardFitParams, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let device = lm::device(&p.device)?;
        let (rm, tok) = start_model(ctx, p, ctx.seed, &device)?;
        let eot = lm::end_of_text(&rm.base.config, &tok);
        let data = lm::read_feedback(ctx, p.use_margin)?;
        let feedback_dir = ctx.workspace.join(&ctx.inputs["feedback"][0]);
        let held_out = |prompt_id: &str| is_held_out(prompt_id, p.held_out_fraction);
        let (train_pairs, test_pairs): (Vec<Pair>, Vec<Pair>) = data
            .pairs
            .iter()
            .cloned()
            .partition(|pair| !held_out(&pair.prompt_id));
        if train_pairs.is_empty() {
            return Err(failed(format!(
                "no training pairs in `{}` (comparisons and rankings)",
                feedback_dir.display()
            )));
        }
        let train_scores: Vec<&ScoreItem> = data
            .scores
            .iter()
            .filter(|s| !held_out(&s.prompt_id))
            .collect();
        let train_flags: Vec<&FlagItem> = data
            .flags
            .iter()
            .filter(|f| !held_out(&f.prompt_id))
            .collect();
        let data = TrainData {
            pairs: &train_pairs,
            scores: &train_scores,
            flags: &train_flags,
        };
        // Members 1.. of an ensemble: heads (or whole models) fitted on resamples.
        let fitted = match p.train {
            TrainMode::Full => fit_full(ctx, p, rm, &tok, &data, eot, &device)?,
            TrainMode::Head => fit_heads(ctx, p, rm, &tok, &data, eot, &device)?,
        };
        let Fitted {
            model: rm,
            thresholds: thresholds_raw,
            history,
            mut scorer,
            members,
        } = fitted;
        let total = history.len();
        let oracle = ctx
            .inputs
            .get("oracle")
            .and_then(|o| o.first())
            .map(|o| ctx.workspace.join(o));
        let assessment = assess(
            ctx,
            &mut scorer,
            &head_weights(&rm)?,
            &train_pairs,
            &test_pairs,
            oracle.as_deref(),
        )?;
        let offset = assessment.offset;
        let mut summary = json!({
            "train_mode": match p.train { TrainMode::Full => "full", TrainMode::Head => "head" },
            "steps": total,
            "ensemble": p.ensemble,
            "train_pairs": train_pairs.len(),
            "held_out_pairs": test_pairs.len(),
            "scores": if p.train == TrainMode::Full { train_scores.len() } else { 0 },
            "flags": if p.train == TrainMode::Full { train_flags.len() } else { 0 },
            "final_loss": lm::final_loss(&history),
            "tags": p.tags,
        });
        summary
            .as_object_mut()
            .expect("an object")
            .extend(assessment.metrics);
        tracing::info!(held_out = %summary["held_out"], "reward model fitted");
        let out = ctx.workspace.join(&ctx.outputs["reward_model"]);
        let thresholds = reward::ordered_thresholds(&thresholds_raw)
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(failed)?;
        save_reward_model(
            &rm,
            &tok,
            &out,
            &ModelMeta {
                reward_offset: Some(offset),
                template: Some(p.template.clone()),
                ordinal_thresholds: Some(thresholds.iter().map(|&t| f64::from(t)).collect()),
                ..ModelMeta::of_stage("reward-fit")
            },
            &source_dir(ctx)?,
            p.adapter.as_ref().is_some_and(|a| a.merge),
        )?;
        if p.ensemble > 1 {
            let member_dir = |k: usize| out.join("members").join(k.to_string());
            for (k, member) in std::iter::once(&rm).chain(&members).enumerate() {
                member.save(&member_dir(k), eot).map_err(failed)?;
                tok.save(member_dir(k).join("tokenizer.json"), true)
                    .map_err(failed)?;
                crate::policy::chat::carry_tokenizer_files(&source_dir(ctx)?, &member_dir(k))?;
            }
        }
        let provenance = ctx.provenance();
        lm::write_metrics(
            &ctx.workspace.join(&ctx.outputs["metrics"]),
            &summary,
            &history,
            &provenance,
        )?;
        Ok(())
    }
}

/// What the reward model is trained on (held-out prompts removed).
struct TrainData<'a> {
    pairs: &'a [Pair],
    scores: &'a [&'a ScoreItem],
    flags: &'a [&'a FlagItem],
}

/// A fitted reward model, its ordinal thresholds (raw), its history, a scorer of its
/// features, and the other members of its ensemble.
struct Fitted {
    model: RewardModel,
    thresholds: Tensor,
    history: Vec<lm::HistoryRow>,
    scorer: Scorer,
    members: Vec<RewardModel>,
}

/// Ensemble member `k`'s bootstrap resample of the training pairs, and its seed.
fn bootstrap(stage_seed: u64, pairs: &[Pair], k: usize) -> (u64, Vec<Pair>) {
    let seed = crate::spec::derive_seed(stage_seed, &format!("member-{k}"));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let resample = (0..pairs.len())
        .map(|_| pairs[rng.random_range(0..pairs.len())].clone())
        .collect();
    (seed, resample)
}

/// `train: full`: backbone and head fitted on every kind of label, and each further
/// ensemble member from its own start on a resample.
fn fit_full(
    ctx: &StageContext<'_>,
    p: &RewardFitParams,
    rm: RewardModel,
    tok: &tokenizers::Tokenizer,
    data: &TrainData<'_>,
    eot: u32,
    device: &candle_core::Device,
) -> Result<Fitted, StageError> {
    let trained = fit_member(
        ctx,
        p,
        rm,
        tok,
        data.pairs,
        data.scores,
        data.flags,
        ctx.seed,
        ctx.resume_dir,
        device,
    )?;
    let mut members = Vec::new();
    for k in 1..p.ensemble {
        let (seed, resample) = bootstrap(ctx.seed, data.pairs, k);
        let (start, _) = start_model(ctx, p, seed, device)?;
        let resume = ctx.resume_dir.join(format!("member-{k}"));
        let member = fit_member(
            ctx,
            p,
            start,
            tok,
            &resample,
            data.scores,
            data.flags,
            seed,
            &resume,
            device,
        )?;
        members.push(member.model);
        tracing::info!(member = k, of = p.ensemble, "ensemble member fitted");
    }
    let scorer = Scorer::new(&trained.model, tok, &reward_format(ctx, p)?, eot, device)?;
    Ok(Fitted {
        model: trained.model,
        thresholds: trained.thresholds,
        history: trained.history,
        scorer,
        members,
    })
}

/// `train: head`: the backbone frozen, the linear head by exact maximum likelihood on the
/// pairs; each further member's head on a resample.
fn fit_heads(
    ctx: &StageContext<'_>,
    p: &RewardFitParams,
    rm: RewardModel,
    tok: &tokenizers::Tokenizer,
    data: &TrainData<'_>,
    eot: u32,
    device: &candle_core::Device,
) -> Result<Fitted, StageError> {
    if !data.scores.is_empty() || !data.flags.is_empty() {
        tracing::warn!(
            scores = data.scores.len(),
            flags = data.flags.len(),
            "`train: head` fits pairs only; scores and flags are not used"
        );
    }
    let mut scorer = Scorer::new(&rm, tok, &reward_format(ctx, p)?, eot, device)?;
    let (weights, history) = fit_head(ctx, p, &mut scorer, data.pairs)?;
    set_head(&rm, &weights, device)?;
    let mut members = Vec::new();
    for k in 1..p.ensemble {
        let (_, resample) = bootstrap(ctx.seed, data.pairs, k);
        let (weights, _) = fit_head(ctx, p, &mut scorer, &resample)?;
        let (member, _) = start_model(ctx, p, ctx.seed, device)?;
        set_head(&member, &weights, device)?;
        members.push(member);
    }
    let thresholds = Tensor::new(&[-1.5f32, 0.58, 0.58, 0.58], device).map_err(failed)?;
    Ok(Fitted {
        model: rm,
        thresholds,
        history,
        scorer,
        members,
    })
}

/// One reward model trained on `train_pairs` (and the scores and flags) from `base`, with
/// its own seed and resume directory (ensemble members differ in both).
struct Trained {
    model: RewardModel,
    thresholds: Tensor,
    history: Vec<lm::HistoryRow>,
}

#[expect(
    clippy::too_many_arguments,
    reason = "the training data and its settings, by part"
)]
fn fit_member(
    ctx: &StageContext<'_>,
    p: &RewardFitParams,
    rm: RewardModel,
    tok: &tokenizers::Tokenizer,
    train_pairs: &[Pair],
    train_scores: &[&ScoreItem],
    train_flags: &[&FlagItem],
    seed: u64,
    resume_dir: &std::path::Path,
    device: &candle_core::Device,
) -> Result<Trained, StageError> {
    let device = device.clone();
    let eot = lm::end_of_text(&rm.base.config, tok);
    let context = rm.base.config.context_len();
    let format = reward_format(ctx, p)?;
    let encode = |prompt: &str, response: &str| {
        lm::reward_input(tok, &format, prompt, response, context, eot)
    };
    let aux = VarBuilder::from_varmap(&rm.base.varmap, candle_core::DType::F32, &device);
    let thresholds_raw = aux
        .get_with_hints(4, "hone_aux.thresholds", Init::Const(0.0))
        .map_err(failed)?;
    let flag_bias = aux
        .get_with_hints(1, "hone_aux.flag_bias", Init::Const(0.0))
        .map_err(failed)?;
    // Start the thresholds spread out: -1.5, then steps of softplus(0.58) = 1.0.
    {
        let data = rm.base.varmap.data().lock().expect("varmap lock");
        data["hone_aux.thresholds"]
            .set(&Tensor::new(&[-1.5f32, 0.58, 0.58, 0.58], &device).map_err(failed)?)
            .map_err(failed)?;
    }

    // Batches of whole prompt groups, reshuffled every epoch.
    let group_list = pair_groups(train_pairs);
    let epoch_batches = |epoch: usize| -> Vec<Vec<usize>> {
        pack_batches(
            &group_list,
            p.batch_size,
            &mut ChaCha8Rng::seed_from_u64(
                seed ^ (epoch as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
            ),
        )
    };
    // Every epoch's batches, in order (epochs can pack prompt groups into different
    // numbers of batches).
    let all_batches: Vec<Vec<usize>> = (0..p.epochs).flat_map(epoch_batches).collect();
    let total = all_batches.len().min(p.max_steps.unwrap_or(usize::MAX));
    let schedule = Schedule {
        peak_lr: p.lr,
        warmup_steps: p.warmup_steps.min(total),
        total_steps: total,
        final_fraction: 0.1,
    };
    let mut trainer = Trainer::new(
        crate::policy::train::reward_model_vars(&rm),
        schedule,
        p.weight_decay,
        Some(p.max_grad_norm),
    )
    .map_err(failed)?;
    let model = &rm.base.model;
    let head = rm.head.as_tensor();
    let aux_batch = p.batch_size;
    let history = lm::train_with_loss::<StageError>(
        ctx,
        resume_dir,
        &rm.base,
        &mut trainer,
        total,
        p.checkpoint_every,
        "fitting the reward model",
        |step| {
            let batch = &all_batches[step];
            let mut sequences = Vec::with_capacity(batch.len() * 2);
            for &i in batch {
                sequences.push(encode(&train_pairs[i].prompt, &train_pairs[i].chosen)?);
                sequences.push(encode(&train_pairs[i].prompt, &train_pairs[i].rejected)?);
            }
            let rewards = rm
                .rewards(model, head, &sequences, eot, &device)
                .map_err(failed)?;
            let (chosen, rejected) = chosen_rejected(&rewards, batch.len())?;
            let margins: Vec<f32> = batch
                .iter()
                .map(|&i| train_pairs[i].margin as f32)
                .collect();
            let margin = Tensor::new(margins.as_slice(), &device).map_err(failed)?;
            let mut loss =
                reward::bradley_terry_loss(&chosen, &rejected, Some(&margin)).map_err(failed)?;
            // Scores and flags: a rotating slice of the same size each step.
            if p.scores_weight > 0.0 && !train_scores.is_empty() {
                let slice = rotating(train_scores, step, aux_batch);
                let seqs = slice
                    .iter()
                    .map(|s| encode(&s.prompt, &s.response))
                    .collect::<Result<Vec<_>, _>>()?;
                let r = rm
                    .rewards(model, head, &seqs, eot, &device)
                    .map_err(failed)?;
                let ordinal = ordinal_loss(&r, &thresholds_raw, &slice)?;
                loss = (loss + (ordinal * p.scores_weight).map_err(failed)?).map_err(failed)?;
            }
            if p.flags_weight > 0.0 && !train_flags.is_empty() {
                let slice = rotating(train_flags, step, aux_batch);
                let seqs = slice
                    .iter()
                    .map(|f| encode(&f.prompt, &f.response))
                    .collect::<Result<Vec<_>, _>>()?;
                let r = rm
                    .rewards(model, head, &seqs, eot, &device)
                    .map_err(failed)?;
                let flags = flag_loss(&r, &flag_bias, &slice, &device)?;
                loss = (loss + (flags * p.flags_weight).map_err(failed)?).map_err(failed)?;
            }
            Ok((loss, batch.len() as u64))
        },
    )?;

    Ok(Trained {
        model: rm,
        thresholds: thresholds_raw,
        history,
    })
}

/// Rewards laid out as (chosen, rejected) pairs, split into the two columns.
fn chosen_rejected(rewards: &Tensor, pairs: usize) -> Result<(Tensor, Tensor), StageError> {
    let rewards = rewards.reshape((pairs, 2)).map_err(failed)?;
    let column = |k: usize| {
        rewards
            .narrow(1, k, 1)
            .and_then(|t| t.squeeze(1))
            .map_err(failed)
    };
    Ok((column(0)?, column(1)?))
}

/// The `size` items that step `step` trains on: a slice that rotates through `items`.
fn rotating<'a, T>(items: &[&'a T], step: usize, size: usize) -> Vec<&'a T> {
    (0..size)
        .map(|k| items[(step * size + k) % items.len()])
        .collect()
}

/// The ordered-logit loss of 1-5 scores given their rewards.
fn ordinal_loss(
    rewards: &Tensor,
    thresholds_raw: &Tensor,
    items: &[&ScoreItem],
) -> Result<Tensor, StageError> {
    let th = reward::ordered_thresholds(thresholds_raw).map_err(failed)?;
    let classes: Vec<u32> = items.iter().map(|s| s.class).collect();
    reward::ordinal_nll(rewards, &th, &classes).map_err(failed)
}

/// The likelihood of flags as evidence of low reward.
fn flag_loss(
    rewards: &Tensor,
    flag_bias: &Tensor,
    items: &[&FlagItem],
    device: &candle_core::Device,
) -> Result<Tensor, StageError> {
    let flagged: Vec<f32> = items.iter().map(|f| f.flagged).collect();
    let flagged = Tensor::new(flagged.as_slice(), device).map_err(failed)?;
    reward::flag_nll(rewards, flag_bias, &flagged).map_err(failed)
}

/// The model training starts from: the `init` reward model (backbone and head), or the
/// `model` causal LM with a fresh head drawn from `seed`.
/// With an adapter, it is attached (drawn from `seed`): the backbone stays as it is and
/// the adapter and the head train.
fn start_model(
    ctx: &StageContext<'_>,
    p: &RewardFitParams,
    seed: u64,
    device: &candle_core::Device,
) -> Result<(RewardModel, tokenizers::Tokenizer), StageError> {
    let (mut rm, tok) = if ctx.inputs.get("init").and_then(|i| i.first()).is_some() {
        let dir = source_dir(ctx)?;
        let rm = RewardModel::load(&dir, seed, device).map_err(failed)?;
        let tok = tokenizer::load(&dir.join("tokenizer.json")).map_err(failed)?;
        (rm, tok)
    } else {
        let (base, tok) = lm::load_input(ctx, "model", device)?;
        (
            RewardModel::from_causal(base, seed, device).map_err(failed)?,
            tok,
        )
    };
    if p.train == TrainMode::Full {
        lm::attach_adapter(&mut rm.base, p.adapter.as_ref(), seed)?;
    }
    Ok((rm, tok))
}

/// The model the reward model starts from: `init` when bound, else `model`.
fn source_dir(ctx: &StageContext<'_>) -> Result<std::path::PathBuf, StageError> {
    let port = if ctx.inputs.get("init").is_some_and(|i| !i.is_empty()) {
        "init"
    } else {
        "model"
    };
    lm::input_dir(ctx, port)
}

/// How the reward model reads (prompt, response): the starting model's chat template when
/// it has one and `template` is left at its default, else `template`.
fn reward_format(
    ctx: &StageContext<'_>,
    p: &RewardFitParams,
) -> Result<crate::policy::chat::PromptFormat, StageError> {
    Ok(crate::policy::reward::reward_format(
        &source_dir(ctx)?,
        &p.template,
    )?)
}

fn set_head(
    rm: &RewardModel,
    weights: &[f64],
    device: &candle_core::Device,
) -> Result<(), StageError> {
    let values: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    rm.head
        .set(&Tensor::from_vec(values, (1, weights.len()), device).map_err(failed)?)
        .map_err(failed)
}

/// `train: head`: the linear head by L2-regularised maximum likelihood on the frozen
/// backbone's features; the history has one row per Newton iteration.
fn fit_head(
    ctx: &StageContext<'_>,
    p: &RewardFitParams,
    scorer: &mut Scorer,
    pairs: &[Pair],
) -> Result<(Vec<f64>, Vec<lm::HistoryRow>), StageError> {
    let chosen = scorer.features(
        ctx,
        &pairs
            .iter()
            .map(|x| (x.prompt.as_str(), x.chosen.as_str()))
            .collect::<Vec<_>>(),
    )?;
    let rejected = scorer.features(
        ctx,
        &pairs
            .iter()
            .map(|x| (x.prompt.as_str(), x.rejected.as_str()))
            .collect::<Vec<_>>(),
    )?;
    let z: Vec<Vec<f64>> = chosen
        .iter()
        .zip(&rejected)
        .map(|(c, r)| c.iter().zip(r).map(|(a, b)| a - b).collect())
        .collect();
    let margins: Vec<f64> = pairs.iter().map(|x| x.margin).collect();
    let fit = reward::fit_linear_bt(&z, &margins, p.head_l2);
    let history = fit
        .trace
        .iter()
        .enumerate()
        .map(|(i, &(objective, gradient_norm))| lm::HistoryRow {
            step: i as u64 + 1,
            loss: objective / pairs.len() as f64,
            lr: 0.0,
            grad_norm: gradient_norm,
            tokens: 0,
        })
        .collect();
    Ok((fit.weights, history))
}
