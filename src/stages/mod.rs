//! The stage kinds: what each kind takes, gives and does. A kind declares its typed
//! parameters and ports; the runner hands it the parameters parsed at validation and its
//! resolved inputs, and collects its outputs.
//!
//! Adding a kind: a file here with a type implementing [`Kind`], one line in
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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use crate::spec::de::{FieldError as ParamError, from_value as parse_params, quoted};
pub use crate::spec::kind::{Configured, KindDef, Params, Port, Signature};

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

/// What the runner tells a stage besides its parameters: its id, seed and threads, the
/// store paths of its inputs, and where to write each declared output.
pub struct StageContext<'a> {
    pub stage_id: &'a str,
    /// The stage's fingerprint, recorded as provenance in the files it writes.
    pub fingerprint: &'a str,
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
    /// Where progress on long work goes (the live display, or periodic log lines).
    pub progress: &'a dyn StageProgress,
}

/// How far a running stage is: units done of units in all (steps, prompts, rows), and its
/// headline figures as they change (a training loss, PPO's score and KL).
pub trait StageProgress: Sync {
    fn steps(&self, done: u64, total: u64);
    fn headline(&self, _name: &str, _value: f64) {}
}

/// No one is watching (`hone exec-stage`, tests).
impl StageProgress for () {
    fn steps(&self, _done: u64, _total: u64) {}
}

impl StageContext<'_> {
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Who wrote a table: recorded in the Parquet files the stage writes.
    pub fn provenance(&self) -> crate::artifact::table::Provenance {
        crate::artifact::table::Provenance {
            stage: self.stage_id.to_string(),
            fingerprint: self.fingerprint.to_string(),
        }
    }

    /// Tells the live display how far the stage is (steps, prompts, rows).
    pub fn report(&self, done: u64, total: u64) {
        self.progress.steps(done, total);
    }

    /// Tells the live display a headline figure (`loss`, `score`, `kl`), shown beside the
    /// progress and in the periodic lines of a log.
    pub fn headline(&self, name: &str, value: f64) {
        self.progress.headline(name, value);
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

impl From<crate::policy::PolicyError> for StageError {
    fn from(e: crate::policy::PolicyError) -> Self {
        match e {
            crate::policy::PolicyError::Cancelled => StageError::Cancelled,
            e => StageError::Failed(e.to_string()),
        }
    }
}

impl crate::policy::Progress for StageContext<'_> {
    fn cancelled(&self) -> bool {
        StageContext::cancelled(self)
    }

    fn report(&self, done: u64, total: u64) {
        StageContext::report(self, done, total);
    }

    fn headline(&self, name: &str, value: f64) {
        StageContext::headline(self, name, value);
    }
}

/// A stage kind, as each file in `stages/` implements it: typed parameters (serde +
/// schemars, defaults and ranges declared on the struct), parsed once at validation; the
/// cross-parameter checks the schema cannot say and the ports; the work. Implementations
/// are stateless; everything a run needs comes in its parameters and the context.
pub trait Kind: Send + Sync + 'static {
    /// `deny_unknown_fields`; doc comments become editor hover text; ranges as
    /// `#[schemars(range(min = 1))]` or `#[schemars(extend("exclusiveMinimum" = 0))]`
    /// appear in the schema and are enforced by validation.
    type Params: DeserializeOwned + Serialize + JsonSchema + Send + Sync + 'static;
    /// The kebab-case name used as `kind:` in specs.
    const NAME: &'static str;
    /// Bumped whenever a change to the implementation can change outputs (a default
    /// included): it is part of every fingerprint, so old cached results are not reused.
    const VERSION: u32;
    /// One line for `hone schema` and editor hover text.
    const SUMMARY: &'static str;
    /// Whether the work can see the stage's id and thread count (then both go into its
    /// cache key; see `KindDef::observes_context`).
    const OBSERVES_CONTEXT: bool = false;
    /// Checks what the schema cannot say (relations between parameters) and returns the
    /// stage's ports. Called only with parameters that satisfy the schema. `input_names`
    /// are the input ports the spec binds, for kinds whose parameters refer to them.
    fn signature(
        &self,
        params: &Self::Params,
        input_names: &[&str],
    ) -> Result<Signature, Vec<ParamError>>;
    /// Does the work.
    fn run(&self, params: &Self::Params, ctx: &StageContext<'_>) -> Result<(), StageError>;
}

/// A stage kind as the runner sees it: validation's view of it, and the work.
pub trait StageKind: KindDef {
    fn execute(&self, params: &Params, ctx: &StageContext<'_>) -> Result<(), StageError>;
}

impl<K: Kind> KindDef for K {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn version(&self) -> u32 {
        K::VERSION
    }

    fn summary(&self) -> &'static str {
        K::SUMMARY
    }

    fn observes_context(&self) -> bool {
        K::OBSERVES_CONTEXT
    }

    fn params_schema(&self, generator: &mut SchemaGenerator) -> Schema {
        generator.subschema_for::<K::Params>()
    }

    fn configure(
        &self,
        params: &Value,
        input_names: &[&str],
    ) -> Result<Configured, Vec<ParamError>> {
        let typed: K::Params = parse_params(params)?;
        let resolved = serde_json::to_value(&typed).map_err(|e| {
            vec![ParamError::new(
                Vec::new(),
                format!("parameters cannot be written back as JSON: {e}"),
            )]
        })?;
        let errors = crate::spec::kind::schema_errors(&validator::<K>(), &resolved);
        if !errors.is_empty() {
            return Err(errors);
        }
        let signature = self.signature(&typed, input_names)?;
        Ok(Configured {
            params: Params::new(resolved, Arc::new(typed)),
            signature,
        })
    }
}

impl<K: Kind> StageKind for K {
    fn execute(&self, params: &Params, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let typed = params.typed::<K::Params>().ok_or_else(|| {
            StageError::Failed(format!(
                "internal error: `{}` was handed another kind's parameters",
                K::NAME
            ))
        })?;
        self.run(typed, ctx)
    }
}

/// The compiled schema of a kind's parameters (compiled once per kind and process).
fn validator<K: Kind>() -> Arc<jsonschema::Validator> {
    static CACHE: LazyLock<Mutex<HashMap<&'static str, Arc<jsonschema::Validator>>>> =
        LazyLock::new(Default::default);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(K::NAME)
        .or_insert_with(|| {
            let schema = crate::spec::schema::settings()
                .into_generator()
                .into_root_schema_for::<K::Params>()
                .to_value();
            Arc::new(
                jsonschema::validator_for(&schema)
                    .unwrap_or_else(|e| panic!("the schema of `{}` compiles: {e}", K::NAME)),
            )
        })
        .clone()
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

/// The registry as validation takes it (`spec::load_str(.., stages::kinds())`).
pub fn kinds() -> &'static [&'static dyn KindDef] {
    static KINDS: LazyLock<Vec<&'static dyn KindDef>> = LazyLock::new(|| {
        registry()
            .iter()
            .map(|k| *k as &'static dyn KindDef)
            .collect()
    });
    &KINDS
}

/// Every table kind hone writes, for `hone schema`.
pub fn table_kinds() -> Vec<&'static crate::artifact::table::TableKind> {
    let mut kinds = crate::artifact::feedback::table_kinds().to_vec();
    kinds.extend([
        &ORACLE,
        &HISTORY,
        &PAIRS,
        &AGGREGATE,
        &PPO_HISTORY,
        &EVALUATION,
        &REFERENCE_LOGPROBS,
        &METARM_HISTORY,
    ]);
    kinds
}

pub fn find(name: &str) -> Option<&'static dyn StageKind> {
    registry().iter().copied().find(|k| k.name() == name)
}

#[cfg(test)]
mod tests {
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    use super::*;

    /// A kind whose one parameter defaults to `D`: two such kinds are the same code with
    /// a changed default.
    struct Scaled<const D: u32>;

    #[derive(Debug, Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct ScaledParams<const D: u32> {
        #[serde(default = "default_factor::<D>")]
        #[schemars(range(min = 1))]
        factor: u32,
        #[serde(default)]
        note: Option<String>,
    }

    fn default_factor<const D: u32>() -> u32 {
        D
    }

    impl<const D: u32> Kind for Scaled<D> {
        type Params = ScaledParams<D>;
        const NAME: &'static str = "scaled";
        const VERSION: u32 = 1;
        const SUMMARY: &'static str = "a test kind";

        fn signature(&self, _: &Self::Params, _: &[&str]) -> Result<Signature, Vec<ParamError>> {
            Ok(Signature::default())
        }

        fn run(&self, _: &Self::Params, _: &StageContext<'_>) -> Result<(), StageError> {
            Ok(())
        }
    }

    static SCALED_2: [&dyn KindDef; 1] = [&Scaled::<2>];
    static SCALED_3: [&dyn KindDef; 1] = [&Scaled::<3>];

    fn resolved(kinds: &'static [&'static dyn KindDef], with: &str) -> Value {
        let text = format!("name: t\nstages:\n  s:\n    kind: scaled\n    with: {with}\n");
        let spec = crate::spec::load_str("t.yaml", text, &[], kinds)
            .unwrap_or_else(|e| panic!("{}", e.to_string()));
        spec.stages[0].params.resolved().clone()
    }

    #[test]
    fn a_default_written_out_and_left_out_are_the_same_parameters() {
        assert_eq!(
            resolved(&SCALED_2, "{}"),
            resolved(&SCALED_2, "{factor: 2}")
        );
        assert_eq!(resolved(&SCALED_2, "{}"), serde_json::json!({"factor": 2}));
        // An unset optional parameter and an explicit null are the same too.
        assert_eq!(
            resolved(&SCALED_2, "{}"),
            resolved(&SCALED_2, "{note: null}")
        );
    }

    #[test]
    fn a_changed_default_changes_the_parameters_of_stages_relying_on_it() {
        assert_ne!(resolved(&SCALED_2, "{}"), resolved(&SCALED_3, "{}"));
        // A stage that sets the value itself is not affected.
        assert_eq!(
            resolved(&SCALED_2, "{factor: 5}"),
            resolved(&SCALED_3, "{factor: 5}")
        );
    }

    #[test]
    fn ranges_in_the_schema_are_enforced() {
        let text = "name: t\nstages:\n  s:\n    kind: scaled\n    with: {factor: 0}\n".to_string();
        let err = match crate::spec::load_str("t.yaml", text, &[], &SCALED_2) {
            Ok(_) => panic!("factor: 0 must be refused"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("`factor` must be at least 1"), "{err}");
        assert!(
            err.contains("t.yaml:5:"),
            "the error points at the value: {err}"
        );
    }

    #[test]
    fn every_kind_accepts_its_own_defaults_and_its_schema_compiles() {
        // Kinds whose parameters have no required key: their defaults satisfy their schema.
        for kind in registry() {
            if let Ok(configured) = kind.configure(&serde_json::json!({}), &[]) {
                assert!(configured.params.resolved().is_object(), "{}", kind.name());
            }
        }
    }
}
