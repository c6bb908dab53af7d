//! GPT-2, trainable, with Hugging Face tensor names (`transformer.h.0.attn.c_attn.weight`,
//! ...) so checkpoints move between hone and transformers. GPT-2's linear layers are
//! "Conv1D": weights stored [in, out], applied as x @ W + b. The LM head is tied to the
//! token embedding, as in the original.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use super::KvCache;
use super::lora::{AdapterCtx, Lora, adapted};
use super::ops::{AttentionOptions, attention, attention_probs, gelu_tanh, layer_norm, linear};

/// The fields of a Hugging Face `GPT2Config` that hone uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// The MLP width; `None` means 4 * n_embd.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn default_activation() -> String {
    "gelu_new".into()
}

fn default_eps() -> f64 {
    1e-5
}

/// Normal(0, 0.02), GPT-2's initialisation.
const INIT: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// GPT-2's linear layer ([in, out] weights) and the LoRA adapter that targets it (whose A
/// and B are [r, in] and [out, r] as on any linear layer: PEFT's `fan_in_fan_out`).
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
    lora: Option<Lora>,
}

impl Conv1D {
    fn new(
        n_in: usize,
        n_out: usize,
        adapter: Option<&AdapterCtx>,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Conv1D {
            weight: vb.get_with_hints((n_in, n_out), "weight", INIT)?,
            bias: vb.get_with_hints(n_out, "bias", Init::Const(0.0))?,
            lora: Lora::build(adapter, &vb, n_in, n_out)?,
        })
    }
}

impl Module for Conv1D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        adapted(
            linear(x, &self.weight, Some(&self.bias))?,
            x,
            self.lora.as_ref(),
        )
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(n: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(n, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(n, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1D,
    attn_proj: Conv1D,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
    n_head: usize,
    exact_gelu: bool,
}

impl Block {
    fn new(cfg: &Gpt2Config, adapter: Option<&AdapterCtx>, vb: VarBuilder) -> Result<Self> {
        let d = cfg.n_embd;
        let inner = cfg.n_inner.unwrap_or(4 * d);
        Ok(Block {
            ln_1: LayerNorm::new(d, cfg.layer_norm_epsilon, vb.pp("ln_1"))?,
            c_attn: Conv1D::new(d, 3 * d, adapter, vb.pp("attn").pp("c_attn"))?,
            attn_proj: Conv1D::new(d, d, adapter, vb.pp("attn").pp("c_proj"))?,
            ln_2: LayerNorm::new(d, cfg.layer_norm_epsilon, vb.pp("ln_2"))?,
            c_fc: Conv1D::new(d, inner, adapter, vb.pp("mlp").pp("c_fc"))?,
            mlp_proj: Conv1D::new(inner, d, adapter, vb.pp("mlp").pp("c_proj"))?,
            n_head: cfg.n_head,
            exact_gelu: cfg.activation_function == "gelu",
        })
    }

    /// The attention weights [b, heads, t, t] this block computes for `x`.
    fn attention_probs(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let head_dim = c / self.n_head;
        let qkv = self.c_attn.forward(&self.ln_1.forward(x)?)?;
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, i * c, c)?
                .reshape((b, t, self.n_head, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        attention_probs(&split(0)?, &split(1)?, AttentionOptions::default())
    }

    fn forward(&self, x: &Tensor, cache: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let head_dim = c / self.n_head;
        let qkv = self.c_attn.forward(&self.ln_1.forward(x)?)?;
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, i * c, c)?
                .reshape((b, t, self.n_head, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, mut k, mut v) = (split(0)?, split(1)?, split(2)?);
        if let Some(slot) = cache {
            (k, v) = super::append_kv(slot, k, v)?;
        }
        let y = attention(&q, &k, &v, AttentionOptions::default())?
            .transpose(1, 2)?
            .reshape((b, t, c))?;
        let x = (x + self.attn_proj.forward(&y)?)?;
        let h = self.c_fc.forward(&self.ln_2.forward(&x)?)?;
        // GPT-2's "gelu_new" is the tanh approximation (candle's `gelu`); "gelu" is exact.
        let h = if self.exact_gelu {
            h.gelu_erf()?
        } else {
            gelu_tanh(&h)?
        };
        x + self.mlp_proj.forward(&h)?
    }
}

pub struct Gpt2 {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    pub config: Gpt2Config,
}

impl Gpt2 {
    pub fn new(cfg: &Gpt2Config, adapter: Option<&AdapterCtx>, vb: VarBuilder) -> Result<Self> {
        let t = vb.pp("transformer");
        Ok(Gpt2 {
            wte: t.get_with_hints((cfg.vocab_size, cfg.n_embd), "wte.weight", INIT)?,
            wpe: t.get_with_hints(
                (cfg.n_positions, cfg.n_embd),
                "wpe.weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.01,
                },
            )?,
            blocks: (0..cfg.n_layer)
                .map(|i| Block::new(cfg, adapter, t.pp("h").pp(i)))
                .collect::<Result<_>>()?,
            ln_f: LayerNorm::new(cfg.n_embd, cfg.layer_norm_epsilon, t.pp("ln_f"))?,
            config: cfg.clone(),
        })
    }

    /// Final hidden states [b, t, n_embd] for `ids` [b, t] at positions `start..`.
    pub fn hidden(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        start: usize,
    ) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if start + t > self.config.n_positions {
            candle_core::bail!(
                "sequence of {} tokens exceeds the model's context of {}",
                start + t,
                self.config.n_positions
            );
        }
        let positions = Tensor::arange(start as u32, (start + t) as u32, ids.device())?;
        let mut x = embed(&self.wte, ids)?.broadcast_add(&embed(&self.wpe, &positions)?)?;
        match cache {
            Some(cache) => {
                for (block, slot) in self.blocks.iter().zip(cache.layers.iter_mut()) {
                    x = block.forward(&x, Some(slot))?;
                }
            }
            None => {
                for block in &self.blocks {
                    x = block.forward(&x, None)?;
                }
            }
        }
        self.ln_f.forward(&x)
    }

    /// The last layer's attention weights [b, heads, t, t] for `ids` [b, t] (from
    /// position 0, no cache).
    pub fn last_attention(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let positions = Tensor::arange(0u32, t as u32, ids.device())?;
        let mut x = embed(&self.wte, ids)?.broadcast_add(&embed(&self.wpe, &positions)?)?;
        let (last, rest) = self.blocks.split_last().expect("at least one block");
        for block in rest {
            x = block.forward(&x, None)?;
        }
        last.attention_probs(&x)
    }

    /// Logits [b, t, vocab] from hidden states (the head is tied to `wte`).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        linear(hidden, &self.wte.t()?, None)
    }

    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }
}

/// Rows of an embedding matrix for `ids` of any shape: [..] -> [.., dim].
fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let mut shape = ids.dims().to_vec();
    shape.push(table.dim(1)?);
    table.index_select(&ids.flatten_all()?, 0)?.reshape(shape)
}
