//! A parsed YAML value that remembers where each part came from, so that every
//! validation error can point at a line and column.

use std::fmt;

/// Where a node sits in its source. `line` is 1-based, `col` 0-based, offsets count
/// characters (not bytes). A node made from a `-S` override has `line == 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub line: usize,
    pub col: usize,
}

impl Span {
    pub fn new(start: usize, line: usize, col: usize, end: usize) -> Self {
        Span {
            start,
            end: end.max(start),
            line,
            col,
        }
    }

    pub fn at(start: usize, line: usize, col: usize) -> Self {
        Span {
            start,
            end: start,
            line,
            col,
        }
    }

    /// The span of a value given on the command line.
    pub fn command_line() -> Self {
        Span::default()
    }

    pub fn is_command_line(&self) -> bool {
        self.line == 0
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub value: NodeValue,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum NodeValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in source order; keys are always `Str` nodes.
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn new(value: NodeValue, span: Span) -> Self {
        Node { value, span }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        match &mut self.value {
            NodeValue::Map(entries) => entries
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The key node of `key` in a map (its position is where "unknown key" points).
    pub fn key_node(&self, key: &str) -> Option<&Node> {
        self.entries()
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, _)| k)
    }

    pub fn entries(&self) -> &[(Node, Node)] {
        match &self.value {
            NodeValue::Map(entries) => entries,
            _ => &[],
        }
    }

    pub fn items(&self) -> &[Node] {
        match &self.value {
            NodeValue::Seq(items) => items,
            _ => &[],
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_map(&self) -> bool {
        matches!(self.value, NodeValue::Map(_))
    }

    /// The text of a scalar as written (used for map keys, which may be `1` or `true`).
    pub fn scalar_text(&self) -> String {
        match &self.value {
            NodeValue::Null => "null".into(),
            NodeValue::Bool(b) => b.to_string(),
            NodeValue::Int(i) => i.to_string(),
            NodeValue::Float(f) => f.to_string(),
            NodeValue::Str(s) => s.clone(),
            NodeValue::Seq(_) => "[...]".into(),
            NodeValue::Map(_) => "{...}".into(),
        }
    }

    /// What a person would call this value's type, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self.value {
            NodeValue::Null => "null",
            NodeValue::Bool(_) => "a boolean",
            NodeValue::Int(_) => "an integer",
            NodeValue::Float(_) => "a number",
            NodeValue::Str(_) => "a string",
            NodeValue::Seq(_) => "a list",
            NodeValue::Map(_) => "a mapping",
        }
    }

    /// Follows a path of map keys and list indices; returns the deepest node reached
    /// and whether the whole path was found.
    pub fn locate<'a>(&'a self, path: &[PathSeg]) -> (&'a Node, bool) {
        let mut node = self;
        for seg in path {
            let next = match seg {
                PathSeg::Key(key) => node.get(key),
                PathSeg::Index(i) => node.items().get(*i),
            };
            match next {
                Some(n) => node = n,
                None => return (node, false),
            }
        }
        (node, true)
    }

    /// The span of the key at the end of `path` when it is a map key, else the value's.
    pub fn key_span(&self, path: &[PathSeg]) -> Span {
        if let Some((PathSeg::Key(last), parent)) = path.split_last() {
            let (parent_node, found) = self.locate(parent);
            if found && let Some(key) = parent_node.key_node(last) {
                return key.span;
            }
            return parent_node.span;
        }
        self.locate(path).0.span
    }

    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Int(i) => Value::from(*i),
            NodeValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            NodeValue::Str(s) => Value::String(s.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.scalar_text(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Builds a node from JSON, every part carrying `span`.
    pub fn from_json(value: &serde_json::Value, span: Span) -> Node {
        use serde_json::Value;
        let value = match value {
            Value::Null => NodeValue::Null,
            Value::Bool(b) => NodeValue::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => NodeValue::Int(i),
                None => NodeValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => NodeValue::Str(s.clone()),
            Value::Array(items) => {
                NodeValue::Seq(items.iter().map(|v| Node::from_json(v, span)).collect())
            }
            Value::Object(map) => NodeValue::Map(
                map.iter()
                    .map(|(k, v)| {
                        (
                            Node::new(NodeValue::Str(k.clone()), span),
                            Node::from_json(v, span),
                        )
                    })
                    .collect(),
            ),
        };
        Node { value, span }
    }
}

/// One step of a key path such as `stages.reward.with.lr` or `needs[2]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// Renders a path as people write it: `stages.reward.with.lr`, `stages.a.needs[0]`.
pub struct DisplayPath<'a>(pub &'a [PathSeg]);

impl fmt::Display for DisplayPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                PathSeg::Key(k) if i == 0 => write!(f, "{k}")?,
                PathSeg::Key(k) => write!(f, ".{k}")?,
                PathSeg::Index(idx) => write!(f, "[{idx}]")?,
            }
        }
        Ok(())
    }
}

/// Builds a path from string keys: `path(&["stages", id, "with"])`.
pub fn path(keys: &[&str]) -> Vec<PathSeg> {
    keys.iter()
        .map(|k| PathSeg::Key((*k).to_string()))
        .collect()
}
