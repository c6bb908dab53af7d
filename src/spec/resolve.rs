//! From parsed YAML to validated stages: overrides, structure, groups, interpolation,
//! kinds and their parameters. Every problem becomes a [`Diagnostic`]; resolution goes on
//! past errors so that one run of `hone validate` reports them all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;

use super::de::{FieldError, from_value_lenient};
use super::diag::{Diagnostic, SourceFile, did_you_mean};
use super::interp::{self, Piece};
use super::kind::{self, Kinds};
use super::load;
use super::node::{DisplayPath, Node, NodeValue, PathSeg, Span, path};
use super::raw::{RawGroup, RawSpec, RawStage, StageSeed};
use super::{InputRef, Spec, StageDecl, derive_seed, is_identifier};

/// Resolves a spec; problems go to `diags`. Returns `None` only when the file cannot
/// be read as a spec at all (a YAML syntax error, a root that is not a mapping).
pub fn resolve(
    file: Arc<SourceFile>,
    overrides: &[String],
    kinds: Kinds<'static>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Spec> {
    let mut root = match load::parse(&file.text) {
        Ok(root) => root,
        Err(err) => {
            diags.push(Diagnostic::new(
                "",
                err.span,
                format!("YAML syntax error: {}", err.message),
            ));
            return None;
        }
    };
    if !root.is_map() {
        diags.push(Diagnostic::new(
            "",
            root.span,
            format!(
                "a spec is a mapping with `name` and `stages`, found {}",
                root.type_name()
            ),
        ));
        return None;
    }
    apply_overrides(&mut root, overrides, diags);

    let mut r = Resolver {
        root: &root,
        text: &file.text,
        diags,
        stages: Vec::new(),
        invalid: BTreeSet::new(),
        group_stages: BTreeSet::new(),
        params: BTreeMap::new(),
        seed: 0,
        kinds,
    };
    let raw: Option<RawSpec> = r.read(&[], &root.to_json());
    let name = raw.as_ref().map(|s| s.name.clone()).unwrap_or_default();
    r.seed = raw.as_ref().map(|s| s.seed).unwrap_or(0);
    r.params = match root.get("params") {
        Some(params) if params.is_map() => params
            .entries()
            .iter()
            .map(|(k, v)| (k.scalar_text(), v.to_json()))
            .collect(),
        _ => BTreeMap::new(),
    };
    if let Some(stages) = root.get("stages") {
        r.resolve_stages(stages);
        r.expand_wildcards();
    }
    let (stages, invalid) = (r.stages, r.invalid);
    let seed = raw.as_ref().map(|s| s.seed).unwrap_or(0);
    Some(Spec {
        file,
        root,
        name,
        seed,
        stages,
        invalid,
    })
}

struct Resolver<'a> {
    root: &'a Node,
    text: &'a str,
    diags: &'a mut Vec<Diagnostic>,
    stages: Vec<StageDecl>,
    invalid: BTreeSet<String>,
    /// The names of the stages declared inside groups (what `name@*` may refer to).
    group_stages: BTreeSet<String>,
    params: BTreeMap<String, Value>,
    seed: u64,
    kinds: Kinds<'static>,
}

/// The round a group stage is being expanded for.
struct Round<'a> {
    index: i64,
    item: Value,
    suffix: String,
    siblings: &'a BTreeSet<String>,
    /// Resolved references of each carried name in this round.
    carry: &'a BTreeMap<String, Vec<String>>,
}

impl Resolver<'_> {
    fn error(&mut self, at: &[PathSeg], message: impl Into<String>, help: Option<String>) {
        let span = self.root.key_span(at);
        self.diags
            .push(Diagnostic::new(DisplayPath(at).to_string(), span, message).with_help(help));
    }

    fn error_at_value(&mut self, at: &[PathSeg], message: impl Into<String>, help: Option<String>) {
        let span = self.root.locate(at).0.span;
        self.diags
            .push(Diagnostic::new(DisplayPath(at).to_string(), span, message).with_help(help));
    }

    /// Reads a part of the spec into a raw type, reporting errors at `base` + their path.
    /// Unknown keys are reported but do not stop the reading, so later checks still run.
    fn read<T: serde::de::DeserializeOwned>(
        &mut self,
        base: &[PathSeg],
        value: &Value,
    ) -> Option<T> {
        let (parsed, errors) = from_value_lenient::<T>(value);
        self.field_errors(base, errors);
        parsed
    }

    fn field_errors(&mut self, base: &[PathSeg], errors: Vec<FieldError>) {
        for FieldError {
            path,
            message,
            help,
            within,
        } in errors
        {
            let full: Vec<PathSeg> = base.iter().cloned().chain(path).collect();
            if message.starts_with("unknown key") || message.starts_with("missing required key") {
                self.error(&full, message, help);
            } else if let Some((offset, len)) = within {
                self.error_in_string(&full, offset, len, message, help);
            } else {
                self.error_at_value(&full, message, help);
            }
        }
    }

    /// An error about part of a string value: the caret points at that part.
    fn error_in_string(
        &mut self,
        at: &[PathSeg],
        offset: usize,
        len: usize,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let mut span = self.root.locate(at).0.span;
        if !span.is_command_line() {
            let quoted = self
                .text
                .chars()
                .nth(span.start)
                .is_some_and(|c| c == '"' || c == '\'');
            let skip = usize::from(quoted) + offset;
            span = Span::new(
                span.start + skip,
                span.line,
                span.col + skip,
                span.start + skip + len,
            );
        }
        self.diags
            .push(Diagnostic::new(DisplayPath(at).to_string(), span, message).with_help(help));
    }

    fn resolve_stages(&mut self, stages: &Node) {
        let top_names: BTreeSet<String> = stages
            .entries()
            .iter()
            .map(|(k, _)| k.scalar_text())
            .collect();
        let mut group_names: BTreeMap<String, String> = BTreeMap::new();
        for (key, node) in stages.entries() {
            let id = key.scalar_text();
            let at = path(&["stages", &id]);
            if !is_identifier(&id) {
                self.error(&at, format!("stage id `{id}` must be letters, digits, `_` or `-`, starting with a letter or `_`"), None);
                self.invalid.insert(id.clone());
                continue;
            }
            if !node.is_map() {
                self.error_at_value(
                    &at,
                    format!(
                        "stage `{id}` must be a mapping with a `kind`, found {}",
                        node.type_name()
                    ),
                    None,
                );
                self.invalid.insert(id);
                continue;
            }
            if is_group(node) {
                let inner: Vec<String> = node
                    .get("stages")
                    .map(|s| s.entries().iter().map(|(k, _)| k.scalar_text()).collect())
                    .unwrap_or_default();
                for name in inner {
                    if top_names.contains(&name) {
                        let inner_at = path(&["stages", &id, "stages", &name]);
                        self.error(
                            &inner_at,
                            format!(
                                "duplicate stage id `{name}`: a top-level stage has the same name"
                            ),
                            None,
                        );
                    } else if let Some(other) = {
                        self.group_stages.insert(name.clone());
                        group_names.insert(name.clone(), id.clone())
                    } {
                        let inner_at = path(&["stages", &id, "stages", &name]);
                        self.error(&inner_at, format!("duplicate stage id `{name}`: group `{other}` has a stage of the same name"), None);
                    }
                }
                self.resolve_group(&id, node, &at);
            } else {
                self.resolve_stage(&id, node, &at, None);
            }
        }
    }

    /// `name@*.output` stands for that output of every copy of group stage `name`, in
    /// round order (an `aggregate` stage's inputs, say).
    fn expand_wildcards(&mut self) {
        let ids: Vec<String> = self.stages.iter().map(|s| s.id.clone()).collect();
        let mut unmatched = Vec::new();
        for stage in &mut self.stages {
            for refs in stage.inputs.values_mut() {
                let mut expanded = Vec::with_capacity(refs.len());
                for r in refs.drain(..) {
                    let Some(base) = r.stage.strip_suffix("@*") else {
                        expanded.push(r);
                        continue;
                    };
                    let prefix = format!("{base}@");
                    let copies: Vec<&String> =
                        ids.iter().filter(|id| id.starts_with(&prefix)).collect();
                    if copies.is_empty() && !self.group_stages.contains(base) {
                        unmatched.push((r.node_path.clone(), base.to_string()));
                    }
                    expanded.extend(copies.into_iter().map(|id| InputRef {
                        stage: id.clone(),
                        output: r.output.clone(),
                        node_path: r.node_path.clone(),
                    }));
                }
                *refs = expanded;
            }
        }
        for (at, base) in unmatched {
            self.error_at_value(
                &at,
                format!("`{base}@*` matches no stage: `{base}` is not a stage of a group"),
                None,
            );
        }
    }

    fn resolve_group(&mut self, id: &str, node: &Node, at: &[PathSeg]) {
        let Some(group) = self.read::<RawGroup>(at, &node.to_json()) else {
            self.invalid.insert(id.to_string());
            return;
        };
        if group.rounds.is_none() && group.foreach.is_none() && group.matrix.is_none() {
            // The key is there (that made it a group) but empty: `rounds:` with no value.
            let key = ["rounds", "foreach", "matrix"]
                .into_iter()
                .find(|k| node.get(k).is_some())
                .unwrap_or("rounds");
            self.error_at_value(
                &with(at, key),
                format!("`{key}` needs a value (a group repeats its stages by `rounds`, `foreach` or `matrix`)"),
                None,
            );
            self.invalid.insert(id.to_string());
            return;
        }
        if group.foreach.is_some() && group.matrix.is_some() {
            self.error(
                &with(at, "matrix"),
                "a group has `foreach` or `matrix`, not both (with `rounds` if it repeats)",
                None,
            );
            return;
        }
        if group.rounds == Some(0) {
            self.error_at_value(&with(at, "rounds"), "`rounds` must be at least 1", None);
            return;
        }
        // `rounds` with `foreach` or `matrix`: each value (or combination) runs its own
        // rounds, with the carried inputs starting afresh.
        let nested_rounds = group
            .rounds
            .filter(|_| group.foreach.is_some() || group.matrix.is_some());
        // Each round's item and the pieces of its stage-id suffix.
        let items: Vec<(Value, Vec<SuffixPiece>)> = if let (Some(n), None) =
            (group.rounds, nested_rounds)
        {
            (1..=i64::from(n))
                .map(|i| (Value::from(i), vec![(Value::from(i), with(at, "rounds"))]))
                .collect()
        } else if let Some(values) = &group.foreach {
            if values.is_empty() {
                self.error_at_value(
                    &with(at, "foreach"),
                    "`foreach` needs at least one value",
                    None,
                );
                return;
            }
            values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let v_at = [at, &[PathSeg::Key("foreach".into()), PathSeg::Index(i)]].concat();
                    (v.clone(), vec![(v.clone(), v_at)])
                })
                .collect()
        } else if let Some(matrix) = &group.matrix {
            // The names in the order written (the parsed map is sorted).
            let names: Vec<String> = node
                .get("matrix")
                .map(|m| m.entries().iter().map(|(k, _)| k.scalar_text()).collect())
                .unwrap_or_default();
            if names.is_empty() || names.iter().any(|n| matrix[n].is_empty()) {
                self.error_at_value(
                    &with(at, "matrix"),
                    "`matrix` needs at least one name, each with at least one value",
                    None,
                );
                return;
            }
            let mut combos: Vec<Vec<(String, usize)>> = vec![Vec::new()];
            for name in &names {
                combos = combos
                    .into_iter()
                    .flat_map(|c| {
                        (0..matrix[name].len()).map(move |i| {
                            let mut c = c.clone();
                            c.push((name.clone(), i));
                            c
                        })
                    })
                    .collect();
            }
            combos
                .into_iter()
                .map(|combo| {
                    let item: serde_json::Map<String, Value> = combo
                        .iter()
                        .map(|(n, i)| (n.clone(), matrix[n][*i].clone()))
                        .collect();
                    let pieces = combo
                        .iter()
                        .map(|(n, i)| {
                            let v_at = [
                                at,
                                &[
                                    PathSeg::Key("matrix".into()),
                                    PathSeg::Key(n.clone()),
                                    PathSeg::Index(*i),
                                ],
                            ]
                            .concat();
                            (matrix[n][*i].clone(), v_at)
                        })
                        .collect();
                    (Value::Object(item), pieces)
                })
                .collect()
        } else {
            unreachable!("groups are recognised by `rounds`, `foreach` or `matrix`")
        };
        let siblings: BTreeSet<String> = group.stages.keys().cloned().collect();
        let stage_nodes = node
            .get("stages")
            .map(|s| s.entries().to_vec())
            .unwrap_or_default();
        for name in group.next.keys() {
            if !group.carry.contains_key(name) {
                let help = did_you_mean(name, group.carry.keys().map(String::as_str));
                self.error(
                    &[at, &path(&["next", name])].concat(),
                    format!("`next.{name}` has no `carry.{name}` to update"),
                    help,
                );
            }
        }
        let initial: BTreeMap<String, Vec<String>> = group
            .carry
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        let mut carry = initial.clone();
        let mut suffixes = BTreeSet::new();
        // (round index, item, suffix) of every copy; a chain of rounds restarts the carry.
        let mut copies: Vec<(i64, Value, String)> = Vec::new();
        // A value that cannot name a copy is reported and left out; the others go on, so
        // the mistakes inside the group's stages are reported too.
        'items: for (i, (item, pieces)) in items.iter().enumerate() {
            let mut parts = Vec::new();
            for (value, value_at) in pieces {
                match value {
                    Value::String(s)
                        if !s.is_empty()
                            && s.chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
                    {
                        parts.push(s.clone())
                    }
                    Value::Number(n) if n.is_i64() || n.is_u64() => parts.push(n.to_string()),
                    // A mapping names itself by its `id`; its other fields are
                    // `${item.NAME.FIELD}` (a noise level with its temperature, say).
                    Value::Object(map) if group.matrix.is_some() && map_id(map).is_some() => {
                        parts.push(map_id(map).unwrap_or_default())
                    }
                    other => {
                        let what = if group.matrix.is_some() {
                            "matrix"
                        } else {
                            "foreach"
                        };
                        self.error_at_value(value_at,
                            format!("`{what}` values become part of stage ids: use strings of letters, digits, `_`, `-` or integers{}, not `{other}`", if group.matrix.is_some() { " (or mappings with such an `id`)" } else { "" }), None);
                        continue 'items;
                    }
                }
            }
            let suffix = parts.join("_");
            if !suffixes.insert(suffix.clone()) {
                let what = if group.matrix.is_some() {
                    "matrix"
                } else {
                    "foreach"
                };
                self.error_at_value(
                    &with(at, what),
                    format!("two rounds would both be `@{suffix}`"),
                    None,
                );
                continue;
            }
            match nested_rounds {
                Some(n) => copies.extend(
                    (1..=i64::from(n)).map(|r| (r, item.clone(), format!("{suffix}_r{r}"))),
                ),
                None => copies.push((i as i64 + 1, item.clone(), suffix)),
            }
        }
        for (i, (index, item, suffix)) in copies.into_iter().enumerate() {
            if nested_rounds.is_some() && index == 1 {
                // A new chain: the carried inputs start again, read with this item (so
                // `carry: { model: "fit@${item.seed}.model" }` may differ by item).
                let empty = BTreeSet::new();
                let start = Round {
                    index: 0,
                    item: item.clone(),
                    suffix: String::new(),
                    siblings: &empty,
                    carry: &BTreeMap::new(),
                };
                carry = BTreeMap::new();
                let before = self.diags.len();
                for (name, refs) in &initial {
                    let value_at = [at, &path(&["carry", name])].concat();
                    let expanded = self.expand_refs(refs, &value_at, Some(&start), false);
                    carry.insert(name.clone(), expanded.into_iter().map(|(r, _)| r).collect());
                }
                // The same mistake in every chain is reported once.
                let new: Vec<Diagnostic> = self.diags.drain(before..).collect();
                for d in new {
                    if !self
                        .diags
                        .iter()
                        .any(|e| e.path == d.path && e.message == d.message)
                    {
                        self.diags.push(d);
                    }
                }
            }
            let round = Round {
                index,
                item,
                suffix,
                siblings: &siblings,
                carry: &carry,
            };
            for (key, stage_node) in &stage_nodes {
                let name = key.scalar_text();
                let stage_at = [at, &path(&["stages", &name])].concat();
                if !is_identifier(&name) {
                    if i == 0 {
                        self.error(
                            &stage_at,
                            format!("stage id `{name}` must be letters, digits, `_` or `-`"),
                            None,
                        );
                    }
                    continue;
                }
                if is_group(stage_node) {
                    if i == 0 {
                        self.error(&stage_at, "groups do not nest: a stage inside a group cannot have `rounds`, `foreach` or `matrix`", None);
                    }
                    continue;
                }
                let errors_before = self.diags.len();
                self.resolve_stage(&name, stage_node, &stage_at, Some(&round));
                if i > 0 && self.diags.len() > errors_before {
                    // The same mistake in every round is reported once.
                    let (first, _) = self.diags.split_at(errors_before);
                    let first: Vec<(String, String)> = first
                        .iter()
                        .map(|d| (d.path.clone(), d.message.clone()))
                        .collect();
                    let mut kept = Vec::new();
                    for d in self.diags.drain(errors_before..) {
                        if !first.contains(&(d.path.clone(), d.message.clone())) {
                            kept.push(d);
                        }
                    }
                    self.diags.extend(kept);
                }
            }
            // The next round's carried references, resolved in this round's context.
            let mut next_carry = carry.clone();
            for (name, value) in &group.next {
                let value_at = [at, &path(&["next", name])].concat();
                let refs = self.expand_refs(&value.0, &value_at, Some(&round), true);
                next_carry.insert(name.clone(), refs.into_iter().map(|(r, _)| r).collect());
            }
            carry = next_carry;
        }
    }

    fn resolve_stage(
        &mut self,
        name: &str,
        node: &Node,
        at: &[PathSeg],
        round: Option<&Round<'_>>,
    ) {
        let id = match round {
            Some(r) => format!("{name}@{}", r.suffix),
            None => name.to_string(),
        };
        let Some(raw) = self.read::<RawStage>(at, &node.to_json()) else {
            self.invalid.insert(id);
            return;
        };
        let Some(kind) = kind::find(self.kinds, &raw.kind) else {
            let names: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
            let help = did_you_mean(&raw.kind, names.iter().copied())
                .or_else(|| Some(format!("known kinds: {}", names.join(", "))));
            self.error_at_value(
                &with(at, "kind"),
                format!("unknown stage kind `{}`", raw.kind),
                help,
            );
            self.invalid.insert(id);
            return;
        };
        let with_at = with(at, "with");
        let params = self.interpolate(&Value::Object(raw.with.clone()), &with_at, round);

        let mut inputs = BTreeMap::new();
        for (port, value) in &raw.inputs {
            let port_at = [&with(at, "inputs")[..], &[PathSeg::Key(port.clone())]].concat();
            let refs = self.expand_refs(&value.0, &port_at, round, false);
            let mut parsed = Vec::new();
            for (text, ref_at) in refs {
                match text.rsplit_once('.') {
                    Some((stage, output)) if !stage.is_empty() && !output.is_empty() => parsed
                        .push(InputRef {
                            stage: stage.to_string(),
                            output: output.to_string(),
                            node_path: ref_at,
                        }),
                    _ => self.error_at_value(
                        &ref_at,
                        format!("input `{port}` should be `stage.output`, found `{text}`"),
                        None,
                    ),
                }
            }
            inputs.insert(port.clone(), parsed);
        }

        let mut needs = Vec::new();
        for (i, need) in raw.needs.iter().enumerate() {
            let need_at = [&with(at, "needs")[..], &[PathSeg::Index(i)]].concat();
            let resolved = self.interpolate_str(need, &need_at, round, false);
            let resolved = match (resolved.as_str(), round) {
                (Some(s), Some(r)) if r.siblings.contains(s) => format!("{s}@{}", r.suffix),
                (Some(s), _) => s.to_string(),
                _ => need.clone(),
            };
            needs.push((resolved, need_at));
        }

        let threads = match raw.threads {
            Some(0) => {
                self.error_at_value(&with(at, "threads"), "`threads` must be at least 1", None);
                1
            }
            Some(n) => n as usize,
            None => 1,
        };
        let seed = match &raw.seed {
            Some(StageSeed::Number(n)) => *n,
            Some(StageSeed::Name(name)) => {
                let named = self.interpolate_str(name, &with(at, "seed"), round, false);
                let named = match named {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                derive_seed(self.seed, &named)
            }
            None => derive_seed(self.seed, &id),
        };

        let input_names: Vec<&str> = raw.inputs.keys().map(String::as_str).collect();
        let configured = match kind.configure(&params, &input_names) {
            Ok(configured) => configured,
            Err(mut errors) => {
                // Offsets inside a string refer to the resolved text; they only point
                // right when interpolation left the string as written.
                for error in &mut errors {
                    let (source, found) =
                        self.root.locate(&[&with_at[..], &error.path[..]].concat());
                    let resolved = value_at(&params, &error.path).and_then(Value::as_str);
                    if !found || source.as_str() != resolved {
                        error.within = None;
                    }
                }
                self.field_errors(&with_at, errors);
                self.invalid.insert(id);
                return;
            }
        };
        self.stages.push(StageDecl {
            id,
            kind,
            params: configured.params,
            inputs,
            needs,
            threads,
            seed,
            signature: configured.signature,
            description: raw.description,
            node_path: at.to_vec(),
        });
    }

    /// Expands the references of one input (or `next` entry): `${carry.NAME}` splices the
    /// carried list, other placeholders are interpolated, and names of stages in the same
    /// group get the round's suffix. Returns each reference with where it is written.
    fn expand_refs(
        &mut self,
        refs: &[String],
        at: &[PathSeg],
        round: Option<&Round<'_>>,
        in_next: bool,
    ) -> Vec<(String, Vec<PathSeg>)> {
        let single = refs.len() == 1 && !matches!(self.root.locate(at).0.value, NodeValue::Seq(_));
        let mut out = Vec::new();
        for (i, text) in refs.iter().enumerate() {
            let ref_at = if single {
                at.to_vec()
            } else {
                [at, &[PathSeg::Index(i)]].concat()
            };
            let trimmed = text.trim();
            if let Some(name) = trimmed
                .strip_prefix("${carry.")
                .and_then(|s| s.strip_suffix('}'))
            {
                match round.and_then(|r| r.carry.get(name.trim())) {
                    Some(carried) => {
                        out.extend(carried.iter().map(|c| (c.clone(), ref_at.clone())))
                    }
                    None => {
                        let help = round
                            .and_then(|r| did_you_mean(name, r.carry.keys().map(String::as_str)));
                        let why = if round.is_some() {
                            format!("no `carry.{name}` in this group")
                        } else {
                            "`${carry...}` is only defined inside a group".into()
                        };
                        self.error_at_value(&ref_at, why, help);
                    }
                }
                continue;
            }
            let Some(resolved) = self
                .interpolate_str(text, &ref_at, round, false)
                .as_str()
                .map(str::to_string)
            else {
                self.error_at_value(&ref_at, "a reference must be a string", None);
                continue;
            };
            let resolved = match (resolved.rsplit_once('.'), round) {
                (Some((stage, output)), Some(r)) if r.siblings.contains(stage) => {
                    format!("{stage}@{}.{output}", r.suffix)
                }
                _ => resolved,
            };
            let _ = in_next;
            out.push((resolved, ref_at));
        }
        out
    }

    fn interpolate(&mut self, value: &Value, at: &[PathSeg], round: Option<&Round<'_>>) -> Value {
        match value {
            Value::String(s) => self.interpolate_str(s, at, round, true),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.interpolate(v, &[at, &[PathSeg::Index(i)]].concat(), round))
                    .collect(),
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            self.interpolate(v, &[at, &[PathSeg::Key(k.clone())]].concat(), round),
                        )
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Interpolates one string. A string that is exactly one placeholder takes the
    /// value's type (`"${params.lr}"` stays a number); run-time names are kept.
    fn interpolate_str(
        &mut self,
        text: &str,
        at: &[PathSeg],
        round: Option<&Round<'_>>,
        keep_runtime: bool,
    ) -> Value {
        let pieces = match interp::scan(text) {
            Ok(p) => p,
            Err(offset) => {
                self.error_at_value(at, format!("unclosed `${{` at character {offset}"), None);
                return Value::String(text.to_string());
            }
        };
        if let [Piece::Var(name, offset)] = pieces.as_slice()
            && !(keep_runtime && interp::is_runtime_name(name))
            && !name.ends_with(interp::QUOTED)
        {
            return self.lookup(name, at, *offset, round).unwrap_or(Value::Null);
        }
        let mut out = String::new();
        for piece in &pieces {
            match piece {
                Piece::Var(name, _) if keep_runtime && interp::is_runtime_name(name) => {
                    out.push_str(&interp::unscan(std::slice::from_ref(piece)));
                }
                Piece::Var(name, offset) if name.ends_with(interp::QUOTED) => {
                    let bare = name[..name.len() - interp::QUOTED.len()].trim_end();
                    match self.lookup(bare, at, *offset, round) {
                        Some(Value::String(s)) => out.push_str(&interp::shell_quote(&s)),
                        Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                            out.push_str(&interp::shell_quote(&v.to_string()))
                        }
                        Some(other) => self.error_at_value(
                            at,
                            format!(
                                "`${{{name}}}` is {} and cannot be quoted into a string",
                                json_type(&other)
                            ),
                            None,
                        ),
                        None => {}
                    }
                }
                Piece::Var(name, offset) => match self.lookup(name, at, *offset, round) {
                    Some(Value::String(s)) => out.push_str(&s),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => out.push_str(&v.to_string()),
                    Some(other) => self.error_at_value(
                        at,
                        format!(
                            "`${{{name}}}` is {} and cannot be part of a longer string",
                            json_type(&other)
                        ),
                        None,
                    ),
                    None => {}
                },
                Piece::Escape => out.push_str(if keep_runtime { "$${" } else { "${" }),
                Piece::Text(t) => out.push_str(t),
            }
        }
        Value::String(out)
    }

    /// The value of placeholder `name`, written at character `offset` of the string at `at`.
    fn lookup(
        &mut self,
        name: &str,
        at: &[PathSeg],
        offset: usize,
        round: Option<&Round<'_>>,
    ) -> Option<Value> {
        let len = name.chars().count() + 3;
        if let Some(param) = name.strip_prefix("params.") {
            if let Some(v) = self.params.get(param) {
                return Some(v.clone());
            }
            let help = super::diag::suggest(param, self.params.keys().map(String::as_str))
                .map(|s| format!("did you mean `${{params.{s}}}`?"));
            let message = format!("`${{{name}}}`: no param `{param}` in `params`");
            self.error_in_string(at, offset, len, message, help);
            return None;
        }
        match (name, round) {
            ("round", Some(r)) => return Some(Value::from(r.index)),
            ("prev", Some(r)) => return Some(Value::from(r.index - 1)),
            ("item", Some(r)) => return Some(r.item.clone()),
            (key, Some(r)) if key.starts_with("item.") => {
                let field = &key["item.".len()..];
                if let Some(v) = field.split('.').try_fold(&r.item, |v, k| v.get(k)) {
                    return Some(v.clone());
                }
                if let Some((head, _)) = field.split_once('.')
                    && r.item.get(head).is_some()
                {
                    let message = format!("`${{{name}}}`: `${{item.{head}}}` has no such field");
                    self.error_in_string(at, offset, len, message, None);
                    return None;
                }
                let names: Vec<&str> = r
                    .item
                    .as_object()
                    .map(|m| m.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let help = did_you_mean(field, names.iter().copied());
                let message = if names.is_empty() {
                    format!("`${{{name}}}`: `${{item}}` has fields only in a `matrix` group")
                } else {
                    format!("`${{{name}}}`: the matrix has no `{field}`")
                };
                self.error_in_string(at, offset, len, message, help);
                return None;
            }
            ("round" | "prev" | "item", None) => {
                let message = format!(
                    "`${{{name}}}` is only defined inside a group with `rounds` or `foreach`"
                );
                self.error_in_string(at, offset, len, message, None);
                return None;
            }
            _ => {}
        }
        let known = [
            "params.NAME",
            "round",
            "prev",
            "item",
            "item.NAME",
            "carry.NAME",
            "inputs.NAME",
            "outputs.NAME",
            "seed",
            "threads",
            "stage",
        ];
        let help = did_you_mean(name, known.iter().copied())
            .or_else(|| Some("write `$${` for a literal `${`".into()));
        self.error_in_string(
            at,
            offset,
            len,
            format!("unknown placeholder `${{{name}}}`"),
            help,
        );
        None
    }
}

/// The `id` of a matrix value that is a mapping: a string of id characters or an integer.
fn map_id(map: &serde_json::Map<String, Value>) -> Option<String> {
    match map.get("id")? {
        Value::String(s)
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
        {
            Some(s.clone())
        }
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// A value that becomes part of a round's stage-id suffix, and where it is written.
type SuffixPiece = (Value, Vec<PathSeg>);

/// A `stages` entry that is a group rather than a stage.
fn is_group(node: &Node) -> bool {
    ["rounds", "foreach", "matrix"]
        .iter()
        .any(|k| node.get(k).is_some())
}

fn with(at: &[PathSeg], key: &str) -> Vec<PathSeg> {
    let mut p = at.to_vec();
    p.push(PathSeg::Key(key.to_string()));
    p
}

fn value_at<'v>(value: &'v Value, path: &[PathSeg]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, seg| match seg {
        PathSeg::Key(k) => v.get(k),
        PathSeg::Index(i) => v.get(i),
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Applies `-S key=value` overrides to the parsed spec: `params.NAME=V`, `seed=N`, or
/// `STAGE.KEY.PATH=V` (a stage at the top level or inside a group). Values are read as
/// YAML scalars, so numbers stay numbers.
fn apply_overrides(root: &mut Node, overrides: &[String], diags: &mut Vec<Diagnostic>) {
    for text in overrides {
        let Some((key, value)) = text.split_once('=') else {
            diags.push(Diagnostic::new(
                text.as_str(),
                Span::command_line(),
                format!("override `{text}` should be `key=value`"),
            ));
            continue;
        };
        let parts: Vec<&str> = key.trim().split('.').collect();
        let value = Node::new(load::parse_scalar(value.trim()), Span::command_line());
        let fail = |diags: &mut Vec<Diagnostic>, message: String, help: Option<String>| {
            diags.push(Diagnostic::new(key, Span::command_line(), message).with_help(help));
        };
        match parts.as_slice() {
            ["seed"] => set_path(root, &["seed"], value),
            ["params", name, rest @ ..] => {
                let params = root.get("params");
                let names: Vec<String> = params
                    .map(|p| p.entries().iter().map(|(k, _)| k.scalar_text()).collect())
                    .unwrap_or_default();
                if !names.iter().any(|n| n == name) {
                    let help = did_you_mean(name, names.iter().map(String::as_str));
                    fail(
                        diags,
                        format!("override `-S {key}`: no param `{name}` in `params`"),
                        help,
                    );
                    continue;
                }
                let full: Vec<&str> = ["params", name]
                    .into_iter()
                    .chain(rest.iter().copied())
                    .collect();
                set_path(root, &full, value);
            }
            [stage, rest @ ..] if !rest.is_empty() => {
                let mut found: Option<Vec<String>> = None;
                let mut all_names = Vec::new();
                if let Some(stages) = root.get("stages") {
                    for (k, v) in stages.entries() {
                        let id = k.scalar_text();
                        if id == *stage {
                            found = Some(vec!["stages".into(), id.clone()]);
                        }
                        all_names.push(id.clone());
                        if let Some(inner) = v.get("stages").filter(|_| is_group(v)) {
                            for (ik, _) in inner.entries() {
                                let name = ik.scalar_text();
                                if name == *stage {
                                    found = Some(vec![
                                        "stages".into(),
                                        id.clone(),
                                        "stages".into(),
                                        name.clone(),
                                    ]);
                                }
                                all_names.push(name);
                            }
                        }
                    }
                }
                match found {
                    Some(prefix) => {
                        let full: Vec<&str> = prefix
                            .iter()
                            .map(String::as_str)
                            .chain(rest.iter().copied())
                            .collect();
                        set_path(root, &full, value);
                    }
                    None => {
                        let help = did_you_mean(
                            stage,
                            all_names
                                .iter()
                                .map(String::as_str)
                                .chain(["params", "seed"]),
                        );
                        fail(
                            diags,
                            format!("override `-S {key}`: no stage `{stage}`"),
                            help,
                        );
                    }
                }
            }
            _ => fail(
                diags,
                format!("override `-S {key}` should name `params.NAME`, `seed` or `STAGE.KEY`"),
                None,
            ),
        }
    }
}

/// Sets `keys` under `node` to `value`, creating mappings on the way.
fn set_path(node: &mut Node, keys: &[&str], value: Node) {
    let Some((first, rest)) = keys.split_first() else {
        *node = value;
        return;
    };
    if !node.is_map() {
        node.value = NodeValue::Map(Vec::new());
    }
    if node.get(first).is_none()
        && let NodeValue::Map(entries) = &mut node.value
    {
        entries.push((
            Node::new(NodeValue::Str(first.to_string()), Span::command_line()),
            Node::new(NodeValue::Map(Vec::new()), Span::command_line()),
        ));
    }
    let child = node.get_mut(first).expect("just inserted");
    set_path(child, rest, value);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::spec::kind::testing::KINDS;

    fn resolve_str(text: &str, overrides: &[&str]) -> (Option<Spec>, Vec<String>) {
        let file = Arc::new(SourceFile {
            name: "p.yaml".into(),
            text: text.into(),
        });
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let mut diags = Vec::new();
        let spec = resolve(file, &overrides, &KINDS, &mut diags);
        (spec, diags.into_iter().map(|d| d.message).collect())
    }

    fn ids(spec: &Spec) -> Vec<&str> {
        spec.stages.iter().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn a_matrix_unrolls_every_combination_in_the_order_written() {
        let (spec, errors) = resolve_str(
            "name: p\nstages:\n  g:\n    matrix: {a: [1, 2], b: [x, y]}\n    stages:\n      s: {kind: node, with: {n: \"${item.a}\"}}\n",
            &[],
        );
        assert!(errors.is_empty(), "{errors:?}");
        let spec = spec.unwrap();
        assert_eq!(ids(&spec), ["s@1_x", "s@1_y", "s@2_x", "s@2_y"]);
        // `${item.a}` alone is the value itself, typed: a number the kind accepts.
        assert_eq!(spec.stages[2].params.resolved()["n"], 2);
    }

    #[test]
    fn rounds_chain_their_copies_and_star_collects_them() {
        let (spec, errors) = resolve_str(
            "name: p\nstages:\n  loop:\n    rounds: 3\n    stages:\n      s: {kind: node}\n  all: {kind: node, inputs: {x: s@*.out}}\n",
            &[],
        );
        assert!(errors.is_empty(), "{errors:?}");
        let spec = spec.unwrap();
        let all = spec.stage("all").unwrap();
        let refs: Vec<&str> = all.inputs["x"].iter().map(|r| r.stage.as_str()).collect();
        assert_eq!(refs, ["s@1", "s@2", "s@3"]);
    }

    /// Found by fuzzing (`fuzz/`, spec_load): `rounds:` with no value made a group with
    /// nothing to repeat it by, and resolving it hit an `unreachable!`.
    #[test]
    fn a_group_key_without_a_value_is_an_error_not_a_panic() {
        for key in ["rounds", "foreach", "matrix"] {
            let (_, errors) = resolve_str(
                &format!(
                    "name: p\nstages:\n  loop:\n    {key}:\n    stages:\n      s: {{kind: node}}\n"
                ),
                &[],
            );
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains(&format!("`{key}` needs a value"))),
                "{key}: {errors:?}"
            );
        }
    }

    #[test]
    fn overrides_params_and_seeds() {
        let text = "name: p\nseed: 5\nparams: {k: 3}\nstages:\n  a: {kind: node, with: {n: \"${params.k}\"}}\n  b: {kind: node, seed: 11}\n";
        let (spec, errors) = resolve_str(text, &["params.k=4"]);
        assert!(errors.is_empty(), "{errors:?}");
        let spec = spec.unwrap();
        assert_eq!(spec.stage("a").unwrap().params.resolved()["n"], 4);
        assert_eq!(spec.stage("a").unwrap().seed, derive_seed(5, "a"));
        assert_eq!(spec.stage("b").unwrap().seed, 11);
    }

    #[test]
    fn unknown_kinds_and_refused_parameters_are_reported_with_the_stage_left_out() {
        let (spec, errors) = resolve_str(
            "name: p\nstages:\n  a: {kind: nod}\n  b: {kind: node, with: {n: 0}}\n  c: {kind: node}\n",
            &[],
        );
        let spec = spec.unwrap();
        assert_eq!(ids(&spec), ["c"]);
        assert!(spec.invalid.contains("a") && spec.invalid.contains("b"));
        assert!(
            errors.iter().any(|e| e == "unknown stage kind `nod`"),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("`n` must be")),
            "{errors:?}"
        );
    }
}
