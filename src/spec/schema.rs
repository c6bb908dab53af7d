//! The JSON Schema of specs (schemas/pipeline.schema.json), generated from the raw spec
//! types and every registered kind's parameter type, so editors complete and check specs.

use std::collections::BTreeSet;

use schemars::generate::SchemaSettings;
use schemars::transform::{Transform, transform_subschemas};
use serde_json::{Value, json};

use super::kind::Kinds;
use super::raw::{RawGroup, RawSpec, RawStage};

/// The formats JSON Schema 2020-12 defines. schemars also writes `uint`, `int64`,
/// `double` and the like, which strict validators (ajv) refuse as unknown; the bounds they
/// stand for are already in `minimum`/`maximum`.
pub const STANDARD_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Drops every `format` that JSON Schema does not define.
#[derive(Debug, Clone)]
struct StandardFormatsOnly;

impl Transform for StandardFormatsOnly {
    fn transform(&mut self, schema: &mut schemars::Schema) {
        if let Some(obj) = schema.as_object_mut()
            && obj
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| !STANDARD_FORMATS.contains(&f))
        {
            obj.remove("format");
        }
        transform_subschemas(self, schema);
    }
}

/// How hone generates schemas: the spec's, and each kind's for validating parameters.
pub fn settings() -> SchemaSettings {
    SchemaSettings::draft2020_12().with_transform(StandardFormatsOnly)
}

/// The schema of a placeholder that interpolation replaces by a value of any type.
const PLACEHOLDER: &str = "Placeholder";

/// The schema as pretty JSON with a trailing newline (the committed file's bytes).
pub fn pipeline_schema_json(kinds: Kinds<'_>) -> String {
    let mut text =
        serde_json::to_string_pretty(&pipeline_schema(kinds)).expect("schema serialises");
    text.push('\n');
    text
}

pub fn pipeline_schema(kinds: Kinds<'_>) -> Value {
    let mut generator = settings().into_generator();
    let mut root = generator.root_schema_for::<RawSpec>().to_value();
    let stage = generator.subschema_for::<RawStage>();
    let group = generator.subschema_for::<RawGroup>();

    // Each kind narrows `with` to its own parameter type.
    let mut branches = Vec::new();
    let mut kind_names = Vec::new();
    for kind in kinds {
        let mut params = kind.params_schema(&mut generator).to_value();
        accept_placeholders(&mut params);
        kind_names.push(json!(kind.name()));
        branches.push(json!({
            "if": {"properties": {"kind": {"const": kind.name()}}, "required": ["kind"]},
            "then": {"properties": {"with": params}}
        }));
    }
    let defs = generator.take_definitions(true);
    let root_obj = root.as_object_mut().expect("root schema is an object");
    let mut all_defs = root_obj
        .remove("$defs")
        .and_then(|d| d.as_object().cloned())
        .unwrap_or_default();
    // Parameter types (and what they use) accept a placeholder wherever a number, a
    // boolean or an enum stands: `${params.lr}` is a number once interpolated.
    let mut params_defs = BTreeSet::new();
    for branch in &branches {
        collect_refs(&branch["then"], &defs, &mut params_defs);
    }
    for (name, mut def) in defs {
        if params_defs.contains(&name) {
            accept_placeholders(&mut def);
        }
        all_defs.insert(name, def);
    }
    all_defs.insert(
        PLACEHOLDER.into(),
        json!({
            "description": "a `${...}` placeholder, replaced by its value when the spec is resolved",
            "type": "string",
            "pattern": "^\\$\\{[^}]+\\}$"
        }),
    );
    if let Some(Value::Object(stage_def)) = all_defs.get_mut("RawStage") {
        stage_def.insert("allOf".into(), Value::Array(branches));
        if let Some(Value::Object(props)) = stage_def.get_mut("properties") {
            if let Some(Value::Object(kind)) = props.get_mut("kind") {
                kind.insert("enum".into(), Value::Array(kind_names));
            }
            if let Some(threads) = props.get_mut("threads") {
                accept_placeholders(threads);
            }
        }
    }
    let entry = json!({"anyOf": [stage.clone().to_value(), group.to_value()]});
    if let Some(Value::Object(group_def)) = all_defs.get_mut("RawGroup")
        && let Some(Value::Object(props)) = group_def.get_mut("properties")
        && let Some(Value::Object(inner)) = props.get_mut("stages")
    {
        inner.insert("additionalProperties".into(), stage.to_value());
    }
    if let Some(Value::Object(props)) = root_obj.get_mut("properties")
        && let Some(Value::Object(stages_prop)) = props.get_mut("stages")
    {
        stages_prop.insert("additionalProperties".into(), entry);
    }
    root_obj.insert(
        "$id".into(),
        json!("https://hone.invalid/schemas/pipeline.schema.json"),
    );
    root_obj.insert("title".into(), json!("hone pipeline"));
    root_obj.insert("$defs".into(), Value::Object(all_defs));
    root
}

/// The names of the `$defs` that `schema` refers to, directly or through other defs.
fn collect_refs(
    schema: &Value,
    defs: &serde_json::Map<String, Value>,
    found: &mut BTreeSet<String>,
) {
    match schema {
        Value::Object(map) => {
            if let Some(name) = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/$defs/"))
                && found.insert(name.to_string())
                && let Some(def) = defs.get(name)
            {
                collect_refs(def, defs, found);
            }
            map.values().for_each(|v| collect_refs(v, defs, found));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, defs, found)),
        _ => {}
    }
}

/// Lets every number, integer, boolean or enum in `schema` be a placeholder instead
/// (strings already can: interpolation works inside them).
fn accept_placeholders(schema: &mut Value) {
    let Value::Object(map) = schema else {
        return;
    };
    for key in ["properties", "$defs", "patternProperties"] {
        if let Some(Value::Object(children)) = map.get_mut(key) {
            children.values_mut().for_each(accept_placeholders);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(child) = map.get_mut(key) {
            accept_placeholders(child);
        }
    }
    // An enum of documented values (`oneOf` of consts) takes a placeholder as a whole:
    // one in every branch would match them all, which `oneOf` forbids.
    let scalar_choice = map
        .get("oneOf")
        .and_then(Value::as_array)
        .is_some_and(|branches| {
            branches
                .iter()
                .all(|b| b.as_object().is_some_and(takes_non_string_scalar))
        });
    if !scalar_choice {
        for key in ["anyOf", "oneOf", "allOf", "prefixItems"] {
            if let Some(Value::Array(children)) = map.get_mut(key) {
                children.iter_mut().for_each(accept_placeholders);
            }
        }
    }
    if scalar_choice || takes_non_string_scalar(map) {
        let original = std::mem::take(map);
        let mut wrapped = serde_json::Map::new();
        let mut branch = original;
        // Annotations stay on the outside, where editors show them.
        for key in ["description", "title", "default", "examples", "deprecated"] {
            if let Some(v) = branch.remove(key) {
                wrapped.insert(key.into(), v);
            }
        }
        wrapped.insert(
            "anyOf".into(),
            json!([Value::Object(branch), {"$ref": format!("#/$defs/{PLACEHOLDER}")}]),
        );
        *map = wrapped;
    }
}

/// A schema node that a string placeholder would not satisfy: a number, integer or
/// boolean type (without `string`), an enum or a const.
fn takes_non_string_scalar(map: &serde_json::Map<String, Value>) -> bool {
    if map.contains_key("enum") || map.contains_key("const") {
        return true;
    }
    let scalar = |t: &str| matches!(t, "number" | "integer" | "boolean");
    match map.get("type") {
        Some(Value::String(t)) => scalar(t),
        Some(Value::Array(types)) => {
            let types: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            types.iter().any(|t| scalar(t)) && !types.contains(&"string")
        }
        _ => false,
    }
}
