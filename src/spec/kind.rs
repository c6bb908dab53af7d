//! What validation needs to know of a stage kind: its name, version and parameter schema,
//! and how it checks its parameters and declares its ports. The kinds live in `stages/`,
//! which implements [`KindDef`]; `spec/` receives them as a slice (the registry is passed
//! in) and never imports `stages/`, so that it is tested on strings with kinds of its own.

use std::any::Any;
use std::sync::Arc;

use schemars::{Schema, SchemaGenerator};
use serde_json::Value;

use super::de::FieldError;
use super::node::PathSeg;
use crate::artifact::ArtifactType;

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

/// A stage's parameters after validation: the kind's typed value, parsed once, and its
/// canonical JSON form with every default filled in (what the cache key and the lock
/// hold, so that writing a default and leaving it out are the same stage, and a changed
/// default changes the key of every stage that relies on it).
#[derive(Clone)]
pub struct Params {
    resolved: Value,
    typed: Arc<dyn Any + Send + Sync>,
}

impl Params {
    /// `resolved` is canonicalised: object members that are `null` are dropped (an
    /// optional parameter left unset and one set to null are the same, and adding an
    /// optional parameter to a kind leaves existing keys alone).
    pub fn new(resolved: Value, typed: Arc<dyn Any + Send + Sync>) -> Self {
        Params {
            resolved: canonical(resolved),
            typed,
        }
    }

    pub fn resolved(&self) -> &Value {
        &self.resolved
    }

    /// The typed parameters, when they are of type `T`.
    pub fn typed<T: 'static>(&self) -> Option<&T> {
        self.typed.downcast_ref::<T>()
    }
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.resolved.fmt(f)
    }
}

fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, canonical(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// What a kind makes of a stage's `with` block.
pub struct Configured {
    pub params: Params,
    pub signature: Signature,
}

/// A stage kind as validation sees it.
pub trait KindDef: Send + Sync {
    /// The kebab-case name used as `kind:` in specs.
    fn name(&self) -> &'static str;
    /// Bumped whenever a change to the implementation can change outputs: it is part of
    /// every fingerprint, so old cached results are not reused.
    fn version(&self) -> u32;
    /// One line for `hone schema` and editor hover text.
    fn summary(&self) -> &'static str;
    /// Whether what the stage runs can see its own id and thread count (a command sees
    /// them in `${stage}`, `${threads}` and its environment): then both are part of its
    /// cache key. Other kinds' outputs do not depend on them, so renaming such a stage
    /// keeps its results.
    fn observes_context(&self) -> bool {
        false
    }
    /// The JSON Schema of the `with` block.
    fn params_schema(&self, generator: &mut SchemaGenerator) -> Schema;
    /// Parses and checks the (interpolated) `with` parameters, and returns them typed and
    /// resolved with the stage's ports. `input_names` are the input ports the spec binds,
    /// for kinds whose parameters refer to them.
    fn configure(
        &self,
        params: &Value,
        input_names: &[&str],
    ) -> Result<Configured, Vec<FieldError>>;
}

/// The kinds a spec may use, in the order `hone schema` lists them.
pub type Kinds<'a> = &'a [&'a dyn KindDef];

pub fn find<'a>(kinds: Kinds<'a>, name: &str) -> Option<&'a dyn KindDef> {
    kinds.iter().copied().find(|k| k.name() == name)
}

/// Checks a resolved value against a schema (ranges, enums, lengths) and says what is
/// wrong in hone's words, at the path of the offending value.
pub fn schema_errors(validator: &jsonschema::Validator, value: &Value) -> Vec<FieldError> {
    validator
        .iter_errors(value)
        .map(|error| {
            let path: Vec<PathSeg> = error
                .instance_path()
                .iter()
                .map(|seg| match seg {
                    jsonschema::paths::LocationSegment::Property(key) => {
                        PathSeg::Key(key.to_string())
                    }
                    jsonschema::paths::LocationSegment::Index(i) => PathSeg::Index(i),
                })
                .collect();
            let name = match path.last() {
                Some(PathSeg::Key(k)) => format!("`{k}`"),
                _ => "the value".to_string(),
            };
            let message = describe(&name, &error);
            FieldError::new(path, message)
        })
        .collect()
}

fn describe(name: &str, error: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as K;
    match error.kind() {
        K::Minimum { limit } => format!("{name} must be at least {limit}"),
        K::Maximum { limit } => format!("{name} must be at most {limit}"),
        K::ExclusiveMinimum { limit } => format!("{name} must be greater than {limit}"),
        K::ExclusiveMaximum { limit } => format!("{name} must be less than {limit}"),
        K::MinItems { limit } => format!("{name} needs at least {limit} item(s)"),
        K::MaxItems { limit } => format!("{name} takes at most {limit} item(s)"),
        K::MinLength { limit } => format!("{name} must be at least {limit} character(s) long"),
        K::Enum { options } => format!("{name} must be one of {options}"),
        _ => format!("{name}: {error}"),
    }
}

/// A kind for testing `spec/` and `dag/` on strings, without `stages/`: `node` takes any
/// `files` inputs and gives one `out`; its one parameter `n` is at least 1 (default 1).
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub struct Node;

    impl KindDef for Node {
        fn name(&self) -> &'static str {
            "node"
        }
        fn version(&self) -> u32 {
            1
        }
        fn summary(&self) -> &'static str {
            "a test kind"
        }
        fn params_schema(&self, generator: &mut SchemaGenerator) -> Schema {
            generator.subschema_for::<serde_json::Map<String, Value>>()
        }
        fn configure(
            &self,
            params: &Value,
            _input_names: &[&str],
        ) -> Result<Configured, Vec<FieldError>> {
            let mut resolved = serde_json::Map::new();
            let n = params.get("n").map_or(Some(1), Value::as_u64);
            match n {
                Some(n) if n >= 1 => {
                    resolved.insert("n".into(), n.into());
                }
                _ => {
                    return Err(vec![FieldError::new(
                        vec![PathSeg::Key("n".into())],
                        "`n` must be an integer of at least 1",
                    )]);
                }
            }
            let mut out = Port::new("out", ArtifactType::Files);
            out.required = false;
            Ok(Configured {
                params: Params::new(Value::Object(resolved), Arc::new(())),
                signature: Signature {
                    inputs: Vec::new(),
                    open_inputs: true,
                    outputs: vec![out],
                    deps: Vec::new(),
                },
            })
        }
    }

    pub static KINDS: [&dyn KindDef; 1] = [&Node];
}
