//! `generate`: K sampled responses per prompt from a causal LM (KV cache, temperature,
//! top-k, top-p), into a candidates table with the token ids and their summed log-prob,
//! through the one rollout path (`policy::rollout`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::lm::{self, failed};
use super::{Kind, ParamError, Port, Signature, StageContext, StageError};
use crate::artifact::ArtifactType;
use crate::artifact::candidates::Candidate;
use crate::artifact::table::TableWriter;
use crate::policy::data::read_prompts;
use crate::policy::rollout::{self, RolloutParams, rollout};
use crate::spec::derive_seed;
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

    // 2: sampled through the one rollout path (policy::rollout): a response's token ids
    // and summed log-prob end where its text does (at EOS or the token completing a stop
    // string), and EOS falls back to the tokenizer's end-of-text as in ppo and evaluate.
    // 3: the model computes through hone's fused CPU kernels (model::kernels), which
    // round differently from the composed ops.
    const VERSION: u32 = 3;

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
        let (format, stop_tokens) =
            lm::sampling_format(ctx, "model", &p.template, &trainable, &tok)?;
        let params = RolloutParams {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            max_new_tokens: p.max_new_tokens,
            eos: &stop_tokens,
            stop: &p.stop,
        };
        let context = trainable.config.context_len();
        let provenance = ctx.provenance();
        let mut writer: TableWriter<Candidate> =
            TableWriter::create(&ctx.workspace.join(&ctx.outputs["candidates"]), &provenance)
                .map_err(failed)?;
        let started = std::time::Instant::now();
        let mut new_tokens = 0usize;
        for (n, (id, text)) in prompts.iter().enumerate() {
            if ctx.cancelled() {
                return Err(StageError::Cancelled);
            }
            let ids = format.encode_prompt(&tok, text)?;
            rollout::check_fits(id, ids.len(), p.max_new_tokens, context, "the model")?;
            // Each (prompt, sample) draws from its own stream: results do not depend on
            // the order or number of prompts.
            let requests: Vec<(&[u32], u64)> = (0..p.n_samples)
                .map(|k| (ids.as_slice(), derive_seed(ctx.seed, &format!("{id}/{k}"))))
                .collect();
            let completions = rollout(&model, &tok, &requests, &params, &device)?;
            for (k, c) in completions.into_iter().enumerate() {
                new_tokens += c.tokens.len();
                writer
                    .push(Candidate {
                        prompt_id: id.clone(),
                        prompt: text.clone(),
                        sample: k as u64,
                        token_ids: Some(c.tokens.iter().map(|&t| i64::from(t)).collect()),
                        logprob_sum: Some(c.logprob_sum()),
                        response: c.text,
                        seed: c.seed,
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
