//! The policy layer: what the stages do with language models, between `stages/` (glue:
//! typed parameters in, outputs written) and `model/` (the networks). It never sees a
//! `StageContext` or the spec; it takes models, tokenizers, paths and plain values, and
//! returns values or a [`PolicyError`], which the stages turn into their own error.
//!
//! - [`chat`]: a model's chat template, rendered as transformers renders it, and the
//!   tokenizer files that travel with a model.
//! - [`rollout`]: the one sampling path of generate, ppo and evaluate.
//! - [`logprobs`]: per-token log-probabilities (and values) of given sequences.
//! - [`data`]: prompts and demonstrations from JSONL, and epoch batching.
//! - [`feedback`]: the normalised feedback tables read back as typed training items.
//! - [`meta`]: a model directory's `hone.json`, typed.
//! - [`reward`]: the reward-model scorer, its assessment, pair batching, saving.
//! - [`train`]: which variables a stage trains.

pub mod chat;
pub mod data;
pub mod feedback;
pub mod logprobs;
pub mod meta;
pub mod reward;
pub mod rollout;
pub mod train;

pub use rollout::{Completion, RolloutParams, StopReason, rollout};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Model(#[from] candle_core::Error),
    #[error("{path}: {message}")]
    Input { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("interrupted")]
    Cancelled,
}

/// What long work reports to, and asks whether to stop (a stage's context implements it).
pub trait Progress {
    fn cancelled(&self) -> bool;
    /// Units done of units in all (steps, prompts, rows).
    fn report(&self, done: u64, total: u64);
    /// A headline figure of the work as it goes (`loss`).
    fn headline(&self, _name: &str, _value: f64) {}
}

/// The end-of-text id a stage appends and stops at: the model's EOS, else the tokenizer's
/// end-of-text token, else 0.
pub fn end_of_text(config: &crate::model::ModelConfig, tok: &tokenizers::Tokenizer) -> u32 {
    use crate::model::tokenizer;
    config
        .eos_token_id()
        .or_else(|| tokenizer::token_id(tok, tokenizer::END_OF_TEXT))
        .unwrap_or(0)
}

impl PolicyError {
    pub fn input(path: &std::path::Path, message: impl std::fmt::Display) -> Self {
        PolicyError::Input {
            path: format!("`{}`", path.display()),
            message: message.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, PolicyError>;
