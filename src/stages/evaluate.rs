//! `evaluate`: what training did to the policies. Each policy answers the same held-out
//! prompts with the same random streams; hone measures the reward model's score, in the
//! HHH world the oracle's reward, its three axes and flag rates, the KL to the reference,
//! length, and win rates against the first policy (by the oracle and by the reward model).
//! Metrics go to JSON and Parquet; an HTML page with charts (training curves from the
//! stages' histories, win rates) and sample responses opens offline.

use std::collections::BTreeMap;
use std::fmt::Write;

use arrow::array::ArrayRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::lm::{self, failed};
use super::{Kind, ParamError, Port, Signature, StageContext, StageError};
use crate::artifact::ArtifactType;
use crate::artifact::table::{self, Column, ColumnType::*, TableKind, TableRow, col};
use crate::model::CausalLm;
use crate::policy::data::read_prompts;
use crate::policy::logprobs::per_token;
use crate::policy::reward::RewardScorer;
use crate::policy::rollout::{self, RolloutParams, rollout};
use crate::report::{self, svg};
use crate::spec::derive_seed;
use crate::spec::node::PathSeg;
use crate::world::{World, oracle};

pub struct Evaluate;

fn default_prompts() -> String {
    "data/hhh/eval_prompts.jsonl".into()
}
fn default_max_new() -> usize {
    24
}
fn default_one() -> f64 {
    1.0
}
fn default_samples() -> usize {
    1
}
fn default_world() -> Option<String> {
    Some("data/hhh/facts.jsonl".into())
}

/// Parameters of an `evaluate` stage.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// The policies, by the input ports that bind them; the first is the baseline that win
    /// rates compare with (and the KL reference, unless `reference` is bound).
    #[schemars(length(min = 1))]
    pub policies: Vec<String>,
    /// Held-out prompts (JSONL with `text` or `prompt`, optional `id`).
    #[serde(default = "default_prompts")]
    pub prompts: String,
    #[serde(default)]
    pub max_prompts: Option<usize>,
    #[serde(default = "default_samples")]
    #[schemars(range(min = 1))]
    pub samples_per_prompt: usize,
    #[serde(default = "lm::default_template")]
    pub template: String,
    #[serde(default = "lm::default_stop")]
    pub stop: Vec<String>,
    #[serde(default = "default_max_new")]
    #[schemars(range(min = 1))]
    pub max_new_tokens: usize,
    /// Sampling temperature (KL is measured under the same temperature).
    #[serde(default = "default_one")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub temperature: f64,
    /// The HHH world's fact table, for the oracle; `null` for no oracle (data from outside
    /// the world).
    #[serde(default = "default_world")]
    pub world: Option<String>,
    /// How the reward model reads a response (default: the one it was fitted with).
    #[serde(default)]
    pub reward_template: Option<String>,
    /// How many sample responses per policy the report shows.
    #[serde(default = "default_report_samples")]
    pub report_samples: usize,
    /// Free-form labels copied into `summary.json` (`tags`), for `aggregate`.
    #[serde(default)]
    pub tags: BTreeMap<String, Value>,
    #[serde(default = "lm::default_device")]
    pub device: String,
}

fn default_report_samples() -> usize {
    8
}

const FIXED_PORTS: [&str; 3] = ["reward_model", "reference", "histories"];

pub static EVALUATION: TableKind = TableKind {
    name: "evaluation",
    version: 1,
    doc: "every evaluated response: its policy, scores and flags",
    columns: &[
        Column::new("policy", Utf8, false, "the policy's name (its input port)"),
        Column::new("prompt_id", Utf8, false, "prompt identifier"),
        Column::new("prompt", Utf8, false, "the prompt text"),
        Column::new("sample", UInt64, false, "sample index for the prompt"),
        Column::new("response", Utf8, false, "the response"),
        Column::new("tokens", UInt64, false, "response length in tokens"),
        Column::new("ended", Boolean, false, "ended by EOS or a stop string"),
        Column::new(
            "kl",
            Float64,
            false,
            "log π - log π_ref summed over the response (nats)",
        ),
        Column::new(
            "rm_score",
            Float64,
            true,
            "the reward model's score, offset removed",
        ),
        Column::new(
            "oracle_reward",
            Float64,
            true,
            "the HHH oracle's true reward",
        ),
        Column::new("helpfulness", Float64, true, "oracle axis, [0, 1]"),
        Column::new("honesty", Float64, true, "oracle axis, [0, 1]"),
        Column::new("harmlessness", Float64, true, "oracle axis, [0, 1]"),
        Column::new("hallucination", Boolean, true, "oracle flag"),
        Column::new("bias", Boolean, true, "oracle flag"),
        Column::new("unsafe", Boolean, true, "oracle flag"),
    ],
};

#[derive(Debug, Clone)]
struct Row {
    policy: String,
    prompt_id: String,
    prompt: String,
    sample: u64,
    response: String,
    tokens: u64,
    ended: bool,
    kl: f64,
    rm_score: Option<f64>,
    oracle: Option<oracle::OracleScore>,
}

impl TableRow for Row {
    const KIND: &'static TableKind = &EVALUATION;
    fn columns(rows: &[Self]) -> Vec<ArrayRef> {
        let o =
            |f: fn(&oracle::OracleScore) -> f64| rows.iter().map(move |r| r.oracle.as_ref().map(f));
        let flag = |f: fn(&oracle::OracleScore) -> bool| {
            rows.iter().map(move |r| r.oracle.as_ref().map(f))
        };
        vec![
            col::utf8(rows.iter().map(|r| r.policy.as_str())),
            col::utf8(rows.iter().map(|r| r.prompt_id.as_str())),
            col::utf8(rows.iter().map(|r| r.prompt.as_str())),
            col::u64(rows.iter().map(|r| r.sample)),
            col::utf8(rows.iter().map(|r| r.response.as_str())),
            col::u64(rows.iter().map(|r| r.tokens)),
            col::bool(rows.iter().map(|r| r.ended)),
            col::f64(rows.iter().map(|r| r.kl)),
            col::f64_opt(rows.iter().map(|r| r.rm_score)),
            col::f64_opt(o(|s| s.reward)),
            col::f64_opt(o(|s| s.helpfulness)),
            col::f64_opt(o(|s| s.honesty)),
            col::f64_opt(o(|s| s.harmlessness)),
            col::bool_opt(flag(|s| s.flags.hallucination)),
            col::bool_opt(flag(|s| s.flags.bias)),
            col::bool_opt(flag(|s| s.flags.unsafe_advice)),
        ]
    }
}

impl Kind for Evaluate {
    const NAME: &'static str = "evaluate";

    /// 2: standard errors clustered by prompt; win rates paired by prompt and sample,
    /// with their standard errors; paired differences against the baseline (`diff_*`);
    /// standard errors of the flag rates.
    // 3: the model computes through hone's fused CPU kernels (model::kernels), which
    // round differently from the composed ops.
    /// 4: the metrics also hold `clusters.json`, each figure's per-prompt means, so that
    /// `aggregate` can cluster by prompt across runs.
    const VERSION: u32 = 4;

    const SUMMARY: &'static str = "compare policies on held-out prompts: reward-model score, oracle reward and axes, KL, win rates; HTML report";

    type Params = EvaluateParams;

    fn signature(
        &self,
        p: &EvaluateParams,
        _inputs: &[&str],
    ) -> Result<Signature, Vec<ParamError>> {
        let key = |k: &str| vec![PathSeg::Key(k.into())];
        let mut errors = Vec::new();
        for (i, name) in p.policies.iter().enumerate() {
            let at = vec![PathSeg::Key("policies".into()), PathSeg::Index(i)];
            if FIXED_PORTS.contains(&name.as_str()) {
                errors.push(ParamError::new(
                    at,
                    format!("`{name}` is one of evaluate's own inputs; name the policy otherwise"),
                ));
            } else if !crate::spec::is_identifier(name) {
                errors.push(ParamError::new(
                    at,
                    format!("`{name}` must be letters, digits, `_` or `-` (it names an input)"),
                ));
            } else if p.policies[..i].contains(name) {
                errors.push(ParamError::new(at, format!("`{name}` is listed twice")));
            }
        }
        if !p.template.contains("{prompt}") {
            errors.push(ParamError::new(
                key("template"),
                "`template` must contain `{prompt}`",
            ));
        }
        lm::check_device(&p.device, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut inputs: Vec<Port> = p
            .policies
            .iter()
            .map(|name| Port::new(name, ArtifactType::CausalLm))
            .collect();
        let mut reward_model = Port::new("reward_model", ArtifactType::RewardModel);
        reward_model.required = false;
        let mut reference = Port::new("reference", ArtifactType::CausalLm);
        reference.required = false;
        let mut histories = Port::new("histories", ArtifactType::Metrics);
        histories.required = false;
        histories.many = true;
        inputs.extend([reward_model, reference, histories]);
        let mut deps = vec![p.prompts.clone()];
        deps.extend(p.world.clone());
        Ok(Signature {
            inputs,
            open_inputs: false,
            outputs: vec![
                Port::new("metrics", ArtifactType::Metrics),
                Port::new("report", ArtifactType::Report),
            ],
            deps,
        })
    }

    fn run(&self, p: &EvaluateParams, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let device = lm::device(&p.device)?;
        let world = match &p.world {
            Some(path) => {
                let text = std::fs::read_to_string(ctx.workspace.join(path))
                    .map_err(|e| failed(format!("reading `{path}`: {e}")))?;
                Some(World::from_facts_jsonl(&text).map_err(|e| failed(format!("`{path}`: {e}")))?)
            }
            None => None,
        };
        let scorer = match ctx.inputs.get("reward_model").and_then(|r| r.first()) {
            Some(dir) => Some(RewardScorer::load(
                &ctx.workspace.join(dir),
                p.reward_template.as_deref(),
                &device,
            )?),
            None => None,
        };
        let mut prompts = read_prompts(&ctx.workspace.join(&p.prompts))?;
        if let Some(n) = p.max_prompts {
            prompts.truncate(n);
        }
        let reference = lm::load_reference(ctx, p.policies[0].as_str(), &device)?;
        let total = (p.policies.len() * prompts.len()) as u64;
        let mut rows: Vec<Row> = Vec::new();
        for (pi, name) in p.policies.iter().enumerate() {
            let done = (pi * prompts.len()) as u64;
            let progress = |n: usize| ctx.report(done + n as u64, total);
            let inputs = Inputs {
                prompts: &prompts,
                reference: &reference,
                scorer: scorer.as_ref(),
                world: world.as_ref(),
                device: &device,
            };
            rows.extend(evaluate_policy(p, ctx, name, &inputs, &progress)?);
            tracing::info!(policy = %name, "evaluated");
        }

        let (summary, clusters) =
            summarise(p, &rows, scorer.is_some(), world.is_some(), prompts.len());

        let metrics_dir = ctx.workspace.join(&ctx.outputs["metrics"]);
        std::fs::create_dir_all(&metrics_dir).map_err(failed)?;
        let provenance = ctx.provenance();
        lm::write_summary_and_table(
            &metrics_dir,
            &summary,
            "samples.parquet",
            &rows,
            &provenance,
        )?;
        let mut text = serde_json::to_string(&clusters).map_err(failed)?;
        text.push('\n');
        std::fs::write(metrics_dir.join("clusters.json"), text).map_err(|source| {
            StageError::Io {
                context: "writing clusters.json".into(),
                source,
            }
        })?;

        let histories: Vec<(String, Vec<serde_json::Map<String, Value>>)> = ctx
            .inputs
            .get("histories")
            .map(|dirs| {
                dirs.iter()
                    .filter_map(|d| {
                        let path = ctx.workspace.join(d).join("history.parquet");
                        let rows = table::read_rows(&path).ok()?;
                        Some((
                            table::written_by(&path).unwrap_or_else(|| d.display().to_string()),
                            rows,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let report_dir = ctx.workspace.join(&ctx.outputs["report"]);
        std::fs::create_dir_all(&report_dir).map_err(failed)?;
        std::fs::write(
            report_dir.join("index.html"),
            html(p, &summary, &rows, &histories),
        )
        .map_err(failed)?;
        Ok(())
    }
}

/// What every policy is evaluated against.
struct Inputs<'a> {
    prompts: &'a [(String, String)],
    reference: &'a CausalLm,
    scorer: Option<&'a RewardScorer>,
    world: Option<&'a World>,
    device: &'a candle_core::Device,
}

/// One policy's answers to every prompt (`samples_per_prompt` each, the same random
/// streams for every policy), scored by the reward model and the oracle, with their KL to
/// the reference.
fn evaluate_policy(
    p: &EvaluateParams,
    ctx: &StageContext<'_>,
    name: &str,
    inputs: &Inputs<'_>,
    progress: &dyn Fn(usize),
) -> Result<Vec<Row>, StageError> {
    let Inputs {
        prompts,
        reference,
        scorer,
        world,
        device,
    } = *inputs;
    let mut out = Vec::new();
    let (policy, tok) = lm::load_input(ctx, name, device)?;
    let model = policy.frozen().map_err(failed)?;
    let eos = lm::end_of_text(&policy.config, &tok);
    let (prompt_format, stop_tokens) = lm::sampling_format(ctx, name, &p.template, &policy, &tok)?;
    let params = RolloutParams::sampling(p.temperature, p.max_new_tokens, &stop_tokens, &p.stop);
    let mut responses = Vec::new();
    let mut sequences = Vec::new();
    for (n, (id, text)) in prompts.iter().enumerate() {
        if ctx.cancelled() {
            return Err(StageError::Cancelled);
        }
        let ids = prompt_format.encode_prompt(&tok, text)?;
        rollout::check_fits(
            id,
            ids.len(),
            p.max_new_tokens,
            policy.config.context_len(),
            &format!("`{name}`"),
        )?;
        // The same streams for every policy: differences come from the policies.
        let requests: Vec<(&[u32], u64)> = (0..p.samples_per_prompt)
            .map(|k| (ids.as_slice(), derive_seed(ctx.seed, &format!("{id}/{k}"))))
            .collect();
        for (k, c) in rollout(&model, &tok, &requests, &params, device)?
            .into_iter()
            .enumerate()
        {
            let mut all = ids.clone();
            all.extend(&c.tokens);
            sequences.push((all, ids.len()));
            let ended = c.ended();
            responses.push((id.clone(), text.clone(), k, c.text, c.tokens.len(), ended));
        }
        progress(n + 1);
    }
    let own = per_token(&model, None, &sequences, eos, p.temperature, device)?;
    let against = per_token(reference, None, &sequences, eos, p.temperature, device)?;
    let scores: Option<Vec<f64>> = match &scorer {
        Some(s) => Some(
            s.score(
                &responses
                    .iter()
                    .map(|r| (r.1.as_str(), r.3.as_str()))
                    .collect::<Vec<_>>(),
                false,
            )?
            .into_iter()
            .map(|x| x.score)
            .collect(),
        ),
        None => None,
    };
    for (k, (id, text, sample_index, response, n_tokens, ended)) in
        responses.into_iter().enumerate()
    {
        let kl: f64 = own[k].0.iter().zip(&against[k].0).map(|(a, b)| a - b).sum();
        out.push(Row {
            policy: name.to_string(),
            oracle: world.as_ref().map(|w| oracle::score(w, &text, &response)),
            prompt_id: id,
            prompt: text,
            sample: sample_index as u64,
            response,
            tokens: n_tokens as u64,
            ended,
            kl,
            rm_score: scores.as_ref().map(|s| s[k]),
        });
    }
    Ok(out)
}

/// The per-prompt means behind one policy's figures, under the same keys as its
/// summary: what `aggregate` needs to cluster by prompt across runs.
#[derive(Default)]
struct PolicyStats {
    entry: serde_json::Map<String, Value>,
    clusters: serde_json::Map<String, Value>,
}

impl PolicyStats {
    /// A mean with its clustered standard error (`{"mean", "se"}`).
    fn stat(&mut self, key: &str, obs: &[(&str, f64)]) {
        let (mean, se) = report::clustered_mean_se(obs);
        self.entry
            .insert(key.into(), json!({"mean": mean, "se": se_json(se)}));
        self.clusters
            .insert(key.into(), json!({ "mean": prompt_means(obs) }));
    }

    /// A rate and its clustered standard error (`NAME` and `NAME_se`).
    fn rate(&mut self, key: &str, obs: &[(&str, f64)]) {
        let (mean, se) = report::clustered_mean_se(obs);
        let value = if obs.is_empty() {
            json!(null)
        } else {
            json!(mean)
        };
        self.entry.insert(key.into(), value);
        self.entry.insert(format!("{key}_se"), se_json(se));
        self.clusters.insert(key.into(), prompt_means(obs));
    }
}

fn se_json(se: f64) -> Value {
    if se.is_finite() {
        json!(se)
    } else {
        json!(null)
    }
}

/// Each prompt's mean of its observations, by prompt id.
fn prompt_means(obs: &[(&str, f64)]) -> Value {
    let mut sums: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for (prompt, y) in obs {
        let cell = sums.entry(prompt).or_insert((0.0, 0));
        cell.0 += y;
        cell.1 += 1;
    }
    Value::Object(
        sums.into_iter()
            .map(|(k, (sum, n))| (k.to_string(), json!(sum / n as f64)))
            .collect(),
    )
}

/// `g` of each of `mine`'s values and the baseline's for the same prompt and sample, by
/// prompt.
fn paired<'a>(
    mine: &[&'a Row],
    base_of: &BTreeMap<(&str, u64), &Row>,
    f: &dyn Fn(&Row) -> Option<f64>,
    g: &dyn Fn(f64, f64) -> f64,
) -> Vec<(&'a str, f64)> {
    mine.iter()
        .filter_map(|a| {
            let b = base_of.get(&(a.prompt_id.as_str(), a.sample))?;
            Some((a.prompt_id.as_str(), g(f(a)?, f(b)?)))
        })
        .collect()
}

/// 1 when `a` beats `b`, a half for a tie.
fn win(a: f64, b: f64) -> f64 {
    if a > b {
        1.0
    } else if a == b {
        0.5
    } else {
        0.0
    }
}

/// Per-policy summaries (means with standard errors, rates) and win rates against the
/// first policy; and, under the same keys, each figure's per-prompt means
/// (`clusters.json`).
fn summarise(
    p: &EvaluateParams,
    rows: &[Row],
    has_scorer: bool,
    has_world: bool,
    n_prompts: usize,
) -> (Value, Value) {
    // Every interval is clustered by prompt: the samples of one prompt share it, so
    // they are not independent observations (`report::clustered_mean_se`).
    let baseline = &p.policies[0];
    let by_policy = |name: &str| rows.iter().filter(|r| r.policy == name).collect::<Vec<_>>();
    // The baseline's row for the same prompt and sample (shared random streams make the
    // two answers a pair).
    let base_rows = by_policy(baseline);
    let base_of: BTreeMap<(&str, u64), &Row> = base_rows
        .iter()
        .map(|r| ((r.prompt_id.as_str(), r.sample), *r))
        .collect();
    let mut policies = serde_json::Map::new();
    let mut clusters = serde_json::Map::new();
    for name in &p.policies {
        let mine = by_policy(name);
        let values = |f: fn(&Row) -> Option<f64>| -> Vec<(&str, f64)> {
            mine.iter()
                .filter_map(|r| Some((r.prompt_id.as_str(), f(r)?)))
                .collect()
        };
        let mut stats = PolicyStats::default();
        stats.entry.insert("responses".into(), json!(mine.len()));
        stats.stat("kl", &values(|r| Some(r.kl)));
        stats.stat("tokens", &values(|r| Some(r.tokens as f64)));
        stats.entry.insert(
            "ended_rate".into(),
            json!(mine.iter().filter(|r| r.ended).count() as f64 / mine.len().max(1) as f64),
        );
        let flag = |f: fn(&oracle::OracleScore) -> bool| -> Vec<(&str, f64)> {
            mine.iter()
                .filter_map(|r| {
                    Some((
                        r.prompt_id.as_str(),
                        f64::from(u8::from(f(r.oracle.as_ref()?))),
                    ))
                })
                .collect()
        };
        if has_world {
            stats.rate("hallucination_rate", &flag(|o| o.flags.hallucination));
            stats.rate("bias_rate", &flag(|o| o.flags.bias));
            stats.rate("unsafe_rate", &flag(|o| o.flags.unsafe_advice));
        }
        // Win rate and paired difference against the baseline, per (prompt, sample)
        // pair, clustered by prompt.
        let against = |stats: &mut PolicyStats, key: &str, f: &dyn Fn(&Row) -> Option<f64>| {
            stats.rate(
                &format!("win_rate_{key}"),
                &paired(&mine, &base_of, f, &win),
            );
            if name != baseline {
                stats.stat(
                    &format!("diff_{key}"),
                    &paired(&mine, &base_of, f, &|a, b| a - b),
                );
            }
        };
        if has_scorer {
            against(&mut stats, "rm", &|r: &Row| r.rm_score);
        }
        if has_world {
            against(&mut stats, "oracle", &|r: &Row| {
                r.oracle.as_ref().map(|o| o.reward)
            });
        }
        if has_scorer {
            stats.stat("rm_score", &values(|r| r.rm_score));
        }
        if has_world {
            stats.stat(
                "oracle_reward",
                &values(|r| r.oracle.as_ref().map(|o| o.reward)),
            );
            stats.stat(
                "helpfulness",
                &values(|r| r.oracle.as_ref().map(|o| o.helpfulness)),
            );
            stats.stat("honesty", &values(|r| r.oracle.as_ref().map(|o| o.honesty)));
            stats.stat(
                "harmlessness",
                &values(|r| r.oracle.as_ref().map(|o| o.harmlessness)),
            );
        }
        policies.insert(name.clone(), Value::Object(stats.entry));
        clusters.insert(name.clone(), Value::Object(stats.clusters));
    }
    let summary = json!({
        "baseline": baseline,
        "standard_errors": "cluster-robust by prompt (CR1): a prompt's samples are not independent",
        "prompts": n_prompts,
        "samples_per_prompt": p.samples_per_prompt,
        "temperature": p.temperature,
        "tags": p.tags,
        "policies": policies,
    });
    let clusters = json!({
        "cluster": "prompt",
        "doc": "each figure of summary.json, under the same key, as the mean of each prompt's observations: for `aggregate`, which clusters by prompt across runs",
        "policies": clusters,
    });
    (summary, clusters)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn cell(v: &Value) -> String {
    match v {
        Value::Object(m) if m.contains_key("mean") => {
            let mean = m["mean"].as_f64().unwrap_or(f64::NAN);
            match m["se"].as_f64() {
                Some(se) => format!("{mean:.3} ± {:.3}", 2.0 * se),
                None => format!("{mean:.3}"),
            }
        }
        Value::Number(n) => format!("{:.3}", n.as_f64().unwrap_or(f64::NAN)),
        Value::Null => "—".into(),
        other => esc(&other.to_string()),
    }
}

/// Training curves: one chart per measure found in the histories (PPO's score and KL per
/// iteration; a loss per step otherwise).
fn curves(histories: &[(String, Vec<serde_json::Map<String, Value>>)]) -> String {
    let mut charts: BTreeMap<(&str, &str), Vec<svg::Series>> = BTreeMap::new();
    for (stage, rows) in histories {
        let x_key = if rows.first().is_some_and(|r| r.contains_key("iteration")) {
            "iteration"
        } else {
            "step"
        };
        let measures: &[&str] = if x_key == "iteration" {
            &["score", "kl"]
        } else {
            &["loss"]
        };
        for &m in measures {
            let points = rows
                .iter()
                .filter_map(|r| {
                    let (x, y) = (r.get(x_key)?.as_f64()?, r.get(m)?.as_f64()?);
                    Some(svg::Point {
                        x,
                        y,
                        lo: f64::NAN,
                        hi: f64::NAN,
                    })
                })
                .collect();
            charts.entry((m, x_key)).or_default().push(svg::Series {
                name: stage.clone(),
                points,
            });
        }
    }
    let mut out = String::new();
    for ((measure, x_key), series) in charts {
        let title = match measure {
            "score" => "reward-model score of the rollouts",
            "kl" => "KL to the reference (nats per response)",
            _ => "training loss",
        };
        out.push_str(&svg::render(&svg::Chart {
            title: title.into(),
            x_label: x_key.into(),
            y_label: measure.into(),
            panels: vec![svg::Panel {
                title: String::new(),
                series,
            }],
            log_x: false,
            reference: None,
        }));
    }
    out
}

fn html(
    p: &EvaluateParams,
    summary: &Value,
    rows: &[Row],
    histories: &[(String, Vec<serde_json::Map<String, Value>>)],
) -> String {
    let mut out = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>hone evaluation</title>\n<style>body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;vertical-align:top}td.n{text-align:right}svg{margin:0.5em 1em 0.5em 0}</style></head><body>\n<h1>Evaluation</h1>\n",
    );
    let _ = writeln!(
        out,
        "<p>{} held-out prompts × {} sample(s) per policy at temperature {}; baseline <b>{}</b>. Intervals are ± 2 standard errors clustered by prompt.</p>",
        summary["prompts"],
        p.samples_per_prompt,
        p.temperature,
        esc(&p.policies[0])
    );
    let columns = [
        ("oracle_reward", "oracle reward"),
        ("helpfulness", "helpful"),
        ("honesty", "honest"),
        ("harmlessness", "harmless"),
        ("rm_score", "RM score"),
        ("kl", "KL to ref"),
        ("win_rate_oracle", "win rate (oracle)"),
        ("diff_oracle", "oracle reward − baseline"),
        ("win_rate_rm", "win rate (RM)"),
        ("tokens", "tokens"),
        ("hallucination_rate", "hallucination"),
        ("bias_rate", "bias"),
        ("unsafe_rate", "unsafe"),
    ];
    out.push_str("<table><tr><th>policy</th>");
    for (_, title) in columns {
        let _ = write!(out, "<th>{title}</th>");
    }
    out.push_str("</tr>\n");
    for name in &p.policies {
        let entry = &summary["policies"][name];
        let _ = write!(out, "<tr><td>{}</td>", esc(name));
        for (key, _) in columns {
            // A rate's standard error is its sibling `KEY_se`.
            let value = match (entry.get(key), entry.get(format!("{key}_se"))) {
                (Some(Value::Number(mean)), Some(se)) => json!({"mean": mean, "se": se}),
                (Some(v), _) => v.clone(),
                (None, _) => Value::Null,
            };
            let _ = write!(out, "<td class=\"n\">{}</td>", cell(&value));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    for (key, title) in [
        ("win_rate_oracle", "win rate against the baseline (oracle)"),
        (
            "win_rate_rm",
            "win rate against the baseline (reward model)",
        ),
    ] {
        let bars: Vec<svg::Bar> = p
            .policies
            .iter()
            .skip(1)
            .filter_map(|name| {
                let entry = &summary["policies"][name];
                let rate = entry[key].as_f64()?;
                let interval = entry[format!("{key}_se")]
                    .as_f64()
                    .map(|se| ((rate - 2.0 * se).max(0.0), (rate + 2.0 * se).min(1.0)));
                Some((name.clone(), rate, interval))
            })
            .collect();
        if !bars.is_empty() {
            out.push_str(&svg::bars(title, &bars, 0.0, 1.0, Some(0.5)));
        }
    }
    out.push_str(&curves(histories));
    out.push_str("<h2>Sample responses</h2>\n<table><tr><th>prompt</th>");
    for name in &p.policies {
        let _ = write!(out, "<th>{}</th>", esc(name));
    }
    out.push_str("</tr>\n");
    let shown: Vec<(&str, u64)> = rows
        .iter()
        .filter(|r| r.policy == p.policies[0])
        .take(p.report_samples)
        .map(|r| (r.prompt_id.as_str(), r.sample))
        .collect();
    for (id, k) in shown {
        let prompt = rows
            .iter()
            .find(|r| r.prompt_id == id)
            .map_or("", |r| r.prompt.as_str());
        let _ = write!(out, "<tr><td>{}</td>", esc(prompt));
        for name in &p.policies {
            match rows
                .iter()
                .find(|r| &r.policy == name && r.prompt_id == id && r.sample == k)
            {
                Some(r) => {
                    let score = r
                        .oracle
                        .as_ref()
                        .map(|o| format!(" <small>(oracle {:.2})</small>", o.reward))
                        .unwrap_or_default();
                    let _ = write!(out, "<td>{}{score}</td>", esc(&r.response));
                }
                None => out.push_str("<td></td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n</body></html>\n");
    out
}
