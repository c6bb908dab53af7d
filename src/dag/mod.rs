//! The stage graph: edges from input references and `needs`, type-checked ports, cycles
//! reported as whole circles, target selection and rendering. No I/O.

pub mod schedule;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};

use crate::artifact::ArtifactType;
use crate::spec::diag::{Diagnostic, SpecError, did_you_mean};
use crate::spec::kind::Kinds;
use crate::spec::node::{DisplayPath, PathSeg};
use crate::spec::{self, Spec};

/// A validated, acyclic pipeline. Node `i` of the graph is `spec.stages[i]`.
pub struct Pipeline {
    pub spec: Spec,
    pub graph: DiGraph<usize, ()>,
    /// Stage indices in a topological order that keeps the spec's order among peers.
    pub order: Vec<usize>,
    /// For each stage and input port, the (stage index, output name) of each artifact.
    pub bindings: Vec<BTreeMap<String, Vec<(usize, String)>>>,
}

/// Loads, validates and type-checks a spec file: every problem of spec and graph together.
pub fn load(
    path: &Path,
    overrides: &[String],
    kinds: Kinds<'static>,
) -> Result<Pipeline, SpecError> {
    let text = spec::read_file(path)?;
    load_str(&path.display().to_string(), text, overrides, kinds)
}

pub fn load_str(
    name: &str,
    text: String,
    overrides: &[String],
    kinds: Kinds<'static>,
) -> Result<Pipeline, SpecError> {
    let file = std::sync::Arc::new(spec::SourceFile {
        name: name.to_string(),
        text,
    });
    let mut diagnostics = Vec::new();
    let Some(spec) = spec::resolve(file.clone(), overrides, kinds, &mut diagnostics) else {
        return Err(SpecError { file, diagnostics });
    };
    let pipeline = build(spec, &mut diagnostics);
    if diagnostics.is_empty() {
        Ok(pipeline)
    } else {
        Err(SpecError { file, diagnostics })
    }
}

/// Builds the graph, reporting unknown references, type mismatches and cycles.
pub fn build(spec: Spec, diags: &mut Vec<Diagnostic>) -> Pipeline {
    let index: BTreeMap<&str, usize> = spec
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let all_ids: Vec<&str> = spec
        .stages
        .iter()
        .map(|s| s.id.as_str())
        .chain(spec.invalid.iter().map(String::as_str))
        .collect();
    let mut graph = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..spec.stages.len()).map(|i| graph.add_node(i)).collect();
    let mut bindings = vec![BTreeMap::new(); spec.stages.len()];

    for (i, stage) in spec.stages.iter().enumerate() {
        let sig = &stage.signature;
        let inputs_at = [&stage.node_path[..], &[PathSeg::Key("inputs".into())]].concat();
        for (port_name, refs) in &stage.inputs {
            let port_at = [&inputs_at[..], &[PathSeg::Key(port_name.clone())]].concat();
            let port = sig.inputs.iter().find(|p| &p.name == port_name);
            let (accepts, many) = match port {
                Some(p) => (p.ty.clone(), p.many),
                None if sig.open_inputs => (ArtifactType::Files, true),
                None => {
                    let names: Vec<&str> = sig.inputs.iter().map(|p| p.name.as_str()).collect();
                    let help = did_you_mean(port_name, names.iter().copied()).or_else(|| {
                        Some(format!(
                            "`{}` takes: {}",
                            stage.kind.name(),
                            names.join(", ")
                        ))
                    });
                    let span = spec.root.key_span(&port_at);
                    diags.push(
                        Diagnostic::new(
                            DisplayPath(&port_at).to_string(),
                            span,
                            format!("`{}` stages have no input `{port_name}`", stage.kind.name()),
                        )
                        .with_help(help),
                    );
                    continue;
                }
            };
            // A port bound to an empty list still exists (it expands to nothing).
            bindings[i]
                .entry(port_name.clone())
                .or_insert_with(Vec::new);
            if !many && refs.len() != 1 {
                report(
                    diags,
                    &spec.root,
                    &port_at,
                    format!(
                        "input `{port_name}` takes one artifact, found {}",
                        refs.len()
                    ),
                    None,
                );
            }
            for r in refs {
                if spec.invalid.contains(&r.stage) {
                    continue;
                }
                let Some(&from) = index.get(r.stage.as_str()) else {
                    let help = did_you_mean(&r.stage, all_ids.iter().copied());
                    report(
                        diags,
                        &spec.root,
                        &r.node_path,
                        format!(
                            "input `{port_name}` refers to `{}.{}`, but there is no stage `{}`",
                            r.stage, r.output, r.stage
                        ),
                        help,
                    );
                    continue;
                };
                let producer = &spec.stages[from];
                let Some(out) = producer
                    .signature
                    .outputs
                    .iter()
                    .find(|o| o.name == r.output)
                else {
                    let names: Vec<&str> = producer
                        .signature
                        .outputs
                        .iter()
                        .map(|o| o.name.as_str())
                        .collect();
                    let help = did_you_mean(&r.output, names.iter().copied()).or_else(|| {
                        Some(if names.is_empty() {
                            format!("`{}` declares no outputs", r.stage)
                        } else {
                            format!("`{}` outputs: {}", r.stage, names.join(", "))
                        })
                    });
                    report(
                        diags,
                        &spec.root,
                        &r.node_path,
                        format!("stage `{}` has no output `{}`", r.stage, r.output),
                        help,
                    );
                    continue;
                };
                if !accepts.accepts(&out.ty) {
                    report(
                        diags,
                        &spec.root,
                        &r.node_path,
                        format!(
                            "type mismatch: input `{port_name}` of `{}` takes a `{accepts}`, but `{}.{}` is a `{}`",
                            stage.id, r.stage, r.output, out.ty
                        ),
                        None,
                    );
                    continue;
                }
                graph.update_edge(nodes[from], nodes[i], ());
                bindings[i]
                    .entry(port_name.clone())
                    .or_insert_with(Vec::new)
                    .push((from, r.output.clone()));
            }
        }
        for port in sig.inputs.iter().filter(|p| p.required) {
            if !stage.inputs.contains_key(&port.name) {
                let at = [&stage.node_path[..], &[PathSeg::Key("kind".into())]].concat();
                let span = spec.root.locate(&stage.node_path).0.span;
                diags.push(Diagnostic::new(
                    DisplayPath(&stage.node_path).to_string(),
                    span,
                    format!(
                        "stage `{}` is missing its input `{}` (a `{}`)",
                        stage.id, port.name, port.ty
                    ),
                ));
                let _ = at;
            }
        }
        for (need, at) in &stage.needs {
            if spec.invalid.contains(need) {
                continue;
            }
            match index.get(need.as_str()) {
                Some(&from) => {
                    graph.update_edge(nodes[from], nodes[i], ());
                }
                None => report(
                    diags,
                    &spec.root,
                    at,
                    format!("`needs` names `{need}`, but there is no such stage"),
                    did_you_mean(need, all_ids.iter().copied()),
                ),
            }
        }
    }

    report_cycles(&spec, &graph, diags);
    let order = topo_order(&graph);
    Pipeline {
        spec,
        graph,
        order,
        bindings,
    }
}

fn report(
    diags: &mut Vec<Diagnostic>,
    root: &crate::spec::node::Node,
    at: &[PathSeg],
    message: String,
    help: Option<String>,
) {
    let span = root.locate(at).0.span;
    diags.push(Diagnostic::new(DisplayPath(at).to_string(), span, message).with_help(help));
}

fn report_cycles(spec: &Spec, graph: &DiGraph<usize, ()>, diags: &mut Vec<Diagnostic>) {
    for scc in tarjan_scc(graph) {
        let is_cycle = scc.len() > 1 || graph.contains_edge(scc[0], scc[0]);
        if !is_cycle {
            continue;
        }
        let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
        let start = *members
            .iter()
            .min_by_key(|n| graph[**n])
            .expect("non-empty");
        let circle = find_circle(graph, start, &members);
        let names: Vec<&str> = circle
            .iter()
            .map(|n| spec.stages[graph[*n]].id.as_str())
            .collect();
        let first = &spec.stages[graph[start]];
        let span = spec.root.key_span(&first.node_path);
        diags.push(
            Diagnostic::new(
                DisplayPath(&first.node_path).to_string(),
                span,
                format!("dependency cycle: {} -> {}", names.join(" -> "), names[0]),
            )
            .with_help(Some(
                "a stage cannot depend, directly or through others, on its own outputs".into(),
            )),
        );
    }
}

/// A shortest path from `start` back to itself inside one strongly connected component.
fn find_circle(
    graph: &DiGraph<usize, ()>,
    start: NodeIndex,
    members: &BTreeSet<NodeIndex>,
) -> Vec<NodeIndex> {
    let mut parent: BTreeMap<NodeIndex, NodeIndex> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        let mut next: Vec<NodeIndex> = graph
            .neighbors(node)
            .filter(|n| members.contains(n))
            .collect();
        next.sort_by_key(|n| graph[*n]);
        for n in next {
            if n == start {
                let mut circle = vec![node];
                let mut cur = node;
                while cur != start {
                    cur = parent[&cur];
                    circle.push(cur);
                }
                circle.reverse();
                return circle;
            }
            if let std::collections::btree_map::Entry::Vacant(e) = parent.entry(n) {
                e.insert(node);
                queue.push_back(n);
            }
        }
    }
    vec![start]
}

/// Kahn's algorithm, taking the ready stage that comes first in the spec each time, so the
/// order reads like the file. Falls back to petgraph's order for graphs with cycles.
fn topo_order(graph: &DiGraph<usize, ()>) -> Vec<usize> {
    if toposort(graph, None).is_err() {
        return graph.node_indices().map(|n| graph[n]).collect();
    }
    let mut indegree: Vec<usize> = graph
        .node_indices()
        .map(|n| {
            graph
                .neighbors_directed(n, petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BTreeSet<usize> = graph
        .node_indices()
        .filter(|n| indegree[n.index()] == 0)
        .map(|n| graph[n])
        .collect();
    let mut order = Vec::with_capacity(indegree.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for n in graph.neighbors(NodeIndex::new(i)) {
            indegree[n.index()] -= 1;
            if indegree[n.index()] == 0 {
                ready.insert(graph[n]);
            }
        }
    }
    order
}

impl Pipeline {
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.spec.stages.iter().position(|s| s.id == id)
    }

    /// Direct upstream stages of `i`.
    pub fn upstream(&self, i: usize) -> Vec<usize> {
        let mut up: Vec<usize> = self
            .graph
            .neighbors_directed(NodeIndex::new(i), petgraph::Direction::Incoming)
            .map(|n| self.graph[n])
            .collect();
        up.sort_unstable();
        up
    }

    /// `targets` and everything they depend on (or, with `downstream`, the targets, their
    /// descendants, and what those depend on), in topological order. No targets: all.
    pub fn select(&self, targets: &[usize], downstream: bool) -> Vec<usize> {
        if targets.is_empty() {
            return self.order.clone();
        }
        let mut roots: BTreeSet<usize> = targets.iter().copied().collect();
        if downstream {
            for &t in targets {
                let mut dfs = Dfs::new(&self.graph, NodeIndex::new(t));
                while let Some(n) = dfs.next(&self.graph) {
                    roots.insert(self.graph[n]);
                }
            }
        }
        let mut wanted = BTreeSet::new();
        let reversed = Reversed(&self.graph);
        for &r in &roots {
            let mut dfs = Dfs::new(reversed, NodeIndex::new(r));
            while let Some(n) = dfs.next(reversed) {
                wanted.insert(self.graph[n]);
            }
        }
        self.order
            .iter()
            .copied()
            .filter(|i| wanted.contains(i))
            .collect()
    }

    /// Every stage reachable from `i` (not including `i`).
    pub fn descendants(&self, i: usize) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut dfs = Dfs::new(&self.graph, NodeIndex::new(i));
        while let Some(n) = dfs.next(&self.graph) {
            if self.graph[n] != i {
                out.insert(self.graph[n]);
            }
        }
        out
    }

    /// The plan as text: one line per stage in run order, with its kind and inputs.
    pub fn render_text(&self, selected: &[usize]) -> String {
        let mut out = String::new();
        for (n, &i) in selected.iter().enumerate() {
            let stage = &self.spec.stages[i];
            let _ = write!(out, "{:>3}. {} ({})", n + 1, stage.id, stage.kind.name());
            let inputs: Vec<String> = self.bindings[i]
                .iter()
                .flat_map(|(port, refs)| {
                    refs.iter().map(move |(from, out)| {
                        format!("{port} <- {}.{out}", self.spec.stages[*from].id)
                    })
                })
                .collect();
            let needs: Vec<String> = stage
                .needs
                .iter()
                .map(|(n, _)| format!("after {n}"))
                .collect();
            let all: Vec<String> = inputs.into_iter().chain(needs).collect();
            if !all.is_empty() {
                let _ = write!(out, "  [{}]", all.join(", "));
            }
            out.push('\n');
        }
        out
    }

    /// Graphviz dot.
    pub fn render_dot(&self, selected: &[usize]) -> String {
        let set: BTreeSet<usize> = selected.iter().copied().collect();
        let mut out = format!(
            "digraph {:?} {{\n  rankdir=LR;\n  node [shape=box];\n",
            self.spec.name
        );
        for &i in selected {
            let s = &self.spec.stages[i];
            let _ = writeln!(
                out,
                "  {:?} [label=\"{}\\n({})\"];",
                s.id,
                s.id,
                s.kind.name()
            );
        }
        for edge in self.graph.raw_edges() {
            let (a, b) = (self.graph[edge.source()], self.graph[edge.target()]);
            if set.contains(&a) && set.contains(&b) {
                let _ = writeln!(
                    out,
                    "  {:?} -> {:?};",
                    self.spec.stages[a].id, self.spec.stages[b].id
                );
            }
        }
        out.push_str("}\n");
        out
    }

    /// Mermaid flowchart (renders in GitHub markdown).
    pub fn render_mermaid(&self, selected: &[usize]) -> String {
        let set: BTreeSet<usize> = selected.iter().copied().collect();
        let node_id = |i: usize| format!("s{i}");
        let mut out = String::from("flowchart LR\n");
        for &i in selected {
            let s = &self.spec.stages[i];
            let _ = writeln!(
                out,
                "  {}[\"{}<br/>({})\"]",
                node_id(i),
                s.id,
                s.kind.name()
            );
        }
        for edge in self.graph.raw_edges() {
            let (a, b) = (self.graph[edge.source()], self.graph[edge.target()]);
            if set.contains(&a) && set.contains(&b) {
                let _ = writeln!(out, "  {} --> {}", node_id(a), node_id(b));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::kind::testing::KINDS;

    fn pipeline(stages: &str) -> Result<Pipeline, Vec<String>> {
        load_str("p.yaml", format!("name: p\nstages:\n{stages}"), &[], &KINDS)
            .map_err(|e| e.diagnostics.into_iter().map(|d| d.message).collect())
    }

    fn errors(stages: &str) -> Vec<String> {
        match pipeline(stages) {
            Ok(_) => panic!("the spec should be refused"),
            Err(errors) => errors,
        }
    }

    fn ids(p: &Pipeline, indices: &[usize]) -> Vec<String> {
        indices
            .iter()
            .map(|&i| p.spec.stages[i].id.clone())
            .collect()
    }

    const DIAMOND: &str = "  d: {kind: node, inputs: {x: [b.out, c.out]}}\n  b: {kind: node, inputs: {x: a.out}}\n  c: {kind: node, inputs: {x: a.out}}\n  a: {kind: node}\n  e: {kind: node}\n";

    #[test]
    fn the_order_is_topological_and_keeps_the_spec_order_among_peers() {
        let p = pipeline(DIAMOND).unwrap();
        assert_eq!(ids(&p, &p.order), ["a", "b", "c", "d", "e"]);
        let d = p.index_of("d").unwrap();
        assert_eq!(ids(&p, &p.upstream(d)), ["b", "c"]);
    }

    #[test]
    fn selection_takes_what_a_target_needs_or_with_downstream_what_needs_it() {
        let p = pipeline(DIAMOND).unwrap();
        let b = p.index_of("b").unwrap();
        assert_eq!(ids(&p, &p.select(&[b], false)), ["a", "b"]);
        // Downstream of b is d, and d cannot run without c.
        assert_eq!(ids(&p, &p.select(&[b], true)), ["a", "b", "c", "d"]);
        assert_eq!(
            ids(&p, &p.select(&[], false)).len(),
            5,
            "no target: everything"
        );
    }

    #[test]
    fn a_cycle_is_reported_as_a_whole_circle() {
        let errors = errors(
            "  a: {kind: node, inputs: {x: c.out}}\n  b: {kind: node, inputs: {x: a.out}}\n  c: {kind: node, inputs: {x: b.out}}\n",
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("cycle") && e.contains('a') && e.contains('c')),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_stages_and_outputs_are_named() {
        let errors = errors(
            "  a: {kind: node}\n  b: {kind: node, inputs: {x: aa.out}}\n  c: {kind: node, inputs: {x: a.output}}\n",
        );
        assert!(
            errors.iter().any(|e| e.contains("there is no stage `aa`")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("stage `a` has no output `output`")),
            "{errors:?}"
        );
    }
}
