//! `annotate`: the simulated annotator. Labels candidate responses from the HHH world's
//! oracle with configurable noise (pairs by Bradley-Terry, rankings by Plackett-Luce,
//! 1-5 scores by ordered probit, flags with miss and false-alarm rates), by several
//! annotators with their own noise; or exports a batch for people to label, which
//! `feedback-ingest` (format `hone`) reads back once filled in.

use std::collections::BTreeMap;

use arrow::array::ArrayRef;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Kind, ParamError, Port, Signature, StageContext, StageError};
use crate::artifact::ArtifactType;
use crate::artifact::candidates::{Candidate, read_candidates};
use crate::artifact::feedback::{Comparison, FeedbackWriter, Flag, Ranking, Record, Score};
use crate::artifact::table::{Column, ColumnType::*, TableKind, TableRow, TableWriter, col};
use crate::spec::node::PathSeg;
use crate::world::annotator::{self, DEFAULT_PROBIT_THRESHOLDS};
use crate::world::{OracleScore, World, oracle};

pub struct Annotate;

/// What to label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LabelKind {
    Pairs,
    Rankings,
    Scores,
    Flags,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Label with the simulated annotators.
    #[default]
    Simulate,
    /// Write a batch for people to label (JSONL or CSV, by `export_format`).
    Export,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    #[default]
    Jsonl,
    Csv,
}

/// One simulated annotator.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnnotatorParams {
    /// Recorded in the `annotator` column.
    pub id: String,
    /// Bradley-Terry / Plackett-Luce temperature on the oracle reward: P(a over b) =
    /// sigmoid((r_a - r_b) / temperature). 0 is a perfect annotator.
    #[serde(default = "default_temperature")]
    #[schemars(range(min = 0))]
    pub temperature: f64,
    /// Standard deviation of the ordered-probit noise on 1-5 scores.
    #[serde(default = "default_score_noise")]
    #[schemars(range(min = 0))]
    pub score_noise: f64,
    /// Probability of missing a behaviour that is there.
    #[serde(default = "default_miss_rate")]
    #[schemars(range(min = 0, max = 1))]
    pub miss_rate: f64,
    /// Probability of flagging a behaviour that is not there.
    #[serde(default = "default_false_alarm_rate")]
    #[schemars(range(min = 0, max = 1))]
    pub false_alarm_rate: f64,
}

fn default_temperature() -> f64 {
    0.5
}
fn default_score_noise() -> f64 {
    0.5
}
fn default_miss_rate() -> f64 {
    0.1
}
fn default_false_alarm_rate() -> f64 {
    0.02
}
fn default_world() -> String {
    "data/hhh/facts.jsonl".into()
}
fn default_labels() -> Vec<LabelKind> {
    vec![LabelKind::Pairs]
}
fn default_one() -> usize {
    1
}
fn default_annotators() -> Vec<AnnotatorParams> {
    vec![AnnotatorParams {
        id: "sim-0".into(),
        temperature: default_temperature(),
        score_noise: default_score_noise(),
        miss_rate: default_miss_rate(),
        false_alarm_rate: default_false_alarm_rate(),
    }]
}

/// Parameters of an `annotate` stage.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnnotateParams {
    /// The HHH world's fact table, the oracle's truth (a workspace file).
    #[serde(default = "default_world")]
    pub world: String,
    /// A candidates file (JSONL or Parquet, fields `prompt_id`, `prompt`, `response`),
    /// when no `candidates` input is bound.
    #[serde(default)]
    pub candidates_path: Option<String>,
    /// What to label (default `[pairs]`).
    #[serde(default = "default_labels")]
    #[schemars(length(min = 1))]
    pub labels: Vec<LabelKind>,
    /// Pairs labelled per prompt (distinct pairs of different responses).
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub pairs_per_prompt: usize,
    /// Responses in each ranking (default: all of a prompt's).
    #[serde(default)]
    #[schemars(range(min = 2))]
    pub ranking_size: Option<usize>,
    /// Label only this many prompts, chosen at random (default: all).
    #[serde(default)]
    pub max_prompts: Option<usize>,
    /// The annotators (default: one, `sim-0`, with the default noise).
    #[serde(default = "default_annotators")]
    #[schemars(length(min = 1))]
    pub annotators: Vec<AnnotatorParams>,
    /// How many different annotators label each item.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub annotators_per_item: usize,
    /// Ordered-probit cut points between scores 1|2, 2|3, 3|4, 4|5 on the reward scale.
    #[serde(default)]
    pub thresholds: Option<[f64; 4]>,
    /// `simulate` (default) or `export` a batch for people.
    #[serde(default)]
    pub mode: Mode,
    /// The file type of an exported batch.
    #[serde(default)]
    pub export_format: ExportFormat,
}

/// The oracle's verdict on every candidate: the ground truth that evaluations compare with.
pub static ORACLE: TableKind = TableKind {
    name: "oracle",
    version: 1,
    doc: "the HHH oracle's scores of candidate responses (ground truth, never shown to a learner)",
    columns: &[
        Column::new("prompt_id", Utf8, false, "prompt identifier"),
        Column::new("prompt", Utf8, false, "the prompt text"),
        Column::new("response", Utf8, false, "the response"),
        Column::new("helpfulness", Float64, false, "in [0, 1]"),
        Column::new("honesty", Float64, false, "in [0, 1]"),
        Column::new("harmlessness", Float64, false, "in [0, 1]"),
        Column::new("reward", Float64, false, "the true reward, in [-2.5, 2]"),
        Column::new(
            "hallucination",
            Boolean,
            false,
            "a claim contradicts the fact table",
        ),
        Column::new(
            "bias",
            Boolean,
            false,
            "a prejudiced statement about a people",
        ),
        Column::new("unsafe", Boolean, false, "unsafe advice"),
    ],
};

struct OracleRow<'a> {
    candidate: &'a Candidate,
    score: OracleScore,
}

impl TableRow for OracleRow<'_> {
    const KIND: &'static TableKind = &ORACLE;
    fn columns(rows: &[Self]) -> Vec<ArrayRef> {
        vec![
            col::utf8(rows.iter().map(|r| r.candidate.prompt_id.as_str())),
            col::utf8(rows.iter().map(|r| r.candidate.prompt.as_str())),
            col::utf8(rows.iter().map(|r| r.candidate.response.as_str())),
            col::f64(rows.iter().map(|r| r.score.helpfulness)),
            col::f64(rows.iter().map(|r| r.score.honesty)),
            col::f64(rows.iter().map(|r| r.score.harmlessness)),
            col::f64(rows.iter().map(|r| r.score.reward)),
            col::bool(rows.iter().map(|r| r.score.flags.hallucination)),
            col::bool(rows.iter().map(|r| r.score.flags.bias)),
            col::bool(rows.iter().map(|r| r.score.flags.unsafe_advice)),
        ]
    }
}

impl Kind for Annotate {
    const NAME: &'static str = "annotate";

    // 2: the feedback directory's summary.json counts dropped and missing values
    // (feedback-ingest v2's format).
    const VERSION: u32 = 2;

    const SUMMARY: &'static str = "label candidates with simulated annotators from the HHH oracle, or export a batch for people";

    type Params = AnnotateParams;

    fn signature(
        &self,
        p: &AnnotateParams,
        input_names: &[&str],
    ) -> Result<Signature, Vec<ParamError>> {
        let mut errors = Vec::new();
        let key = |k: &str| vec![PathSeg::Key(k.into())];
        let has_input = input_names.contains(&"candidates") || input_names.contains(&"pairs");
        if input_names.contains(&"pairs") {
            if input_names.contains(&"candidates") {
                errors.push(ParamError::new(
                    Vec::new(),
                    "bind `pairs` or `candidates`, not both",
                ));
            }
            if p.labels != [LabelKind::Pairs] || p.mode != Mode::Simulate {
                errors.push(ParamError::new(key("labels"), "with a `pairs` input, `annotate` labels exactly those pairs: `labels: [pairs]`, `mode: simulate`"));
            }
        }
        match (&p.candidates_path, has_input) {
            (Some(_), true) => errors.push(ParamError::new(
                key("candidates_path"),
                "give `candidates_path` or a `candidates` input, not both",
            )),
            (None, false) => errors.push(ParamError::new(
                Vec::new(),
                "missing required key `candidates_path` (or bind a `candidates` or `pairs` input)",
            )),
            _ => {}
        }
        for (i, a) in p.annotators.iter().enumerate() {
            let at = |k: &str| {
                vec![
                    PathSeg::Key("annotators".into()),
                    PathSeg::Index(i),
                    PathSeg::Key(k.into()),
                ]
            };
            if p.annotators[..i].iter().any(|b| b.id == a.id) {
                errors.push(ParamError::new(
                    at("id"),
                    format!("annotator id `{}` appears twice", a.id),
                ));
            }
        }
        if p.annotators_per_item > p.annotators.len() {
            errors.push(ParamError::new(
                key("annotators_per_item"),
                format!(
                    "`annotators_per_item` must be between 1 and the number of annotators ({})",
                    p.annotators.len()
                ),
            ));
        }
        if let Err(why) = annotator::check_probit_parameters(
            &p.thresholds.unwrap_or(DEFAULT_PROBIT_THRESHOLDS),
            1.0,
        ) {
            errors.push(ParamError::new(key("thresholds"), why));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut candidates =
            Port::new("candidates", ArtifactType::Table(Some("candidates".into())));
        candidates.required = false;
        let mut pairs = Port::new("pairs", ArtifactType::Table(Some("pairs".into())));
        pairs.required = false;
        let outputs = match p.mode {
            Mode::Simulate => vec![
                Port::new("feedback", ArtifactType::Feedback),
                Port::new("oracle", ArtifactType::Table(Some("oracle".into()))),
            ],
            Mode::Export => vec![Port::new("batch", ArtifactType::Files)],
        };
        let mut deps = vec![p.world.clone()];
        deps.extend(p.candidates_path.clone());
        Ok(Signature {
            inputs: vec![candidates, pairs],
            open_inputs: false,
            outputs,
            deps,
        })
    }

    fn run(&self, p: &AnnotateParams, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let failed = StageError::Failed;
        let world_text = std::fs::read_to_string(ctx.workspace.join(&p.world))
            .map_err(|e| failed(format!("reading `{}`: {e}", p.world)))?;
        let world = World::from_facts_jsonl(&world_text)
            .map_err(|e| failed(format!("`{}`: {e}", p.world)))?;
        if let Some(pairs) = ctx.inputs.get("pairs").and_then(|x| x.first()) {
            return label_pairs(ctx, p, &world, &ctx.workspace.join(pairs));
        }
        let source = match (
            &p.candidates_path,
            ctx.inputs.get("candidates").and_then(|c| c.first()),
        ) {
            (Some(path), _) => ctx.workspace.join(path),
            (None, Some(input)) => ctx.workspace.join(input),
            (None, None) => return Err(failed("no candidates".into())),
        };
        let candidates = read_candidates(&source).map_err(failed)?;
        let mut groups: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
        for c in &candidates {
            groups.entry(c.prompt_id.as_str()).or_default().push(c);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
        let mut prompt_ids: Vec<&str> = groups.keys().copied().collect();
        if let Some(n) = p.max_prompts {
            prompt_ids.shuffle(&mut rng);
            prompt_ids.truncate(n);
            prompt_ids.sort_unstable();
        }
        let provenance = ctx.provenance();
        if p.mode == Mode::Export {
            let path = ctx.workspace.join(&ctx.outputs["batch"]);
            return export(p, &groups, &prompt_ids, &path, &mut rng).map_err(|e| StageError::Io {
                context: "writing the batch".into(),
                source: e,
            });
        }

        // The oracle's verdicts, once per candidate.
        let verdicts = judge(&world, &candidates)?;
        let mut oracle_rows: TableWriter<OracleRow<'_>> =
            TableWriter::create(&ctx.workspace.join(&ctx.outputs["oracle"]), &provenance)
                .map_err(|e| failed(e.to_string()))?;
        for c in &candidates {
            let score = verdicts[&(c.prompt_id.as_str(), c.response.as_str())];
            if score.recognised_prompt {
                oracle_rows
                    .push(OracleRow {
                        candidate: c,
                        score,
                    })
                    .map_err(|e| failed(e.to_string()))?;
            }
        }
        oracle_rows.finish().map_err(|e| failed(e.to_string()))?;

        let mut writer =
            FeedbackWriter::create(&ctx.workspace.join(&ctx.outputs["feedback"]), &provenance)
                .map_err(|e| failed(e.to_string()))?;
        let thresholds = p.thresholds.unwrap_or(DEFAULT_PROBIT_THRESHOLDS);
        let mut item = 0u64;
        for (n, prompt_id) in prompt_ids.iter().enumerate() {
            ctx.report(n as u64 + 1, prompt_ids.len() as u64);
            if n % 64 == 0 && ctx.cancelled() {
                return Err(StageError::Cancelled);
            }
            // Distinct responses only, and only those the oracle can judge.
            let mut responses: Vec<(&Candidate, f64)> = Vec::new();
            for c in &groups[prompt_id] {
                let reward = verdicts[&(c.prompt_id.as_str(), c.response.as_str())].reward;
                if reward.is_finite() && !responses.iter().any(|(o, _)| o.response == c.response) {
                    responses.push((c, reward));
                }
            }
            if responses.is_empty() {
                continue;
            }
            let prompt = &responses[0].0.prompt;
            for kind in &p.labels {
                label(
                    p,
                    *kind,
                    prompt_id,
                    prompt,
                    &responses,
                    &verdicts,
                    &thresholds,
                    &mut rng,
                    &mut writer,
                    &mut item,
                )?;
            }
        }
        writer.summary.rows_read = item;
        let summary = writer.finish().map_err(|e| failed(e.to_string()))?;
        tracing::info!(
            comparisons = summary.comparisons,
            rankings = summary.rankings,
            scores = summary.scores,
            flags = summary.flags,
            "annotated"
        );
        Ok(())
    }
}

/// The oracle's verdict on each (prompt id, response); an error when it can judge none.
fn judge<'c>(
    world: &World,
    candidates: &'c [Candidate],
) -> Result<BTreeMap<(&'c str, &'c str), OracleScore>, StageError> {
    let failed = StageError::Failed;
    let mut verdicts: BTreeMap<(&str, &str), OracleScore> = BTreeMap::new();
    let mut unrecognised = 0usize;
    for c in candidates {
        let mut verdict = oracle::score(world, &c.prompt, &c.response);
        if !verdict.recognised_prompt {
            unrecognised += 1;
            verdict.reward = f64::NAN;
        }
        verdicts.insert((c.prompt_id.as_str(), c.response.as_str()), verdict);
    }
    if unrecognised == candidates.len() {
        return Err(failed(format!(
            "none of the {} candidates' prompts is an HHH world prompt: the oracle cannot judge them",
            candidates.len()
        )));
    }
    if unrecognised > 0 {
        tracing::warn!(
            unrecognised,
            "candidates whose prompt is not an HHH world prompt are left unlabelled"
        );
    }
    Ok(verdicts)
}

/// One prompt's labels of one kind, from the simulated annotators.
#[allow(clippy::too_many_arguments)]
fn label(
    p: &AnnotateParams,
    kind: LabelKind,
    prompt_id: &str,
    prompt: &str,
    responses: &[(&Candidate, f64)],
    verdicts: &BTreeMap<(&str, &str), OracleScore>,
    thresholds: &[f64; 4],
    rng: &mut ChaCha8Rng,
    writer: &mut FeedbackWriter,
    item: &mut u64,
) -> Result<(), StageError> {
    match kind {
        LabelKind::Pairs => {
            let mut pairs = all_pairs(responses.len());
            pairs.shuffle(rng);
            pairs.truncate(p.pairs_per_prompt);
            for (i, j) in pairs {
                // Present the pair in a random order, as a labelling tool would.
                let (i, j) = if rng.random_bool(0.5) { (i, j) } else { (j, i) };
                for a in pick_annotators(p, rng) {
                    *item += 1;
                    let first =
                        annotator::prefer_first(rng, responses[i].1, responses[j].1, a.temperature);
                    let (chosen, rejected) = if first { (i, j) } else { (j, i) };
                    push(
                        writer,
                        Record::Comparison(Comparison {
                            prompt_id: prompt_id.to_string(),
                            prompt: prompt.to_string(),
                            chosen: responses[chosen].0.response.clone(),
                            rejected: responses[rejected].0.response.clone(),
                            margin: None,
                            annotator: Some(a.id.clone()),
                            source_row: *item,
                        }),
                    )?;
                }
            }
        }
        LabelKind::Rankings => {
            if responses.len() < 2 {
                return Ok(());
            }
            let mut subset: Vec<usize> = (0..responses.len()).collect();
            subset.shuffle(rng);
            subset.truncate(p.ranking_size.unwrap_or(responses.len()));
            let rewards: Vec<f64> = subset.iter().map(|&k| responses[k].1).collect();
            for a in pick_annotators(p, rng) {
                *item += 1;
                let order = annotator::plackett_luce(rng, &rewards, a.temperature);
                push(
                    writer,
                    Record::Ranking(Ranking {
                        prompt_id: prompt_id.to_string(),
                        prompt: prompt.to_string(),
                        responses: order
                            .iter()
                            .map(|&o| responses[subset[o]].0.response.clone())
                            .collect(),
                        annotator: Some(a.id.clone()),
                        source_row: *item,
                    }),
                )?;
            }
        }
        LabelKind::Scores => {
            for (c, reward) in responses {
                for a in pick_annotators(p, rng) {
                    *item += 1;
                    let score = annotator::ordered_probit(rng, *reward, thresholds, a.score_noise);
                    push(
                        writer,
                        Record::Score(Score {
                            prompt_id: prompt_id.to_string(),
                            prompt: prompt.to_string(),
                            response: c.response.clone(),
                            aspect: "overall".into(),
                            score: f64::from(score),
                            scale_min: 1.0,
                            scale_max: 5.0,
                            annotator: Some(a.id.clone()),
                            source_row: *item,
                        }),
                    )?;
                }
            }
        }
        LabelKind::Flags => {
            for (c, _) in responses {
                let truth = &verdicts[&(c.prompt_id.as_str(), c.response.as_str())].flags;
                for a in pick_annotators(p, rng) {
                    for (flag, present) in [
                        ("hallucination", truth.hallucination),
                        ("bias", truth.bias),
                        ("unsafe", truth.unsafe_advice),
                    ] {
                        *item += 1;
                        let value = annotator::flag(rng, present, a.miss_rate, a.false_alarm_rate);
                        push(
                            writer,
                            Record::Flag(Flag {
                                prompt_id: prompt_id.to_string(),
                                prompt: prompt.to_string(),
                                response: c.response.clone(),
                                flag: flag.into(),
                                value,
                                annotator: Some(a.id.clone()),
                                source_row: *item,
                            }),
                        )?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn push(writer: &mut FeedbackWriter, record: Record) -> Result<(), StageError> {
    writer
        .push(record)
        .map_err(|e| StageError::Failed(e.to_string()))
}

/// `annotators_per_item` distinct annotators, at random.
fn pick_annotators<'a>(p: &'a AnnotateParams, rng: &mut impl Rng) -> Vec<&'a AnnotatorParams> {
    p.annotators
        .choose_multiple(rng, p.annotators_per_item)
        .collect()
}

/// Every pair (i, j), i < j, of `n` responses, in order.
fn all_pairs(n: usize) -> Vec<(usize, usize)> {
    (0..n)
        .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
        .collect()
}

/// Writes the items to label as hone-format rows with the label left empty: pairs as
/// `response_a`/`response_b` with `choice` ("a" or "b") to fill in, scores with `score`,
/// flags with `value`, rankings as `responses` to reorder best first.
fn export(
    p: &AnnotateParams,
    groups: &BTreeMap<&str, Vec<&Candidate>>,
    prompt_ids: &[&str],
    path: &std::path::Path,
    rng: &mut impl Rng,
) -> std::io::Result<()> {
    let mut rows: Vec<serde_json::Map<String, Value>> = Vec::new();
    for prompt_id in prompt_ids {
        let mut responses: Vec<&Candidate> = Vec::new();
        for c in &groups[prompt_id] {
            if !responses.iter().any(|o| o.response == c.response) {
                responses.push(c);
            }
        }
        let prompt = responses[0].prompt.clone();
        let base = |kind: &str| {
            let mut row = serde_json::Map::new();
            row.insert("kind".into(), Value::from(kind));
            row.insert("prompt_id".into(), Value::from(*prompt_id));
            row.insert("prompt".into(), Value::from(prompt.clone()));
            row
        };
        for kind in &p.labels {
            match kind {
                LabelKind::Pairs => {
                    let mut pairs = all_pairs(responses.len());
                    pairs.shuffle(rng);
                    for (i, j) in pairs.into_iter().take(p.pairs_per_prompt) {
                        let mut row = base("comparison");
                        row.insert(
                            "response_a".into(),
                            Value::from(responses[i].response.clone()),
                        );
                        row.insert(
                            "response_b".into(),
                            Value::from(responses[j].response.clone()),
                        );
                        row.insert("choice".into(), Value::Null);
                        rows.push(row);
                    }
                }
                LabelKind::Rankings if responses.len() >= 2 => {
                    let mut shuffled: Vec<String> =
                        responses.iter().map(|c| c.response.clone()).collect();
                    shuffled.shuffle(rng);
                    let mut row = base("ranking");
                    row.insert("responses".into(), Value::from(shuffled));
                    rows.push(row);
                }
                LabelKind::Rankings => {}
                LabelKind::Scores => {
                    for c in &responses {
                        let mut row = base("score");
                        row.insert("response".into(), Value::from(c.response.clone()));
                        row.insert("score".into(), Value::Null);
                        rows.push(row);
                    }
                }
                LabelKind::Flags => {
                    for c in &responses {
                        for flag in crate::feedback::formats::FLAG_NAMES {
                            let mut row = base("flag");
                            row.insert("response".into(), Value::from(c.response.clone()));
                            row.insert("flag".into(), Value::from(flag));
                            row.insert("value".into(), Value::Null);
                            rows.push(row);
                        }
                    }
                }
            }
        }
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    match p.export_format {
        ExportFormat::Jsonl => {
            for row in rows {
                use std::io::Write;
                writeln!(out, "{}", Value::Object(row))?;
            }
        }
        ExportFormat::Csv => {
            let columns = [
                "kind",
                "prompt_id",
                "prompt",
                "response_a",
                "response_b",
                "choice",
                "response",
                "responses",
                "score",
                "flag",
                "value",
            ];
            let mut writer = csv::Writer::from_writer(out);
            writer.write_record(columns)?;
            for row in rows {
                let cells: Vec<String> = columns
                    .iter()
                    .map(|c| match row.get(*c) {
                        None | Some(Value::Null) => String::new(),
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                    })
                    .collect();
                writer.write_record(cells)?;
            }
            writer.flush()?;
        }
    }
    Ok(())
}

/// Labels exactly the given pairs (from `odpo-select`): each by `annotators_per_item`
/// annotators, Bradley-Terry on the oracle's rewards.
fn label_pairs(
    ctx: &StageContext<'_>,
    p: &AnnotateParams,
    world: &World,
    pairs_path: &std::path::Path,
) -> Result<(), StageError> {
    let failed = |e: String| StageError::Failed(e);
    let rows = crate::artifact::table::read_rows(pairs_path).map_err(|e| failed(e.to_string()))?;
    let text = |r: &serde_json::Map<String, Value>, k: &str| {
        r.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let provenance = ctx.provenance();
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
    let mut seen: BTreeMap<(String, String), Candidate> = BTreeMap::new();
    let mut writer =
        FeedbackWriter::create(&ctx.workspace.join(&ctx.outputs["feedback"]), &provenance)
            .map_err(|e| failed(e.to_string()))?;
    let mut item = 0u64;
    for (n, r) in rows.iter().enumerate() {
        ctx.report(n as u64 + 1, rows.len() as u64);
        let (prompt_id, prompt) = (text(r, "prompt_id"), text(r, "prompt"));
        let (a, b) = (text(r, "response_a"), text(r, "response_b"));
        let (va, vb) = (
            oracle::score(world, &prompt, &a),
            oracle::score(world, &prompt, &b),
        );
        if !va.recognised_prompt {
            return Err(failed(format!(
                "pair {}: `{prompt}` is not an HHH world prompt",
                n + 1
            )));
        }
        for response in [&a, &b] {
            seen.entry((prompt_id.clone(), response.clone()))
                .or_insert_with(|| Candidate {
                    prompt_id: prompt_id.clone(),
                    prompt: prompt.to_string(),
                    response: response.clone(),
                    sample: 0,
                    token_ids: None,
                    logprob_sum: None,
                    seed: 0,
                });
        }
        for annotator in pick_annotators(p, &mut rng) {
            item += 1;
            let first =
                annotator::prefer_first(&mut rng, va.reward, vb.reward, annotator.temperature);
            let (chosen, rejected) = if first { (&a, &b) } else { (&b, &a) };
            push(
                &mut writer,
                Record::Comparison(Comparison {
                    prompt_id: prompt_id.clone(),
                    prompt: prompt.to_string(),
                    chosen: chosen.clone(),
                    rejected: rejected.clone(),
                    margin: None,
                    annotator: Some(annotator.id.clone()),
                    source_row: item,
                }),
            )?;
        }
    }
    writer.summary.rows_read = item;
    writer.finish().map_err(|e| failed(e.to_string()))?;
    let mut oracle_rows: TableWriter<OracleRow<'_>> =
        TableWriter::create(&ctx.workspace.join(&ctx.outputs["oracle"]), &provenance)
            .map_err(|e| failed(e.to_string()))?;
    for candidate in seen.values() {
        let score = oracle::score(world, &candidate.prompt, &candidate.response);
        oracle_rows
            .push(OracleRow { candidate, score })
            .map_err(|e| failed(e.to_string()))?;
    }
    oracle_rows.finish().map_err(|e| failed(e.to_string()))?;
    Ok(())
}
