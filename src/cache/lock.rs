//! The lock file (`<spec>.lock` beside the spec): per stage, the fingerprint, what went
//! into it and the digests of the outputs. YAML, sorted, free of times and paths, so that
//! two runs of the same spec and seed write the same bytes and a diff reads like a review.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CacheError, Fingerprint, io_context};
use crate::artifact::{self, ArtifactType};
use crate::spec::load;

pub const LOCK_VERSION: u32 = 1;
const HEADER: &str = "# hone lock file: fingerprints and output digests of each stage.\n# Written by `hone run`; commit it beside the spec.\n";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub version: u32,
    pub pipeline: String,
    pub stages: BTreeMap<String, LockEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    pub kind: String,
    pub kind_version: u32,
    pub fingerprint: String,
    pub seed: u64,
    pub params: Value,
    #[serde(default)]
    pub inputs: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub deps: BTreeMap<String, String>,
    /// The run-time values in the key of a kind that observes them (`stage`, `threads`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, Value>,
    pub outputs: BTreeMap<String, LockOutput>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockOutput {
    pub digest: String,
    #[serde(rename = "type")]
    pub ty: ArtifactType,
    pub size: u64,
}

/// `pipelines/quickstart.yaml` -> `pipelines/quickstart.lock`.
pub fn lock_path(spec: &Path) -> PathBuf {
    spec.with_extension("lock")
}

impl LockFile {
    pub fn new(pipeline: &str) -> Self {
        LockFile {
            version: LOCK_VERSION,
            pipeline: pipeline.to_string(),
            stages: BTreeMap::new(),
        }
    }

    /// Reads a lock file; a missing one is `None`, a damaged one an error.
    pub fn read(path: &Path) -> Result<Option<LockFile>, CacheError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_context(format!("reading `{}`", path.display()))(e)),
        };
        Self::parse(&text)
            .map(Some)
            .map_err(|reason| CacheError::BadLock {
                path: path.display().to_string(),
                reason,
            })
    }

    pub fn parse(text: &str) -> Result<LockFile, String> {
        let node = load::parse(text).map_err(|e| format!("line {}: {}", e.span.line, e.message))?;
        let lock: LockFile = serde_json::from_value(node.to_json()).map_err(|e| e.to_string())?;
        if lock.version != LOCK_VERSION {
            return Err(format!(
                "lock version {} (this hone writes version {LOCK_VERSION})",
                lock.version
            ));
        }
        Ok(lock)
    }

    pub fn to_text(&self) -> String {
        format!(
            "{HEADER}{}",
            load::to_yaml(&serde_json::to_value(self).expect("lock serialises"))
        )
    }

    pub fn write(&self, path: &Path) -> Result<(), CacheError> {
        artifact::write_atomic(path, self.to_text().as_bytes())
            .map_err(io_context(format!("writing `{}`", path.display())))
    }
}

impl LockEntry {
    pub fn new(
        material: &Fingerprint,
        fingerprint: String,
        outputs: BTreeMap<String, LockOutput>,
    ) -> Self {
        LockEntry {
            kind: material.kind.clone(),
            kind_version: material.kind_version,
            fingerprint,
            seed: material.seed,
            params: material.params.clone(),
            inputs: material.inputs.clone(),
            deps: material.deps.clone(),
            context: material.context.clone(),
            outputs,
        }
    }
}

/// Why a stage's current fingerprint material differs from what the lock recorded, in
/// words: `param `lr` changed 0.001 -> 0.0001`, `file `train.py` changed`.
pub fn explain(
    old: &LockEntry,
    new: &Fingerprint,
    upstream_of: &dyn Fn(&str) -> String,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if old.kind != new.kind {
        reasons.push(format!("kind changed `{}` -> `{}`", old.kind, new.kind));
    } else if old.kind_version != new.kind_version {
        reasons.push(format!(
            "`{}` implementation version changed {} -> {}",
            new.kind, old.kind_version, new.kind_version
        ));
    }
    diff_values("", &old.params, &new.params, &mut reasons);
    if old.seed != new.seed {
        reasons.push(format!("seed changed {} -> {}", old.seed, new.seed));
    }
    for (port, digests) in &new.inputs {
        match old.inputs.get(port) {
            None => reasons.push(format!("input `{port}` added")),
            Some(before) if before != digests => reasons.push(format!(
                "input `{port}` changed (output of {})",
                upstream_of(port)
            )),
            _ => {}
        }
    }
    for port in old.inputs.keys().filter(|p| !new.inputs.contains_key(*p)) {
        reasons.push(format!("input `{port}` removed"));
    }
    for (path, digest) in &new.deps {
        match old.deps.get(path) {
            None => reasons.push(format!("file `{path}` added to `deps`")),
            Some(before) if before != digest => reasons.push(format!("file `{path}` changed")),
            _ => {}
        }
    }
    for path in old.deps.keys().filter(|p| !new.deps.contains_key(*p)) {
        reasons.push(format!("file `{path}` removed from `deps`"));
    }
    for (name, value) in &new.context {
        match old.context.get(name) {
            Some(before) if before == value => {}
            Some(before) => reasons.push(format!(
                "`{name}` changed {} -> {}",
                short(before),
                short(value)
            )),
            None => reasons.push(format!(
                "`{name}` ({}) is now part of the key",
                short(value)
            )),
        }
    }
    reasons
}

fn diff_values(at: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                let key = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match a.get(k) {
                    Some(before) => diff_values(&key, before, v, out),
                    None => out.push(format!("param `{key}` added: {}", short(v))),
                }
            }
            for (k, v) in a {
                if !b.contains_key(k) {
                    let key = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    out.push(format!("param `{key}` removed (was {})", short(v)));
                }
            }
        }
        (a, b) if a != b => out.push(format!("param `{at}` changed {} -> {}", short(a), short(b))),
        _ => {}
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(57).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::fingerprint::FORMAT;

    fn entry() -> LockEntry {
        LockEntry {
            kind: "command".into(),
            kind_version: 1,
            fingerprint: "ab".repeat(32),
            seed: 3,
            params: serde_json::json!({"cmd": "echo hi", "lr": 0.001}),
            inputs: BTreeMap::from([("data".into(), vec!["cd".repeat(32)])]),
            deps: BTreeMap::from([("train.py".into(), "ef".repeat(32))]),
            context: BTreeMap::from([("stage".into(), serde_json::json!("a"))]),
            outputs: BTreeMap::from([(
                "out".into(),
                LockOutput {
                    digest: "01".repeat(32),
                    ty: ArtifactType::Files,
                    size: 12,
                },
            )]),
        }
    }

    #[test]
    fn lock_text_round_trips() {
        let mut lock = LockFile::new("demo");
        lock.stages.insert("a".into(), entry());
        let text = lock.to_text();
        assert_eq!(LockFile::parse(&text).unwrap(), lock, "{text}");
    }

    #[test]
    fn explain_names_what_changed_from_what_to_what() {
        let old = entry();
        let new = Fingerprint {
            format: FORMAT,
            kind: "command".into(),
            kind_version: 2,
            params: serde_json::json!({"cmd": "echo hi", "lr": 0.0001}),
            seed: 3,
            inputs: BTreeMap::from([("data".into(), vec!["00".repeat(32)])]),
            deps: BTreeMap::from([("train.py".into(), "ef".repeat(32))]),
            context: BTreeMap::from([
                ("stage".into(), serde_json::json!("b")),
                ("threads".into(), serde_json::json!(2)),
            ]),
        };
        assert_eq!(
            explain(&old, &new, &|_| "`prep`".into()),
            vec![
                "`command` implementation version changed 1 -> 2",
                "param `lr` changed 0.001 -> 0.0001",
                "input `data` changed (output of `prep`)",
                "`stage` changed \"a\" -> \"b\"",
                "`threads` (2) is now part of the key",
            ]
        );
    }
}
