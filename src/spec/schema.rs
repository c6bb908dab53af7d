//! The JSON Schema of specs (schemas/pipeline.schema.json), generated from the raw spec
//! types and every registered kind's parameter type, so editors complete and check specs.

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use super::raw::{RawGroup, RawSpec, RawStage};
use crate::stages;

/// The schema as pretty JSON with a trailing newline (the committed file's bytes).
pub fn pipeline_schema_json() -> String {
    let mut text = serde_json::to_string_pretty(&pipeline_schema()).expect("schema serialises");
    text.push('\n');
    text
}

pub fn pipeline_schema() -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let mut root = generator.root_schema_for::<RawSpec>().to_value();
    let stage = generator.subschema_for::<RawStage>();
    let group = generator.subschema_for::<RawGroup>();

    // Each kind narrows `with` to its own parameter type.
    let mut branches = Vec::new();
    let mut kind_names = Vec::new();
    for kind in stages::registry() {
        let params = kind.params_schema(&mut generator).to_value();
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
    all_defs.extend(defs);
    if let Some(Value::Object(stage_def)) = all_defs.get_mut("RawStage") {
        stage_def.insert("allOf".into(), Value::Array(branches));
        if let Some(Value::Object(props)) = stage_def.get_mut("properties")
            && let Some(Value::Object(kind)) = props.get_mut("kind")
        {
            kind.insert("enum".into(), Value::Array(kind_names));
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
