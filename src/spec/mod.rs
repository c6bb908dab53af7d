//! The YAML spec: loading with positions, validation, `${...}` templating, `-S`
//! overrides and `rounds`/`foreach` expansion. No I/O beyond reading the spec file.

pub mod de;
pub mod diag;
pub mod interp;
pub mod kind;
pub mod load;
pub mod node;
pub mod raw;
mod resolve;
pub mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

pub use diag::{Diagnostic, SourceFile, SpecError};
use kind::{KindDef, Kinds, Params, Signature};
use node::{Node, PathSeg};
pub use resolve::resolve;

/// A validated pipeline: every stage expanded, interpolated and checked against its kind.
pub struct Spec {
    pub file: Arc<SourceFile>,
    pub root: Node,
    pub name: String,
    pub seed: u64,
    pub stages: Vec<StageDecl>,
    /// Stages that had errors of their own; references to them are not reported again.
    pub invalid: BTreeSet<String>,
}

/// One stage after expansion (a group's stages appear once per round, as `name@round`).
pub struct StageDecl {
    pub id: String,
    pub kind: &'static dyn KindDef,
    /// The `with` parameters, interpolated, overrides applied, parsed by the kind, every
    /// default filled in.
    pub params: Params,
    pub inputs: BTreeMap<String, Vec<InputRef>>,
    pub needs: Vec<(String, Vec<PathSeg>)>,
    pub threads: usize,
    pub seed: u64,
    pub signature: Signature,
    pub description: Option<String>,
    /// Where the stage is written in the spec, for error positions.
    pub node_path: Vec<PathSeg>,
}

/// `stage.output` as an input of another stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRef {
    pub stage: String,
    pub output: String,
    /// Where the reference is written, for error positions.
    pub node_path: Vec<PathSeg>,
}

impl Spec {
    pub fn stage(&self, id: &str) -> Option<&StageDecl> {
        self.stages.iter().find(|s| s.id == id)
    }
}

/// Reads and validates a spec file. `display_name` is how errors name the file.
pub fn load_file(
    path: &Path,
    overrides: &[String],
    kinds: Kinds<'static>,
) -> Result<Spec, SpecError> {
    load_str(
        &path.display().to_string(),
        read_file(path)?,
        overrides,
        kinds,
    )
}

/// The text of a spec file, or an error saying why it cannot be read.
pub fn read_file(path: &Path) -> Result<String, SpecError> {
    std::fs::read_to_string(path).map_err(|err| SpecError {
        file: Arc::new(SourceFile {
            name: path.display().to_string(),
            text: String::new(),
        }),
        diagnostics: vec![Diagnostic::new(
            "",
            node::Span::command_line(),
            format!("cannot read the spec `{}`: {err}", path.display()),
        )],
    })
}

/// Validates a spec given as text (what the tests use).
pub fn load_str(
    name: &str,
    text: String,
    overrides: &[String],
    kinds: Kinds<'static>,
) -> Result<Spec, SpecError> {
    let file = Arc::new(SourceFile {
        name: name.to_string(),
        text,
    });
    let mut diagnostics = Vec::new();
    let spec = resolve(file.clone(), overrides, kinds, &mut diagnostics);
    match spec {
        Some(spec) if diagnostics.is_empty() => Ok(spec),
        _ => Err(SpecError { file, diagnostics }),
    }
}

/// Stage ids, port names and output names: letters, digits, `_` and `-`, not starting
/// with a digit or `-`.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The seed of a stage that sets none: derived from the pipeline seed and the stage id,
/// so that stages draw independent streams. Kept below 2^31 so that every library
/// (numpy, torch) accepts it.
pub fn derive_seed(pipeline_seed: u64, stage_id: &str) -> u64 {
    let hash = blake3::hash(format!("{pipeline_seed}/{stage_id}").as_bytes());
    let bytes: [u8; 8] = hash.as_bytes()[..8].try_into().expect("8 bytes");
    u64::from_le_bytes(bytes) & 0x7fff_ffff
}
