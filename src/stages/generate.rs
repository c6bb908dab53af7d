//! `generate`: K sampled responses per prompt from a causal LM (KV cache, temperature,
//! top-k, top-p), into a candidates table with the token ids and their summed log-prob.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::lm::{self, failed};
use super::{Kind, ParamError, Port, Signature, StageContext, StageError};
use crate::artifact::ArtifactType;
use crate::artifact::candidates::Candidate;
use crate::artifact::feedback::prompt_id;
use crate::artifact::table::{Provenance, TableWriter};
use crate::model::sample::{SampleParams, sample};
use crate::model::tokenizer;
use crate::spec::node::PathSeg;

pub struct Generate;

fn default_prompts() -> String {
    "data/hhh/prompts.jsonl".into()
}
fn default_samples() -> usize {
    4
}
fn default_temperature() -> f64 {
    1.0
}
fn default_max_new() -> usize {
    48
}

/// Parameters of a `generate` stage.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    /// Prompts: a JSONL file with `text` (or `prompt`) and optional `id` per line.
    #[serde(default = "default_prompts")]
    pub prompts: String,
    /// Samples per prompt (K).
    #[serde(default = "default_samples")]
    #[schemars(range(min = 1))]
    pub n_samples: usize,
    /// Only the first this many prompts.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_prompts: Option<usize>,
    /// 0 is greedy.
    #[serde(default = "default_temperature")]
    #[schemars(range(min = 0))]
    pub temperature: f64,
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub top_k: Option<usize>,
    #[serde(default)]
    #[schemars(extend("exclusiveMinimum" = 0), range(max = 1))]
    pub top_p: Option<f64>,
    #[serde(default = "default_max_new")]
    #[schemars(range(min = 1))]
    pub max_new_tokens: usize,
    /// How a prompt is put to the model; `{prompt}` is replaced by its text.
    #[serde(default = "lm::default_template")]
    pub template: String,
    /// The response ends before the first of these strings (the model's next turn).
    #[serde(default = "lm::default_stop")]
    pub stop: Vec<String>,
    #[serde(default = "lm::default_device")]
    pub device: String,
}

impl Kind for Generate {
    const NAME: &'static str = "generate";

    const VERSION: u32 = 1;

    const SUMMARY: &'static str =
        "sample K responses per prompt from a causal LM into a candidates table";

    type Params = GenerateParams;

    fn signature(
        &self,
        p: &GenerateParams,
        _inputs: &[&str],
    ) -> Result<Signature, Vec<ParamError>> {
        let key = |k: &str| vec![PathSeg::Key(k.into())];
        let mut errors = Vec::new();
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
        Ok(Signature {
            inputs: vec![Port::new("model", ArtifactType::CausalLm)],
            open_inputs: false,
            outputs: vec![Port::new(
                "candidates",
                ArtifactType::Table(Some("candidates".into())),
            )],
            deps: vec![p.prompts.clone()],
        })
    }

    fn run(&self, p: &GenerateParams, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let device = lm::device(&p.device)?;
        let (trainable, tok) = lm::load_input(ctx, "model", &device)?;
        let model = trainable.frozen().map_err(failed)?;
        let mut prompts = read_prompts(&ctx.workspace.join(&p.prompts))?;
        if let Some(n) = p.max_prompts {
            prompts.truncate(n);
        }
        let params = SampleParams {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            max_new_tokens: p.max_new_tokens,
            eos_token_id: trainable.config.eos_token_id(),
        };
        let context = trainable.config.context_len();
        let provenance = Provenance {
            stage: ctx.stage_id.to_string(),
            fingerprint: ctx.fingerprint.to_string(),
        };
        let mut writer: TableWriter<Candidate> =
            TableWriter::create(&ctx.workspace.join(&ctx.outputs["candidates"]), &provenance)
                .map_err(failed)?;
        let started = std::time::Instant::now();
        let mut new_tokens = 0usize;
        for (n, (id, text)) in prompts.iter().enumerate() {
            if ctx.cancelled() {
                return Err(StageError::Cancelled);
            }
            let ids =
                tokenizer::encode(&tok, &p.template.replace("{prompt}", text)).map_err(failed)?;
            if ids.len() + p.max_new_tokens > context {
                return Err(failed(format!(
                    "prompt `{id}` has {} tokens; with {} new ones it exceeds the model's context of {context}",
                    ids.len(),
                    p.max_new_tokens
                )));
            }
            for k in 0..p.n_samples {
                // Each (prompt, sample) draws from its own stream: results do not depend
                // on the order or number of prompts.
                let seed = sample_seed(ctx.seed, id, k);
                let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
                let s = sample(&model, &ids, &params, &mut rng, &device).map_err(failed)?;
                new_tokens += s.tokens.len();
                let body: Vec<u32> = s
                    .tokens
                    .iter()
                    .copied()
                    .filter(|t| Some(*t) != params.eos_token_id)
                    .collect();
                let decoded = tokenizer::decode(&tok, &body).map_err(failed)?;
                let response = cut_at_stop(&decoded, &p.stop).trim().to_string();
                writer
                    .push(Candidate {
                        prompt_id: id.clone(),
                        prompt: text.clone(),
                        response,
                        sample: k as u64,
                        token_ids: Some(s.tokens.iter().map(|&t| i64::from(t)).collect()),
                        logprob_sum: Some(s.logprobs.iter().map(|&l| f64::from(l)).sum()),
                        seed,
                    })
                    .map_err(failed)?;
            }
            ctx.report((n + 1) as u64, prompts.len() as u64);
            if (n + 1) % 16 == 0 || n + 1 == prompts.len() {
                let rate = new_tokens as f64 / started.elapsed().as_secs_f64();
                tracing::info!(
                    prompts = n + 1,
                    of = prompts.len(),
                    tokens_per_s = rate as u64,
                    "generating"
                );
            }
        }
        writer.finish().map_err(failed)?;
        Ok(())
    }
}

fn sample_seed(stage_seed: u64, prompt_id: &str, k: usize) -> u64 {
    let hash = blake3::hash(format!("{stage_seed}/{prompt_id}/{k}").as_bytes());
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes")) & 0x7fff_ffff
}

fn cut_at_stop<'a>(text: &'a str, stops: &[String]) -> &'a str {
    let end = stops
        .iter()
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

/// (id, text) of every prompt in a JSONL file.
pub fn read_prompts(path: &std::path::Path) -> Result<Vec<(String, String)>, StageError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| failed(format!("`{}`: {e}", path.display())))?;
    let mut prompts = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| failed(format!("`{}` line {}: {e}", path.display(), i + 1)))?;
        let text = v
            .get("text")
            .or_else(|| v.get("prompt"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                failed(format!(
                    "`{}` line {}: no `text` or `prompt`",
                    path.display(),
                    i + 1
                ))
            })?;
        let id = match v.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => prompt_id(text),
        };
        prompts.push((id, text.to_string()));
    }
    Ok(prompts)
}
