//! `aggregate`: an experiment's runs in one table and one chart. Reads the `summary.json`
//! of every bound metrics artifact (typically `fit@*.metrics` from a `matrix` group),
//! groups the runs by panel, series and x, and writes mean ± 2 standard errors over the
//! rest (the seeds) as a Parquet table, a Markdown table, an SVG chart and an HTML page
//! that holds both. Where every run of a point also has its figure per prompt (the
//! `clusters.json` that `evaluate` writes), the standard error is clustered two ways, by
//! run and by prompt (`report::two_way_clustered_mean_se`): the runs answer the same
//! prompts, so the spread of the run means alone misses how much the figure would move
//! on other prompts. With a `baseline` series it also says at which x each series first
//! reaches the baseline's final mean: the labels a method saves.

use std::collections::BTreeMap;
use std::fmt::Write;

use arrow::array::ArrayRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::lm::failed;
use super::{Kind, ParamError, Port, Signature, StageContext, StageError};
use crate::artifact::ArtifactType;
use crate::artifact::table::{Column, ColumnType::*, TableKind, TableRow, TableWriter, col};
use crate::report::{self, svg};
use crate::spec::node::PathSeg;

pub struct Aggregate;

/// Parameters of an `aggregate` stage. Paths are dotted keys into each run's
/// `summary.json` (`tags.budget`, `held_out.accuracy`).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateParams {
    /// The x of each run (a number).
    pub x: String,
    /// The value summarised over the runs that share panel, series and x.
    pub y: String,
    /// What tells the lines of a panel apart (default: one line).
    #[serde(default)]
    pub series: Option<String>,
    /// What tells the panels apart (default: one panel).
    #[serde(default)]
    pub panel: Option<String>,
    /// A series whose mean at its largest x is the level to reach: the report gives, per
    /// panel, the x at which each series first reaches it (linear interpolation between
    /// points) and the saving against the baseline's x.
    #[serde(default)]
    pub baseline: Option<String>,
    /// A logarithmic x axis.
    #[serde(default)]
    pub log_x: bool,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub x_label: Option<String>,
    #[serde(default)]
    pub y_label: Option<String>,
}

pub static AGGREGATE: TableKind = TableKind {
    name: "aggregate",
    // 2: the `prompts` column.
    version: 2,
    doc: "an experiment's runs summarised: mean and standard error per panel, series and x",
    columns: &[
        Column::new("panel", Utf8, false, "the panel's value (empty: one panel)"),
        Column::new(
            "series",
            Utf8,
            false,
            "the series' value (empty: one series)",
        ),
        Column::new("x", Float64, false, "the x value"),
        Column::new(
            "runs",
            UInt64,
            false,
            "how many runs share panel, series and x",
        ),
        Column::new("mean", Float64, false, "mean of y over those runs"),
        Column::new(
            "se",
            Float64,
            true,
            "standard error of the mean: clustered by run and prompt where `prompts` is set, over the runs otherwise (null with one run)",
        ),
        Column::new(
            "prompts",
            UInt64,
            true,
            "the prompts the standard error is clustered over (null: over the runs alone)",
        ),
        Column::new("lo", Float64, true, "mean - 2 se"),
        Column::new("hi", Float64, true, "mean + 2 se"),
    ],
};

#[derive(Debug, Clone)]
struct Row {
    panel: String,
    series: String,
    x: f64,
    runs: u64,
    mean: f64,
    se: Option<f64>,
    prompts: Option<u64>,
}

impl TableRow for Row {
    const KIND: &'static TableKind = &AGGREGATE;
    fn columns(rows: &[Self]) -> Vec<ArrayRef> {
        vec![
            col::utf8(rows.iter().map(|r| r.panel.as_str())),
            col::utf8(rows.iter().map(|r| r.series.as_str())),
            col::f64(rows.iter().map(|r| r.x)),
            col::u64(rows.iter().map(|r| r.runs)),
            col::f64(rows.iter().map(|r| r.mean)),
            col::f64_opt(rows.iter().map(|r| r.se)),
            col::u64_opt(rows.iter().map(|r| r.prompts)),
            col::f64_opt(rows.iter().map(|r| r.se.map(|se| r.mean - 2.0 * se))),
            col::f64_opt(rows.iter().map(|r| r.se.map(|se| r.mean + 2.0 * se))),
        ]
    }
}

/// One run's y, and its per-prompt values where the run has them.
#[derive(Debug, Clone)]
struct RunValue {
    y: f64,
    by_prompt: Option<BTreeMap<String, f64>>,
}

/// The values of one (panel, series) line: x (by its bits) -> (x, every run's value).
type ByX = BTreeMap<u64, (f64, Vec<RunValue>)>;

/// Mean and standard error of one point: the mean of the runs' values; the standard
/// error clustered by run and prompt when every run has per-prompt values (with the
/// number of prompts), over the runs otherwise.
fn point_estimate(values: &[RunValue]) -> (f64, f64, Option<u64>) {
    let ys: Vec<f64> = values.iter().map(|v| v.y).collect();
    let (mean, se_runs) = report::mean_se(&ys);
    let cells: Option<Vec<(usize, &str, f64)>> = values
        .iter()
        .enumerate()
        .map(|(run, v)| {
            v.by_prompt.as_ref().map(|by| {
                by.iter()
                    .map(move |(prompt, y)| (run, prompt.as_str(), *y))
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Option<Vec<_>>>()
        .map(|per_run| per_run.into_iter().flatten().collect());
    match cells {
        Some(cells) if values.len() >= 2 && !cells.is_empty() => {
            let prompts: std::collections::BTreeSet<&str> =
                cells.iter().map(|(_, p, _)| *p).collect();
            let (_, se) = report::two_way_clustered_mean_se(&cells);
            (mean, se, Some(prompts.len() as u64))
        }
        _ => (mean, se_runs, None),
    }
}

fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Kind for Aggregate {
    const NAME: &'static str = "aggregate";

    // 2: the reach table's header names all five columns.
    /// 3: standard errors clustered by run and prompt where the runs have per-prompt
    /// values (`clusters.json`); the table's `prompts` column.
    const VERSION: u32 = 3;

    const SUMMARY: &'static str =
        "summarise many runs' metrics: mean ± 2 SE per series and x, as a table and an SVG chart";

    type Params = AggregateParams;

    fn signature(
        &self,
        p: &AggregateParams,
        _inputs: &[&str],
    ) -> Result<Signature, Vec<ParamError>> {
        let mut errors = Vec::new();
        for (key, value) in [("x", Some(&p.x)), ("y", Some(&p.y))]
            .into_iter()
            .chain([("series", p.series.as_ref()), ("panel", p.panel.as_ref())])
        {
            if let Some(v) = value
                && (v.is_empty() || v.split('.').any(str::is_empty))
            {
                errors.push(ParamError::new(
                    vec![PathSeg::Key(key.into())],
                    format!("`{key}` must be a dotted path like `tags.budget`"),
                ));
            }
        }
        if p.baseline.is_some() && p.series.is_none() {
            errors.push(ParamError::new(
                vec![PathSeg::Key("baseline".into())],
                "`baseline` names a series: set `series` too",
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut runs = Port::new("runs", ArtifactType::Metrics);
        runs.many = true;
        Ok(Signature {
            inputs: vec![runs],
            open_inputs: false,
            outputs: vec![
                Port::new("table", ArtifactType::Table(Some("aggregate".into()))),
                Port::new("report", ArtifactType::Report),
            ],
            deps: Vec::new(),
        })
    }

    fn run(&self, p: &AggregateParams, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let runs = ctx.inputs.get("runs").cloned().unwrap_or_default();
        if runs.is_empty() {
            return Err(failed("no runs to aggregate"));
        }
        let (panels, series, values) = read_runs(p, ctx, &runs)?;
        let mut rows: Vec<Row> = Vec::new();
        for ((pi, si), by_x) in &values {
            let mut points: Vec<&(f64, Vec<RunValue>)> = by_x.values().collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (x, values) in points {
                let (mean, se, prompts) = point_estimate(values);
                rows.push(Row {
                    panel: panels[*pi].clone(),
                    series: series[*si].clone(),
                    x: *x,
                    runs: values.len() as u64,
                    mean,
                    se: se.is_finite().then_some(se),
                    prompts: prompts.filter(|_| se.is_finite()),
                });
            }
        }

        // Labels to reach the baseline's final level, per panel.
        let (reach, levels) = reach(p, &rows, &panels, &series)?;

        let provenance = ctx.provenance();
        let mut writer: TableWriter<Row> =
            TableWriter::create(&ctx.workspace.join(&ctx.outputs["table"]), &provenance)
                .map_err(failed)?;
        for row in &rows {
            writer.push(row.clone()).map_err(failed)?;
        }
        writer.finish().map_err(failed)?;

        let title = p
            .title
            .clone()
            .unwrap_or_else(|| format!("{} by {}", p.y, p.x));
        let chart = chart(p, &title, &panels, &series, &rows, &levels);
        let plot = svg::render(&chart);
        let markdown = markdown(p, &rows, &reach);
        let dir = ctx.workspace.join(&ctx.outputs["report"]);
        let write = |name: &str, contents: &str| {
            std::fs::write(dir.join(name), contents).map_err(|source| StageError::Io {
                context: format!("writing `{}`", dir.join(name).display()),
                source,
            })
        };
        std::fs::create_dir_all(&dir).map_err(|source| StageError::Io {
            context: format!("creating `{}`", dir.display()),
            source,
        })?;
        write("plot.svg", &plot)?;
        write("table.md", &markdown)?;
        write("index.html", &html(&title, &plot, &rows, &reach, p))?;
        let summary = json!({
            "runs": runs.len(),
            "x": p.x,
            "y": p.y,
            "points": rows.len(),
            "standard_errors": STANDARD_ERRORS,
            "reach": reach,
        });
        write(
            "summary.json",
            &format!(
                "{}\n",
                serde_json::to_string_pretty(&summary).map_err(failed)?
            ),
        )?;
        Ok(())
    }
}

/// Each run's (panel, series, x, y) from its `summary.json`: the panels and series in
/// order of first appearance, and the values by (panel, series) and x.
#[allow(clippy::type_complexity)]
fn read_runs(
    p: &AggregateParams,
    ctx: &StageContext<'_>,
    runs: &[std::path::PathBuf],
) -> Result<(Vec<String>, Vec<String>, BTreeMap<(usize, usize), ByX>), StageError> {
    let mut panels: Vec<String> = Vec::new();
    let mut series: Vec<String> = Vec::new();
    let mut values: BTreeMap<(usize, usize), ByX> = BTreeMap::new();
    for (n, run) in runs.iter().enumerate() {
        ctx.report(n as u64, runs.len() as u64);
        let path = ctx.workspace.join(run).join("summary.json");
        let summary: Value = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
            .map_err(|e| failed(format!("`{}`: {e}", path.display())))?;
        let get = |key: &str| {
            lookup(&summary, key)
                .filter(|v| !v.is_null())
                .ok_or_else(|| failed(format!("`{}` has no `{key}`", path.display())))
        };
        let number = |key: &str| {
            get(key).and_then(|v| {
                v.as_f64().ok_or_else(|| {
                    failed(format!(
                        "`{}`: `{key}` is {v}, not a number",
                        path.display()
                    ))
                })
            })
        };
        let x = number(&p.x)?;
        let y = number(&p.y)?;
        let by_prompt = read_clusters(&ctx.workspace.join(run), &p.y)?;
        let panel = match &p.panel {
            Some(key) => text(get(key)?),
            None => String::new(),
        };
        let line = match &p.series {
            Some(key) => text(get(key)?),
            None => String::new(),
        };
        let index =
            |list: &mut Vec<String>, name: String| match list.iter().position(|v| *v == name) {
                Some(i) => i,
                None => {
                    list.push(name);
                    list.len() - 1
                }
            };
        let key = (index(&mut panels, panel), index(&mut series, line));
        values
            .entry(key)
            .or_default()
            .entry(x.to_bits())
            .or_insert_with(|| (x, Vec::new()))
            .1
            .push(RunValue { y, by_prompt });
    }
    Ok((panels, series, values))
}

/// The per-prompt values of `y` from a run's `clusters.json`, when it has one and that
/// names `y`: an object of prompt id to number under the same dotted key as in
/// `summary.json`. A `clusters.json` that is there but broken is an error.
fn read_clusters(
    run: &std::path::Path,
    y: &str,
) -> Result<Option<BTreeMap<String, f64>>, StageError> {
    let path = run.join("clusters.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(format!("`{}`: {e}", path.display()))),
    };
    let clusters: Value =
        serde_json::from_str(&text).map_err(|e| failed(format!("`{}`: {e}", path.display())))?;
    let Some(values) = lookup(&clusters, y) else {
        return Ok(None);
    };
    let object = values.as_object().ok_or_else(|| {
        failed(format!(
            "`{}`: `{y}` is {values}, not an object of prompt values",
            path.display()
        ))
    })?;
    object
        .iter()
        .map(|(prompt, v)| {
            v.as_f64().map(|v| (prompt.clone(), v)).ok_or_else(|| {
                failed(format!(
                    "`{}`: `{y}.{prompt}` is {v}, not a number",
                    path.display()
                ))
            })
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// Where each series first reaches the baseline's final mean, per panel, and those levels.
fn reach(
    p: &AggregateParams,
    rows: &[Row],
    panels: &[String],
    series: &[String],
) -> Result<(Vec<Value>, Vec<f64>), StageError> {
    let curve = |panel: &str, line: &str| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.panel == panel && r.series == line)
            .map(|r| (r.x, r.mean))
            .collect()
    };
    let mut reach = Vec::new();
    let mut levels = Vec::new();
    if let Some(baseline) = &p.baseline {
        if !series.contains(baseline) {
            return Err(failed(format!(
                "`baseline: {baseline}` is not a series; the series are: {}",
                series.join(", ")
            )));
        }
        for panel in panels {
            let base = curve(panel, baseline);
            let Some(&(base_x, target)) = base.last() else {
                levels.push(f64::NAN);
                continue;
            };
            levels.push(target);
            for line in series {
                let at = report::first_reach(&curve(panel, line), target);
                reach.push(json!({
                    "panel": panel,
                    "series": line,
                    "target": target,
                    "baseline_x": base_x,
                    "x": at,
                    "saving": at.map(|x| 1.0 - x / base_x),
                }));
            }
        }
    }

    Ok((reach, levels))
}

/// The chart: a panel per panel value, a line with ± 2 SE bars per series.
fn chart(
    p: &AggregateParams,
    title: &str,
    panels: &[String],
    series: &[String],
    rows: &[Row],
    levels: &[f64],
) -> svg::Chart {
    svg::Chart {
        title: title.to_string(),
        x_label: p.x_label.clone().unwrap_or_else(|| p.x.clone()),
        y_label: p.y_label.clone().unwrap_or_else(|| p.y.clone()),
        log_x: p.log_x,
        reference: p
            .baseline
            .as_ref()
            .map(|b| (format!("{b}'s final mean"), levels.to_vec())),
        panels: panels
            .iter()
            .map(|panel| svg::Panel {
                title: panel_title(p, panel),
                series: series
                    .iter()
                    .map(|line| svg::Series {
                        name: line.clone(),
                        points: rows
                            .iter()
                            .filter(|r| &r.panel == panel && &r.series == line)
                            .map(|r| svg::Point {
                                x: r.x,
                                y: r.mean,
                                lo: r.se.map_or(f64::NAN, |se| r.mean - 2.0 * se),
                                hi: r.se.map_or(f64::NAN, |se| r.mean + 2.0 * se),
                            })
                            .collect(),
                    })
                    .filter(|s| !s.points.is_empty())
                    .collect(),
            })
            .collect(),
    }
}

fn panel_title(p: &AggregateParams, panel: &str) -> String {
    match &p.panel {
        Some(key) => format!("{} = {panel}", key.rsplit('.').next().unwrap_or(key)),
        None => String::new(),
    }
}

/// How the intervals are computed, as the reports say it.
const STANDARD_ERRORS: &str = "± 2 standard errors: clustered two ways, by run and by prompt, where the runs have per-prompt values (runs × prompts); over the runs alone otherwise";

/// The `runs` cell: `5 × 96` when the interval is clustered by run and prompt.
fn runs_cell(r: &Row) -> String {
    match r.prompts {
        Some(prompts) => format!("{} × {prompts}", r.runs),
        None => r.runs.to_string(),
    }
}

fn fmt(v: f64) -> String {
    if v == v.round() && v.abs() < 1e9 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn markdown(p: &AggregateParams, rows: &[Row], reach: &[Value]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| {} | {} | {} | runs (× prompts) | {} (mean ± 2 SE) |\n|---|---|---:|---:|---:|",
        p.panel.as_deref().unwrap_or("panel"),
        p.series.as_deref().unwrap_or("series"),
        p.x,
        p.y
    );
    for r in rows {
        let spread =
            r.se.map_or("n/a".to_string(), |se| format!("{:.3}", 2.0 * se));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.3} ± {spread} |",
            r.panel,
            r.series,
            fmt(r.x),
            runs_cell(r),
            r.mean
        );
    }
    let _ = writeln!(out, "\n{STANDARD_ERRORS}.");
    if !reach.is_empty() {
        let _ = writeln!(
            out,
            "\n| {} | {} | target: {} of {} at its largest {} | {} at which it is reached | saving |\n|---|---|---:|---:|---:|",
            p.panel.as_deref().unwrap_or("panel"),
            p.series.as_deref().unwrap_or("series"),
            p.y,
            p.baseline.as_deref().unwrap_or_default(),
            p.x,
            p.x
        );
        for r in reach {
            let at = r["x"]
                .as_f64()
                .map_or("not reached".to_string(), |x| format!("{x:.0}"));
            let saving = r["saving"]
                .as_f64()
                .map_or("—".to_string(), |s| format!("{:.0}%", 100.0 * s));
            let _ = writeln!(
                out,
                "| {} | {} | {:.3} | {at} | {saving} |",
                r["panel"].as_str().unwrap_or_default(),
                r["series"].as_str().unwrap_or_default(),
                r["target"].as_f64().unwrap_or(f64::NAN),
            );
        }
    }
    out
}

fn html(title: &str, plot: &str, rows: &[Row], reach: &[Value], p: &AggregateParams) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut out = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title>\n<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style></head><body>\n<h1>{}</h1>\n{plot}\n<table><tr><th>{}</th><th>{}</th><th>{}</th><th>runs (× prompts)</th><th>mean</th><th>± 2 SE</th></tr>\n",
        esc(title),
        esc(title),
        esc(p.panel.as_deref().unwrap_or("panel")),
        esc(p.series.as_deref().unwrap_or("series")),
        esc(&p.x),
    );
    for r in rows {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td></tr>",
            esc(&r.panel),
            esc(&r.series),
            fmt(r.x),
            runs_cell(r),
            r.mean,
            r.se.map_or("n/a".into(), |se| format!("{:.3}", 2.0 * se))
        );
    }
    out.push_str("</table>\n");
    let _ = writeln!(out, "<p>{}.</p>", esc(STANDARD_ERRORS));
    if !reach.is_empty() {
        out.push_str("<table><tr><th>panel</th><th>series</th><th>target</th><th>reached at</th><th>saving</th></tr>\n");
        for r in reach {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td><td>{}</td></tr>",
                esc(r["panel"].as_str().unwrap_or_default()),
                esc(r["series"].as_str().unwrap_or_default()),
                r["target"].as_f64().unwrap_or(f64::NAN),
                r["x"]
                    .as_f64()
                    .map_or("not reached".into(), |x| format!("{x:.0}")),
                r["saving"]
                    .as_f64()
                    .map_or("—".into(), |s| format!("{:.0}%", 100.0 * s)),
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("</body></html>\n");
    out
}
