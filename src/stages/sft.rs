//! `sft`: supervised fine-tuning on (prompt, completion) demonstrations, the loss on the
//! completion's tokens only; AdamW with warm-up and cosine decay, gradient clipping,
//! length-bucketed batches, a loss history, and checkpoints from which a killed stage
//! resumes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::lm::{self, failed};
use super::{Kind, ParamError, Port, Signature, StageContext, StageError};
use crate::artifact::ArtifactType;
use crate::model::train::{Batch, Schedule, Trainer};
use crate::policy::data::epoch_batches;
use crate::policy::meta::ModelMeta;
use crate::spec::node::PathSeg;

pub struct Sft;

fn default_demos() -> String {
    "data/hhh/demos.jsonl".into()
}
fn default_epochs() -> usize {
    1
}
fn default_batch() -> usize {
    16
}
fn default_lr() -> f64 {
    1e-3
}
fn default_warmup() -> usize {
    10
}
fn default_wd() -> f64 {
    0.0
}
fn default_clip() -> f64 {
    1.0
}
fn default_checkpoint_every() -> usize {
    50
}

/// Parameters of an `sft` stage.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SftParams {
    /// Demonstrations: a JSONL file of `{"prompt": ..., "completion": ...}`.
    #[serde(default = "default_demos")]
    pub demos: String,
    #[serde(default = "default_epochs")]
    #[schemars(range(min = 1))]
    pub epochs: usize,
    /// Stop after this many steps (default: all epochs).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_steps: Option<usize>,
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    #[serde(default = "default_lr")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub lr: f64,
    #[serde(default = "default_warmup")]
    pub warmup_steps: usize,
    #[serde(default = "default_wd")]
    #[schemars(range(min = 0))]
    pub weight_decay: f64,
    #[serde(default = "default_clip")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_grad_norm: f64,
    /// How a prompt is put to the model; `{prompt}` is replaced by its text. The completion
    /// follows after a space, then end-of-text.
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

impl Kind for Sft {
    const NAME: &'static str = "sft";

    // 2: AdamW computed in one fused f64 pass (outputs differ in the last bits).
    // 3: the model computes through hone's fused CPU kernels (model::kernels), which
    // round differently from the composed ops.
    const VERSION: u32 = 3;

    const SUMMARY: &'static str =
        "supervised fine-tuning on demonstrations, loss on completion tokens only";

    type Params = SftParams;

    fn signature(&self, p: &SftParams, _inputs: &[&str]) -> Result<Signature, Vec<ParamError>> {
        let key = |k: &str| vec![PathSeg::Key(k.into())];
        let mut errors = Vec::new();
        if !p.template.contains("{prompt}") {
            errors.push(ParamError::new(
                key("template"),
                "`template` must contain `{prompt}`",
            ));
        }
        lm::check_device(&p.device, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Signature {
            inputs: vec![Port::new("model", ArtifactType::CausalLm)],
            open_inputs: false,
            outputs: vec![
                Port::new("model", ArtifactType::CausalLm),
                Port::new("metrics", ArtifactType::Metrics),
            ],
            deps: vec![p.demos.clone()],
        })
    }

    fn run(&self, p: &SftParams, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let device = lm::device(&p.device)?;
        let (mut trainable, tok) = lm::load_input(ctx, "model", &device)?;
        lm::attach_adapter(&mut trainable, p.adapter.as_ref(), ctx.seed)?;
        let eot = lm::end_of_text(&trainable.config, &tok);
        let context = trainable.config.context_len();
        // (tokens, index of the first completion token), cut to the context.
        let mut examples: Vec<(Vec<u32>, usize)> = Vec::new();
        let mut skipped = 0usize;
        let format = lm::prompt_format(ctx, "model", &p.template)?;
        for (prompt, completion) in read_demos(&ctx.workspace.join(&p.demos))? {
            let (mut tokens, start) = format.encode_exchange(&tok, &prompt, &completion, eot)?;
            if start + 1 >= context {
                skipped += 1;
                continue;
            }
            tokens.truncate(context + 1);
            examples.push((tokens, start));
        }
        if examples.is_empty() {
            return Err(failed("no demonstration fits the model's context"));
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "demonstrations whose prompt fills the context were skipped"
            );
        }
        let batches_per_epoch = examples.len().div_ceil(p.batch_size);
        let total = (batches_per_epoch * p.epochs).min(p.max_steps.unwrap_or(usize::MAX));
        let schedule = Schedule {
            peak_lr: p.lr,
            warmup_steps: p.warmup_steps.min(total),
            total_steps: total,
            final_fraction: 0.1,
        };
        let mut trainer = Trainer::new(
            crate::policy::train::lm_vars(&trainable),
            schedule,
            p.weight_decay,
            Some(p.max_grad_norm),
        )
        .map_err(failed)?;
        let history = lm::train_steps(
            ctx,
            ctx.resume_dir,
            &trainable,
            &mut trainer,
            total,
            p.checkpoint_every,
            "fine-tuning",
            |step| {
                let (epoch, index) = (step / batches_per_epoch, step % batches_per_epoch);
                let order = epoch_batches(&examples, p.batch_size, ctx.seed, epoch);
                let chosen: Vec<(Vec<u32>, usize)> =
                    order[index].iter().map(|&i| examples[i].clone()).collect();
                Batch::new(&chosen, eot, &device).map_err(failed)
            },
        )?;
        let final_loss = lm::final_loss(&history);
        lm::write_model_with(
            &ctx.workspace.join(&ctx.outputs["model"]),
            &trainable,
            &tok,
            &ModelMeta {
                demos: Some(p.demos.clone()),
                steps: Some(total as u64),
                final_loss: Some(final_loss),
                ..ModelMeta::of_stage("sft")
            },
            Some(&lm::input_dir(ctx, "model")?),
            p.adapter.as_ref().is_some_and(|a| a.merge),
        )?;
        let provenance = ctx.provenance();
        let summary = json!({"steps": total, "examples": examples.len(), "skipped": skipped, "final_loss": final_loss});
        lm::write_metrics(
            &ctx.workspace.join(&ctx.outputs["metrics"]),
            &summary,
            &history,
            &provenance,
        )
    }
}

fn read_demos(path: &std::path::Path) -> Result<Vec<(String, String)>, StageError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| failed(format!("`{}`: {e}", path.display())))?;
    let mut demos = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| failed(format!("`{}` line {}: {e}", path.display(), i + 1)))?;
        let field = |name: &str| {
            v.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    failed(format!(
                        "`{}` line {}: no `{name}` text",
                        path.display(),
                        i + 1
                    ))
                })
        };
        demos.push((field("prompt")?, field("completion")?));
    }
    Ok(demos)
}
