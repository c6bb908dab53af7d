//! A stage's cache key: blake3 over the canonical JSON of everything that can change its
//! outputs, and nothing else (not the spec's formatting, comments, or the stage's place).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bumped when the fingerprint's own layout changes, invalidating every cached result.
/// 2: `params` are the kind's resolved parameters, every default filled in, not the
/// parameters as written.
pub const FORMAT: u32 = 2;

/// What goes into a fingerprint. Maps are `BTreeMap`s and `serde_json::Map` (sorted) so
/// the serialisation is canonical.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub format: u32,
    pub kind: String,
    pub kind_version: u32,
    /// The `with` parameters as the kind resolved them: interpolated, overrides applied,
    /// every default filled in, unset optional ones left out (`spec::kind::Params`).
    pub params: Value,
    pub seed: u64,
    /// Input port -> digests of the artifacts bound to it, in binding order.
    pub inputs: BTreeMap<String, Vec<String>>,
    /// Workspace path -> content digest of each file dependency.
    pub deps: BTreeMap<String, String>,
    /// The run-time values the stage can observe besides its parameters (`stage`, its
    /// id, and `threads`), for kinds that observe them; empty (and not serialised, so
    /// other kinds' keys are unchanged) otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, Value>,
}

pub fn fingerprint(material: &Fingerprint) -> String {
    let bytes = serde_json::to_vec(material).expect("fingerprint material serialises");
    blake3::hash(&bytes).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material(lr: Value) -> Fingerprint {
        Fingerprint {
            format: FORMAT,
            kind: "command".into(),
            kind_version: 1,
            params: serde_json::json!({"cmd": "x", "lr": lr}),
            seed: 7,
            inputs: BTreeMap::from([("a".into(), vec!["00".into()])]),
            deps: BTreeMap::new(),
            context: BTreeMap::new(),
        }
    }

    #[test]
    fn equal_values_give_equal_keys_whatever_their_spelling() {
        // 1.0e-3 and 0.001 in YAML are the same f64; key order in YAML does not matter.
        assert_eq!(
            fingerprint(&material(serde_json::json!(1.0e-3))),
            fingerprint(&material(serde_json::json!(0.001)))
        );
        let a: Value = serde_json::from_str(r#"{"x": 1, "y": 2}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"y": 2, "x": 1}"#).unwrap();
        assert_eq!(fingerprint(&material(a)), fingerprint(&material(b)));
    }

    #[test]
    fn every_part_changes_the_key() {
        let base = material(serde_json::json!(0.1));
        let key = fingerprint(&base);
        let mut m = base.clone();
        m.kind_version = 2;
        assert_ne!(fingerprint(&m), key);
        let mut m = base.clone();
        m.seed = 8;
        assert_ne!(fingerprint(&m), key);
        let mut m = base.clone();
        m.inputs.insert("a".into(), vec!["01".into()]);
        assert_ne!(fingerprint(&m), key);
        let mut m = base.clone();
        m.deps.insert("x.py".into(), "00".into());
        assert_ne!(fingerprint(&m), key);
        let mut m = base;
        m.context.insert("stage".into(), "x".into());
        assert_ne!(fingerprint(&m), key);
    }

    #[test]
    fn an_empty_context_leaves_the_key_of_format_2() {
        // Kinds that observe no context keep the keys (and locks) they had before the
        // context existed.
        let m = material(serde_json::json!(0.1));
        let text = serde_json::to_string(&m).unwrap();
        assert!(!text.contains("context"), "{text}");
    }
}
