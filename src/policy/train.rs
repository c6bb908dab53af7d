//! Training: which variables a stage trains (decided here and nowhere else, so that a
//! change of what trains, LoRA adapters with only the adapter's weights, is made in one
//! place for sft, pretraining, dpo, ppo, reward-fit and metarm-adapt), the loop of a
//! training stage with its history and progress, and the resumable state it checkpoints.

use std::path::Path;

use candle_core::{Device, Var};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{PolicyError, Progress, Result};
use crate::model::Trainable;
use crate::model::reward::RewardModel;
use crate::model::train::{Batch, Trainer, lm_loss};

/// A causal LM's trainable variables, by name: all of them (with PPO's value head, which
/// lives in the policy's variables and trains with it).
/// With a LoRA adapter, only the adapter's (and the value head).
pub fn lm_vars(model: &Trainable) -> Vec<(String, Var)> {
    Trainer::named_vars(&model.varmap)
        .into_iter()
        .filter(|(name, _)| model.trains(name))
        .collect()
}

/// A reward model's: its backbone without the language-model head it never uses, and its
/// scalar head; with a LoRA adapter, the adapter and the head.
pub fn reward_model_vars(rm: &RewardModel) -> Vec<(String, Var)> {
    rm.trainable_vars()
        .into_iter()
        .filter(|(name, _)| rm.base.trains(name))
        .collect()
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

/// Where a training stage keeps its resumable state (a stage's resume directory).
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
        trainer: &Trainer,
        history: &[HistoryRow],
    ) -> Result<()> {
        self.save_with(trainable, trainer, history, Value::Null)
    }

    /// As [`ResumeState::save`], with the stage's own state `extra`, saved in the same
    /// atomic step.
    pub fn save_with(
        &self,
        trainable: &Trainable,
        trainer: &Trainer,
        history: &[HistoryRow],
        extra: Value,
    ) -> Result<()> {
        let tmp = self.dir.join("saving");
        let _ = std::fs::remove_dir_all(&tmp);
        // With an adapter, only what trains: the base is the stage's input.
        trainable
            .save_filtered(&tmp.join("model"), |name| trainable.trains(name))
            .map_err(|e| PolicyError::input(self.dir, e))?;
        trainer
            .save_state(&tmp.join("optimizer.safetensors"))
            .map_err(|e| PolicyError::input(self.dir, e))?;
        let record = ResumeRecord {
            step: trainer.step,
            history: history.to_vec(),
            extra,
        };
        std::fs::write(
            tmp.join("state.json"),
            serde_json::to_vec(&record).map_err(|e| PolicyError::input(self.dir, e))?,
        )
        .map_err(|e| PolicyError::input(self.dir, e))?;
        crate::artifact::sync_tree(&tmp).map_err(|e| PolicyError::input(self.dir, e))?;
        let done = self.dir.join("checkpoint");
        let _ = std::fs::remove_dir_all(&done);
        std::fs::rename(&tmp, &done).map_err(|e| PolicyError::input(self.dir, e))?;
        tracing::info!(step = trainer.step, "checkpoint saved");
        Ok(())
    }

    /// Restores the latest checkpoint into `trainable` and `trainer`, returning the history
    /// so far; `None` when there is none.
    pub fn restore(
        &self,
        trainable: &Trainable,
        trainer: &mut Trainer,
    ) -> Result<Option<Vec<HistoryRow>>> {
        Ok(self
            .restore_with(trainable, trainer)?
            .map(|(history, _)| history))
    }

    /// As [`ResumeState::restore`], also returning the stage's own state.
    pub fn restore_with(
        &self,
        trainable: &Trainable,
        trainer: &mut Trainer,
    ) -> Result<Option<(Vec<HistoryRow>, Value)>> {
        let done = self.dir.join("checkpoint");
        let Ok(bytes) = std::fs::read(done.join("state.json")) else {
            return Ok(None);
        };
        let record: ResumeRecord =
            serde_json::from_slice(&bytes).map_err(|e| PolicyError::input(self.dir, e))?;
        let saved = candle_core::safetensors::load(
            done.join("model").join("model.safetensors"),
            &Device::Cpu,
        )
        .map_err(|e| PolicyError::input(self.dir, e))?;
        for (name, var) in trainable.varmap.data().lock().expect("varmap lock").iter() {
            if !trainable.trains(name) {
                continue;
            }
            let source = saved.get(name).ok_or_else(|| {
                PolicyError::input(self.dir, format!("checkpoint lacks `{name}`"))
            })?;
            var.set(
                &source
                    .to_device(var.device())
                    .map_err(|e| PolicyError::input(self.dir, e))?,
            )
            .map_err(|e| PolicyError::input(self.dir, e))?;
        }
        trainer
            .load_state(&done.join("optimizer.safetensors"), record.step)
            .map_err(|e| PolicyError::input(self.dir, e))?;
        tracing::info!(step = record.step, "resumed from checkpoint");
        Ok(Some((record.history, record.extra)))
    }
}

/// Runs a training stage's steps from wherever its last checkpoint left off: the batch of
/// step `s` comes from `batch_for(s)` (which must depend only on `s` and the seed, so that a
/// resumed run sees the same data), the loss is the masked LM loss, and every
/// `checkpoint_every` steps the state is saved. Returns the whole history.
#[expect(
    clippy::too_many_arguments,
    reason = "the loop's settings, each one role"
)]
pub fn train_steps<E: From<PolicyError>>(
    progress: &dyn Progress,
    resume_dir: &Path,
    trainable: &Trainable,
    trainer: &mut Trainer,
    total: usize,
    checkpoint_every: usize,
    what: &str,
    mut batch_for: impl FnMut(usize) -> std::result::Result<Batch, E>,
) -> std::result::Result<Vec<HistoryRow>, E> {
    train_with_loss(
        progress,
        resume_dir,
        trainable,
        trainer,
        total,
        checkpoint_every,
        what,
        |step| {
            let batch = batch_for(step)?;
            let loss = lm_loss(&trainable.model, &batch).map_err(PolicyError::from)?;
            let tokens = batch
                .weights
                .sum_all()
                .and_then(|t| t.to_scalar::<f32>())
                .map_err(PolicyError::from)? as u64;
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
pub fn train_with_loss<E: From<PolicyError>>(
    progress: &dyn Progress,
    resume_dir: &Path,
    trainable: &Trainable,
    trainer: &mut Trainer,
    total: usize,
    checkpoint_every: usize,
    what: &str,
    mut loss_for: impl FnMut(usize) -> std::result::Result<(candle_core::Tensor, u64), E>,
) -> std::result::Result<Vec<HistoryRow>, E> {
    let resume = ResumeState::new(resume_dir);
    let mut history = resume.restore(trainable, trainer)?.unwrap_or_default();
    let started = std::time::Instant::now();
    let first_step = trainer.step;
    while trainer.step < total {
        if progress.cancelled() {
            return Err(PolicyError::Cancelled.into());
        }
        // An adapter's dropout drops in the step's forward passes only, with the masks
        // of this step (the same on a resumed run).
        let dropout = trainable.adapter.as_ref().map(|a| a.ctx.dropout.clone());
        if let Some(d) = &dropout {
            d.train_step(trainer.step as u64);
        }
        let computed = loss_for(trainer.step);
        if let Some(d) = &dropout {
            d.eval();
        }
        let (loss, tokens) = computed?;
        let lr = trainer.lr();
        let grad_norm = trainer.step(&loss).map_err(PolicyError::from)?;
        let loss_value = f64::from(loss.to_scalar::<f32>().map_err(PolicyError::from)?);
        progress.headline("loss", loss_value);
        progress.report(trainer.step as u64, total as u64);
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
                items_per_s = (rate * 100.0).round() / 100.0,
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
