//! Llama, trainable, with Hugging Face tensor names (`model.layers.0.self_attn.q_proj.weight`,
//! ...): RMSNorm, rotary position embeddings applied as transformers does (`rotate_half`),
//! SwiGLU MLP, grouped-query attention. Qwen2 is the same network with biases on the q, k
//! and v projections ([`LlamaFamily::Qwen2`]).

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::KvCache;
use super::lora::{AdapterCtx, Lora, adapted};
use super::ops::{
    AttentionOptions, apply_partial_rope, attention, attention_probs, gelu_tanh, linear, repeat_kv,
    rms_norm, rope_inv_freq, rope_tables,
};

/// The fields of a Hugging Face `LlamaConfig` that hone uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// The size of a head when it is not `hidden_size / num_attention_heads` (Qwen3); left
    /// out otherwise, as it was before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Mistral's sliding window: each position attends to the last `sliding_window`
    /// positions, itself included. None for the other families (hone refuses Qwen2's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Gemma 2: the factor on q k^T is `query_pre_attn_scalar`^-1/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<u32>,
    /// Gemma 2: attention scores soft-capped at this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 2: logits soft-capped at this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    /// Gemma 2: which layers attend within `sliding_window` (`sliding_attention`) and which
    /// see everything (`full_attention`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3: the RoPE base of the windowed layers (`rope_theta` is the full ones').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// Phi-3: the share of each head that RoPE rotates (the rest passes through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// Phi-3: its padding token (transformers' default, 32000, lies outside a small
    /// vocabulary, so it is written back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
    /// Llama 3's rotary scaling (`rope_type: llama3`); none for plain RoPE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Llama3Scaling>,
    /// Llama's `attention_bias`: biases on the q, k, v and o projections.
    #[serde(default, skip_serializing_if = "is_false")]
    pub attention_bias: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<super::TokenIds>,
    /// The transformers family this layout is read as and written back as (its
    /// `model_type`); not a field of `config.json` itself.
    #[serde(skip)]
    pub family: LlamaFamily,
}

/// Llama 3's frequency-dependent RoPE scaling, as transformers' `_compute_llama3_parameters`:
/// long wavelengths are divided by `factor`, short ones kept, those in between interpolated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Llama3Scaling {
    /// Always `llama3`.
    pub rope_type: String,
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// The model families that share Llama's network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LlamaFamily {
    /// `model_type: llama` (also SmolLM and Llama 3.2).
    #[default]
    Llama,
    /// `model_type: qwen2` (Qwen2, Qwen2.5): biases on q, k and v, none on o.
    Qwen2,
    /// `model_type: mistral`, with or without a sliding window.
    Mistral,
    /// `model_type: qwen3`: an RMSNorm over each head of q and k before RoPE, its own
    /// head size.
    Qwen3,
    /// `model_type: gemma2`: embeddings scaled by sqrt(hidden), RMSNorms that scale by
    /// 1 + w, norms after attention and after the MLP too, a tanh-GELU MLP, soft-capped
    /// attention scores and logits, a sliding window on alternate layers.
    Gemma2,
    /// `model_type: gemma3_text` (Gemma 3 1B and the text part of the larger ones): Gemma
    /// 2's layout with per-head q/k norms, no soft caps by default, and a RoPE base of its
    /// own on the windowed layers.
    Gemma3,
    /// `model_type: phi3` (Phi-3, Phi-3.5, Phi-4-mini): q, k and v in one `qkv_proj`, gate
    /// and up in one `gate_up_proj`, RoPE on part of each head.
    Phi3,
}

impl LlamaFamily {
    /// `model_type`, and the causal-LM and sequence-classification class names.
    pub fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            LlamaFamily::Llama => (
                "llama",
                "LlamaForCausalLM",
                "LlamaForSequenceClassification",
            ),
            LlamaFamily::Qwen2 => (
                "qwen2",
                "Qwen2ForCausalLM",
                "Qwen2ForSequenceClassification",
            ),
            LlamaFamily::Mistral => (
                "mistral",
                "MistralForCausalLM",
                "MistralForSequenceClassification",
            ),
            LlamaFamily::Qwen3 => (
                "qwen3",
                "Qwen3ForCausalLM",
                "Qwen3ForSequenceClassification",
            ),
            LlamaFamily::Gemma2 => (
                "gemma2",
                "Gemma2ForCausalLM",
                "Gemma2ForSequenceClassification",
            ),
            LlamaFamily::Gemma3 => (
                "gemma3_text",
                "Gemma3ForCausalLM",
                "Gemma3TextForSequenceClassification",
            ),
            LlamaFamily::Phi3 => ("phi3", "Phi3ForCausalLM", "Phi3ForSequenceClassification"),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_eps() -> f64 {
    1e-6
}

fn default_theta() -> f64 {
    10000.0
}

impl LlamaConfig {
    pub fn n_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// The width of the attention's q and output: heads x head size.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim()
    }

    /// Whether q and k get an RMSNorm per head (Qwen3).
    pub fn qk_norm(&self) -> bool {
        matches!(self.family, LlamaFamily::Qwen3 | LlamaFamily::Gemma3)
    }

    /// Gemma's layout: norms that scale by 1 + w, four of them a layer.
    pub fn gemma(&self) -> bool {
        matches!(self.family, LlamaFamily::Gemma2 | LlamaFamily::Gemma3)
    }

    /// How many dimensions of a head RoPE rotates (an even number).
    pub fn rotary_dim(&self) -> usize {
        let d = self.head_dim();
        match self.partial_rotary_factor {
            Some(f) => (((d as f64) * f) as usize).min(d) & !1,
            None => d,
        }
    }

    /// The sliding window layer `i` attends within, if any.
    pub fn window(&self, i: usize) -> Option<usize> {
        match &self.layer_types {
            Some(types) => self
                .sliding_window
                .filter(|_| types.get(i).map(String::as_str) == Some("sliding_attention")),
            None => self.sliding_window,
        }
    }

    /// How layer `i` forms its attention scores.
    pub fn attention(&self, i: usize) -> AttentionOptions {
        AttentionOptions {
            scale: self
                .query_pre_attn_scalar
                .map(|s| 1.0 / f64::from(s).sqrt()),
            window: self.window(i),
            softcap: self.attn_logit_softcapping,
        }
    }

    /// Whether the q, k and v projections have biases.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.family == LlamaFamily::Qwen2
    }

    /// Whether the output projection has a bias.
    pub fn o_bias(&self) -> bool {
        self.attention_bias && self.family != LlamaFamily::Qwen2
    }
}

const INIT: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// A linear layer with HF's [out, in] weight layout, with or without a bias, and the LoRA
/// adapter that targets it.
#[derive(Clone)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<Lora>,
}

impl Linear {
    fn new(
        n_in: usize,
        n_out: usize,
        adapter: Option<&AdapterCtx>,
        vb: VarBuilder,
    ) -> Result<Self> {
        Linear::with_bias(n_in, n_out, false, adapter, vb)
    }

    fn with_bias(
        n_in: usize,
        n_out: usize,
        bias: bool,
        adapter: Option<&AdapterCtx>,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Linear {
            weight: vb.get_with_hints((n_out, n_in), "weight", INIT)?,
            bias: if bias {
                Some(vb.get_with_hints(n_out, "bias", Init::Const(0.0))?)
            } else {
                None
            },
            lora: Lora::build(adapter, &vb, n_in, n_out)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        adapted(
            linear(x, &self.weight.t()?, self.bias.as_ref())?,
            x,
            self.lora.as_ref(),
        )
    }
}

struct Layer {
    input_norm: Tensor,
    /// Gemma 2's norms of the attention's and the MLP's outputs.
    output_norms: Option<(Tensor, Tensor)>,
    /// Qwen3's per-head norms of q and k.
    qk_norm: Option<(Tensor, Tensor)>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

pub struct Llama {
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    pub config: LlamaConfig,
}

impl Llama {
    pub fn new(cfg: &LlamaConfig, adapter: Option<&AdapterCtx>, vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("model");
        let (h, kv, qd) = (
            cfg.hidden_size,
            cfg.n_kv_heads() * cfg.head_dim(),
            cfg.q_dim(),
        );
        // Gemma's norms scale by 1 + w: their neutral weight is 0.
        let ones = Init::Const(if cfg.gemma() { 0.0 } else { 1.0 });
        let qkv_bias = cfg.qkv_bias();
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = m.pp("layers").pp(i);
                let (a, mlp) = (l.pp("self_attn"), l.pp("mlp"));
                let inter = cfg.intermediate_size;
                let ((q, k, v), (gate, up)) = if cfg.family == LlamaFamily::Phi3 {
                    // One variable each (the checkpoint's tensors), used through views, so
                    // that gradients and updates reach the fused weight.
                    // An adapter on a fused projection is one adapter, its B split the same way.
                    let qkv = Linear::new(h, qd + 2 * kv, adapter, a.pp("qkv_proj"))?;
                    let gate_up = Linear::new(h, 2 * inter, adapter, mlp.pp("gate_up_proj"))?;
                    let part = |w: &Linear, at: usize, n: usize| -> Result<Linear> {
                        Ok(Linear {
                            weight: w.weight.narrow(0, at, n)?,
                            bias: None,
                            lora: w.lora.as_ref().map(|l| l.rows(at, n)).transpose()?,
                        })
                    };
                    (
                        (
                            part(&qkv, 0, qd)?,
                            part(&qkv, qd, kv)?,
                            part(&qkv, qd + kv, kv)?,
                        ),
                        (part(&gate_up, 0, inter)?, part(&gate_up, inter, inter)?),
                    )
                } else {
                    (
                        (
                            Linear::with_bias(h, qd, qkv_bias, adapter, a.pp("q_proj"))?,
                            Linear::with_bias(h, kv, qkv_bias, adapter, a.pp("k_proj"))?,
                            Linear::with_bias(h, kv, qkv_bias, adapter, a.pp("v_proj"))?,
                        ),
                        (
                            Linear::new(h, inter, adapter, mlp.pp("gate_proj"))?,
                            Linear::new(h, inter, adapter, mlp.pp("up_proj"))?,
                        ),
                    )
                };
                Ok(Layer {
                    input_norm: l.pp("input_layernorm").get_with_hints(h, "weight", ones)?,
                    output_norms: if cfg.gemma() {
                        Some((
                            l.pp("post_attention_layernorm")
                                .get_with_hints(h, "weight", ones)?,
                            l.pp("post_feedforward_layernorm")
                                .get_with_hints(h, "weight", ones)?,
                        ))
                    } else {
                        None
                    },
                    qk_norm: if cfg.qk_norm() {
                        let a = l.pp("self_attn");
                        let d = cfg.head_dim();
                        Some((
                            a.pp("q_norm").get_with_hints(d, "weight", ones)?,
                            a.pp("k_norm").get_with_hints(d, "weight", ones)?,
                        ))
                    } else {
                        None
                    },
                    q,
                    k,
                    v,
                    o: Linear::with_bias(
                        qd,
                        h,
                        cfg.o_bias(),
                        adapter,
                        l.pp("self_attn").pp("o_proj"),
                    )?,
                    post_norm: l
                        .pp(if cfg.gemma() {
                            "pre_feedforward_layernorm"
                        } else {
                            "post_attention_layernorm"
                        })
                        .get_with_hints(h, "weight", ones)?,
                    gate,
                    up,
                    down: Linear::new(
                        cfg.intermediate_size,
                        h,
                        adapter,
                        l.pp("mlp").pp("down_proj"),
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = m.get_with_hints((cfg.vocab_size, h), "embed_tokens.weight", INIT)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            vb.get_with_hints((cfg.vocab_size, h), "lm_head.weight", INIT)?
        };
        Ok(Llama {
            embed,
            layers,
            norm: m.pp("norm").get_with_hints(h, "weight", ones)?,
            lm_head,
            config: cfg.clone(),
        })
    }

    /// Final hidden states [b, t, hidden] for `ids` [b, t] at positions `start..`.
    pub fn hidden(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        start: usize,
    ) -> Result<Tensor> {
        self.run(ids, cache, start, false)
    }

    /// The last layer's attention weights [b, heads, t, t] for `ids` [b, t] (from
    /// position 0, no cache).
    pub fn last_attention(&self, ids: &Tensor) -> Result<Tensor> {
        self.run(ids, None, 0, true)
    }

    /// The layers over `ids`: the final hidden states, or with `attention_only` the last
    /// layer's attention weights.
    fn run(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        start: usize,
        attention_only: bool,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, t) = ids.dims2()?;
        if start + t > cfg.max_position_embeddings {
            candle_core::bail!(
                "sequence of {} tokens exceeds the model's context of {}",
                start + t,
                cfg.max_position_embeddings
            );
        }
        let (n_heads, n_kv, head_dim) = (cfg.num_attention_heads, cfg.n_kv_heads(), cfg.head_dim());
        let rotary = cfg.rotary_dim();
        let inv_freq = rope_inv_freq(rotary, cfg.rope_theta, cfg.rope_scaling.as_ref());
        let global = rope_tables(start, t, &inv_freq, ids.device())?;
        // Gemma 3's windowed layers rotate with a base of their own.
        let local = match cfg.rope_local_base_freq {
            Some(theta) => Some(rope_tables(
                start,
                t,
                &rope_inv_freq(rotary, theta, None),
                ids.device(),
            )?),
            None => None,
        };
        let mut x =
            self.embed
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((b, t, cfg.hidden_size))?;
        if cfg.gemma() {
            // transformers multiplies by sqrt(hidden) rounded to the activations' dtype.
            x = (x * f64::from((cfg.hidden_size as f32).sqrt()))?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let h = self.norm(&x, &layer.input_norm)?;
            let heads = |proj: &Linear, n: usize, norm: Option<&Tensor>| -> Result<Tensor> {
                let x = proj.forward(&h)?.reshape((b, t, n, head_dim))?;
                let x = match norm {
                    Some(w) => self.norm(&x, w)?,
                    None => x,
                };
                x.transpose(1, 2)?.contiguous()
            };
            let (qn, kn) = layer.qk_norm.as_ref().map(|(q, k)| (q, k)).unzip();
            let (cos, sin) = match (&local, cfg.window(i)) {
                (Some(local), Some(_)) => local,
                _ => &global,
            };
            let rope = |x: Tensor| apply_partial_rope(&x, cos, sin, rotary, head_dim);
            let q = rope(heads(&layer.q, n_heads, qn)?)?;
            let mut k = rope(heads(&layer.k, n_kv, kn)?)?;
            if attention_only && i + 1 == self.layers.len() {
                return attention_probs(&q, &repeat_kv(&k, n_heads / n_kv)?, cfg.attention(i));
            }
            let mut v = heads(&layer.v, n_kv, None)?;
            if let Some(cache) = cache.as_deref_mut() {
                (k, v) = super::append_kv(&mut cache.layers[i], k, v)?;
            }
            let (k, v) = (
                repeat_kv(&k, n_heads / n_kv)?,
                repeat_kv(&v, n_heads / n_kv)?,
            );
            let y = attention(&q, &k, &v, cfg.attention(i))?
                .transpose(1, 2)?
                .reshape((b, t, cfg.q_dim()))?;
            let y = layer.o.forward(&y)?;
            let y = match &layer.output_norms {
                Some((after_attention, _)) => self.norm(&y, after_attention)?,
                None => y,
            };
            x = (x + y)?;
            let h = self.norm(&x, &layer.post_norm)?;
            let gate = layer.gate.forward(&h)?;
            let gate = if cfg.gemma() {
                gelu_tanh(&gate)?
            } else {
                gate.silu()?
            };
            let mlp = layer.down.forward(&(gate * layer.up.forward(&h)?)?)?;
            let mlp = match &layer.output_norms {
                Some((_, after_mlp)) => self.norm(&mlp, after_mlp)?,
                None => mlp,
            };
            x = (x + mlp)?;
        }
        self.norm(&x, &self.norm)
    }

    /// RMSNorm with weight `w`, or Gemma's with 1 + w.
    fn norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        if self.config.gemma() {
            rms_norm(x, &(w + 1.0)?, self.config.rms_norm_eps)
        } else {
            rms_norm(x, w, self.config.rms_norm_eps)
        }
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = linear(hidden, &self.lm_head.t()?, None)?;
        match self.config.final_logit_softcapping {
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }
}
