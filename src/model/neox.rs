//! GPT-NeoX (Pythia, GPT-NeoX-20B), trainable, with Hugging Face tensor names
//! (`gpt_neox.layers.0.attention.query_key_value.weight`, ...): LayerNorms with biases,
//! one fused q/k/v projection laid out head by head (each head's q, k and v side by side),
//! rotary embeddings on the first `rotary_pct` of each head, an exact-GELU MLP, and by
//! default the parallel residual: `x + attention(ln1(x)) + mlp(ln2(x))`. The LM head is
//! `embed_out`, untied unless `tie_word_embeddings`.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::KvCache;
use super::lora::{AdapterCtx, Lora, adapted};
use super::ops::{
    AttentionOptions, apply_partial_rope, attention, attention_probs, gelu_tanh, layer_norm,
    linear, rope_inv_freq, rope_tables,
};

/// The fields of a Hugging Face `GPTNeoXConfig` that hone uses. The rotary settings are
/// kept under their transformers 4 names; `ModelConfig::from_hf_json` reads them from
/// transformers 5's `rope_parameters` too, and `to_hf_json` writes both forms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeoxConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "yes")]
    pub use_parallel_residual: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on the q/k/v projection and the attention's output.
    #[serde(default = "yes")]
    pub attention_bias: bool,
    /// The share of each head that is rotated.
    #[serde(default = "default_rotary_pct")]
    pub rotary_pct: f64,
    #[serde(default = "default_base")]
    pub rotary_emb_base: f64,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<super::TokenIds>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn default_rotary_pct() -> f64 {
    0.25
}
fn default_base() -> f64 {
    10_000.0
}

impl NeoxConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// How many dimensions of each head are rotated (transformers' `int(head * pct)`).
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim() as f64 * self.rotary_pct) as usize
    }

    /// The activation functions hone implements: exact GELU (`gelu`, Pythia's) and its
    /// tanh approximation.
    pub fn check_activation(&self) -> std::result::Result<(), String> {
        if ["gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"]
            .contains(&self.hidden_act.as_str())
        {
            Ok(())
        } else {
            Err(format!(
                "`hidden_act` `{}` is not one hone implements for GPT-NeoX (gelu, gelu_new, gelu_pytorch_tanh, gelu_fast)",
                self.hidden_act
            ))
        }
    }
}

/// Normal(0, 0.02), the initialisation of transformers' GPT-NeoX.
const INIT: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// A linear layer with HF's [out, in] weight layout and the LoRA adapter that targets it.
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<Lora>,
}

impl Linear {
    fn new(
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

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn new(n: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Norm {
            weight: vb.get_with_hints(n, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(n, "bias", Init::Const(0.0))?,
        })
    }
}

struct Layer {
    input_norm: Norm,
    post_norm: Norm,
    qkv: Linear,
    dense: Linear,
    up: Linear,
    down: Linear,
}

pub struct Neox {
    embed: Tensor,
    layers: Vec<Layer>,
    final_norm: Norm,
    /// `embed_out`; `None` when tied to `embed`.
    head: Option<Tensor>,
    pub config: NeoxConfig,
}

impl Neox {
    pub fn new(cfg: &NeoxConfig, adapter: Option<&AdapterCtx>, vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("gpt_neox");
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let layers = (0..cfg.num_hidden_layers)
            .map(|n| {
                let l = m.pp("layers").pp(n);
                Ok(Layer {
                    input_norm: Norm::new(h, l.pp("input_layernorm"))?,
                    post_norm: Norm::new(h, l.pp("post_attention_layernorm"))?,
                    qkv: Linear::new(
                        h,
                        3 * h,
                        cfg.attention_bias,
                        adapter,
                        l.pp("attention").pp("query_key_value"),
                    )?,
                    dense: Linear::new(
                        h,
                        h,
                        cfg.attention_bias,
                        adapter,
                        l.pp("attention").pp("dense"),
                    )?,
                    up: Linear::new(h, i, true, adapter, l.pp("mlp").pp("dense_h_to_4h"))?,
                    down: Linear::new(i, h, true, adapter, l.pp("mlp").pp("dense_4h_to_h"))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Neox {
            embed: m.get_with_hints((cfg.vocab_size, h), "embed_in.weight", INIT)?,
            layers,
            final_norm: Norm::new(h, m.pp("final_layer_norm"))?,
            head: if cfg.tie_word_embeddings {
                None
            } else {
                Some(vb.get_with_hints((cfg.vocab_size, h), "embed_out.weight", INIT)?)
            },
            config: cfg.clone(),
        })
    }

    fn norm(&self, x: &Tensor, n: &Norm) -> Result<Tensor> {
        layer_norm(x, &n.weight, &n.bias, self.config.layer_norm_eps)
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

    /// The last layer's attention weights [b, heads, t, t] (from position 0, no cache).
    pub fn last_attention(&self, ids: &Tensor) -> Result<Tensor> {
        self.run(ids, None, 0, true)
    }

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
        let (n_heads, head_dim, rotary) =
            (cfg.num_attention_heads, cfg.head_dim(), cfg.rotary_dim());
        let (cos, sin) = rope_tables(
            start,
            t,
            &rope_inv_freq(rotary, cfg.rotary_emb_base, None),
            ids.device(),
        )?;
        let rope = |x: Tensor| apply_partial_rope(&x, &cos, &sin, rotary, head_dim);
        let mut x =
            self.embed
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((b, t, cfg.hidden_size))?;
        for (i, layer) in self.layers.iter().enumerate() {
            // [b, t, heads, 3 * head]: each head's q, k and v side by side.
            let qkv = layer
                .qkv
                .forward(&self.norm(&x, &layer.input_norm)?)?
                .reshape((b, t, n_heads, 3 * head_dim))?
                .transpose(1, 2)?;
            let part = |j: usize| qkv.narrow(3, j * head_dim, head_dim)?.contiguous();
            let q = rope(part(0)?)?;
            let mut k = rope(part(1)?)?;
            if attention_only && i + 1 == self.layers.len() {
                return attention_probs(&q, &k, AttentionOptions::default());
            }
            let mut v = part(2)?;
            if let Some(cache) = cache.as_deref_mut() {
                (k, v) = super::append_kv(&mut cache.layers[i], k, v)?;
            }
            let y = attention(&q, &k, &v, AttentionOptions::default())?
                .transpose(1, 2)?
                .reshape((b, t, cfg.hidden_size))?;
            let attn = layer.dense.forward(&y)?;
            let mlp = |h: &Tensor| -> Result<Tensor> {
                let up = layer.up.forward(&self.norm(h, &layer.post_norm)?)?;
                let up = if cfg.hidden_act == "gelu" {
                    up.gelu_erf()?
                } else {
                    gelu_tanh(&up)?
                };
                layer.down.forward(&up)
            };
            x = if cfg.use_parallel_residual {
                // transformers: mlp_output + attn_output + hidden_states.
                ((mlp(&x)? + attn)? + &x)?
            } else {
                let h = (attn + &x)?;
                (mlp(&h)? + h)?
            };
        }
        self.norm(&x, &self.final_norm)
    }

    /// Logits [b, t, vocab] from hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        linear(
            hidden,
            &self.head.as_ref().unwrap_or(&self.embed).t()?,
            None,
        )
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }
}
