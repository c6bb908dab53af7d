//! Causal language models on candle: trainable GPT-2 and Llama with Hugging Face tensor
//! names, checkpoint directories a transformers user recognises, and KV-cache sampling.
//! No YAML, CLI or spec here: stages hand this module tensors, paths and numbers.

pub mod gpt2;
pub mod kernels;
pub mod llama;
pub mod lora;
pub mod neox;
pub mod ops;
pub mod reward;
pub mod sample;
pub mod tokenizer;
pub mod train;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::Value;

pub use gpt2::{Gpt2, Gpt2Config};
pub use llama::{Llama, LlamaConfig, LlamaFamily};
pub use neox::{Neox, NeoxConfig};

/// Gemma 2's and Gemma 3's fields as transformers reads them: their defaults where a key
/// is absent (head size 256, q k^T scaled by 256^-1/2, a window of 4096; Gemma 2: soft caps
/// 50 and 30 and a window on every other layer from the first; Gemma 3: no soft caps, five
/// windowed layers to one full, RoPE bases 10^6 (full) and 10^4 (windowed) from the
/// per-layer-type `rope_parameters` transformers 5 writes), and only what hone implements.
fn gemma_fields(value: &mut Value, gemma3: bool) -> std::result::Result<(), String> {
    let activation = value
        .get("hidden_activation")
        .or_else(|| value.get("hidden_act"))
        .and_then(Value::as_str)
        .unwrap_or("gelu_pytorch_tanh");
    if activation != "gelu_pytorch_tanh" {
        return Err(format!(
            "Gemma `hidden_activation` `{activation}` is not one hone implements (gelu_pytorch_tanh)"
        ));
    }
    if value
        .get("use_bidirectional_attention")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Err("`use_bidirectional_attention` is true: hone's models are causal".into());
    }
    let (attn_cap, final_cap) = if gemma3 {
        (Value::Null, Value::Null)
    } else {
        (Value::from(50.0), Value::from(30.0))
    };
    for (key, default) in [
        ("head_dim", Value::from(256)),
        ("query_pre_attn_scalar", Value::from(256)),
        ("attn_logit_softcapping", attn_cap),
        ("final_logit_softcapping", final_cap),
        ("sliding_window", Value::from(4096)),
        ("rms_norm_eps", Value::from(1e-6)),
        ("tie_word_embeddings", Value::from(true)),
    ] {
        if value.get(key).is_none() {
            value[key] = default;
        }
    }
    if gemma3 {
        // transformers 5: {"full_attention": {...}, "sliding_attention": {...}}; earlier:
        // rope_theta, rope_local_base_freq and rope_scaling at the top.
        let per_type = |kind: &str, key: &str| {
            value
                .pointer(&format!("/rope_parameters/{kind}/{key}"))
                .cloned()
        };
        for kind in ["full_attention", "sliding_attention"] {
            if let Some(t) = per_type(kind, "rope_type").as_ref().and_then(Value::as_str)
                && t != "default"
            {
                return Err(format!(
                    "Gemma 3 rope type `{t}` ({kind}) is not one hone implements (`default`)"
                ));
            }
        }
        if let Some(t) = value
            .pointer("/rope_scaling/rope_type")
            .and_then(Value::as_str)
            && t != "default"
        {
            return Err(format!(
                "Gemma 3 rope type `{t}` is not one hone implements (`default`)"
            ));
        }
        let full = per_type("full_attention", "rope_theta")
            .or_else(|| value.get("rope_theta").cloned())
            .unwrap_or(Value::from(1_000_000.0));
        let local = per_type("sliding_attention", "rope_theta")
            .or_else(|| value.get("rope_local_base_freq").cloned())
            .unwrap_or(Value::from(10_000.0));
        value["rope_theta"] = full;
        value["rope_local_base_freq"] = local;
        value["rope_parameters"] = Value::Null;
        value["rope_scaling"] = Value::Null;
    }
    if value.get("layer_types").is_none_or(Value::is_null) {
        let layers = value
            .get("num_hidden_layers")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let sliding = |i: u64| {
            if gemma3 {
                !(i + 1).is_multiple_of(6)
            } else {
                (i + 1) % 2 == 1
            }
        };
        value["layer_types"] = (0..layers)
            .map(|i| {
                if sliding(i) {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect::<Vec<_>>()
            .into();
    }
    Ok(())
}

/// GPT-NeoX's rotary settings as hone keeps them (`rotary_pct`, `rotary_emb_base`), from
/// transformers 5's `rope_parameters` where it has them; rotary types other than plain
/// RoPE are refused by name.
fn neox_fields(value: &mut Value) -> std::result::Result<(), String> {
    if let Some(rope) = value
        .get("rope_parameters")
        .filter(|v| !v.is_null())
        .cloned()
    {
        match rope.get("rope_type").and_then(Value::as_str) {
            None | Some("default") => {}
            Some(kind) => {
                return Err(format!(
                    "rope type `{kind}` is not one hone implements for GPT-NeoX (`default`)"
                ));
            }
        }
        if let Some(theta) = rope.get("rope_theta").filter(|v| !v.is_null()) {
            value["rotary_emb_base"] = theta.clone();
        }
        if let Some(pct) = rope.get("partial_rotary_factor").filter(|v| !v.is_null()) {
            value["rotary_pct"] = pct.clone();
        }
    }
    if value.get("rope_scaling").is_some_and(|v| !v.is_null()) {
        return Err("`rope_scaling` is set: hone implements plain RoPE for GPT-NeoX".into());
    }
    Ok(())
}

/// A model's architecture and sizes, read from and written to `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Gpt2(Gpt2Config),
    Llama(LlamaConfig),
    /// GPT-NeoX (Pythia).
    Neox(NeoxConfig),
}

impl ModelConfig {
    /// Parses a Hugging Face `config.json` (`model_type` `gpt2` or `llama`); fields hone
    /// does not use are ignored.
    pub fn from_hf_json(text: &str) -> std::result::Result<ModelConfig, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        match value.get("model_type").and_then(Value::as_str) {
            Some("gpt2") => serde_json::from_value(value)
                .map(ModelConfig::Gpt2)
                .map_err(|e| format!("GPT-2 config: {e}"))
                .and_then(ModelConfig::checked),
            Some(
                family @ ("llama" | "qwen2" | "qwen3" | "mistral" | "gemma2" | "gemma3_text"
                | "phi3"),
            ) => {
                let family = match family {
                    "qwen2" => LlamaFamily::Qwen2,
                    "qwen3" => LlamaFamily::Qwen3,
                    "mistral" => LlamaFamily::Mistral,
                    "gemma2" => LlamaFamily::Gemma2,
                    "gemma3_text" => LlamaFamily::Gemma3,
                    "phi3" => LlamaFamily::Phi3,
                    _ => LlamaFamily::Llama,
                };
                let mut value = value;
                if matches!(family, LlamaFamily::Gemma2 | LlamaFamily::Gemma3) {
                    gemma_fields(&mut value, family == LlamaFamily::Gemma3)?;
                } else {
                    for key in [
                        "layer_types",
                        "query_pre_attn_scalar",
                        "attn_logit_softcapping",
                        "final_logit_softcapping",
                        "rope_local_base_freq",
                    ] {
                        value[key] = Value::Null;
                    }
                }
                // transformers 5 writes `rope_parameters.rope_theta`; older versions a
                // top-level `rope_theta`.
                if value.get("rope_theta").is_none()
                    && let Some(theta) = value.pointer("/rope_parameters/rope_theta").cloned()
                {
                    value["rope_theta"] = theta;
                }
                // The rotary scaling: transformers 5 writes it into `rope_parameters`,
                // earlier versions as `rope_scaling`; hone keeps it as `rope_scaling`.
                let scaling = value
                    .get("rope_scaling")
                    .filter(|v| !v.is_null())
                    .or_else(|| value.get("rope_parameters"))
                    .cloned();
                match scaling
                    .as_ref()
                    .and_then(|v| v.get("rope_type"))
                    .and_then(Value::as_str)
                {
                    None | Some("default") => value["rope_scaling"] = Value::Null,
                    Some("llama3") => value["rope_scaling"] = scaling.unwrap_or_default(),
                    Some(kind) => {
                        return Err(format!(
                            "rope type `{kind}` is not one hone implements (`default`, `llama3`)"
                        ));
                    }
                }
                // Mistral attends within its sliding window; Qwen2 carries one it uses only
                // with `use_sliding_window` (on some layers: not implemented); the others
                // have none.
                if family == LlamaFamily::Qwen2
                    && value.get("use_sliding_window").and_then(Value::as_bool) == Some(true)
                    && let Some(window) = value.get("sliding_window").and_then(Value::as_u64)
                {
                    return Err(format!(
                        "`use_sliding_window` with a window of {window}: hone does not implement Qwen2's per-layer sliding windows"
                    ));
                }
                if !matches!(
                    family,
                    LlamaFamily::Mistral
                        | LlamaFamily::Gemma2
                        | LlamaFamily::Gemma3
                        | LlamaFamily::Phi3
                ) {
                    value["sliding_window"] = Value::Null;
                }
                if value
                    .get("partial_rotary_factor")
                    .is_none_or(Value::is_null)
                    && let Some(f) = value
                        .pointer("/rope_parameters/partial_rotary_factor")
                        .cloned()
                {
                    value["partial_rotary_factor"] = f;
                }
                if family != LlamaFamily::Phi3 {
                    value["partial_rotary_factor"] = Value::Null;
                    value["pad_token_id"] = Value::Null;
                } else if value
                    .get("hidden_act")
                    .and_then(Value::as_str)
                    .is_some_and(|a| a != "silu")
                {
                    return Err(
                        "Phi-3 `hidden_act` other than `silu` is not one hone implements".into(),
                    );
                }
                // A head size equal to hidden / heads is left out, so configs keep their
                // bytes; Qwen3's is always written (transformers' default is not that).
                if !matches!(
                    family,
                    LlamaFamily::Qwen3 | LlamaFamily::Gemma2 | LlamaFamily::Gemma3
                ) && let (Some(head_dim), Some(hidden), Some(heads)) = (
                    value.get("head_dim").and_then(Value::as_u64),
                    value.get("hidden_size").and_then(Value::as_u64),
                    value.get("num_attention_heads").and_then(Value::as_u64),
                ) && head_dim * heads == hidden
                {
                    value["head_dim"] = Value::Null;
                }
                if value.get("mlp_bias").and_then(Value::as_bool) == Some(true) {
                    return Err("`mlp_bias` is true: hone's Llama has no MLP biases".into());
                }
                let mut config: LlamaConfig = serde_json::from_value(value)
                    .map_err(|e| format!("{} config: {e}", family.names().0))?;
                config.family = family;
                ModelConfig::Llama(config).checked()
            }
            Some("gpt_neox") => {
                let mut value = value;
                neox_fields(&mut value)?;
                serde_json::from_value(value)
                    .map(ModelConfig::Neox)
                    .map_err(|e| format!("GPT-NeoX config: {e}"))
                    .and_then(ModelConfig::checked)
            }
            Some(other) => Err(format!(
                "unsupported `model_type` `{other}` (hone trains gpt2, gpt_neox, llama, qwen2, qwen3, mistral, gemma2, gemma3_text and phi3)"
            )),
            None => Err("no `model_type` field".into()),
        }
    }

    fn checked(self) -> std::result::Result<ModelConfig, String> {
        if let ModelConfig::Llama(c) = &self
            && let Some(types) = &c.layer_types
            && types.len() != c.num_hidden_layers
        {
            return Err(format!(
                "`layer_types` names {} layers, `num_hidden_layers` is {}",
                types.len(),
                c.num_hidden_layers
            ));
        }
        self.check().map(|()| self)
    }

    /// Checks every value a network is built from before anything is allocated: sizes at
    /// least 1 and within what a model can have, heads that divide the width, finite
    /// positive epsilons, token ids inside the vocabulary. The message names the key.
    pub fn check(&self) -> std::result::Result<(), String> {
        fn size(key: &str, value: usize, max: usize) -> std::result::Result<(), String> {
            if value == 0 || value > max {
                return Err(format!(
                    "`{key}` is {value}; it must be between 1 and {max}"
                ));
            }
            Ok(())
        }
        fn positive(key: &str, value: f64) -> std::result::Result<(), String> {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!("`{key}` is {value}; it must be a positive number"));
            }
            Ok(())
        }
        fn token(key: &str, id: Option<u32>, vocab: usize) -> std::result::Result<(), String> {
            match id {
                Some(id) if id as usize >= vocab => Err(format!(
                    "`{key}` is {id}, outside the vocabulary (`vocab_size` {vocab})"
                )),
                _ => Ok(()),
            }
        }
        const WIDTH: usize = 1 << 16;
        const VOCAB: usize = 1 << 22;
        const POSITIONS: usize = 1 << 22;
        const LAYERS: usize = 1024;
        match self {
            ModelConfig::Gpt2(c) => {
                size("vocab_size", c.vocab_size, VOCAB)?;
                size("n_positions", c.n_positions, POSITIONS)?;
                size("n_embd", c.n_embd, WIDTH)?;
                size("n_layer", c.n_layer, LAYERS)?;
                size("n_head", c.n_head, c.n_embd)?;
                if c.n_embd % c.n_head != 0 {
                    return Err(format!(
                        "`n_embd` ({}) is not a multiple of `n_head` ({})",
                        c.n_embd, c.n_head
                    ));
                }
                if let Some(inner) = c.n_inner {
                    size("n_inner", inner, 4 * WIDTH)?;
                }
                if !["gelu_new", "gelu", "gelu_pytorch_tanh"]
                    .contains(&c.activation_function.as_str())
                {
                    return Err(format!(
                        "`activation_function` `{}` is not one hone implements (gelu_new, gelu_pytorch_tanh, gelu)",
                        c.activation_function
                    ));
                }
                positive("layer_norm_epsilon", c.layer_norm_epsilon)?;
                token("bos_token_id", c.bos_token_id, c.vocab_size)?;
                token("eos_token_id", c.eos_token_id, c.vocab_size)?;
            }
            ModelConfig::Llama(c) => {
                size("vocab_size", c.vocab_size, VOCAB)?;
                size(
                    "max_position_embeddings",
                    c.max_position_embeddings,
                    POSITIONS,
                )?;
                size("hidden_size", c.hidden_size, WIDTH)?;
                size("intermediate_size", c.intermediate_size, 4 * WIDTH)?;
                size("num_hidden_layers", c.num_hidden_layers, LAYERS)?;
                size("num_attention_heads", c.num_attention_heads, c.hidden_size)?;
                if let Some(head_dim) = c.head_dim {
                    size("head_dim", head_dim, WIDTH)?;
                } else if c.hidden_size % c.num_attention_heads != 0 {
                    return Err(format!(
                        "`hidden_size` ({}) is not a multiple of `num_attention_heads` ({})",
                        c.hidden_size, c.num_attention_heads
                    ));
                }
                if c.head_dim() % 2 != 0 {
                    return Err(format!(
                        "the head width `hidden_size / num_attention_heads` is {}; rotary embeddings need an even one",
                        c.head_dim()
                    ));
                }
                let kv = c.n_kv_heads();
                size("num_key_value_heads", kv, c.num_attention_heads)?;
                if c.num_attention_heads % kv != 0 {
                    return Err(format!(
                        "`num_attention_heads` ({}) is not a multiple of `num_key_value_heads` ({kv})",
                        c.num_attention_heads
                    ));
                }
                positive("rms_norm_eps", c.rms_norm_eps)?;
                positive("rope_theta", c.rope_theta)?;
                token("bos_token_id", c.bos_token_id, c.vocab_size)?;
                for id in c.eos_token_id.as_ref().map_or_else(Vec::new, TokenIds::all) {
                    token("eos_token_id", Some(id), c.vocab_size)?;
                }
            }
            ModelConfig::Neox(c) => {
                size("vocab_size", c.vocab_size, VOCAB)?;
                size(
                    "max_position_embeddings",
                    c.max_position_embeddings,
                    POSITIONS,
                )?;
                size("hidden_size", c.hidden_size, WIDTH)?;
                size("num_hidden_layers", c.num_hidden_layers, LAYERS)?;
                size("num_attention_heads", c.num_attention_heads, c.hidden_size)?;
                size("intermediate_size", c.intermediate_size, 8 * WIDTH)?;
                if c.hidden_size % c.num_attention_heads != 0 {
                    return Err(format!(
                        "`hidden_size` ({}) is not a multiple of `num_attention_heads` ({})",
                        c.hidden_size, c.num_attention_heads
                    ));
                }
                if !(0.0..=1.0).contains(&c.rotary_pct) || c.rotary_dim() % 2 != 0 {
                    return Err(format!(
                        "`rotary_pct` {} gives {} rotary dimensions of a head of {}: it must be a share in [0, 1] giving an even number",
                        c.rotary_pct,
                        c.rotary_dim(),
                        c.head_dim()
                    ));
                }
                positive("rotary_emb_base", c.rotary_emb_base)?;
                positive("layer_norm_eps", c.layer_norm_eps)?;
                c.check_activation()?;
                token("bos_token_id", c.bos_token_id, c.vocab_size)?;
                for id in c.eos_token_id.as_ref().map_or_else(Vec::new, TokenIds::all) {
                    token("eos_token_id", Some(id), c.vocab_size)?;
                }
            }
        }
        Ok(())
    }

    /// How many weights the network of this config has (what loading allocates, in f32).
    pub fn parameter_count(&self) -> u128 {
        match self {
            ModelConfig::Gpt2(c) => {
                let (v, p, d, l) = (
                    c.vocab_size as u128,
                    c.n_positions as u128,
                    c.n_embd as u128,
                    c.n_layer as u128,
                );
                let inner = c.n_inner.map(|n| n as u128).unwrap_or(4 * d);
                let layer = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d * inner + inner + d;
                v * d + p * d + l * layer + 2 * d
            }
            ModelConfig::Llama(c) => {
                let (v, d, i, l) = (
                    c.vocab_size as u128,
                    c.hidden_size as u128,
                    c.intermediate_size as u128,
                    c.num_hidden_layers as u128,
                );
                let kv = (c.n_kv_heads() * c.head_dim()) as u128;
                let q = c.q_dim() as u128;
                let qkv_bias = if c.qkv_bias() { q + 2 * kv } else { 0 };
                let o_bias = if c.o_bias() { d } else { 0 };
                let qk_norm = if c.qk_norm() {
                    2 * c.head_dim() as u128
                } else {
                    0
                };
                let gemma_norms = if c.gemma() { 2 * d } else { 0 };
                let layer = 2 * d * q
                    + 2 * d * kv
                    + 3 * d * i
                    + 2 * d
                    + qkv_bias
                    + o_bias
                    + qk_norm
                    + gemma_norms;
                let head = if c.tie_word_embeddings { 0 } else { v * d };
                v * d + l * layer + d + head
            }
            ModelConfig::Neox(c) => {
                let (v, d, i, l) = (
                    c.vocab_size as u128,
                    c.hidden_size as u128,
                    c.intermediate_size as u128,
                    c.num_hidden_layers as u128,
                );
                let attention_bias = if c.attention_bias { 4 * d } else { 0 };
                let layer = 4 * d * d + attention_bias + 2 * d * i + i + d + 4 * d;
                let head = if c.tie_word_embeddings { 0 } else { v * d };
                v * d + l * layer + 2 * d + head
            }
        }
    }

    /// The weights of an untied LM head (0 when it is tied to the embedding).
    pub fn untied_head_count(&self) -> u128 {
        let tied = match self {
            ModelConfig::Gpt2(_) => true,
            ModelConfig::Llama(c) => c.tie_word_embeddings,
            ModelConfig::Neox(c) => c.tie_word_embeddings,
        };
        if tied {
            0
        } else {
            (self.vocab_size() * self.hidden_size()) as u128
        }
    }

    /// The `config.json` transformers reads.
    pub fn to_hf_json(&self) -> String {
        let (mut value, model_type, architecture) = match self {
            ModelConfig::Gpt2(c) => (serde_json::to_value(c), "gpt2", "GPT2LMHeadModel"),
            ModelConfig::Llama(c) => {
                let (model_type, causal_lm, _) = c.family.names();
                (serde_json::to_value(c), model_type, causal_lm)
            }
            ModelConfig::Neox(c) => (serde_json::to_value(c), "gpt_neox", "GPTNeoXForCausalLM"),
        };
        let map = value
            .as_mut()
            .ok()
            .and_then(Value::as_object_mut)
            .expect("configs serialise to objects");
        map.insert("model_type".into(), Value::from(model_type));
        map.insert("architectures".into(), Value::from(vec![architecture]));
        map.insert("torch_dtype".into(), Value::from("float32"));
        // transformers' Mistral and Gemma 2 default to a window of 4096 (and Gemma 2 to
        // soft caps): say that there is none.
        if let ModelConfig::Llama(c) = self
            && matches!(
                c.family,
                LlamaFamily::Mistral | LlamaFamily::Gemma2 | LlamaFamily::Gemma3
            )
        {
            for key in [
                "sliding_window",
                "attn_logit_softcapping",
                "final_logit_softcapping",
            ] {
                map.entry(key).or_insert(Value::Null);
            }
            if c.gemma() {
                map.insert("hidden_activation".into(), Value::from("gelu_pytorch_tanh"));
            }
            if c.family == LlamaFamily::Gemma3 {
                // transformers 5's per-layer-type form, which it reads back.
                let theta = |t: f64| serde_json::json!({"rope_theta": t, "rope_type": "default"});
                map.insert(
                    "rope_parameters".into(),
                    serde_json::json!({
                        "full_attention": theta(c.rope_theta),
                        "sliding_attention": theta(c.rope_local_base_freq.unwrap_or(10_000.0)),
                    }),
                );
            }
            if c.family == LlamaFamily::Mistral {
                map.remove("attn_logit_softcapping");
                map.remove("final_logit_softcapping");
            }
        }
        if let ModelConfig::Neox(c) = self {
            // transformers 5 reads the rotary settings from `rope_parameters`; 4 from the
            // top-level names, which stay.
            map.insert(
                "rope_parameters".into(),
                serde_json::json!({
                    "rope_type": "default",
                    "rope_theta": c.rotary_emb_base,
                    "partial_rotary_factor": c.rotary_pct,
                }),
            );
        }
        if let ModelConfig::Gpt2(_) = self {
            map.insert("tie_word_embeddings".into(), Value::from(true));
            for zero in ["resid_pdrop", "embd_pdrop", "attn_pdrop"] {
                map.insert(zero.into(), Value::from(0.0));
            }
        }
        let mut text =
            serde_json::to_string_pretty(&value.expect("serialises")).expect("serialises");
        text.push('\n');
        text
    }

    /// `config.json`'s `model_type`.
    pub fn model_type(&self) -> &'static str {
        match self {
            ModelConfig::Gpt2(_) => "gpt2",
            ModelConfig::Llama(c) => c.family.names().0,
            ModelConfig::Neox(_) => "gpt_neox",
        }
    }

    /// The names of the linear layers a LoRA adapter can target (PEFT's module names).
    pub fn linear_modules(&self) -> &'static [&'static str] {
        match self {
            ModelConfig::Gpt2(_) => &["c_attn", "c_proj", "c_fc"],
            ModelConfig::Llama(c) if c.family == LlamaFamily::Phi3 => {
                &["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
            }
            ModelConfig::Llama(_) => &[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
            ModelConfig::Neox(_) => &["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.vocab_size,
            ModelConfig::Llama(c) => c.vocab_size,
            ModelConfig::Neox(c) => c.vocab_size,
        }
    }

    pub fn context_len(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.n_positions,
            ModelConfig::Llama(c) => c.max_position_embeddings,
            ModelConfig::Neox(c) => c.max_position_embeddings,
        }
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            ModelConfig::Gpt2(c) => c.n_embd,
            ModelConfig::Llama(c) => c.hidden_size,
            ModelConfig::Neox(c) => c.hidden_size,
        }
    }

    /// The end-of-text token: the first of a list (Llama 3.1 lists several).
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_ids().first().copied()
    }

    /// Every end-of-sequence token `config.json` names (Llama 3.1 and 3.2 end a turn with
    /// `<|eot_id|>` or `<|eom_id|>` as well as `<|end_of_text|>`).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        match self {
            ModelConfig::Gpt2(c) => c.eos_token_id.into_iter().collect(),
            ModelConfig::Llama(c) => c.eos_token_id.as_ref().map_or_else(Vec::new, TokenIds::all),
            ModelConfig::Neox(c) => c.eos_token_id.as_ref().map_or_else(Vec::new, TokenIds::all),
        }
    }
}

/// A token id, or a list of them, as `config.json` writes `eos_token_id` (written back in
/// the form it was read).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn all(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// Keys and values of past positions, one slot per layer.
pub struct KvCache {
    pub layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Positions already in the cache.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends one layer's new keys and values [b, h, t, d] to its cache slot (on the time
/// axis) and returns all of them: what every attention layer does with a KV cache.
pub fn append_kv(
    slot: &mut Option<(Tensor, Tensor)>,
    k: Tensor,
    v: Tensor,
) -> Result<(Tensor, Tensor)> {
    let (k, v) = match slot.as_ref() {
        Some((k_past, v_past)) => (
            Tensor::cat(&[k_past, &k], 2)?,
            Tensor::cat(&[v_past, &v], 2)?,
        ),
        None => (k, v),
    };
    *slot = Some((k.clone(), v.clone()));
    Ok((k, v))
}

/// A causal LM of either architecture.
pub enum CausalLm {
    Gpt2(Gpt2),
    Llama(Llama),
    Neox(Neox),
}

impl CausalLm {
    /// Builds the model from `vb`: new variables (randomly initialised) from a `VarMap`,
    /// or given tensors.
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        CausalLm::with_adapter(config, None, vb)
    }

    /// As [`CausalLm::new`], with a LoRA adapter on the linear layers it targets (its
    /// variables come from `vb` too).
    pub fn with_adapter(
        config: &ModelConfig,
        adapter: Option<&lora::AdapterCtx>,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(match config {
            ModelConfig::Gpt2(c) => CausalLm::Gpt2(Gpt2::new(c, adapter, vb)?),
            ModelConfig::Llama(c) => CausalLm::Llama(Llama::new(c, adapter, vb)?),
            ModelConfig::Neox(c) => CausalLm::Neox(Neox::new(c, adapter, vb)?),
        })
    }

    /// A copy whose weights are detached from `varmap`'s variables: inference through it
    /// records no graph (candle has no `no_grad`). It shares their storage, so an
    /// optimiser step (which updates variables in place) shows through: for a fixed
    /// reference model, load the checkpoint again.
    pub fn frozen(config: &ModelConfig, varmap: &VarMap, device: &Device) -> Result<Self> {
        let tensors: HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        CausalLm::new(
            config,
            VarBuilder::from_tensors(tensors, DType::F32, device),
        )
    }

    pub fn new_cache(&self) -> KvCache {
        let n = match self {
            CausalLm::Gpt2(m) => m.n_layers(),
            CausalLm::Llama(m) => m.n_layers(),
            CausalLm::Neox(m) => m.n_layers(),
        };
        KvCache {
            layers: vec![None; n],
        }
    }

    /// Final hidden states [b, t, hidden] of `ids` [b, t] at positions `start..`.
    pub fn hidden(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        start: usize,
    ) -> Result<Tensor> {
        match self {
            CausalLm::Gpt2(m) => m.hidden(ids, cache, start),
            CausalLm::Llama(m) => m.hidden(ids, cache, start),
            CausalLm::Neox(m) => m.hidden(ids, cache, start),
        }
    }

    /// The last layer's attention weights [b, heads, t, t] (ABC's credit).
    pub fn last_attention(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            CausalLm::Gpt2(m) => m.last_attention(ids),
            CausalLm::Llama(m) => m.last_attention(ids),
            CausalLm::Neox(m) => m.last_attention(ids),
        }
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match self {
            CausalLm::Gpt2(m) => m.logits(hidden),
            CausalLm::Llama(m) => m.logits(hidden),
            CausalLm::Neox(m) => m.logits(hidden),
        }
    }

    /// Logits [b, t, vocab].
    pub fn forward(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        start: usize,
    ) -> Result<Tensor> {
        self.logits(&self.hidden(ids, cache, start)?)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("`{path}`: {reason}")]
    Invalid { path: String, reason: String },
    #[error("`{path}`: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

/// A model whose weights are training variables.
pub struct Trainable {
    pub config: ModelConfig,
    pub varmap: VarMap,
    pub model: CausalLm,
    /// The LoRA adapter attached by [`Trainable::attach_adapter`]: then only the variables
    /// that are not the base's train.
    pub adapter: Option<Adapter>,
}

/// A LoRA adapter on a [`Trainable`]: its settings, its dropout, and the names of the base
/// variables it leaves frozen.
pub struct Adapter {
    pub ctx: lora::AdapterCtx,
    base_names: std::collections::BTreeSet<String>,
}

/// A `VarBuilder` backend over a `VarMap` whose variables named in `frozen` are handed
/// out detached: a model built from it records no gradient for them (backward computes no
/// weight gradient of a frozen base), while new variables (an adapter's) are created in
/// the `VarMap` and train.
struct FrozenBase {
    varmap: VarMap,
    frozen: std::collections::BTreeSet<String>,
}

impl candle_nn::var_builder::SimpleBackend for FrozenBase {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let t = self.varmap.get(s, name, h, dtype, dev)?;
        Ok(if self.frozen.contains(name) {
            t.detach()
        } else {
            t
        })
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        candle_nn::var_builder::SimpleBackend::get_unchecked(&self.varmap, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        candle_nn::var_builder::SimpleBackend::contains_tensor(&self.varmap, name)
    }
}

/// A `VarBuilder` backend that makes each variable a model asks for from the tensor of the
/// same name in a safetensors file (GPT-2's bare `GPT2Model` names lack `transformer.`),
/// converted to the requested dtype, and keeps it in `varmap`. A tensor that is missing or
/// of another shape is recorded (and stood in for by zeros, so that the whole model is
/// checked at once).
struct FromCheckpoint<'a> {
    file: candle_core::safetensors::SliceSafetensors<'a>,
    varmap: VarMap,
    /// Shared with the loader, which reads it once the backend has moved into the model.
    problems: std::sync::Arc<std::sync::Mutex<LoadProblems>>,
}

/// What a [`FromCheckpoint`] found wrong: the names of missing tensors, and the first
/// tensor of another shape than the config implies.
#[derive(Default)]
struct LoadProblems {
    missing: Vec<String>,
    mismatched: Option<String>,
}

impl candle_nn::var_builder::SimpleBackend for FromCheckpoint<'_> {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let mut vars = self.varmap.data().lock().expect("varmap lock");
        if let Some(var) = vars.get(name) {
            // Asked twice (a tied head): the same variable, as VarMap hands it out.
            return Ok(var.as_tensor().clone());
        }
        let view = self.file.get(name).or_else(|e| {
            name.strip_prefix("transformer.")
                .map_or(Err(e), |bare| self.file.get(bare))
        });
        let tensor = match view {
            Ok(view) if view.shape() == s.dims() => {
                candle_core::safetensors::Load::load(&view, dev)?.to_dtype(dtype)?
            }
            Ok(view) => {
                let mut problems = self.problems.lock().expect("problems lock");
                problems.mismatched.get_or_insert_with(|| {
                    format!(
                        "`{name}` has shape {:?}, the config implies {:?}",
                        view.shape(),
                        s.dims()
                    )
                });
                Tensor::zeros(s, dtype, dev)?
            }
            Err(_) => {
                let mut problems = self.problems.lock().expect("problems lock");
                problems.missing.push(name.to_string());
                Tensor::zeros(s, dtype, dev)?
            }
        };
        let var = candle_core::Var::from_tensor(&tensor)?;
        let out = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        candle_nn::var_builder::SimpleBackend::get_unchecked(&self.varmap, name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.file.get(name).is_ok()
    }
}

impl Trainable {
    /// A freshly initialised model, from candle's initialisers, which are not seedable: its
    /// weights differ on every call. For weights that must be reproducible (tests, benches,
    /// `pretrain-load`) use [`Trainable::seeded`]; [`Trainable::load`] overwrites every one.
    pub fn init(config: &ModelConfig, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let model = CausalLm::new(config, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        Ok(Trainable {
            config: config.clone(),
            varmap,
            model,
            adapter: None,
        })
    }

    /// A model whose every weight is drawn from `seed` (see [`Trainable::reseed`]): the same
    /// config and seed give the same weights on every run and machine.
    pub fn seeded(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        let trainable = Trainable::init(config, device)?;
        trainable.reseed(seed)?;
        Ok(trainable)
    }

    /// Redraws every variable from `seed`, in the order of their sorted names, from one
    /// ChaCha8 stream: normal(0, 0.02) for matrices (rank 2 and up), zeros for biases (1-D
    /// `*.bias`), ones for the other 1-D variables (norm weights). `pretrain-load`'s initial
    /// weights are these: a change to the order or the distributions changes its outputs.
    pub fn reseed(&self, seed: u64) -> Result<()> {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 0.02).expect("valid normal");
        for name in names {
            let var = &data[name];
            let n = var.elem_count();
            let values: Vec<f32> = if var.rank() >= 2 {
                (0..n).map(|_| normal.sample(&mut rng)).collect()
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                vec![1.0; n]
            };
            var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
        }
        Ok(())
    }

    /// Loads `config.json` and `model.safetensors` from a Hugging Face checkpoint directory.
    /// Weights stored in another float type (bf16, f16) are converted to f32.
    pub fn load(dir: &Path, device: &Device) -> std::result::Result<Self, CheckpointError> {
        Trainable::load_with(dir, device, false)
    }

    /// As [`Trainable::load`]; with `without_head`, an untied LM head (`lm_head`,
    /// `embed_out`) may be absent and is left at its seeded initial weights: a
    /// `*ForSequenceClassification` checkpoint written by transformers has none.
    ///
    /// A directory with a LoRA adapter in PEFT's format and no `model.safetensors` loads as
    /// its base (`base_model_name_or_path` in `adapter_config.json`, a directory, relative
    /// to the adapter's) with the adapter merged into its weights: what the adapted model
    /// computes, as a plain model.
    pub fn load_with(
        dir: &Path,
        device: &Device,
        without_head: bool,
    ) -> std::result::Result<Self, CheckpointError> {
        Trainable::load_nested(dir, device, without_head, 0)
    }

    fn load_nested(
        dir: &Path,
        device: &Device,
        without_head: bool,
        depth: usize,
    ) -> std::result::Result<Self, CheckpointError> {
        if !dir.join("model.safetensors").exists() && dir.join(ADAPTER_CONFIG).is_file() {
            return Trainable::load_adapter_dir(dir, device, without_head, depth);
        }
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| CheckpointError::Io {
            path: config_path.display().to_string(),
            source,
        })?;
        let config =
            ModelConfig::from_hf_json(&text).map_err(|reason| CheckpointError::Invalid {
                path: config_path.display().to_string(),
                reason,
            })?;
        let weights_path = dir.join("model.safetensors");
        if !weights_path.is_file() {
            return Err(CheckpointError::Invalid {
                path: weights_path.display().to_string(),
                reason: "missing (hone reads safetensors checkpoints)".into(),
            });
        }
        // Every weight takes at least two bytes in the file (bf16): a config that implies
        // more weights than that does not describe this checkpoint, and building its
        // network could exhaust memory before any tensor is compared.
        let file_size = std::fs::metadata(&weights_path)
            .map(|m| m.len() as u128)
            .unwrap_or(0);
        let implied = config.parameter_count()
            - if without_head {
                config.untied_head_count()
            } else {
                0
            };
        if implied * 2 > file_size {
            return Err(CheckpointError::Invalid {
                path: config_path.display().to_string(),
                reason: format!(
                    "the sizes in it imply {implied} weights, more than `model.safetensors` ({file_size} bytes) can hold"
                ),
            });
        }
        if !without_head {
            return Trainable::load_weights(config, &weights_path, device);
        }
        // A `*ForSequenceClassification` checkpoint: the head it may lack is seeded, so that
        // it is the same on every run (every other weight is overwritten below).
        let trainable = Trainable::seeded(&config, 0, device)?;
        let stored = candle_core::safetensors::load(&weights_path, device).map_err(|e| {
            CheckpointError::Invalid {
                path: weights_path.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        let mut missing = Vec::new();
        for (name, var) in trainable.varmap.data().lock().expect("varmap lock").iter() {
            // GPT-2 checkpoints of a bare `GPT2Model` name their tensors without the
            // `transformer.` prefix.
            let found = stored.get(name).or_else(|| {
                name.strip_prefix("transformer.")
                    .and_then(|n| stored.get(n))
            });
            match found {
                None if without_head && is_lm_head(name) => {}
                None => missing.push(name.clone()),
                Some(tensor) => {
                    if tensor.dims() != var.dims() {
                        return Err(CheckpointError::Invalid {
                            path: weights_path.display().to_string(),
                            reason: format!(
                                "`{name}` has shape {:?}, the config implies {:?}",
                                tensor.dims(),
                                var.dims()
                            ),
                        });
                    }
                    var.set(&tensor.to_dtype(DType::F32)?)?;
                }
            }
        }
        if !missing.is_empty() {
            missing.sort();
            return Err(CheckpointError::Invalid {
                path: weights_path.display().to_string(),
                reason: format!("{} tensors missing, e.g. `{}`", missing.len(), missing[0]),
            });
        }
        Ok(trainable)
    }

    /// The model of `config` with every weight from `weights_path`: each variable is made
    /// from its tensor in the file (converted to f32) as the model asks for it, so that the
    /// weights are in memory once, beside the file's bytes while it loads, and nothing is
    /// drawn at random first (a 0.5B model: 2 GB and no seconds of initialisation, where
    /// initialising and then overwriting held three copies).
    fn load_weights(
        config: ModelConfig,
        weights_path: &Path,
        device: &Device,
    ) -> std::result::Result<Self, CheckpointError> {
        let invalid = |reason: String| CheckpointError::Invalid {
            path: weights_path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(weights_path).map_err(|source| CheckpointError::Io {
            path: weights_path.display().to_string(),
            source,
        })?;
        let file = candle_core::safetensors::SliceSafetensors::new(&bytes)
            .map_err(|e| invalid(e.to_string()))?;
        let varmap = VarMap::new();
        let problems = std::sync::Arc::new(std::sync::Mutex::new(LoadProblems::default()));
        let backend = FromCheckpoint {
            file,
            varmap: varmap.clone(),
            problems: problems.clone(),
        };
        let model = CausalLm::new(
            &config,
            VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone()),
        )
        .map_err(|e| invalid(e.to_string()))?;
        let LoadProblems {
            mut missing,
            mismatched,
        } = std::mem::take(&mut *problems.lock().expect("problems lock"));
        if let Some(reason) = mismatched {
            return Err(invalid(reason));
        }
        if !missing.is_empty() {
            missing.sort();
            return Err(invalid(format!(
                "{} tensors missing, e.g. `{}`",
                missing.len(),
                missing[0]
            )));
        }
        Ok(Trainable {
            config,
            varmap,
            model,
            adapter: None,
        })
    }

    /// Loads an adapter directory: its base, then the adapter merged in.
    fn load_adapter_dir(
        dir: &Path,
        device: &Device,
        without_head: bool,
        depth: usize,
    ) -> std::result::Result<Self, CheckpointError> {
        let config_path = dir.join(ADAPTER_CONFIG);
        let invalid = |path: &Path, reason: String| CheckpointError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        if depth >= 16 {
            return Err(invalid(
                &config_path,
                "more than 16 adapters on adapters: the base references go round in a circle"
                    .into(),
            ));
        }
        let text = std::fs::read_to_string(&config_path).map_err(|source| CheckpointError::Io {
            path: config_path.display().to_string(),
            source,
        })?;
        let peft: lora::PeftConfig = serde_json::from_str(&text)
            .map_err(|e| invalid(&config_path, format!("not a PEFT adapter config: {e}")))?;
        let config = peft.lora().map_err(|e| invalid(&config_path, e))?;
        let reference = peft.base_model_name_or_path.clone().ok_or_else(|| {
            invalid(
                &config_path,
                "no `base_model_name_or_path`: the adapter does not say what it adapts".into(),
            )
        })?;
        let base_dir = dir.join(&reference);
        if !base_dir.is_dir() {
            return Err(invalid(
                &config_path,
                format!(
                    "its base `{reference}` is not a directory (looked at `{}`; hone resolves it relative to the adapter's directory and downloads nothing)",
                    base_dir.display()
                ),
            ));
        }
        let base = Trainable::load_nested(&base_dir, device, without_head, depth + 1)?;
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        let tensors = lora::read_adapter_tensors(&weights_path, device)
            .map_err(|e| invalid(&weights_path, e))?;
        base.merge(&config, &tensors)
            .map_err(|e| invalid(&weights_path, e))?;
        Ok(base)
    }

    /// Adds the adapter `tensors` (hone's names) into the weights they adapt; tensors that
    /// are not an adapter's replace the base variable of their name (PEFT's
    /// `modules_to_save`), except a reward model's `score.weight`, which its loader reads.
    fn merge(
        &self,
        config: &lora::LoraConfig,
        tensors: &std::collections::BTreeMap<String, Tensor>,
    ) -> std::result::Result<(), String> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let fan_in_fan_out = matches!(self.config, ModelConfig::Gpt2(_));
        for (name, a) in tensors {
            let Some(module) = name.strip_suffix(lora::A_SUFFIX) else {
                if name.ends_with(lora::B_SUFFIX) || name == "score.weight" {
                    continue;
                }
                let var = data.get(name).ok_or_else(|| {
                    format!("`{name}` is neither an adapter's tensor nor one of the base's")
                })?;
                if a.dims() != var.dims() {
                    return Err(format!(
                        "`{name}` has shape {:?}, the base's {:?}",
                        a.dims(),
                        var.dims()
                    ));
                }
                var.set(a).map_err(|e| e.to_string())?;
                continue;
            };
            let b_name = format!("{module}{}", lora::B_SUFFIX);
            let b = tensors
                .get(&b_name)
                .ok_or_else(|| format!("`{name}` has no `{b_name}`"))?;
            let weight_name = format!("{module}.weight");
            let weight = data.get(&weight_name).ok_or_else(|| {
                format!("the adapter adapts `{module}`, which the base has no weight for")
            })?;
            let delta = (b.matmul(a).map_err(|e| e.to_string())? * config.scale())
                .map_err(|e| e.to_string())?;
            let delta = if fan_in_fan_out {
                delta.t().map_err(|e| e.to_string())?
            } else {
                delta
            };
            if delta.dims() != weight.dims() {
                return Err(format!(
                    "the adapter of `{module}` is {:?} x {:?}, its weight {:?}",
                    b.dims(),
                    a.dims(),
                    weight.dims()
                ));
            }
            let merged = (weight.as_tensor() + delta).map_err(|e| e.to_string())?;
            weight.set(&merged).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The weights of the base with the adapter merged in (the base's own without one).
    fn merged_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut out = Vec::new();
        let fan_in_fan_out = matches!(self.config, ModelConfig::Gpt2(_));
        for (name, var) in data.iter() {
            if !self.trains(name) || self.adapter.is_none() {
                let w = var.as_tensor().detach();
                let merged = match (&self.adapter, name.strip_suffix(".weight")) {
                    (Some(adapter), Some(module)) => {
                        let a = data.get(&format!("{module}{}", lora::A_SUFFIX));
                        let b = data.get(&format!("{module}{}", lora::B_SUFFIX));
                        match (a, b) {
                            (Some(a), Some(b)) => {
                                let delta = (b.as_tensor().matmul(a.as_tensor())?
                                    * adapter.ctx.config.scale())?;
                                let delta = if fan_in_fan_out { delta.t()? } else { delta };
                                (w + delta)?.detach()
                            }
                            _ => w,
                        }
                    }
                    _ => w,
                };
                out.push((name.clone(), merged));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Writes the base with the adapter merged in as a plain checkpoint (`config.json`,
    /// `model.safetensors`), with the variables beside the base's that `extra` accepts (a
    /// reward model's head).
    pub fn save_merged(
        &self,
        dir: &Path,
        extra: impl Fn(&str) -> bool,
    ) -> std::result::Result<(), CheckpointError> {
        std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, self.config.to_hf_json()).map_err(|source| {
            CheckpointError::Io {
                path: config_path.display().to_string(),
                source,
            }
        })?;
        let mut map: HashMap<String, Tensor> = self.merged_weights()?.into_iter().collect();
        for (name, var) in self.varmap.data().lock().expect("varmap lock").iter() {
            if self.trains(name) && !lora::is_adapter_var(name) && extra(name) {
                map.insert(name.clone(), var.as_tensor().detach());
            }
        }
        candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
        Ok(())
    }

    /// Writes the adapter in PEFT's format: `adapter_config.json` (with `base` as
    /// `base_model_name_or_path`, and `task_type`) and `adapter_model.safetensors` (the
    /// adapter's variables and those beside the base's that `extra` accepts, PEFT's
    /// `modules_to_save`, under PEFT's names). Without an adapter it is an error.
    pub fn save_adapter(
        &self,
        dir: &Path,
        base: &str,
        task_type: &str,
        modules_to_save: &[&str],
        extra: impl Fn(&str) -> bool,
    ) -> std::result::Result<(), CheckpointError> {
        let adapter = self
            .adapter
            .as_ref()
            .ok_or_else(|| CheckpointError::Invalid {
                path: dir.display().to_string(),
                reason: "the model has no adapter to save".into(),
            })?;
        std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut map: HashMap<String, Tensor> = HashMap::new();
        let mut targets = std::collections::BTreeSet::new();
        for (name, var) in data.iter() {
            if !self.trains(name) {
                continue;
            }
            if let Some(module) = name.strip_suffix(lora::A_SUFFIX) {
                targets.insert(module.rsplit('.').next().unwrap_or(module).to_string());
            }
            if lora::is_adapter_var(name) || extra(name) {
                map.insert(
                    format!("{}{name}", lora::PEFT_PREFIX),
                    var.as_tensor().detach(),
                );
            }
        }
        drop(data);
        let c = &adapter.ctx.config;
        let config = serde_json::json!({
            "base_model_name_or_path": base,
            "bias": "none",
            "fan_in_fan_out": matches!(self.config, ModelConfig::Gpt2(_)),
            "inference_mode": true,
            "init_lora_weights": true,
            "lora_alpha": c.alpha,
            "lora_dropout": c.dropout,
            "modules_to_save": if modules_to_save.is_empty() {
                Value::Null
            } else {
                Value::from(modules_to_save.to_vec())
            },
            "peft_type": "LORA",
            "r": c.r,
            "target_modules": targets.into_iter().collect::<Vec<_>>(),
            "task_type": task_type,
            "use_dora": false,
            "use_rslora": c.rslora,
        });
        let path = dir.join(ADAPTER_CONFIG);
        let mut text = serde_json::to_string_pretty(&config).expect("serialises");
        text.push('\n');
        std::fs::write(&path, text).map_err(|source| CheckpointError::Io {
            path: path.display().to_string(),
            source,
        })?;
        candle_core::safetensors::save(&map, dir.join(ADAPTER_WEIGHTS))?;
        Ok(())
    }

    /// Writes `config.json` and `model.safetensors` (f32, Hugging Face names) into `dir`.
    pub fn save(&self, dir: &Path) -> std::result::Result<(), CheckpointError> {
        self.save_filtered(dir, |_| true)
    }

    /// As [`Trainable::save`], writing only the variables whose name `keep` accepts.
    pub fn save_filtered(
        &self,
        dir: &Path,
        keep: impl Fn(&str) -> bool,
    ) -> std::result::Result<(), CheckpointError> {
        std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, self.config.to_hf_json()).map_err(|source| {
            CheckpointError::Io {
                path: config_path.display().to_string(),
                source,
            }
        })?;
        // Sorted by name so that the file's bytes do not depend on hash-map order.
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut tensors: Vec<(String, Tensor)> = data
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let map: HashMap<String, Tensor> = tensors.into_iter().collect();
        candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
        Ok(())
    }

    /// A detached copy for inference (with the adapter, which drops nothing there).
    pub fn frozen(&self) -> Result<CausalLm> {
        let device = self.device();
        match &self.adapter {
            None => CausalLm::frozen(&self.config, &self.varmap, &device),
            Some(adapter) => {
                let tensors: HashMap<String, Tensor> = self
                    .varmap
                    .data()
                    .lock()
                    .expect("varmap lock")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
                    .collect();
                let ctx = lora::AdapterCtx {
                    config: adapter.ctx.config.clone(),
                    dropout: std::sync::Arc::new(lora::Dropout::new(0.0, 0)),
                };
                CausalLm::with_adapter(
                    &self.config,
                    Some(&ctx),
                    VarBuilder::from_tensors(tensors, DType::F32, &device),
                )
            }
        }
    }

    /// The base without its adapter, for inference: the KL reference of a stage that
    /// trains an adapter. It shares the base's storage, which does not train, so no second
    /// copy of the weights is made.
    pub fn base_model(&self) -> Result<CausalLm> {
        CausalLm::frozen(&self.config, &self.varmap, &self.device())
    }

    fn device(&self) -> Device {
        self.varmap
            .all_vars()
            .first()
            .map(|v| v.device().clone())
            .unwrap_or(Device::Cpu)
    }

    /// Whether the variable `name` trains: all do, but with an adapter only its own (and
    /// any added after it, such as a value or reward head).
    pub fn trains(&self, name: &str) -> bool {
        self.adapter
            .as_ref()
            .is_none_or(|a| !a.base_names.contains(name))
    }

    /// Attaches a fresh LoRA adapter, drawn from `seed` (see [`lora::init_vars`]): the model
    /// is rebuilt over the same variables, the base's detached (they no longer train) and
    /// the adapter's new. Heads ([`is_head`]: a reward model's score and training-only
    /// variables, PPO's value head) train with the adapter. A target module that matches no linear layer is an error naming
    /// it.
    pub fn attach_adapter(
        &mut self,
        config: lora::LoraConfig,
        seed: u64,
    ) -> std::result::Result<(), String> {
        if self.adapter.is_some() {
            return Err("the model already has an adapter".into());
        }
        let device = self.device();
        let base_names: std::collections::BTreeSet<String> = self
            .varmap
            .data()
            .lock()
            .expect("varmap lock")
            .keys()
            .filter(|name| !is_head(name))
            .cloned()
            .collect();
        let ctx = lora::AdapterCtx {
            dropout: std::sync::Arc::new(lora::Dropout::new(config.dropout, seed ^ 0x10_7A_D0_0D)),
            config,
        };
        let backend = FrozenBase {
            varmap: self.varmap.clone(),
            frozen: base_names.clone(),
        };
        let model = CausalLm::with_adapter(
            &self.config,
            Some(&ctx),
            VarBuilder::from_backend(Box::new(backend), DType::F32, device),
        )
        .map_err(|e| e.to_string())?;
        let new: std::collections::BTreeMap<String, candle_core::Var> = self
            .varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .filter(|(k, _)| !base_names.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let linear = self.config.linear_modules();
        for target in &ctx.config.target_modules {
            let matched = new.keys().any(|name| {
                name.ends_with(lora::A_SUFFIX) && {
                    let module = &name[..name.len() - lora::A_SUFFIX.len()];
                    module == target || module.ends_with(&format!(".{target}"))
                }
            });
            if target != "all-linear" && !matched {
                return Err(format!(
                    "`target_modules` names `{target}`, which is no linear layer of this {} model (its linear layers: {})",
                    self.config.model_type(),
                    linear.join(", ")
                ));
            }
        }
        lora::init_vars(&new, seed).map_err(|e| e.to_string())?;
        self.model = model;
        self.adapter = Some(Adapter { ctx, base_names });
        Ok(())
    }
}

/// The variables beside a network that are a stage's head rather than the base model: a
/// reward model's `score` (and its training-only `hone_aux.*`), PPO's `hone_value.*`.
pub fn is_head(name: &str) -> bool {
    name == "score.weight" || name.starts_with("hone_aux.") || name.starts_with("hone_value.")
}

/// PEFT's adapter files.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// An untied LM head's variables (Llama's `lm_head`, GPT-NeoX's `embed_out`).
pub fn is_lm_head(name: &str) -> bool {
    name.starts_with("lm_head.") || name.starts_with("embed_out.")
}

/// `auto`, `cpu` or `cuda:N`; `auto` is CUDA device 0 when hone is built with the `cuda`
/// feature and one is present, else the CPU.
pub fn device(spec: &str) -> std::result::Result<Device, String> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        other => {
            let index = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| format!("unknown device `{other}` (auto, cpu or cuda:N)"))?;
            Device::new_cuda(index)
                .map_err(|e| format!("`{other}`: {e} (is hone built with `--features cuda`?)"))
        }
    }
}

#[cfg(test)]
mod tests;
