//! The glue the model stages share where it needs the stage's context or its error type:
//! reading a `causal-lm` input and the reference, writing a `causal-lm` directory
//! (config.json, model.safetensors, tokenizer.json, hone.json), the training history
//! table, metrics directories, the `feedback` input. What needs no context is in
//! `policy/`.

use std::path::Path;

use arrow::array::ArrayRef;
use candle_core::Device;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::{StageContext, StageError};
use crate::artifact::table::Provenance;
use crate::artifact::table::{Column, ColumnType::*, TableKind, TableRow, TableWriter, col};
use crate::model::{self, Trainable, tokenizer};
use crate::policy::chat::PromptFormat;
use crate::policy::meta::ModelMeta;

pub fn failed(e: impl std::fmt::Display) -> StageError {
    StageError::Failed(e.to_string())
}

/// How a prompt is put to a policy by default (the chat format of the HHH world's demos).
pub fn default_template() -> String {
    "User: {prompt}\nAssistant:".into()
}

/// Where a sampled response ends by default, besides EOS: the next user turn.
pub fn default_stop() -> Vec<String> {
    vec!["\nUser:".into()]
}

/// The default of every model stage's `device` parameter.
pub fn default_device() -> String {
    "auto".into()
}

/// Adds a spec error when a stage's `device` parameter names no usable device.
pub fn check_device(device: &str, errors: &mut Vec<super::ParamError>) {
    if let Err(e) = model::device(device) {
        errors.push(super::ParamError::new(
            vec![crate::spec::node::PathSeg::Key("device".into())],
            e,
        ));
    }
}

/// The device named by a stage's `device` parameter.
pub fn device(spec: &str) -> Result<Device, StageError> {
    model::device(spec).map_err(failed)
}

/// Loads the causal LM bound to input `port` (a checkpoint directory in the store).
pub fn load_input(
    ctx: &StageContext<'_>,
    port: &str,
    device: &Device,
) -> Result<(Trainable, Tokenizer), StageError> {
    load_dir(&input_dir(ctx, port)?, device)
}

/// The directory of the (first) artifact bound to input `port`.
pub fn input_dir(ctx: &StageContext<'_>, port: &str) -> Result<std::path::PathBuf, StageError> {
    Ok(ctx.workspace.join(
        ctx.inputs
            .get(port)
            .and_then(|p| p.first())
            .ok_or_else(|| failed(format!("no `{port}` input")))?,
    ))
}

/// How prompts are put to the model bound to `port`: its chat template when it has one
/// and the stage's `template` is hone's default, else `template` (`PromptFormat::for_model`).
pub fn prompt_format(
    ctx: &StageContext<'_>,
    port: &str,
    template: &str,
) -> Result<PromptFormat, StageError> {
    Ok(PromptFormat::for_model(
        &input_dir(ctx, port)?,
        template,
        &default_template(),
    )?)
}

/// What a sampling stage needs to put prompts to the model bound to `port`: the prompt
/// format ([`prompt_format`]) and the tokens that end a response (end-of-text, and a chat
/// model's end of turn: `PromptFormat::stop_tokens`).
pub fn sampling_format(
    ctx: &StageContext<'_>,
    port: &str,
    template: &str,
    model: &Trainable,
    tok: &Tokenizer,
) -> Result<(PromptFormat, Vec<u32>), StageError> {
    let dir = input_dir(ctx, port)?;
    let format = PromptFormat::for_model(&dir, template, &default_template())?;
    let stop_tokens = format.stop_tokens(
        &dir,
        tok,
        end_of_text(&model.config, tok),
        &model.config.eos_token_ids(),
    )?;
    Ok((format, stop_tokens))
}

pub fn load_dir(dir: &Path, device: &Device) -> Result<(Trainable, Tokenizer), StageError> {
    let trainable = Trainable::load(dir, device).map_err(failed)?;
    let tok = tokenizer::load(&dir.join("tokenizer.json")).map_err(failed)?;
    if tok.get_vocab_size(true) > trainable.config.vocab_size() {
        return Err(failed(format!(
            "`{}`: the tokenizer has {} tokens but the model only {}",
            dir.display(),
            tok.get_vocab_size(true),
            trainable.config.vocab_size()
        )));
    }
    Ok((trainable, tok))
}

pub use crate::policy::end_of_text;

/// A fixed reference model for inference: the `reference` input when bound, else the
/// `fallback` input. Loaded from its checkpoint on its own: a detached copy of a model being
/// trained would share its storage, which the optimiser updates in place.
pub fn load_reference(
    ctx: &StageContext<'_>,
    fallback: &str,
    device: &Device,
) -> Result<model::CausalLm, StageError> {
    let port = if ctx.inputs.contains_key("reference") {
        "reference"
    } else {
        fallback
    };
    load_input(ctx, port, device)?.0.frozen().map_err(failed)
}

fn default_lora_r() -> usize {
    8
}
fn default_lora_alpha() -> f64 {
    8.0
}

/// A stage's `adapter:` block: train a LoRA adapter (PEFT's layout) instead of every
/// weight. Left out, the stage trains all weights, as it always did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdapterParams {
    /// The adapter's rank.
    #[serde(default = "default_lora_r")]
    #[schemars(range(min = 1, max = 4096))]
    pub r: usize,
    /// Its scale is `alpha / r` (`alpha / sqrt(r)` with `rslora`); PEFT's defaults, r 8 and
    /// alpha 8.
    #[serde(default = "default_lora_alpha")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub alpha: f64,
    /// Dropout on the adapter's input while training (sft and reward-fit; dpo and ppo
    /// train without it, as TRL does).
    #[serde(default)]
    #[schemars(range(min = 0), extend("exclusiveMaximum" = 1))]
    pub dropout: f64,
    /// The linear layers adapted, by PEFT's module names (`q_proj`, `c_attn`,
    /// `query_key_value`, ...) or `[all-linear]`; default PEFT's for the model type (the
    /// attention's query and value projections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub target_modules: Option<Vec<String>>,
    /// rsLoRA's scale.
    #[serde(default)]
    pub rslora: bool,
    /// Also write the base with the adapter merged in (`config.json`, `model.safetensors`)
    /// beside the adapter's files.
    #[serde(default)]
    pub merge: bool,
}

/// Attaches the stage's adapter to `trainable` (drawn from the stage's seed); nothing
/// without one. `stage` names the kind in errors: dpo and ppo refuse a dropout.
pub fn attach_adapter(
    trainable: &mut Trainable,
    adapter: Option<&AdapterParams>,
    seed: u64,
) -> Result<(), StageError> {
    let Some(a) = adapter else {
        return Ok(());
    };
    let config = crate::model::lora::LoraConfig {
        r: a.r,
        alpha: a.alpha,
        dropout: a.dropout,
        target_modules: a
            .target_modules
            .clone()
            .unwrap_or_else(|| crate::model::lora::default_targets(trainable.config.model_type())),
        rslora: a.rslora,
    };
    trainable
        .attach_adapter(config, seed)
        .map_err(|e| failed(format!("adapter: {e}")))
}

/// Adds a spec error when an adapter asks for dropout in a stage that trains without it.
pub fn check_adapter_without_dropout(
    adapter: Option<&AdapterParams>,
    kind: &str,
    errors: &mut Vec<super::ParamError>,
) {
    if let Some(a) = adapter
        && a.dropout > 0.0
    {
        errors.push(super::ParamError::new(
            vec![
                crate::spec::node::PathSeg::Key("adapter".into()),
                crate::spec::node::PathSeg::Key("dropout".into()),
            ],
            format!(
                "`dropout` is {}: {kind} trains an adapter without dropout (as TRL does: its log-probability ratios assume the policy computes the same twice); leave it out",
                a.dropout
            ),
        ));
    }
}

/// Writes a model directory a Hugging Face user recognises, plus `hone.json` (how it was
/// made), with the tokenizer files (chat template, special tokens, generation config) of
/// the model in `base_dir` it was made from. A model with an adapter is written as PEFT
/// writes one (`adapter_config.json` naming `base_dir`, `adapter_model.safetensors`), and
/// with `merge` also as the merged plain checkpoint.
pub fn write_model(
    dir: &Path,
    trainable: &Trainable,
    tok: &Tokenizer,
    meta: &ModelMeta,
    base_dir: Option<&Path>,
) -> Result<(), StageError> {
    write_model_with(dir, trainable, tok, meta, base_dir, false)
}

/// As [`write_model`], with `merge` for a model with an adapter.
pub fn write_model_with(
    dir: &Path,
    trainable: &Trainable,
    tok: &Tokenizer,
    meta: &ModelMeta,
    base_dir: Option<&Path>,
    merge: bool,
) -> Result<(), StageError> {
    if trainable.adapter.is_some() {
        let base = base_dir.ok_or_else(|| failed("an adapter needs the base it adapts"))?;
        let reference = crate::artifact::store_reference(base, 0);
        trainable
            .save_adapter(dir, &reference, "CAUSAL_LM", &[], |_| false)
            .map_err(failed)?;
        if merge {
            trainable.save_merged(dir, |_| false).map_err(failed)?;
        }
    } else {
        trainable.save(dir).map_err(failed)?;
    }
    tok.save(dir.join("tokenizer.json"), true).map_err(failed)?;
    if let Some(base) = base_dir {
        crate::policy::chat::carry_tokenizer_files(base, dir)?;
    }
    Ok(meta.write(dir)?)
}

pub use crate::policy::train::{HistoryRow, ResumeState, final_loss, train_steps, train_with_loss};

pub static HISTORY: TableKind = TableKind {
    name: "history",
    version: 1,
    doc: "per-step training history of a stage",
    columns: &[
        Column::new("step", UInt64, false, "1-based optimiser step"),
        Column::new(
            "loss",
            Float64,
            false,
            "the training loss of the step's batch",
        ),
        Column::new("lr", Float64, false, "the learning rate used"),
        Column::new(
            "grad_norm",
            Float64,
            false,
            "global gradient norm before clipping",
        ),
        Column::new("tokens", UInt64, false, "target tokens in the batch"),
    ],
};

impl TableRow for HistoryRow {
    const KIND: &'static TableKind = &HISTORY;
    fn columns(rows: &[Self]) -> Vec<ArrayRef> {
        vec![
            col::u64(rows.iter().map(|r| r.step)),
            col::f64(rows.iter().map(|r| r.loss)),
            col::f64(rows.iter().map(|r| r.lr)),
            col::f64(rows.iter().map(|r| r.grad_norm)),
            col::u64(rows.iter().map(|r| r.tokens)),
        ]
    }
}

/// Writes a `metrics` directory: `summary.json` and `history.parquet`.
pub fn write_metrics(
    dir: &Path,
    summary: &Value,
    history: &[HistoryRow],
    provenance: &Provenance,
) -> Result<(), StageError> {
    write_summary_and_table(dir, summary, "history.parquet", history, provenance)
}

/// A `metrics` directory: `summary.json` and one table of `rows` named `table`.
pub fn write_summary_and_table<R: TableRow + Clone>(
    dir: &Path,
    summary: &Value,
    table: &str,
    rows: &[R],
    provenance: &Provenance,
) -> Result<(), StageError> {
    std::fs::create_dir_all(dir).map_err(|source| StageError::Io {
        context: "creating the metrics directory".into(),
        source,
    })?;
    let mut text = serde_json::to_string_pretty(summary).map_err(failed)?;
    text.push('\n');
    std::fs::write(dir.join("summary.json"), text).map_err(|source| StageError::Io {
        context: "writing summary.json".into(),
        source,
    })?;
    let mut writer: TableWriter<R> =
        TableWriter::create(&dir.join(table), provenance).map_err(failed)?;
    for row in rows {
        writer.push(row.clone()).map_err(failed)?;
    }
    writer.finish().map_err(failed)?;
    Ok(())
}

pub use crate::policy::reward::reward_input;

pub use crate::policy::reward::reward_template;

/// `feedback`: one directory, or a list of them (feedback gathered over rounds or from
/// several sources), read as one.
pub fn feedback_port() -> super::Port {
    let mut port = super::Port::new("feedback", crate::artifact::ArtifactType::Feedback);
    port.many = true;
    port
}

/// Every directory bound to the stage's `feedback` input, in order, as one; says how many
/// scores were left out.
pub fn read_feedback(
    ctx: &StageContext<'_>,
    use_margin: bool,
) -> Result<crate::policy::feedback::Feedback, StageError> {
    let dirs: Vec<std::path::PathBuf> = ctx
        .inputs
        .get("feedback")
        .into_iter()
        .flatten()
        .map(|d| ctx.workspace.join(d))
        .collect();
    let feedback = crate::policy::feedback::Feedback::read_all(&dirs, use_margin)?;
    if feedback.dropped_scores > 0 {
        tracing::warn!(
            dropped = feedback.dropped_scores,
            "scores that are not whole 1-5 ratings were left out (the ordinal model has five classes)"
        );
    }
    Ok(feedback)
}
