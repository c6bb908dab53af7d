//! `pretrain-load`: the starting causal LM. `source: hf` loads a local Hugging Face
//! checkpoint directory (config.json, model.safetensors, tokenizer.json; GPT-2 or Llama);
//! `source: builtin` trains a byte-level BPE tokenizer and pretrains a small model on a
//! shipped corpus, so the embedded default needs no download.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::lm::{self, failed};
use super::{Kind, ParamError, Port, Signature, StageContext, StageError};
use crate::artifact::ArtifactType;
use crate::artifact::table::Provenance;
use crate::cache::hf_hub;
use crate::model::train::{Batch, Schedule, Trainer};
use crate::model::{Gpt2Config, LlamaConfig, LlamaFamily, ModelConfig, Trainable, tokenizer};
use crate::policy::meta::ModelMeta;
use crate::spec::node::PathSeg;

pub struct PretrainLoad;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A local Hugging Face checkpoint directory (`path`).
    Hf,
    /// Train a tokenizer and pretrain a small model on `corpus`.
    Builtin,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    #[default]
    Gpt2,
    Llama,
}

fn default_corpus() -> String {
    "data/hhh/corpus.jsonl".into()
}
fn default_vocab() -> usize {
    512
}
fn default_d_model() -> usize {
    128
}
fn default_layers() -> usize {
    2
}
fn default_heads() -> usize {
    4
}
fn default_context() -> usize {
    128
}
fn default_steps() -> usize {
    300
}
fn default_batch() -> usize {
    16
}
fn default_lr() -> f64 {
    3e-3
}
fn default_warmup() -> usize {
    30
}
fn default_wd() -> f64 {
    0.01
}
fn default_clip() -> f64 {
    1.0
}
fn default_checkpoint_every() -> usize {
    100
}

/// Parameters of a `pretrain-load` stage.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PretrainParams {
    pub source: Source,
    /// `hf`: the checkpoint directory, relative to the workspace.
    #[serde(default)]
    pub path: Option<String>,
    /// `hf`, instead of `path`: a model id (`Qwen/Qwen2.5-0.5B-Instruct`) found in the local
    /// Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub` or ~/.cache/huggingface/hub);
    /// nothing is downloaded. The snapshot's commit goes into the lock.
    #[serde(default)]
    pub model: Option<String>,
    /// With `model`: the branch, tag or commit (default `main`).
    #[serde(default)]
    pub revision: Option<String>,
    /// `builtin`: a JSONL file of `{"text": ...}` lines.
    #[serde(default = "default_corpus")]
    pub corpus: String,
    /// `builtin`: `gpt2` or `llama`.
    #[serde(default)]
    pub architecture: Architecture,
    /// `builtin`: tokenizer vocabulary size (the BPE may stop short of it on a small corpus).
    #[serde(default = "default_vocab")]
    #[schemars(range(min = 300))]
    pub vocab_size: usize,
    #[serde(default = "default_d_model")]
    #[schemars(range(min = 1))]
    pub d_model: usize,
    #[serde(default = "default_layers")]
    #[schemars(range(min = 1))]
    pub n_layers: usize,
    #[serde(default = "default_heads")]
    #[schemars(range(min = 1))]
    pub n_heads: usize,
    /// Llama only: key/value heads for grouped-query attention (default: `n_heads`).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub n_kv_heads: Option<usize>,
    /// Context length in tokens.
    #[serde(default = "default_context")]
    #[schemars(range(min = 1))]
    pub context: usize,
    #[serde(default = "default_steps")]
    #[schemars(range(min = 1))]
    pub steps: usize,
    /// Sequences of `context` tokens per step.
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    /// Peak learning rate (AdamW, linear warm-up, cosine decay to 10%).
    #[serde(default = "default_lr")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub lr: f64,
    #[serde(default = "default_warmup")]
    pub warmup_steps: usize,
    #[serde(default = "default_wd")]
    #[schemars(range(min = 0))]
    pub weight_decay: f64,
    #[serde(default = "default_clip")]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub max_grad_norm: f64,
    /// Save a resumable checkpoint every this many steps.
    #[serde(default = "default_checkpoint_every")]
    #[schemars(range(min = 1))]
    pub checkpoint_every: usize,
    /// `auto`, `cpu` or `cuda:N`.
    #[serde(default = "lm::default_device")]
    pub device: String,
}

impl Kind for PretrainLoad {
    const NAME: &'static str = "pretrain-load";

    // 2: AdamW computed in one fused f64 pass (outputs differ in the last bits).
    // 3: the model computes through hone's fused CPU kernels (model::kernels), which
    // round differently from the composed ops.
    /// 4: a checkpoint's tokenizer files (`tokenizer_config.json`, `chat_template.jinja`,
    /// `special_tokens_map.json`, `generation_config.json`) are carried into the model.
    const VERSION: u32 = 4;

    const SUMMARY: &'static str = "load a Hugging Face checkpoint, or pretrain a small model with its own tokenizer on a shipped corpus";

    type Params = PretrainParams;

    fn signature(
        &self,
        p: &PretrainParams,
        _inputs: &[&str],
    ) -> Result<Signature, Vec<ParamError>> {
        let mut errors = Vec::new();
        let key = |k: &str| vec![PathSeg::Key(k.into())];
        let deps = match p.source {
            Source::Hf => match (&p.path, &p.model) {
                (Some(path), None) => vec![path.clone()],
                (None, Some(model)) => {
                    let revision = p.revision.as_deref().unwrap_or("main");
                    match hf_hub::resolve(model, revision) {
                        Ok(snap) => vec![hf_hub::dep(model, &snap.commit)],
                        Err(e) => {
                            errors.push(ParamError::new(key("model"), e));
                            Vec::new()
                        }
                    }
                }
                (Some(_), Some(_)) => {
                    errors.push(ParamError::new(
                        key("model"),
                        "give `path` (a checkpoint directory) or `model` (a Hugging Face cache id), not both",
                    ));
                    Vec::new()
                }
                (None, None) => {
                    errors.push(ParamError::new(Vec::new(), "missing required key `path` (the checkpoint directory for `source: hf`) or `model` (a model id in the local Hugging Face cache)"));
                    Vec::new()
                }
            },
            Source::Builtin => vec![p.corpus.clone()],
        };
        if p.revision.is_some() && p.model.is_none() {
            errors.push(ParamError::new(
                key("revision"),
                "`revision` goes with `model` (a Hugging Face cache id)",
            ));
        }
        if p.source == Source::Builtin {
            if !p.d_model.is_multiple_of(p.n_heads) {
                errors.push(ParamError::new(
                    key("n_heads"),
                    format!(
                        "`d_model` ({}) must be a multiple of `n_heads` ({})",
                        p.d_model, p.n_heads
                    ),
                ));
            }
            if let Some(kv) = p.n_kv_heads
                && !p.n_heads.is_multiple_of(kv)
            {
                errors.push(ParamError::new(
                    key("n_kv_heads"),
                    format!(
                        "`n_heads` ({}) must be a multiple of `n_kv_heads` ({kv})",
                        p.n_heads
                    ),
                ));
            }
        }
        lm::check_device(&p.device, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Signature {
            inputs: Vec::new(),
            open_inputs: false,
            outputs: vec![
                Port::new("model", ArtifactType::CausalLm),
                Port::new("metrics", ArtifactType::Metrics),
            ],
            deps,
        })
    }

    fn run(&self, p: &PretrainParams, ctx: &StageContext<'_>) -> Result<(), StageError> {
        let device = lm::device(&p.device)?;
        let provenance = ctx.provenance();
        let model_dir = ctx.workspace.join(&ctx.outputs["model"]);
        let metrics_dir = ctx.workspace.join(&ctx.outputs["metrics"]);
        match p.source {
            Source::Hf => {
                let (source, snapshot) = match &p.model {
                    Some(model) => {
                        let revision = p.revision.as_deref().unwrap_or("main");
                        let snap = hf_hub::resolve(model, revision).map_err(failed)?;
                        (snap.dir.clone(), Some(snap))
                    }
                    None => (
                        ctx.workspace
                            .join(p.path.as_deref().expect("checked by signature")),
                        None,
                    ),
                };
                let (trainable, tok) = lm::load_dir(&source, &device)?;
                let meta = ModelMeta {
                    source: Some("hf".into()),
                    path: match (&p.model, &snapshot) {
                        (Some(model), Some(snap)) => Some(hf_hub::dep(model, &snap.commit)),
                        _ => p.path.clone(),
                    },
                    ..ModelMeta::of_stage("pretrain-load")
                };
                lm::write_model(&model_dir, &trainable, &tok, &meta, Some(&source))?;
                let metrics = match (&p.model, &snapshot) {
                    (Some(model), Some(snap)) => {
                        json!({"source": "hf", "model": model, "commit": snap.commit})
                    }
                    _ => json!({"source": "hf"}),
                };
                lm::write_metrics(&metrics_dir, &metrics, &[], &provenance)
            }
            Source::Builtin => pretrain(ctx, p, &device, &model_dir, &metrics_dir, &provenance),
        }
    }
}

/// The corpus as text lines (`{"text": ...}` per JSONL line).
fn read_corpus(path: &std::path::Path) -> Result<Vec<String>, StageError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| failed(format!("`{}`: {e}", path.display())))?;
    let mut lines = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: Value = serde_json::from_str(line)
            .map_err(|e| failed(format!("`{}` line {}: {e}", path.display(), i + 1)))?;
        let text = value.get("text").and_then(Value::as_str).ok_or_else(|| {
            failed(format!(
                "`{}` line {}: no `text` field",
                path.display(),
                i + 1
            ))
        })?;
        lines.push(text.to_string());
    }
    if lines.is_empty() {
        return Err(failed(format!("`{}` holds no text", path.display())));
    }
    Ok(lines)
}

fn pretrain(
    ctx: &StageContext<'_>,
    p: &PretrainParams,
    device: &candle_core::Device,
    model_dir: &std::path::Path,
    metrics_dir: &std::path::Path,
    provenance: &Provenance,
) -> Result<(), StageError> {
    let texts = read_corpus(&ctx.workspace.join(&p.corpus))?;
    let tok = tokenizer::train_bpe(&texts, p.vocab_size).map_err(failed)?;
    let eot = tokenizer::token_id(&tok, tokenizer::END_OF_TEXT)
        .ok_or_else(|| failed("the tokenizer has no end-of-text token"))?;
    // One token stream: every line followed by end-of-text.
    let mut stream: Vec<u32> = Vec::new();
    for text in &texts {
        stream.extend(tokenizer::encode(&tok, text).map_err(failed)?);
        stream.push(eot);
    }
    if stream.len() <= p.context + 1 {
        return Err(failed(format!(
            "the corpus has {} tokens, fewer than one context of {}",
            stream.len(),
            p.context + 1
        )));
    }
    let vocab = tok.get_vocab_size(true);
    let config = match p.architecture {
        Architecture::Gpt2 => ModelConfig::Gpt2(Gpt2Config {
            vocab_size: vocab,
            n_positions: p.context,
            n_embd: p.d_model,
            n_layer: p.n_layers,
            n_head: p.n_heads,
            n_inner: None,
            activation_function: "gelu_new".into(),
            layer_norm_epsilon: 1e-5,
            bos_token_id: Some(eot),
            eos_token_id: Some(eot),
        }),
        Architecture::Llama => ModelConfig::Llama(LlamaConfig {
            vocab_size: vocab,
            hidden_size: p.d_model,
            intermediate_size: 4 * p.d_model,
            num_hidden_layers: p.n_layers,
            num_attention_heads: p.n_heads,
            num_key_value_heads: p.n_kv_heads,
            max_position_embeddings: p.context,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_word_embeddings: false,
            head_dim: None,
            sliding_window: None,
            query_pre_attn_scalar: None,
            attn_logit_softcapping: None,
            final_logit_softcapping: None,
            layer_types: None,
            rope_local_base_freq: None,
            partial_rotary_factor: None,
            pad_token_id: None,
            rope_scaling: None,
            attention_bias: false,
            bos_token_id: Some(eot),
            eos_token_id: Some(crate::model::TokenIds::One(eot)),
            family: LlamaFamily::Llama,
        }),
    };
    // candle's random initialisation is not seedable, so the initial weights are drawn here
    // from the stage seed: the same spec and seed give the same model.
    let trainable = Trainable::init(&config, device).map_err(failed)?;
    seed_weights(&trainable, ctx.seed, device)?;
    let schedule = Schedule {
        peak_lr: p.lr,
        warmup_steps: p.warmup_steps.min(p.steps),
        total_steps: p.steps,
        final_fraction: 0.1,
    };
    let mut trainer = Trainer::new(
        crate::policy::train::lm_vars(&trainable),
        schedule,
        p.weight_decay,
        Some(p.max_grad_norm),
    )
    .map_err(failed)?;
    let history = lm::train_steps(
        ctx,
        ctx.resume_dir,
        &trainable,
        &mut trainer,
        p.steps,
        p.checkpoint_every,
        "pretraining",
        |step| {
            // The batch of step s depends only on (seed, s): a resumed run sees the same data.
            let mut rng = ChaCha8Rng::seed_from_u64(
                ctx.seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let windows: Vec<(Vec<u32>, usize)> = (0..p.batch_size)
                .map(|_| {
                    let start = rng.random_range(0..stream.len() - p.context - 1);
                    (stream[start..start + p.context + 1].to_vec(), 0)
                })
                .collect();
            Batch::new(&windows, eot, device).map_err(failed)
        },
    )?;
    let final_loss = lm::final_loss(&history);
    let meta = ModelMeta {
        source: Some("builtin".into()),
        corpus: Some(p.corpus.clone()),
        steps: Some(p.steps as u64),
        final_loss: Some(final_loss),
        ..ModelMeta::of_stage("pretrain-load")
    };
    lm::write_model(model_dir, &trainable, &tok, &meta, None)?;
    let summary = json!({
        "source": "builtin",
        "steps": p.steps,
        "corpus_tokens": stream.len(),
        "vocab_size": vocab,
        "parameters": trainable.varmap.all_vars().iter().map(|v| v.elem_count()).sum::<usize>(),
        "final_loss": final_loss,
    });
    lm::write_metrics(metrics_dir, &summary, &history, provenance)
}

/// Redraws every weight from the stage seed ([`Trainable::reseed`]: normal(0, 0.02) for
/// matrices, ones for norm weights (1-D `*.weight` of norms), zeros for biases), on the
/// device the model was built on (`_device`, kept for the callers).
pub fn seed_weights(
    trainable: &Trainable,
    seed: u64,
    _device: &candle_core::Device,
) -> Result<(), StageError> {
    trainable.reseed(seed).map_err(failed)
}
