//! `odpo-select`: which response pairs annotators should label under a budget. `d-optimal`
//! is ODPO (Scheid et al., 2024): features ψ(x, a) are the reward model's last-layer hidden
//! states, a pair's design vector is ψ(x, a) - ψ(x, a'), and Frank-Wolfe finds the
//! D-optimal design over all candidate pairs, rounded to the budget. `uniform` is the
//! random baseline.

use arrow::array::ArrayRef;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::lm::{self, failed};
use super::{Kind, ParamError, Port, Signature, StageContext, StageError};
use crate::artifact::ArtifactType;
use crate::artifact::candidates::{Candidate, read_candidates};
use crate::artifact::table::{Column, ColumnType::*, TableKind, TableRow, TableWriter, col};
use crate::model::reward::{RewardModel, last_hidden};
use crate::model::tokenizer;
use crate::rl::design;

pub struct OdpoSelect;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// ODPO: the D-optimal design over pair-difference features (Frank-Wolfe).
    DOptimal,
    /// Active learning: the pairs whose reward difference the ensemble members disagree
    /// on most (standard deviation over members; needs `reward-fit` with `ensemble` >= 2).
    Uncertainty,
    /// Pairs drawn uniformly at random (the baseline).
    Uniform,
}

fn default_ridge() -> f64 {
    1e-3
}
fn default_eps() -> f64 {
    0.05
}
fn default_iterations() -> usize {
    500
}
fn default_template() -> String {
    crate::policy::reward::DEFAULT_REWARD_TEMPLATE.into()
}

/// Parameters of an `odpo-select` stage.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectParams {
    pub method: Method,
    /// How many pairs to label.
    #[schemars(range(min = 1))]
    pub budget: usize,
    /// Added to the design's information matrix (keeps it invertible with few pairs).
    #[serde(default = "default_ridge")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub ridge: f64,
    /// Frank-Wolfe stops when max z V⁻¹ z <= (1 + eps)·d.
    #[serde(default = "default_eps")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub eps: f64,
    #[serde(default = "default_iterations")]
    pub max_iterations: usize,
    /// `d-optimal`: design over the pair differences' top `dims` principal directions
    /// instead of all of ψ (ODPO's guarantees grow with the dimension; a design over all
    /// of a reward model's hidden size spends labels on directions that carry no reward).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub dims: Option<usize>,
    /// How the reward model reads a response (as in `reward-fit`).
    #[serde(default = "default_template")]
    pub template: String,
    #[serde(default = "lm::default_device")]
    pub device: String,
}

pub static PAIRS: TableKind = TableKind {
    name: "pairs",
    version: 1,
    doc: "response pairs chosen for labelling, with the score that chose each",
    columns: &[
        Column::new("prompt_id", Utf8, false, "prompt identifier"),
        Column::new("prompt", Utf8, false, "the prompt text"),
        Column::new("response_a", Utf8, false, "one response"),
        Column::new("response_b", Utf8, false, "the other response"),
        Column::new(
            "score",
            Float64,
            false,
            "the design weight (d-optimal), the members' disagreement (uncertainty) or 0 (uniform)",
        ),
        Column::new(
            "method",
            Utf8,
            false,
            "`d-optimal`, `uncertainty` or `uniform`",
        ),
    ],
};

#[derive(Debug, Clone)]
pub struct PairRow {
    pub prompt_id: String,
    pub prompt: String,
    pub response_a: String,
    pub response_b: String,
    pub score: f64,
    pub method: String,
}

impl TableRow for PairRow {
    const KIND: &'static TableKind = &PAIRS;
    fn columns(rows: &[Self]) -> Vec<ArrayRef> {
        vec![
            col::utf8(rows.iter().map(|r| r.prompt_id.as_str())),
            col::utf8(rows.iter().map(|r| r.prompt.as_str())),
            col::utf8(rows.iter().map(|r| r.response_a.as_str())),
            col::utf8(rows.iter().map(|r| r.response_b.as_str())),
            col::f64(rows.iter().map(|r| r.score)),
            col::utf8(rows.iter().map(|r| r.method.as_str())),
        ]
    }
}

impl Kind for OdpoSelect {
    const NAME: &'static str = "odpo-select";

    // 2: greedy rounding by Sherman-Morrison updates (same picks up to float ties).
    // 3: the model computes through hone's fused CPU kernels (model::kernels), which
    // round differently from the composed ops.
    const VERSION: u32 = 3;

    const SUMMARY: &'static str =
        "choose the response pairs to label under a budget: D-optimal design (ODPO) or uniform";

    type Params = SelectParams;

    fn signature(&self, p: &SelectParams, _inputs: &[&str]) -> Result<Signature, Vec<ParamError>> {
        let mut errors = Vec::new();
        lm::check_device(&p.device, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut reward_model = Port::new("reward_model", ArtifactType::RewardModel);
        reward_model.required = p.method != Method::Uniform;
        Ok(Signature {
            inputs: vec![
                Port::new("candidates", ArtifactType::Table(Some("candidates".into()))),
                reward_model,
            ],
            open_inputs: false,
            outputs: vec![Port::new(
                "pairs",
                ArtifactType::Table(Some("pairs".into())),
            )],
            deps: Vec::new(),
        })
    }

    fn run(&self, p: &SelectParams, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let candidates =
            read_candidates(&ctx.workspace.join(&ctx.inputs["candidates"][0])).map_err(failed)?;
        // Every pair of different responses to the same prompt.
        let mut by_prompt: std::collections::BTreeMap<&str, Vec<usize>> =
            std::collections::BTreeMap::new();
        for (i, c) in candidates.iter().enumerate() {
            let group = by_prompt.entry(c.prompt_id.as_str()).or_default();
            if !group.iter().any(|&j| candidates[j].response == c.response) {
                group.push(i);
            }
        }
        let pairs: Vec<(usize, usize)> = by_prompt
            .values()
            .flat_map(|g| {
                g.iter()
                    .enumerate()
                    .flat_map(move |(x, &i)| g[x + 1..].iter().map(move |&j| (i, j)))
            })
            .collect();
        if pairs.is_empty() {
            return Err(failed("no prompt has two different candidate responses"));
        }
        let (chosen, scores): (Vec<usize>, Vec<f64>) = match p.method {
            Method::Uniform => {
                let mut order: Vec<usize> = (0..pairs.len()).collect();
                order.shuffle(&mut ChaCha8Rng::seed_from_u64(ctx.seed));
                order.truncate(p.budget);
                let n = order.len();
                (order, vec![0.0; n])
            }
            Method::DOptimal => d_optimal(ctx, p, &candidates, &pairs)?,
            Method::Uncertainty => most_disputed(ctx, p, &candidates, &pairs)?,
        };
        let provenance = ctx.provenance();
        let mut writer: TableWriter<PairRow> =
            TableWriter::create(&ctx.workspace.join(&ctx.outputs["pairs"]), &provenance)
                .map_err(failed)?;
        let method = match p.method {
            Method::DOptimal => "d-optimal",
            Method::Uncertainty => "uncertainty",
            Method::Uniform => "uniform",
        };
        for (&k, score) in chosen.iter().zip(scores) {
            let (a, b) = (&candidates[pairs[k].0], &candidates[pairs[k].1]);
            writer
                .push(PairRow {
                    prompt_id: a.prompt_id.clone(),
                    prompt: a.prompt.clone(),
                    response_a: a.response.clone(),
                    response_b: b.response.clone(),
                    score,
                    method: method.into(),
                })
                .map_err(failed)?;
        }
        writer.finish().map_err(failed)?;
        Ok(())
    }
}

/// The pairs (indices) ODPO picks, by D-optimal design over the reward model's
/// pair-difference features and greedy rounding to the budget, with their design weights.
fn d_optimal(
    ctx: &StageContext<'_>,
    p: &SelectParams,
    candidates: &[Candidate],
    pairs: &[(usize, usize)],
) -> Result<(Vec<usize>, Vec<f64>), StageError> {
    let device = lm::device(&p.device)?;
    let dir = ctx.workspace.join(&ctx.inputs["reward_model"][0]);
    let (features, _) = candidate_features(ctx, p, &dir, candidates, &device)?;
    let z: Vec<Vec<f64>> = pairs
        .iter()
        .map(|&(i, j)| {
            features[i]
                .iter()
                .zip(&features[j])
                .map(|(a, b)| a - b)
                .collect()
        })
        .collect();
    let z = match p.dims {
        Some(k) => design::project(&z, &design::principal_directions(&z, k, 100)),
        None => z,
    };
    let design = design::d_optimal(&z, p.ridge, p.eps, p.max_iterations);
    tracing::info!(
        iterations = design.iterations,
        max_variance = design.max_variance,
        dimension = z[0].len(),
        "D-optimal design"
    );
    let chosen = design::greedy_rounding(&z, &design.weights, p.budget, p.ridge);
    let scores = chosen.iter().map(|&k| design.weights[k]).collect();
    Ok((chosen, scores))
}

/// The pairs an ensemble of reward models disputes most (the spread of the members'
/// reward differences), with that spread.
fn most_disputed(
    ctx: &StageContext<'_>,
    p: &SelectParams,
    candidates: &[Candidate],
    pairs: &[(usize, usize)],
) -> Result<(Vec<usize>, Vec<f64>), StageError> {
    let device = lm::device(&p.device)?;
    let dir = ctx
        .workspace
        .join(&ctx.inputs["reward_model"][0])
        .join("members");
    let mut members: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    members.sort_by_key(|m| {
        m.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<usize>().ok())
    });
    if members.len() < 2 {
        return Err(failed(
            "`uncertainty` needs a reward model fitted with `ensemble: 2` or more (it has no `members/`)",
        ));
    }
    // Each member's reward of every candidate: ψ · head. Members that share
    // a backbone (`train: head` ensembles) share ψ, computed once.
    let mut rewards: Vec<Vec<f64>> = Vec::new();
    let mut shared: Option<(blake3::Hash, Vec<Vec<f64>>)> = None;
    for member in &members {
        let digest = backbone_digest(member)?;
        let (features, head) = match &shared {
            Some((d, features)) if *d == digest => {
                (features.clone(), member_head(member, &device)?)
            }
            _ => {
                let (features, head) = candidate_features(ctx, p, member, candidates, &device)?;
                shared = Some((digest, features.clone()));
                (features, head)
            }
        };
        rewards.push(
            features
                .iter()
                .map(|f| f.iter().zip(&head).map(|(a, b)| a * b).sum())
                .collect(),
        );
    }
    let disagreement: Vec<f64> = pairs
        .iter()
        .map(|&(i, j)| {
            let diffs: Vec<f64> = rewards.iter().map(|r| r[i] - r[j]).collect();
            let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
            (diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (diffs.len() - 1) as f64)
                .sqrt()
        })
        .collect();
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by(|&a, &b| disagreement[b].total_cmp(&disagreement[a]).then(a.cmp(&b)));
    order.truncate(p.budget);
    let scores = order.iter().map(|&k| disagreement[k]).collect();
    Ok((order, scores))
}

/// A digest of a reward model's backbone: every tensor but the head, by name.
fn backbone_digest(dir: &std::path::Path) -> Result<blake3::Hash, StageError> {
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .map_err(|e| failed(format!("`{}`: {e}", dir.display())))?;
    let mut names: Vec<&String> = tensors.keys().filter(|n| *n != "score.weight").collect();
    names.sort();
    let mut hasher = blake3::Hasher::new();
    for name in names {
        let values = tensors[name]
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(failed)?;
        hasher.update(name.as_bytes());
        for v in values {
            hasher.update(&v.to_le_bytes());
        }
    }
    Ok(hasher.finalize())
}

/// A reward model's scalar head, read from its checkpoint.
fn member_head(
    dir: &std::path::Path,
    device: &candle_core::Device,
) -> Result<Vec<f64>, StageError> {
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), device)
        .map_err(|e| failed(format!("`{}`: {e}", dir.display())))?;
    let head = tensors
        .get("score.weight")
        .ok_or_else(|| failed(format!("`{}` has no `score.weight`", dir.display())))?;
    Ok(head
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(failed)?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// ψ(x, a) of every candidate under the reward model in `dir` (its last-layer hidden state
/// at the end-of-text token), and the model's scalar head.
fn candidate_features(
    ctx: &StageContext<'_>,
    p: &SelectParams,
    dir: &std::path::Path,
    candidates: &[crate::artifact::candidates::Candidate],
    device: &candle_core::Device,
) -> Result<(Vec<Vec<f64>>, Vec<f64>), StageError> {
    let rm = RewardModel::load(dir, ctx.seed, device).map_err(failed)?;
    let tok = tokenizer::load(&dir.join("tokenizer.json")).map_err(failed)?;
    let eot = rm.base.config.eos_token_id().unwrap_or(0);
    let format = crate::policy::reward::reward_format(dir, &p.template)?;
    let context = rm.base.config.context_len();
    let frozen = rm.base.frozen().map_err(failed)?;
    let mut features: Vec<Vec<f64>> = Vec::with_capacity(candidates.len());
    for (n, chunk) in candidates.chunks(32).enumerate() {
        ctx.report((n * 32 + chunk.len()) as u64, candidates.len() as u64);
        if ctx.cancelled() {
            return Err(StageError::Cancelled);
        }
        let seqs = chunk
            .iter()
            .map(|c| lm::reward_input(&tok, &format, &c.prompt, &c.response, context, eot))
            .collect::<Result<Vec<_>, crate::policy::PolicyError>>()?;
        let h = last_hidden(&frozen, &seqs, eot, device)
            .and_then(|t| t.to_vec2::<f32>())
            .map_err(failed)?;
        features.extend(
            h.into_iter()
                .map(|row| row.into_iter().map(f64::from).collect()),
        );
    }
    let head = rm
        .head
        .as_tensor()
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(failed)?;
    Ok((features, head.into_iter().map(f64::from).collect()))
}
