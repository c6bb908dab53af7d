//! The only module that knows which YAML library hone uses: it parses text into a
//! position-carrying [`Node`] tree and writes a [`serde_json::Value`] back out as YAML.
//!
//! saphyr-parser's event stream is used directly (rather than a serde front end) because
//! validation needs the line and column of every key and value, and duplicate keys must be
//! errors, not silently overwritten.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};

use super::node::{Node, NodeValue, Span};

/// A YAML syntax error with the place it was found.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub message: String,
    pub span: Span,
}

/// How deep collections may nest. The shipped specs need 8 levels; every walk over the
/// tree (conversion, interpolation, drop) is bounded by this, so no input can overflow the
/// stack.
pub const MAX_DEPTH: usize = 128;

/// How many nodes aliases may add to a document in all: enough for any spec that shares
/// blocks with anchors, far too few for a "billion laughs" (nine anchors of nine aliases
/// each, 387 million nodes).
pub const MAX_ALIAS_NODES: usize = 100_000;

/// Parses one YAML document. An empty document is `Null`.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder {
        anchors: HashMap::new(),
        stack: Vec::new(),
        root: None,
        alias_nodes: 0,
    };
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|err| SyntaxError {
            message: err.info().to_string(),
            span: Span::at(
                err.marker().index(),
                err.marker().line(),
                err.marker().col(),
            ),
        })?;
        let span = Span::new(
            span.start.index(),
            span.start.line(),
            span.start.col(),
            span.end.index(),
        );
        builder.event(event, span)?;
    }
    Ok(builder.root.unwrap_or(Node {
        value: NodeValue::Null,
        span: Span::at(0, 1, 0),
    }))
}

/// A collection being built, with the number of nodes in it so far.
struct Open {
    node: Node,
    anchor: usize,
    size: usize,
    /// For a mapping: the hash of each key so far -> its entry (only once the mapping
    /// has more than a few keys), so that checking for duplicates stays linear in the
    /// number of keys without a second copy of every key; and the key waiting for its value.
    keys: HashMap<u64, usize>,
    pending_key: Option<Node>,
}

struct Builder {
    /// Anchored nodes with their sizes in nodes.
    anchors: HashMap<usize, (Node, usize)>,
    stack: Vec<Open>,
    root: Option<Node>,
    /// Nodes added by aliases so far.
    alias_nodes: usize,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), SyntaxError> {
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => Ok(()),
            Event::DocumentStart(_) => {
                if self.root.is_some() {
                    return Err(SyntaxError {
                        message: "a spec holds one YAML document; found a second `---`".into(),
                        span,
                    });
                }
                Ok(())
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((node, size)) => {
                    self.alias_nodes += size;
                    if self.alias_nodes > MAX_ALIAS_NODES {
                        return Err(SyntaxError {
                            message: format!(
                                "aliases expand this document past {MAX_ALIAS_NODES} nodes (an alias bomb?); \
                                 write the repeated block out, or share less of it"
                            ),
                            span,
                        });
                    }
                    let mut node = node.clone();
                    let size = *size;
                    node.span = span;
                    self.push(node, size)
                }
                None => Err(SyntaxError {
                    message: "alias to an unknown anchor".into(),
                    span,
                }),
            },
            Event::Scalar(text, style, anchor, _tag) => {
                let value = if matches!(style, ScalarStyle::Plain) {
                    resolve_plain(&text)
                } else {
                    NodeValue::Str(text.into_owned())
                };
                let node = Node { value, span };
                if anchor > 0 {
                    self.anchors.insert(anchor, (node.clone(), 1));
                }
                self.push(node, 1)
            }
            Event::SequenceStart(anchor, _) => self.open(NodeValue::Seq(Vec::new()), anchor, span),
            Event::MappingStart(anchor, _) => self.open(NodeValue::Map(Vec::new()), anchor, span),
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(open) = self.stack.pop() else {
                    return Err(SyntaxError {
                        message: "unbalanced collection".into(),
                        span,
                    });
                };
                let mut node = open.node;
                node.span.end = span.end.max(node.span.end);
                if open.anchor > 0 {
                    self.anchors.insert(open.anchor, (node.clone(), open.size));
                }
                self.push(node, open.size)
            }
        }
    }

    fn open(&mut self, value: NodeValue, anchor: usize, span: Span) -> Result<(), SyntaxError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(SyntaxError {
                message: format!("collections nest deeper than {MAX_DEPTH} levels here"),
                span,
            });
        }
        self.stack.push(Open {
            node: Node { value, span },
            anchor,
            size: 1,
            keys: HashMap::new(),
            pending_key: None,
        });
        Ok(())
    }

    fn push(&mut self, node: Node, size: usize) -> Result<(), SyntaxError> {
        let Some(open) = self.stack.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        open.size += size;
        match &mut open.node.value {
            NodeValue::Seq(items) => {
                items.push(node);
                Ok(())
            }
            NodeValue::Map(entries) => match open.pending_key.take() {
                None => {
                    if !matches!(
                        node.value,
                        NodeValue::Str(_) | NodeValue::Int(_) | NodeValue::Bool(_)
                    ) {
                        return Err(SyntaxError {
                            message: "mapping keys must be plain strings".into(),
                            span: node.span,
                        });
                    }
                    open.pending_key = Some(node);
                    Ok(())
                }
                Some(key) => {
                    let key_text = key.scalar_text();
                    if let Some(first) = find_key(entries, &open.keys, &key_text) {
                        return Err(SyntaxError {
                            message: format!(
                                "duplicate key `{key_text}` (first defined on line {})",
                                entries[first].0.span.line
                            ),
                            span: key.span,
                        });
                    }
                    if entries.len() == SCAN_KEYS {
                        for (i, (k, _)) in entries.iter().enumerate() {
                            open.keys
                                .insert(key_hash(k.as_str().unwrap_or_default()), i);
                        }
                    }
                    if entries.len() >= SCAN_KEYS {
                        // A collision keeps the first index; `find_key` then scans.
                        open.keys
                            .entry(key_hash(&key_text))
                            .or_insert(entries.len());
                    }
                    let key = Node {
                        value: NodeValue::Str(key_text),
                        span: key.span,
                    };
                    entries.push((key, node));
                    Ok(())
                }
            },
            _ => unreachable!("only collections are open"),
        }
    }
}

/// Mappings with up to this many keys are checked for duplicates by a scan.
const SCAN_KEYS: usize = 8;

fn key_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// The index of the entry whose key is `key`: a scan of a small mapping, a hash lookup in
/// a large one (and a scan after all when two keys share a hash, which is rare).
fn find_key(entries: &[(Node, Node)], index: &HashMap<u64, usize>, key: &str) -> Option<usize> {
    let is = |i: &usize| entries[*i].0.as_str() == Some(key);
    if entries.len() < SCAN_KEYS || index.is_empty() {
        return (0..entries.len()).find(is);
    }
    let i = *index.get(&key_hash(key))?;
    if is(&i) {
        return Some(i);
    }
    (0..entries.len()).find(is)
}

/// YAML 1.2 core schema resolution of an unquoted scalar.
fn resolve_plain(text: &str) -> NodeValue {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return NodeValue::Null,
        "true" | "True" | "TRUE" => return NodeValue::Bool(true),
        "false" | "False" | "FALSE" => return NodeValue::Bool(false),
        ".inf" | "+.inf" | ".Inf" | "+.Inf" | ".INF" => return NodeValue::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return NodeValue::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return NodeValue::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if let Some(hex) = digits.strip_prefix("0x")
        && let Ok(v) = i64::from_str_radix(hex, 16)
    {
        return NodeValue::Int(if text.starts_with('-') { -v } else { v });
    }
    if let Some(oct) = digits.strip_prefix("0o")
        && let Ok(v) = i64::from_str_radix(oct, 8)
    {
        return NodeValue::Int(if text.starts_with('-') { -v } else { v });
    }
    let looks_numeric = digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'));
    if looks_numeric {
        if let Ok(v) = text.parse::<i64>() {
            return NodeValue::Int(v);
        }
        if let Ok(v) = text.parse::<f64>() {
            return NodeValue::Float(v);
        }
    }
    NodeValue::Str(text.to_string())
}

/// Parses one scalar the way a plain YAML value would be read (`-S key=1e-4` gives a number).
pub fn parse_scalar(text: &str) -> NodeValue {
    match parse(text) {
        Ok(node) if !matches!(node.value, NodeValue::Map(_)) => node.value,
        _ => NodeValue::Str(text.to_string()),
    }
}

/// Writes a JSON value as block-style YAML: maps and lists indented by two spaces,
/// strings double-quoted only where a plain scalar would be read back differently.
pub fn to_yaml(value: &serde_json::Value) -> String {
    let mut out = String::new();
    emit(value, 0, &mut out, true);
    out
}

fn emit(value: &serde_json::Value, indent: usize, out: &mut String, top: bool) {
    use serde_json::Value;
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            if !top {
                out.push('\n');
            }
            for (key, item) in map {
                out.push_str(&pad);
                out.push_str(&scalar_string(key));
                out.push(':');
                emit_child(item, indent, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            if !top {
                out.push('\n');
            }
            for item in items {
                out.push_str(&pad);
                out.push('-');
                emit_child(item, indent, out);
            }
        }
        other => {
            if !top {
                out.push(' ');
            }
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

fn emit_child(item: &serde_json::Value, indent: usize, out: &mut String) {
    match item {
        serde_json::Value::Object(m) if !m.is_empty() => emit(item, indent + 2, out, false),
        serde_json::Value::Array(a) if !a.is_empty() => emit(item, indent + 2, out, false),
        _ => emit(item, indent, out, false),
    }
}

fn inline(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => scalar_string(s),
        // Empty collections and numbers: JSON flow syntax is valid YAML.
        other => other.to_string(),
    }
}

fn scalar_string(text: &str) -> String {
    let plain_safe = !text.is_empty()
        && matches!(resolve_plain(text), NodeValue::Str(_))
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '@'))
        && !text.starts_with(['-', '.', '@']);
    if plain_safe {
        text.to_string()
    } else {
        serde_json::Value::String(text.to_string()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: serde_json::Value) {
        assert_eq!(parse(text).unwrap().to_json(), expected);
    }

    #[test]
    fn scalars_resolve_by_the_core_schema() {
        check(
            "a: 1\nb: 1.0e-4\nc: 1e-4\nd: true\ne: ~\nf: '7'\ng: hello world\nh: 0x10\ni: -3",
            serde_json::json!({"a": 1, "b": 1.0e-4, "c": 1.0e-4, "d": true, "e": null, "f": "7",
                               "g": "hello world", "h": 16, "i": -3}),
        );
    }

    #[test]
    fn positions_are_one_based_lines() {
        let node = parse("name: x\nstages:\n  a: {kind: command}\n").unwrap();
        let stages = node.get("stages").unwrap();
        let (key, _) = &stages.entries()[0];
        assert_eq!((key.span.line, key.span.col), (3, 2));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("stages:\n  a: 1\n  a: 2\n").unwrap_err();
        assert_eq!(err.message, "duplicate key `a` (first defined on line 2)");
        assert_eq!(err.span.line, 3);
    }

    #[test]
    fn anchors_and_aliases_are_copied() {
        check(
            "base: &b {x: 1}\nother: *b\n",
            serde_json::json!({"base": {"x": 1}, "other": {"x": 1}}),
        );
    }

    #[test]
    fn an_alias_bomb_is_refused_at_the_alias_that_crosses_the_limit() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for level in 1..9 {
            let prev = format!("*a{}", level - 1);
            text.push_str(&format!(
                "a{level}: &a{level} [{}]\n",
                [prev.as_str(); 9].join(", ")
            ));
        }
        let started = std::time::Instant::now();
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("alias bomb"), "{}", err.message);
        // Level 6 holds 9^6 = 531441 leaves: the limit is crossed within it.
        assert_eq!(err.span.line, 6, "{err:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        // Aliases that stay under the limit are expanded as before.
        let small = "a: &a [1, 2]\nb: [*a, *a]\n";
        assert_eq!(
            parse(small).unwrap().to_json(),
            serde_json::json!({"a": [1, 2], "b": [[1, 2], [1, 2]]})
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let block = format!("b:\n  {}1\n", "- ".repeat(50_000));
        let err = parse(&block).unwrap_err();
        assert!(err.message.contains("deeper than 128"), "{}", err.message);
        let flow = format!("b: {}{}\n", "[".repeat(50_000), "]".repeat(50_000));
        assert!(parse(&flow).is_err());
        let ok = format!("b: {}1{}\n", "[".repeat(100), "]".repeat(100));
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn many_keys_parse_in_linear_time() {
        let mut text = String::from("params:\n");
        for i in 0..200_000 {
            text.push_str(&format!("  k{i}: {i}\n"));
        }
        let started = std::time::Instant::now();
        let node = parse(&text).unwrap();
        assert_eq!(node.get("params").unwrap().entries().len(), 200_000);
        // Quadratic duplicate checking took minutes here; linear takes well under a second
        // in an optimised build (the bound leaves room for a debug build on a busy machine).
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn emitted_yaml_reads_back_identically() {
        let value = serde_json::json!({
            "version": 1, "name": "a b", "empty": {}, "list": [1, "x", {"k": "true"}],
            "nested": {"deep": {"path": "data/x.csv", "n": 1.5e-7, "s": "-dash", "e": ""}}
        });
        let text = to_yaml(&value);
        assert_eq!(parse(&text).unwrap().to_json(), value, "{text}");
    }

    #[test]
    fn override_values_are_typed() {
        assert!(matches!(parse_scalar("1e-4"), NodeValue::Float(v) if v == 1e-4));
        assert!(matches!(parse_scalar("12"), NodeValue::Int(12)));
        assert!(matches!(parse_scalar("adam"), NodeValue::Str(ref s) if s == "adam"));
        assert!(matches!(parse_scalar("a: b"), NodeValue::Str(_)));
    }
}
