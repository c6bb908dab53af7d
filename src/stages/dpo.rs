//! `dpo`: direct preference optimisation on the feedback's pairs (comparisons, and
//! rankings as all their pairs). The reference model's log-probabilities of every pair are
//! computed once, before training, and written as the `reference_logprobs` table; the loss
//! (sigmoid with label smoothing, or IPO) is in `rl::dpo`.

use arrow::array::ArrayRef;
use candle_core::{Device, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::lm::{self, failed};
use super::{Kind, ParamError, Port, Signature, StageContext, StageError};
use crate::artifact::ArtifactType;
use crate::artifact::table::{Column, ColumnType::*, TableKind, TableRow, TableWriter, col};
use crate::model::CausalLm;
use crate::model::train::{Schedule, Trainer, token_logprobs};
use crate::policy::chat::PromptFormat;
use crate::policy::data::epoch_batches;
use crate::policy::feedback::Pair;
use crate::policy::meta::ModelMeta;
use crate::rl::dpo::{DpoLoss, dpo_loss};
use crate::spec::node::PathSeg;

pub struct Dpo;

fn default_beta() -> f64 {
    0.1
}
fn default_epochs() -> usize {
    1
}
fn default_batch() -> usize {
    8
}
fn default_lr() -> f64 {
    5e-5
}
fn default_warmup() -> usize {
    5
}
fn default_clip() -> f64 {
    1.0
}
fn default_checkpoint_every() -> usize {
    50
}

/// Parameters of a `dpo` stage.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DpoParams {
    /// β: how far the policy may move from the reference per unit of preference.
    #[serde(default = "default_beta")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub beta: f64,
    /// `sigmoid` (DPO) or `ipo`.
    #[serde(default)]
    pub loss: DpoLoss,
    /// The assumed share of flipped labels (conservative DPO); sigmoid loss only.
    #[serde(default)]
    #[schemars(range(min = 0), extend("exclusiveMaximum" = 0.5))]
    pub label_smoothing: f64,
    #[serde(default = "default_epochs")]
    #[schemars(range(min = 1))]
    pub epochs: usize,
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Pairs per step.
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    #[serde(default = "default_lr")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub lr: f64,
    #[serde(default = "default_warmup")]
    pub warmup_steps: usize,
    #[serde(default = "default_clip")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_grad_norm: f64,
    /// How a prompt is put to the policy (as in `sft`); the response follows after a
    /// space, then end-of-text.
    #[serde(default = "lm::default_template")]
    pub template: String,
    #[serde(default = "default_checkpoint_every")]
    #[schemars(range(min = 1))]
    pub checkpoint_every: usize,
    /// Train a LoRA adapter instead of every weight (see the README's "LoRA adapters").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<lm::AdapterParams>,
    #[serde(default = "lm::default_device")]
    pub device: String,
}

pub static REFERENCE_LOGPROBS: TableKind = TableKind {
    name: "reference-logprobs",
    version: 1,
    doc: "the reference model's summed log-probabilities of each preference pair's responses",
    columns: &[
        Column::new("prompt_id", Utf8, false, "prompt identifier"),
        Column::new("prompt", Utf8, false, "the prompt text"),
        Column::new("chosen", Utf8, false, "the preferred response"),
        Column::new("rejected", Utf8, false, "the other response"),
        Column::new(
            "chosen_logprob",
            Float64,
            false,
            "log π_ref(chosen | prompt), summed over tokens",
        ),
        Column::new(
            "rejected_logprob",
            Float64,
            false,
            "log π_ref(rejected | prompt)",
        ),
    ],
};

struct RefRow<'a> {
    pair: &'a Pair,
    chosen: f64,
    rejected: f64,
}

impl TableRow for RefRow<'_> {
    const KIND: &'static TableKind = &REFERENCE_LOGPROBS;
    fn columns(rows: &[Self]) -> Vec<ArrayRef> {
        vec![
            col::utf8(rows.iter().map(|r| r.pair.prompt_id.as_str())),
            col::utf8(rows.iter().map(|r| r.pair.prompt.as_str())),
            col::utf8(rows.iter().map(|r| r.pair.chosen.as_str())),
            col::utf8(rows.iter().map(|r| r.pair.rejected.as_str())),
            col::f64(rows.iter().map(|r| r.chosen)),
            col::f64(rows.iter().map(|r| r.rejected)),
        ]
    }
}

impl Kind for Dpo {
    const NAME: &'static str = "dpo";

    // 2: the model computes through hone's fused CPU kernels (model::kernels), which
    // round differently from the composed ops.
    const VERSION: u32 = 2;

    const SUMMARY: &'static str =
        "optimise a policy directly on preference pairs (DPO, IPO, label smoothing)";

    type Params = DpoParams;

    fn signature(&self, p: &DpoParams, _inputs: &[&str]) -> Result<Signature, Vec<ParamError>> {
        let key = |k: &str| vec![PathSeg::Key(k.into())];
        let mut errors = Vec::new();
        if !p.template.contains("{prompt}") {
            errors.push(ParamError::new(
                key("template"),
                "`template` must contain `{prompt}`",
            ));
        }
        lm::check_device(&p.device, &mut errors);
        lm::check_adapter_without_dropout(p.adapter.as_ref(), "dpo", &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut reference = Port::new("reference", ArtifactType::CausalLm);
        reference.required = false;
        Ok(Signature {
            inputs: vec![
                Port::new("policy", ArtifactType::CausalLm),
                lm::feedback_port(),
                reference,
            ],
            open_inputs: false,
            outputs: vec![
                Port::new("policy", ArtifactType::CausalLm),
                Port::new(
                    "reference_logprobs",
                    ArtifactType::Table(Some("reference-logprobs".into())),
                ),
                Port::new("metrics", ArtifactType::Metrics),
            ],
            deps: Vec::new(),
        })
    }

    fn run(&self, p: &DpoParams, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let device = lm::device(&p.device)?;
        let (mut policy, tok) = lm::load_input(ctx, "policy", &device)?;
        lm::attach_adapter(&mut policy, p.adapter.as_ref(), ctx.seed)?;
        // With an adapter the reference is the policy's own base without it (TRL's way: one
        // copy of the weights), unless a `reference` input is bound.
        let reference = if policy.adapter.is_some() && !ctx.inputs.contains_key("reference") {
            policy.base_model().map_err(failed)?
        } else {
            lm::load_reference(ctx, "policy", &device)?
        };
        let eot = lm::end_of_text(&policy.config, &tok);
        let context = policy.config.context_len();
        let feedback_dir = ctx.workspace.join(&ctx.inputs["feedback"][0]);
        let pairs = lm::read_feedback(ctx, false)?.pairs;
        if pairs.is_empty() {
            return Err(failed(format!(
                "no pairs in `{}` (comparisons and rankings)",
                feedback_dir.display()
            )));
        }
        let format = lm::prompt_format(ctx, "policy", &p.template)?;
        let examples = encode_pairs(&format, &tok, &pairs, eot, context)?;

        // The reference's log-probabilities, once.
        let reference_sums = response_sums(ctx, &reference, &examples, eot, &device)?;
        write_reference_table(ctx, &pairs, &reference_sums)?;

        // Batches of pairs, ordered by length within a seeded shuffle (as `sft`).
        let by_length: Vec<(Vec<u32>, usize)> = examples
            .iter()
            .map(|e| (vec![0; e[0].0.len().max(e[1].0.len())], 0))
            .collect();
        let per_epoch = by_length.len().div_ceil(p.batch_size);
        let total = (per_epoch * p.epochs).min(p.max_steps.unwrap_or(usize::MAX));
        let schedule = Schedule {
            peak_lr: p.lr,
            warmup_steps: p.warmup_steps.min(total),
            total_steps: total,
            final_fraction: 0.1,
        };
        let mut trainer = Trainer::new(
            crate::policy::train::lm_vars(&policy),
            schedule,
            0.0,
            Some(p.max_grad_norm),
        )
        .map_err(failed)?;
        let history = lm::train_with_loss::<StageError>(
            ctx,
            ctx.resume_dir,
            &policy,
            &mut trainer,
            total,
            p.checkpoint_every,
            "dpo",
            |step| {
                let batch = &epoch_batches(&by_length, p.batch_size, ctx.seed, step / per_epoch)
                    [step % per_epoch];
                let seqs: Vec<&(Vec<u32>, usize)> =
                    batch.iter().flat_map(|&i| examples[i].iter()).collect();
                let sums = response_logprobs(&policy.model, &seqs, eot, &device)?
                    .reshape((batch.len(), 2))
                    .map_err(failed)?;
                let column = |t: &Tensor, k: usize| {
                    t.narrow(1, k, 1).and_then(|c| c.squeeze(1)).map_err(failed)
                };
                let refs: Vec<f32> = batch
                    .iter()
                    .flat_map(|&i| reference_sums[i].map(|v| v as f32))
                    .collect();
                let refs = Tensor::from_vec(refs, (batch.len(), 2), &device).map_err(failed)?;
                let (loss, _) = dpo_loss(
                    &column(&sums, 0)?,
                    &column(&sums, 1)?,
                    &column(&refs, 0)?,
                    &column(&refs, 1)?,
                    p.beta,
                    p.label_smoothing,
                    p.loss,
                )
                .map_err(failed)?;
                Ok((loss, batch.len() as u64))
            },
        )?;

        // Implicit-reward accuracy on the pairs: how often β·(log π - log π_ref) ranks the
        // chosen response first.
        let frozen = policy.frozen().map_err(failed)?;
        let (correct, margin_sum) =
            implicit_rewards(&frozen, &examples, &reference_sums, p.beta, eot, &device)?;
        let out = ctx.workspace.join(&ctx.outputs["policy"]);
        lm::write_model_with(
            &out,
            &policy,
            &tok,
            &ModelMeta {
                template: Some(p.template.clone()),
                ..ModelMeta::of_stage("dpo")
            },
            Some(&lm::input_dir(ctx, "policy")?),
            p.adapter.as_ref().is_some_and(|a| a.merge),
        )?;
        let summary = json!({
            "pairs": pairs.len(),
            "steps": history.len(),
            "loss": p.loss,
            "beta": p.beta,
            "final_loss": lm::final_loss(&history),
            "implicit_reward_accuracy": correct as f64 / pairs.len() as f64,
            "mean_margin": margin_sum / pairs.len() as f64,
        });
        lm::write_metrics(
            &ctx.workspace.join(&ctx.outputs["metrics"]),
            &summary,
            &history,
            &ctx.provenance(),
        )?;
        Ok(())
    }
}

/// The `reference_logprobs` table: each pair's summed response log-probabilities under
/// the reference.
fn write_reference_table(
    ctx: &StageContext<'_>,
    pairs: &[Pair],
    reference_sums: &[[f64; 2]],
) -> Result<(), StageError> {
    let mut writer: TableWriter<RefRow> = TableWriter::create(
        &ctx.workspace.join(&ctx.outputs["reference_logprobs"]),
        &ctx.provenance(),
    )
    .map_err(failed)?;
    for (pair, sums) in pairs.iter().zip(reference_sums) {
        writer
            .push(RefRow {
                pair,
                chosen: sums[0],
                rejected: sums[1],
            })
            .map_err(failed)?;
    }
    writer.finish().map_err(failed)?;
    Ok(())
}

/// A pair's chosen and rejected answers as (tokens, first response token), each the
/// template's prompt, a space, the response and end-of-text (or the exchange in the
/// model's chat format), cut to the context.
type Example = [(Vec<u32>, usize); 2];

fn encode_pairs(
    format: &PromptFormat,
    tok: &tokenizers::Tokenizer,
    pairs: &[Pair],
    eot: u32,
    context: usize,
) -> Result<Vec<Example>, StageError> {
    let encode = |prompt: &str, response: &str| -> Result<(Vec<u32>, usize), StageError> {
        let (mut tokens, start) = format.encode_exchange(tok, prompt, response, eot)?;
        tokens.truncate(context);
        if start + 1 >= tokens.len() {
            return Err(failed(format!(
                "a prompt fills the model's context of {context}: `{prompt}`"
            )));
        }
        Ok((tokens, start))
    };
    pairs
        .iter()
        .map(|x| {
            Ok([
                encode(&x.prompt, &x.chosen)?,
                encode(&x.prompt, &x.rejected)?,
            ])
        })
        .collect()
}

/// The summed response log-probabilities of each pair's two answers under `model`.
fn response_sums(
    ctx: &StageContext<'_>,
    model: &CausalLm,
    examples: &[Example],
    eot: u32,
    device: &Device,
) -> Result<Vec<[f64; 2]>, StageError> {
    let mut out: Vec<[f64; 2]> = Vec::with_capacity(examples.len());
    for (n, chunk) in examples.chunks(16).enumerate() {
        if ctx.cancelled() {
            return Err(StageError::Cancelled);
        }
        let seqs: Vec<&(Vec<u32>, usize)> = chunk.iter().flat_map(|e| e.iter()).collect();
        let sums = response_logprobs(model, &seqs, eot, device)?
            .to_vec1::<f32>()
            .map_err(failed)?;
        out.extend(sums.chunks(2).map(|s| [f64::from(s[0]), f64::from(s[1])]));
        ctx.report(
            ((n + 1) * 16).min(examples.len()) as u64,
            examples.len() as u64,
        );
    }
    Ok(out)
}

/// Implicit-reward accuracy on the pairs: how often β·(log π - log π_ref) ranks the chosen
/// response first; (pairs ranked right, summed margin).
fn implicit_rewards(
    policy: &CausalLm,
    examples: &[Example],
    reference_sums: &[[f64; 2]],
    beta: f64,
    eot: u32,
    device: &Device,
) -> Result<(usize, f64), StageError> {
    let (mut correct, mut margin_sum) = (0usize, 0.0);
    for (chunk, refs) in examples.chunks(16).zip(reference_sums.chunks(16)) {
        let seqs: Vec<&(Vec<u32>, usize)> = chunk.iter().flat_map(|e| e.iter()).collect();
        let sums = response_logprobs(policy, &seqs, eot, device)?
            .to_vec1::<f32>()
            .map_err(failed)?;
        for (s, r) in sums.chunks(2).zip(refs) {
            let margin = beta * ((f64::from(s[0]) - r[0]) - (f64::from(s[1]) - r[1]));
            correct += usize::from(margin > 0.0);
            margin_sum += margin;
        }
    }
    Ok((correct, margin_sum))
}

/// Summed log-probabilities [n] of each sequence's response (tokens from its start index).
fn response_logprobs(
    model: &CausalLm,
    sequences: &[&(Vec<u32>, usize)],
    pad: u32,
    device: &Device,
) -> Result<Tensor, StageError> {
    let len = sequences
        .iter()
        .map(|(t, _)| t.len())
        .max()
        .unwrap_or(2)
        .max(2);
    let mut ids = Vec::with_capacity(sequences.len() * len);
    let mut mask = Vec::with_capacity(sequences.len() * (len - 1));
    for (tokens, start) in sequences {
        ids.extend(tokens.iter().copied());
        ids.extend(std::iter::repeat_n(pad, len - tokens.len()));
        // Index j predicts token j + 1: response tokens are start..tokens.len().
        mask.extend((0..len - 1).map(|j| {
            if j + 1 >= *start && j + 1 < tokens.len() {
                1f32
            } else {
                0.0
            }
        }));
    }
    let n = sequences.len();
    let ids = Tensor::from_vec(ids, (n, len), device).map_err(failed)?;
    let mask = Tensor::from_vec(mask, (n, len - 1), device).map_err(failed)?;
    let (logp, _) = token_logprobs(model, &ids, 1.0).map_err(failed)?;
    (logp * mask).and_then(|t| t.sum(1)).map_err(failed)
}
