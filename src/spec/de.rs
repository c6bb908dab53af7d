//! Typed reading of spec parts with serde, reporting every unknown key (with a
//! suggestion) and the key path of each error, so that positions can be found.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::node::PathSeg;

/// A problem with one part of a spec; `path` is relative to the value that was read.
#[derive(Debug, Clone)]
pub struct FieldError {
    pub path: Vec<PathSeg>,
    pub message: String,
    pub help: Option<String>,
    /// Where inside a string value the problem is: (character offset, length).
    pub within: Option<(usize, usize)>,
}

impl FieldError {
    pub fn new(path: Vec<PathSeg>, message: impl Into<String>) -> Self {
        FieldError {
            path,
            message: message.into(),
            help: None,
            within: None,
        }
    }
}

/// Deserialises `with` parameters into `T` (which should `deny_unknown_fields`),
/// reporting every unknown key, not just the first, and the first type error.
pub fn from_value<T: DeserializeOwned>(params: &Value) -> Result<T, Vec<FieldError>> {
    match from_value_lenient(params) {
        (Some(parsed), errors) if errors.is_empty() => Ok(parsed),
        (_, errors) => Err(errors),
    }
}

/// As [`from_value`], but when the only problems are unknown keys, also returns the value
/// read without them, so that checking can go on past a typo.
pub fn from_value_lenient<T: DeserializeOwned>(params: &Value) -> (Option<T>, Vec<FieldError>) {
    let mut value = params.clone();
    let mut errors = Vec::new();
    loop {
        match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(parsed) => return (Some(parsed), errors),
            Err(err) => {
                let mut path = to_path(err.path());
                let message = err.inner().to_string();
                if let Some((field, expected)) = parse_unknown_field(&message) {
                    if path.last() == Some(&PathSeg::Key(field.clone())) {
                        path.pop();
                    }
                    let removed = remove_key(&mut value, &path, &field);
                    let mut key_path = path.clone();
                    key_path.push(PathSeg::Key(field.clone()));
                    let mut error = FieldError::new(key_path, format!("unknown key `{field}`"));
                    error.help =
                        super::diag::did_you_mean(&field, expected.iter().map(String::as_str))
                            .or_else(|| {
                                (!expected.is_empty())
                                    .then(|| format!("valid keys: {}", quoted(&expected)))
                            });
                    errors.push(error);
                    if removed && errors.len() < 50 {
                        continue;
                    }
                    return (None, errors);
                }
                errors.push(FieldError::new(path, describe_serde_error(&message)));
                return (None, errors);
            }
        }
    }
}

fn to_path(path: &serde_path_to_error::Path) -> Vec<PathSeg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|seg| match seg {
            Segment::Map { key } | Segment::Enum { variant: key } => {
                Some(PathSeg::Key(key.clone()))
            }
            Segment::Seq { index } => Some(PathSeg::Index(*index)),
            Segment::Unknown => None,
        })
        .collect()
}

/// serde's `unknown field `x`, expected one of `a`, `b`` as (`x`, [`a`, `b`]).
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((field.to_string(), expected))
}

fn remove_key(value: &mut Value, path: &[PathSeg], key: &str) -> bool {
    let mut node = value;
    for seg in path {
        node = match (seg, node) {
            (PathSeg::Key(k), Value::Object(map)) => match map.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (PathSeg::Index(i), Value::Array(items)) => match items.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match node {
        Value::Object(map) => map.remove(key).is_some(),
        _ => false,
    }
}

/// Rewrites serde's messages in hone's voice: `missing field` becomes `missing required key`.
fn describe_serde_error(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("missing field ") {
        return format!("missing required key {rest}");
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        return format!("wrong type: {rest}");
    }
    message.to_string()
}

pub fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Params {
        learning_rate: f64,
        #[serde(default)]
        n_epochs: u32,
    }

    fn messages(value: Value) -> Vec<String> {
        from_value::<Params>(&value)
            .unwrap_err()
            .into_iter()
            .map(|e| {
                format!(
                    "{}: {} ({})",
                    super::super::node::DisplayPath(&e.path),
                    e.message,
                    e.help.unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn every_unknown_key_is_reported_with_a_suggestion() {
        assert_eq!(
            messages(serde_json::json!({"learnin_rate": 1, "n_epoch": 2, "zzz": 3})),
            vec![
                "learnin_rate: unknown key `learnin_rate` (did you mean `learning_rate`?)",
                "n_epoch: unknown key `n_epoch` (did you mean `n_epochs`?)",
                "zzz: unknown key `zzz` (valid keys: `learning_rate`, `n_epochs`)",
                ": missing required key `learning_rate` ()",
            ]
        );
    }

    #[test]
    fn type_errors_name_the_key() {
        assert_eq!(
            messages(serde_json::json!({"learning_rate": 0.1, "n_epochs": "three"})),
            vec!["n_epochs: wrong type: string \"three\", expected u32 ()"]
        );
    }
}
