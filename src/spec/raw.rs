//! The spec as written: serde types that `deny_unknown_fields`, from which the JSON
//! Schema in schemas/ is generated. Resolution (spec/resolve.rs) turns them into stages.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_json::Value;

/// A hone pipeline: named stages whose inputs reference other stages' outputs.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    /// The pipeline's name, shown in plans and recorded in the lock file.
    pub name: String,
    /// What the pipeline is for.
    #[serde(default)]
    pub description: Option<String>,
    /// The master seed. Each stage derives its own seed from it and the stage id, unless
    /// the stage sets `seed` itself.
    #[serde(default)]
    pub seed: u64,
    /// Named values that stage parameters use as `${params.NAME}`; `-S params.NAME=VALUE`
    /// overrides one from the command line.
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    /// The stages by id. An entry with `kind` is a stage; one with `rounds` or `foreach`
    /// is a group of stages unrolled into one copy per round.
    pub stages: BTreeMap<String, Value>,
}

/// One stage.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    /// The stage kind, e.g. `command`.
    pub kind: String,
    /// Input port -> `stage.output` (or a list of them, for ports that take several).
    #[serde(default)]
    pub inputs: BTreeMap<String, InputValue>,
    /// The kind's parameters. Strings may use `${params.NAME}`.
    #[serde(default)]
    pub with: serde_json::Map<String, Value>,
    /// Stages that must finish first although no output of theirs is an input here.
    #[serde(default)]
    pub needs: Vec<String>,
    /// CPU threads the stage uses; the scheduler runs stages side by side only while
    /// their threads fit in `--jobs`.
    #[serde(default)]
    pub threads: Option<u32>,
    /// This stage's seed, instead of the one derived from the pipeline seed and the stage
    /// id: an integer is used as it is; a string names a random stream, and the seed is
    /// derived from the pipeline seed and that name (`seed: "sample-${item.seed}"`: copies
    /// with the same name draw the same numbers, so two arms of an experiment can share
    /// their samples).
    #[serde(default)]
    pub seed: Option<StageSeed>,
    /// What the stage is for.
    #[serde(default)]
    pub description: Option<String>,
}

/// A group of stages unrolled once per round: `rounds: N`, `foreach: [a, b]` or
/// `matrix: {x: [a, b], y: [1, 2]}` (every combination, in the order written).
/// Inside it, stage names refer to the same round's copies, `${round}` is the 1-based
/// round number, `${prev}` the previous one, `${item}` the `foreach` value and
/// `${item.x}` a `matrix` value.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    /// The number of rounds. With `foreach` or `matrix`, each value (or combination) runs
    /// its own rounds, `name@VALUE_rN`, the carried inputs starting afresh for each.
    #[serde(default)]
    pub rounds: Option<u32>,
    /// The values to iterate over (strings or integers; they become part of stage ids).
    #[serde(default)]
    pub foreach: Option<Vec<Value>>,
    /// Named lists of values; the group is unrolled once per combination, with stage ids
    /// `name@a_1`, `name@a_2`, ... (the values joined by `_`, in the order written).
    #[serde(default)]
    pub matrix: Option<BTreeMap<String, Vec<Value>>>,
    /// Loop-carried inputs: name -> references used in the first round as `${carry.NAME}`.
    #[serde(default)]
    pub carry: BTreeMap<String, InputValue>,
    /// What each carried name is in the next round; `${carry.NAME}` inside a list appends.
    #[serde(default)]
    pub next: BTreeMap<String, InputValue>,
    /// The stages of one round.
    pub stages: BTreeMap<String, Value>,
    /// What the group is for.
    #[serde(default)]
    pub description: Option<String>,
}

/// A stage's `seed`: a number, or the name of a random stream.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StageSeed {
    Number(u64),
    Name(String),
}

/// `stage.output` or a list of them.
#[derive(Debug, Clone)]
pub struct InputValue(pub Vec<String>);

impl<'de> Deserialize<'de> for InputValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InputValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a `stage.output` reference or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<InputValue, E> {
                Ok(InputValue(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<InputValue, A::Error> {
                let mut refs = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    refs.push(item);
                }
                Ok(InputValue(refs))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl JsonSchema for InputValue {
    fn schema_name() -> Cow<'static, str> {
        "InputRef".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`stage.output`, or a list of them for ports that take several",
            "anyOf": [
                // A placeholder may stand in either part, dots inside it included.
                {"type": "string", "pattern": "^(?:[^.$]|\\$\\{[^}]*\\}|\\$)+\\.(?:[^.$]|\\$\\{[^}]*\\}|\\$)+$"},
                {"type": "array", "items": {"type": "string"}}
            ]
        })
    }
}
