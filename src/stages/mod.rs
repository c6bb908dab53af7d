//! The stage kinds: what each kind takes, gives and does. A kind declares typed ports and
//! a parameter schema; the runner hands it resolved inputs and collects its outputs.
//!
//! Adding a kind: a file here with a type implementing [`StageKind`], one line in
//! [`registry`], and the schema regenerated with `hone schema` (see CONTRIBUTING.md).

mod aggregate;
mod annotate;
mod command;
mod dpo;
mod evaluate;
mod feedback_ingest;
mod generate;
mod lm;
mod metarm_adapt;
mod odpo_select;
mod ppo;
mod pretrain_load;
mod reward_fit;
mod sft;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;

use crate::artifact::ArtifactType;

pub use aggregate::{AGGREGATE, Aggregate};
pub use annotate::{Annotate, ORACLE};
pub use command::Command;
pub use dpo::{Dpo, REFERENCE_LOGPROBS};
pub use evaluate::{EVALUATION, Evaluate};
pub use feedback_ingest::FeedbackIngest;
pub use generate::Generate;
pub use lm::HISTORY;
pub use metarm_adapt::{METARM_HISTORY, MetarmAdapt};
pub use odpo_select::{OdpoSelect, PAIRS};
pub use ppo::{PPO_HISTORY, Ppo};
pub use pretrain_load::PretrainLoad;
pub use reward_fit::RewardFit;
pub use sft::Sft;

/// A named, typed input or output of a stage.
#[derive(Debug, Clone)]
pub struct Port {
    pub name: String,
    pub ty: ArtifactType,
    /// An input that takes a list of artifacts (accumulated feedback, say).
    pub many: bool,
    pub required: bool,
}

impl Port {
    pub fn new(name: &str, ty: ArtifactType) -> Self {
        Port {
            name: name.to_string(),
            ty,
            many: false,
            required: true,
        }
    }
}

/// The ports and workspace-file dependencies of a configured stage.
#[derive(Debug, Clone, Default)]
pub struct Signature {
    pub inputs: Vec<Port>,
    /// When set, the kind takes inputs of any name (of type `files`, lists allowed).
    pub open_inputs: bool,
    pub outputs: Vec<Port>,
    /// Workspace files or directories whose content the stage depends on (relative to
    /// the workspace root). They are hashed into the fingerprint.
    pub deps: Vec<String>,
}

pub use crate::spec::de::{FieldError as ParamError, from_value as parse_params, quoted};

/// Adds "`NAME` must be at least 1" (at the parameter `NAME`) for each count that is 0.
pub(crate) fn check_counts(errors: &mut Vec<ParamError>, counts: &[(&str, usize)]) {
    for &(name, value) in counts {
        if value == 0 {
            errors.push(ParamError::new(
                vec![crate::spec::node::PathSeg::Key(name.into())],
                format!("`{name}` must be at least 1"),
            ));
        }
    }
}

/// What the runner tells a stage: its resolved parameters, the store paths of its
/// inputs, and where to write each declared output.
pub struct StageContext<'a> {
    pub stage_id: &'a str,
    /// The stage's fingerprint, recorded as provenance in the files it writes.
    pub fingerprint: &'a str,
    pub params: &'a Value,
    pub seed: u64,
    pub threads: usize,
    /// The workspace root; the working directory of `command` stages.
    pub workspace: &'a Path,
    /// For each input port, the paths of the artifacts bound to it, relative to the workspace.
    pub inputs: &'a BTreeMap<String, Vec<PathBuf>>,
    /// For each output port, the path the stage must create (a file or a directory).
    pub outputs: &'a BTreeMap<String, PathBuf>,
    /// A directory that survives a crash of this stage (same fingerprint), for checkpoints
    /// a long stage resumes from; removed once the stage succeeds.
    pub resume_dir: &'a Path,
    /// Where the stage's own log goes (a command's stdout and stderr).
    pub log_path: &'a Path,
    pub cancel: &'a AtomicBool,
    /// Reports progress on long work: (units done, units in all).
    pub progress: &'a (dyn Fn(u64, u64) + Sync),
}

impl StageContext<'_> {
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Tells the live display how far the stage is (steps, prompts, rows).
    pub fn report(&self, done: u64, total: u64) {
        (self.progress)(done, total);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    Failed(String),
    #[error("interrupted")]
    Cancelled,
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// A stage kind. Implementations are stateless; everything a run needs comes in the context.
pub trait StageKind: Send + Sync {
    /// The kebab-case name used as `kind:` in specs.
    fn name(&self) -> &'static str;
    /// Bumped whenever a change to the implementation can change outputs: it is part of
    /// every fingerprint, so old cached results are not reused.
    fn version(&self) -> u32;
    /// One line for `hone schema` and editor hover text.
    fn summary(&self) -> &'static str;
    /// The JSON Schema of the `with` block.
    fn params_schema(&self, generator: &mut SchemaGenerator) -> Schema;
    /// Checks the `with` parameters and returns the stage's ports. `input_names` are the
    /// input ports the spec binds, for kinds whose parameters refer to them.
    fn signature(&self, params: &Value, input_names: &[&str])
    -> Result<Signature, Vec<ParamError>>;
    /// Does the work.
    fn run(&self, ctx: &StageContext<'_>) -> Result<(), StageError>;
}

/// Every stage kind hone knows, in the order `hone schema` lists them.
pub fn registry() -> &'static [&'static dyn StageKind] {
    &[
        &Command,
        &PretrainLoad,
        &Sft,
        &Generate,
        &FeedbackIngest,
        &Annotate,
        &RewardFit,
        &OdpoSelect,
        &MetarmAdapt,
        &Ppo,
        &Dpo,
        &Evaluate,
        &Aggregate,
    ]
}

pub fn find(name: &str) -> Option<&'static dyn StageKind> {
    registry().iter().copied().find(|k| k.name() == name)
}

/// The schema of a parameter type, generated from its Rust definition.
pub fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}
