//! What the model stages share: reading a `causal-lm` input, writing a `causal-lm`
//! directory (config.json, model.safetensors, tokenizer.json, hone.json), the training
//! history table, and resumable training state.

use std::path::Path;

use arrow::array::ArrayRef;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::{StageContext, StageError};
use crate::artifact::table::Provenance;
use crate::artifact::table::{Column, ColumnType::*, TableKind, TableRow, TableWriter, col};
use crate::model::{self, Trainable, tokenizer};
use crate::policy::meta::ModelMeta;

pub fn failed(e: impl std::fmt::Display) -> StageError {
    StageError::Failed(e.to_string())
}

/// The default of every model stage's `device` parameter.
/// How a prompt is put to a policy by default (the chat format of the HHH world's demos).
pub fn default_template() -> String {
    "User: {prompt}\nAssistant:".into()
}

/// Where a sampled response ends by default, besides EOS: the next user turn.
pub fn default_stop() -> Vec<String> {
    vec!["\nUser:".into()]
}

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
    let dir = ctx.workspace.join(
        ctx.inputs
            .get(port)
            .and_then(|p| p.first())
            .ok_or_else(|| failed(format!("no `{port}` input")))?,
    );
    load_dir(&dir, device)
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

/// Writes a model directory a Hugging Face user recognises, plus `hone.json` (how it was
/// made).
pub fn write_model(
    dir: &Path,
    trainable: &Trainable,
    tok: &Tokenizer,
    meta: &ModelMeta,
) -> Result<(), StageError> {
    trainable.save(dir).map_err(failed)?;
    tok.save(dir.join("tokenizer.json"), true).map_err(failed)?;
    Ok(meta.write(dir)?)
}

/// One optimiser step of a training stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: u64,
}

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

/// Where a training stage keeps its resumable state inside `ctx.resume_dir`.
pub struct ResumeState<'a> {
    dir: &'a Path,
}

#[derive(Serialize, Deserialize)]
struct ResumeRecord {
    step: usize,
    history: Vec<HistoryRow>,
    /// A stage's own state beyond model and optimiser (PPO's iteration statistics, say).
    #[serde(default)]
    extra: Value,
}

impl<'a> ResumeState<'a> {
    /// The state kept in `dir` (a stage's `resume_dir`, or a folder inside it).
    pub fn new(dir: &'a Path) -> Self {
        ResumeState { dir }
    }

    /// Saves model, optimiser moments, step and history; written to a fresh directory and
    /// renamed, so a kill during the save leaves the previous checkpoint intact.
    pub fn save(
        &self,
        trainable: &Trainable,
        trainer: &model::train::Trainer,
        history: &[HistoryRow],
    ) -> Result<(), StageError> {
        self.save_with(trainable, trainer, history, Value::Null)
    }

    /// As [`ResumeState::save`], with the stage's own state `extra`, saved in the same
    /// atomic step.
    pub fn save_with(
        &self,
        trainable: &Trainable,
        trainer: &model::train::Trainer,
        history: &[HistoryRow],
        extra: Value,
    ) -> Result<(), StageError> {
        let tmp = self.dir.join("saving");
        let _ = std::fs::remove_dir_all(&tmp);
        trainable.save(&tmp.join("model")).map_err(failed)?;
        trainer
            .save_state(&tmp.join("optimizer.safetensors"))
            .map_err(failed)?;
        let record = ResumeRecord {
            step: trainer.step,
            history: history.to_vec(),
            extra,
        };
        std::fs::write(
            tmp.join("state.json"),
            serde_json::to_vec(&record).map_err(failed)?,
        )
        .map_err(failed)?;
        crate::artifact::sync_tree(&tmp).map_err(failed)?;
        let done = self.dir.join("checkpoint");
        let _ = std::fs::remove_dir_all(&done);
        std::fs::rename(&tmp, &done).map_err(failed)?;
        tracing::info!(step = trainer.step, "checkpoint saved");
        Ok(())
    }

    /// Restores the latest checkpoint into `trainable` and `trainer`, returning the history
    /// so far; `None` when there is none.
    pub fn restore(
        &self,
        trainable: &Trainable,
        trainer: &mut model::train::Trainer,
    ) -> Result<Option<Vec<HistoryRow>>, StageError> {
        Ok(self
            .restore_with(trainable, trainer)?
            .map(|(history, _)| history))
    }

    /// As [`ResumeState::restore`], also returning the stage's own state.
    pub fn restore_with(
        &self,
        trainable: &Trainable,
        trainer: &mut model::train::Trainer,
    ) -> Result<Option<(Vec<HistoryRow>, Value)>, StageError> {
        let done = self.dir.join("checkpoint");
        let Ok(bytes) = std::fs::read(done.join("state.json")) else {
            return Ok(None);
        };
        let record: ResumeRecord = serde_json::from_slice(&bytes).map_err(failed)?;
        let saved = candle_core::safetensors::load(
            done.join("model").join("model.safetensors"),
            &Device::Cpu,
        )
        .map_err(failed)?;
        for (name, var) in trainable.varmap.data().lock().expect("varmap lock").iter() {
            let source = saved
                .get(name)
                .ok_or_else(|| failed(format!("checkpoint lacks `{name}`")))?;
            var.set(&source.to_device(var.device()).map_err(failed)?)
                .map_err(failed)?;
        }
        trainer
            .load_state(&done.join("optimizer.safetensors"), record.step)
            .map_err(failed)?;
        tracing::info!(step = record.step, "resumed from checkpoint");
        Ok(Some((record.history, record.extra)))
    }
}

/// Runs a training stage's steps from wherever its last checkpoint left off: the batch of
/// step `s` comes from `batch_for(s)` (which must depend only on `s` and the seed, so that a
/// resumed run sees the same data), the loss is the masked LM loss, and every
/// `checkpoint_every` steps the state is saved. Returns the whole history.
pub fn train_steps(
    ctx: &StageContext<'_>,
    trainable: &Trainable,
    trainer: &mut model::train::Trainer,
    total: usize,
    checkpoint_every: usize,
    what: &str,
    mut batch_for: impl FnMut(usize) -> Result<model::train::Batch, StageError>,
) -> Result<Vec<HistoryRow>, StageError> {
    train_with_loss(
        ctx,
        ctx.resume_dir,
        trainable,
        trainer,
        total,
        checkpoint_every,
        what,
        |step| {
            let batch = batch_for(step)?;
            let loss = model::train::lm_loss(&trainable.model, &batch).map_err(failed)?;
            let tokens = batch
                .weights
                .sum_all()
                .and_then(|t| t.to_scalar::<f32>())
                .map_err(failed)? as u64;
            Ok((loss, tokens))
        },
    )
}

/// As [`train_steps`], with the loss of step `s` and the number of items it covers given
/// by `loss_for(s)` (the same determinism rule applies), checkpointing into `resume_dir`.
#[expect(
    clippy::too_many_arguments,
    reason = "the loop's settings, each one role"
)]
pub fn train_with_loss(
    ctx: &StageContext<'_>,
    resume_dir: &Path,
    trainable: &Trainable,
    trainer: &mut model::train::Trainer,
    total: usize,
    checkpoint_every: usize,
    what: &str,
    mut loss_for: impl FnMut(usize) -> Result<(candle_core::Tensor, u64), StageError>,
) -> Result<Vec<HistoryRow>, StageError> {
    let resume = ResumeState::new(resume_dir);
    let mut history = resume.restore(trainable, trainer)?.unwrap_or_default();
    let started = std::time::Instant::now();
    let first_step = trainer.step;
    while trainer.step < total {
        if ctx.cancelled() {
            return Err(StageError::Cancelled);
        }
        let (loss, tokens) = loss_for(trainer.step)?;
        let lr = trainer.lr();
        let grad_norm = trainer.step(&loss).map_err(failed)?;
        let loss_value = f64::from(loss.to_scalar::<f32>().map_err(failed)?);
        ctx.report(trainer.step as u64, total as u64);
        history.push(HistoryRow {
            step: trainer.step as u64,
            loss: loss_value,
            lr,
            grad_norm,
            tokens,
        });
        if trainer.step.is_multiple_of(10) || trainer.step == total {
            let trained: u64 = history[first_step..].iter().map(|h| h.tokens).sum();
            let rate = trained as f64 / started.elapsed().as_secs_f64();
            tracing::info!(
                step = trainer.step,
                steps = total,
                loss = loss_value,
                items_per_s = rate as u64,
                "{what}"
            );
        }
        if trainer.step.is_multiple_of(checkpoint_every) && trainer.step < total {
            resume.save(trainable, trainer, &history)?;
        }
    }
    Ok(history)
}

/// The mean loss of the last ten steps.
pub fn final_loss(history: &[HistoryRow]) -> f64 {
    history.iter().rev().take(10).map(|h| h.loss).sum::<f64>() / history.len().clamp(1, 10) as f64
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
