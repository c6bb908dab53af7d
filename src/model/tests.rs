//! Model tests on tiny random models: every parameter trains, the KV cache changes nothing,
//! checkpoints round-trip, and a few optimiser steps learn. The weights are drawn from
//! [`SEED`], so every run checks the same models.

use candle_core::{Device, Tensor};

use super::train::{Batch, Schedule, Trainer, lm_loss};
use super::{CausalLm, Gpt2Config, LlamaConfig, LlamaFamily, ModelConfig, Trainable};

/// The seed of every test model's weights ([`Trainable::seeded`]).
const SEED: u64 = 0;

fn gpt2() -> ModelConfig {
    ModelConfig::Gpt2(Gpt2Config {
        vocab_size: 50,
        n_positions: 16,
        n_embd: 16,
        n_layer: 2,
        n_head: 2,
        n_inner: None,
        activation_function: "gelu_new".into(),
        layer_norm_epsilon: 1e-5,
        bos_token_id: None,
        eos_token_id: Some(0),
    })
}

fn llama() -> ModelConfig {
    ModelConfig::Llama(LlamaConfig {
        vocab_size: 50,
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        max_position_embeddings: 16,
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
        bos_token_id: None,
        eos_token_id: Some(super::TokenIds::One(0)),
        family: LlamaFamily::Llama,
    })
}

/// Qwen2: the Llama network with q/k/v biases and a tied head.
fn qwen2() -> ModelConfig {
    let ModelConfig::Llama(mut c) = llama() else {
        unreachable!()
    };
    c.family = LlamaFamily::Qwen2;
    c.tie_word_embeddings = true;
    ModelConfig::Llama(c)
}

/// Qwen3: per-head q/k norms and a head size that is not hidden / heads.
fn qwen3() -> ModelConfig {
    let ModelConfig::Llama(mut c) = llama() else {
        unreachable!()
    };
    c.family = LlamaFamily::Qwen3;
    c.head_dim = Some(8);
    ModelConfig::Llama(c)
}

/// Mistral with a sliding window shorter than the test sequences.
fn mistral_window() -> ModelConfig {
    let ModelConfig::Llama(mut c) = llama() else {
        unreachable!()
    };
    c.family = LlamaFamily::Mistral;
    c.sliding_window = Some(3);
    ModelConfig::Llama(c)
}

/// Gemma 2 with soft caps and a window on the first layer.
fn gemma2() -> ModelConfig {
    let ModelConfig::Llama(mut c) = llama() else {
        unreachable!()
    };
    c.family = LlamaFamily::Gemma2;
    c.head_dim = Some(8);
    c.query_pre_attn_scalar = Some(6);
    c.attn_logit_softcapping = Some(2.0);
    c.final_logit_softcapping = Some(3.0);
    c.sliding_window = Some(3);
    c.layer_types = Some(vec!["sliding_attention".into(), "full_attention".into()]);
    c.tie_word_embeddings = true;
    ModelConfig::Llama(c)
}

/// Phi-3: fused projections, RoPE on half of each head.
fn phi3() -> ModelConfig {
    let ModelConfig::Llama(mut c) = llama() else {
        unreachable!()
    };
    c.family = LlamaFamily::Phi3;
    c.partial_rotary_factor = Some(0.5);
    ModelConfig::Llama(c)
}

/// Gemma 3: Gemma 2 with q/k norms, local RoPE base on its windowed layer, no caps.
fn gemma3() -> ModelConfig {
    let ModelConfig::Llama(mut c) = gemma2() else {
        unreachable!()
    };
    c.family = LlamaFamily::Gemma3;
    c.attn_logit_softcapping = None;
    c.final_logit_softcapping = None;
    c.rope_theta = 1e6;
    c.rope_local_base_freq = Some(1e4);
    ModelConfig::Llama(c)
}

/// GPT-NeoX: parallel residual, a quarter of each head rotated, untied `embed_out`; and
/// the serial residual of the GPT-NeoX variants that do not use the parallel one.
fn neox(parallel: bool) -> ModelConfig {
    ModelConfig::Neox(super::NeoxConfig {
        vocab_size: 50,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        hidden_act: "gelu".into(),
        max_position_embeddings: 16,
        layer_norm_eps: 1e-5,
        use_parallel_residual: parallel,
        tie_word_embeddings: false,
        attention_bias: true,
        rotary_pct: 0.25,
        rotary_emb_base: 10000.0,
        bos_token_id: Some(0),
        eos_token_id: Some(super::TokenIds::One(0)),
    })
}

fn ids(values: &[u32]) -> Tensor {
    Tensor::new(values, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

#[test]
fn every_trainable_parameter_gets_a_finite_nonzero_gradient() {
    for config in [
        gpt2(),
        llama(),
        qwen2(),
        qwen3(),
        mistral_window(),
        gemma2(),
        gemma3(),
        phi3(),
        neox(true),
        neox(false),
    ] {
        let t = Trainable::seeded(&config, SEED, &Device::Cpu).unwrap();
        let batch = Batch::new(
            &[(vec![1, 5, 9, 3, 7, 2, 8], 0), (vec![4, 4, 6], 1)],
            0,
            &Device::Cpu,
        )
        .unwrap();
        let loss = lm_loss(&t.model, &batch).unwrap();
        let grads = loss.backward().unwrap();
        let data = t.varmap.data().lock().unwrap();
        assert!(data.len() >= 10);
        for (name, var) in data.iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm.is_finite() && norm > 0.0,
                "{name}: gradient norm {norm}"
            );
        }
    }
}

#[test]
fn cached_decoding_matches_the_full_forward_pass() {
    for config in [
        gpt2(),
        llama(),
        qwen2(),
        qwen3(),
        mistral_window(),
        gemma2(),
        gemma3(),
        phi3(),
        neox(true),
        neox(false),
    ] {
        let t = Trainable::seeded(&config, SEED, &Device::Cpu).unwrap();
        let model = t.frozen().unwrap();
        let sequence = [3u32, 14, 15, 9, 2, 6, 5, 35];
        let full = model
            .forward(&ids(&sequence), None, 0)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let mut cache = model.new_cache();
        let mut stepwise = vec![
            model
                .forward(&ids(&sequence[..5]), Some(&mut cache), 0)
                .unwrap()
                .squeeze(0)
                .unwrap(),
        ];
        for (i, token) in sequence.iter().enumerate().skip(5) {
            stepwise.push(
                model
                    .forward(&ids(&[*token]), Some(&mut cache), i)
                    .unwrap()
                    .squeeze(0)
                    .unwrap(),
            );
        }
        let stepwise = Tensor::cat(&stepwise, 0).unwrap();
        let diff = (full - stepwise)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "max difference {diff}");
        assert_eq!(cache.len(), sequence.len());
    }
}

#[test]
fn a_saved_checkpoint_loads_with_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    for config in [
        gpt2(),
        llama(),
        qwen2(),
        qwen3(),
        mistral_window(),
        gemma2(),
        gemma3(),
        phi3(),
        neox(true),
        neox(false),
    ] {
        let t = Trainable::seeded(&config, SEED, &Device::Cpu).unwrap();
        t.save(dir.path()).unwrap();
        let loaded = Trainable::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(loaded.config, config);
        let x = ids(&[1, 2, 3, 4]);
        let a = t.model.forward(&x, None, 0).unwrap();
        let b = loaded.model.forward(&x, None, 0).unwrap();
        assert_eq!(a.to_vec3::<f32>().unwrap(), b.to_vec3::<f32>().unwrap());
    }
}

#[test]
fn a_few_steps_of_adamw_fit_a_repeated_sequence() {
    for config in [
        gpt2(),
        llama(),
        qwen2(),
        qwen3(),
        mistral_window(),
        gemma2(),
        gemma3(),
        phi3(),
        neox(true),
        neox(false),
    ] {
        let t = Trainable::seeded(&config, SEED, &Device::Cpu).unwrap();
        let schedule = Schedule {
            peak_lr: 1e-2,
            warmup_steps: 5,
            total_steps: 60,
            final_fraction: 0.1,
        };
        let mut trainer =
            Trainer::new(Trainer::named_vars(&t.varmap), schedule, 0.01, Some(1.0)).unwrap();
        let batch = Batch::new(&[(vec![7, 8, 9, 10, 11, 12, 13, 14], 0)], 0, &Device::Cpu).unwrap();
        let first = lm_loss(&t.model, &batch)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let mut last = first;
        for _ in 0..60 {
            let loss = lm_loss(&t.model, &batch).unwrap();
            last = loss.to_scalar::<f32>().unwrap();
            trainer.step(&loss).unwrap();
        }
        // ln(50) = 3.91 at random; a memorised sequence is close to 0.
        assert!(first > 3.0 && last < 0.5, "loss {first} -> {last}");
    }
}

#[test]
fn frozen_models_record_no_graph() {
    let t = Trainable::seeded(&gpt2(), SEED, &Device::Cpu).unwrap();
    let frozen: CausalLm = t.frozen().unwrap();
    let logits = frozen.forward(&ids(&[1, 2]), None, 0).unwrap();
    let grads = logits.sum_all().unwrap().backward().unwrap();
    for var in t.varmap.all_vars() {
        assert!(grads.get(var.as_tensor()).is_none());
    }
}

/// Every variable's values, by sorted name.
fn weights(t: &Trainable) -> Vec<(String, Vec<f32>)> {
    let data = t.varmap.data().lock().unwrap();
    let mut all: Vec<(String, Vec<f32>)> = data
        .iter()
        .map(|(name, var)| {
            let values = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            (name.clone(), values)
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

#[test]
fn seeded_weights_depend_only_on_the_seed() {
    for config in [
        gpt2(),
        llama(),
        qwen2(),
        qwen3(),
        mistral_window(),
        gemma2(),
        gemma3(),
        phi3(),
        neox(true),
        neox(false),
    ] {
        let a = weights(&Trainable::seeded(&config, 7, &Device::Cpu).unwrap());
        assert_eq!(
            a,
            weights(&Trainable::seeded(&config, 7, &Device::Cpu).unwrap())
        );
        assert_ne!(
            a,
            weights(&Trainable::seeded(&config, 8, &Device::Cpu).unwrap())
        );
        let reseeded = Trainable::seeded(&config, 8, &Device::Cpu).unwrap();
        reseeded.reseed(7).unwrap();
        assert_eq!(a, weights(&reseeded));
        for (name, values) in &a {
            if name.ends_with(".bias") {
                assert!(values.iter().all(|v| *v == 0.0), "{name}");
            } else if name.ends_with("norm.weight") || name.contains(".ln_") {
                assert!(values.iter().all(|v| *v == 1.0), "{name}");
            } else {
                let n = values.len() as f32;
                let mean = values.iter().sum::<f32>() / n;
                let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt();
                assert!(
                    mean.abs() < 0.01 && (std - 0.02).abs() < 0.005,
                    "{name}: {mean} {std}"
                );
            }
        }
    }
}

/// `pretrain-load` starts from these weights: a change to the drawing order or the
/// distributions changes every builtin model, so it must show here first. The first matrix
/// in name order gets the stream's first draws, the token embedding (last) the draws after
/// every other matrix.
#[test]
fn seeded_weights_are_drawn_in_sorted_name_order() {
    let all = weights(&Trainable::seeded(&gpt2(), 0, &Device::Cpu).unwrap());
    let first = |name: &str| -> Vec<f32> {
        let (_, values) = all.iter().find(|(n, _)| n == name).unwrap();
        values[..3].to_vec()
    };
    assert_eq!(
        first("transformer.h.0.attn.c_attn.weight"),
        [0.013999215, -0.0028812326, 0.0060577253]
    );
    assert_eq!(
        first("transformer.wte.weight"),
        [-0.023963334, 0.009341645, -0.0015546692]
    );
}

#[test]
fn a_checkpoint_missing_a_tensor_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    for (config, dropped) in [
        (gpt2(), "transformer.h.1.ln_2.bias"),
        (llama(), "model.layers.0.post_attention_layernorm.weight"),
        (qwen2(), "model.layers.1.self_attn.k_proj.bias"),
        (qwen3(), "model.layers.0.self_attn.q_norm.weight"),
        (phi3(), "model.layers.1.mlp.gate_up_proj.weight"),
        (gemma3(), "model.layers.1.self_attn.k_norm.weight"),
        (
            neox(true),
            "gpt_neox.layers.1.attention.query_key_value.bias",
        ),
    ] {
        Trainable::seeded(&config, SEED, &Device::Cpu)
            .unwrap()
            .save(dir.path())
            .unwrap();
        let path = dir.path().join("model.safetensors");
        let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert!(tensors.remove(dropped).is_some(), "{dropped}");
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let error = Trainable::load(dir.path(), &Device::Cpu)
            .err()
            .expect("a checkpoint without a tensor must not load");
        assert!(
            error
                .to_string()
                .contains(&format!("1 tensors missing, e.g. `{dropped}`")),
            "{error}"
        );
    }
}

#[test]
fn qwen2_configs_parse_and_unsupported_variants_are_named() {
    let config = |extra: &str| {
        format!(
            r#"{{"model_type": "qwen2", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 16, "tie_word_embeddings": true{extra}}}"#
        )
    };
    let ModelConfig::Llama(c) = ModelConfig::from_hf_json(&config("")).unwrap() else {
        panic!("a Qwen2 config is read as the Llama network");
    };
    assert_eq!(c.family, LlamaFamily::Qwen2);
    assert!(c.qkv_bias() && !c.o_bias());
    // Written back as Qwen2, and read again as the same config.
    let written = ModelConfig::Llama(c.clone()).to_hf_json();
    assert!(written.contains("\"model_type\": \"qwen2\""), "{written}");
    assert!(written.contains("Qwen2ForCausalLM"), "{written}");
    assert_eq!(
        ModelConfig::from_hf_json(&written).unwrap(),
        ModelConfig::Llama(c)
    );
    let err = ModelConfig::from_hf_json(&config(
        r#", "use_sliding_window": true, "sliding_window": 8"#,
    ))
    .unwrap_err();
    assert!(err.contains("sliding windows"), "{err}");
    // Qwen2's window without `use_sliding_window` is not used, and not kept.
    let ModelConfig::Llama(unused) =
        ModelConfig::from_hf_json(&config(r#", "sliding_window": 8"#)).unwrap()
    else {
        unreachable!()
    };
    assert_eq!(unused.sliding_window, None);
    let err = ModelConfig::from_hf_json(&config(
        r#", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}"#,
    ))
    .unwrap_err();
    assert!(err.contains("`yarn`"), "{err}");
    // A Llama config keeps its bytes: no `attention_bias` written when it is false.
    let ModelConfig::Llama(l) = llama() else {
        unreachable!()
    };
    assert!(
        !ModelConfig::Llama(l)
            .to_hf_json()
            .contains("attention_bias")
    );
}

#[test]
fn llama3_rope_scaling_matches_hand_computed_frequencies() {
    use super::llama::Llama3Scaling;
    use super::ops::rope_inv_freq;
    // head_dim 8, theta 10^4: frequencies 1, 0.1, 0.01, 0.001, wavelengths 2 pi / f.
    let plain = rope_inv_freq(8, 10000.0, None);
    assert_eq!(plain, vec![1.0, 0.1, 0.01, 0.001]);
    let scaling = Llama3Scaling {
        rope_type: "llama3".into(),
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8,
    };
    // Wavelengths between 8 / 4 and 8 / 1 are interpolated: 2 pi for f = 1 gives
    // s = (8 / 2 pi - 1) / 3 = 0.0910798, f' = (1 - s) / 8 + s = 0.2046948; longer ones are
    // divided by 8.
    let scaled = rope_inv_freq(8, 10000.0, Some(&scaling));
    let expected = [0.204_694_8f32, 0.0125, 0.00125, 0.000125];
    for (a, b) in scaled.iter().zip(expected) {
        assert!((a - b).abs() <= 1e-6 * b.max(1e-3), "{scaled:?}");
    }
}

#[test]
fn gemma2_configs_take_transformers_defaults_and_refuse_other_activations() {
    let config = |extra: &str| {
        format!(
            r#"{{"model_type": "gemma2", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 16{extra}}}"#
        )
    };
    let ModelConfig::Llama(c) = ModelConfig::from_hf_json(&config("")).unwrap() else {
        unreachable!()
    };
    assert_eq!(c.family, LlamaFamily::Gemma2);
    assert_eq!(c.head_dim, Some(256));
    assert_eq!(c.query_pre_attn_scalar, Some(256));
    assert_eq!(
        (c.attn_logit_softcapping, c.final_logit_softcapping),
        (Some(50.0), Some(30.0))
    );
    // The window on every other layer, from the first.
    assert_eq!(
        (c.window(0), c.window(1), c.window(2)),
        (Some(4096), None, Some(4096))
    );
    let err = ModelConfig::from_hf_json(&config(r#", "hidden_activation": "relu""#)).unwrap_err();
    assert!(err.contains("`relu`"), "{err}");
    let err =
        ModelConfig::from_hf_json(&config(r#", "layer_types": ["full_attention"]"#)).unwrap_err();
    assert!(err.contains("`layer_types` names 1 layers"), "{err}");
}

#[test]
fn a_list_of_end_tokens_is_read_and_written_back_as_a_list() {
    // Llama 3.1 and 3.2 configs list three end tokens.
    let config = |eos: &str| {
        format!(
            r#"{{"model_type": "llama", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 16, "bos_token_id": 1, "eos_token_id": {eos}}}"#
        )
    };
    let read = ModelConfig::from_hf_json(&config("[2, 8, 9]")).unwrap();
    assert_eq!(read.eos_token_ids(), vec![2, 8, 9]);
    assert_eq!(read.eos_token_id(), Some(2));
    let written = read.to_hf_json();
    let json: serde_json::Value = serde_json::from_str(&written).unwrap();
    assert_eq!(
        json["eos_token_id"],
        serde_json::json!([2, 8, 9]),
        "{written}"
    );
    assert_eq!(ModelConfig::from_hf_json(&written).unwrap(), read);
    // One id stays one id.
    let one = ModelConfig::from_hf_json(&config("7")).unwrap();
    assert_eq!(one.eos_token_ids(), vec![7]);
    let json: serde_json::Value = serde_json::from_str(&one.to_hf_json()).unwrap();
    assert_eq!(json["eos_token_id"], 7);
    // Every listed id must lie in the vocabulary.
    let err = ModelConfig::from_hf_json(&config("[2, 80]")).unwrap_err();
    assert!(err.to_string().contains("`eos_token_id` is 80"), "{err}");
}

fn all_configs() -> Vec<ModelConfig> {
    vec![
        gpt2(),
        llama(),
        qwen2(),
        qwen3(),
        mistral_window(),
        gemma2(),
        gemma3(),
        phi3(),
        neox(true),
        neox(false),
    ]
}

fn lora(targets: &[&str]) -> super::lora::LoraConfig {
    super::lora::LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        rslora: false,
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Gives every `lora_B` random values (a fresh adapter's are zero and change nothing).
fn perturb_adapter(t: &Trainable) {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let normal = Normal::new(0.0f32, 0.3).unwrap();
    let data = t.varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        if name.ends_with(super::lora::B_SUFFIX) {
            let var = &data[name];
            let v: Vec<f32> = (0..var.elem_count())
                .map(|_| normal.sample(&mut rng))
                .collect();
            var.set(&Tensor::from_vec(v, var.shape(), var.device()).unwrap())
                .unwrap();
        }
    }
}

/// A fresh adapter changes no logit; only the adapter's variables get a gradient (and
/// every one of them a finite non-zero one once B is not zero); backward computes no
/// gradient of the frozen base.
#[test]
fn a_lora_adapter_trains_alone_on_every_architecture() {
    for config in all_configs() {
        let mut t = Trainable::seeded(&config, SEED, &Device::Cpu).unwrap();
        let x = ids(&[1, 5, 9, 3, 7, 2]);
        let before = t.model.forward(&x, None, 0).unwrap();
        t.attach_adapter(lora(&["all-linear"]), 3).unwrap();
        let fresh = t.model.forward(&x, None, 0).unwrap();
        assert_eq!(max_diff(&before, &fresh), 0.0, "{config:?}");
        perturb_adapter(&t);
        let batch = Batch::new(&[(vec![1, 5, 9, 3, 7, 2, 8], 0)], 0, &Device::Cpu).unwrap();
        let grads = lm_loss(&t.model, &batch).unwrap().backward().unwrap();
        let data = t.varmap.data().lock().unwrap();
        let mut adapted = 0;
        for (name, var) in data.iter() {
            let g = grads.get(var.as_tensor());
            if super::lora::is_adapter_var(name) {
                adapted += 1;
                let norm = g
                    .unwrap_or_else(|| panic!("{name}: no gradient"))
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(norm.is_finite() && norm > 0.0, "{name}: {norm}");
                assert!(t.trains(name));
            } else {
                assert!(g.is_none(), "{name}: the frozen base got a gradient");
                assert!(!t.trains(name), "{name}");
            }
        }
        // Nor of their detached copies: candle's matmul backward would compute a gradient
        // of the weight whatever its origin; no gradient in the store outside the
        // adapter's has the shape of a base weight matrix (what remains: norm weights,
        // biases, activations that do not depend on the adapter).
        let adapter_ids: std::collections::HashSet<_> = data
            .iter()
            .filter(|(name, _)| super::lora::is_adapter_var(name))
            .map(|(_, v)| v.as_tensor().id())
            .collect();
        let matrices: std::collections::HashSet<Vec<usize>> = data
            .iter()
            .filter(|(name, v)| !super::lora::is_adapter_var(name) && v.rank() == 2)
            .flat_map(|(_, v)| {
                let d = v.dims().to_vec();
                [d.clone(), vec![d[1], d[0]]]
            })
            .collect();
        for id in grads.get_ids() {
            if !adapter_ids.contains(id) {
                let g = grads.get_id(*id).unwrap();
                assert!(
                    !matrices.contains(g.dims()),
                    "{config:?}: a weight-shaped gradient {:?} outside the adapter",
                    g.dims()
                );
            }
        }
        // Two variables per linear layer: GPT-2 has 4 per block, Phi-3 4, NeoX 4, the
        // others 7.
        let per_layer = match &config {
            ModelConfig::Llama(c) if c.family != LlamaFamily::Phi3 => 7,
            _ => 4,
        };
        assert_eq!(adapted, 2 * per_layer * 2, "{config:?}");
    }
}

/// The adapter saved in PEFT's format and loaded through its base reference, and the
/// merged checkpoint, compute what the adapted model computes; the cache changes nothing.
#[test]
fn an_adapter_saves_as_peft_and_merged_with_the_same_logits() {
    for config in all_configs() {
        let base_dir = tempfile::tempdir().unwrap();
        let (adapter_dir, merged_dir) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut t = Trainable::seeded(&config, SEED, &Device::Cpu).unwrap();
        t.save(base_dir.path()).unwrap();
        t.attach_adapter(lora(&["all-linear"]), 3).unwrap();
        perturb_adapter(&t);
        let x = ids(&[3, 14, 15, 9, 2, 6]);
        let want = t.model.forward(&x, None, 0).unwrap();
        let frozen = t.frozen().unwrap();
        assert_eq!(max_diff(&want, &frozen.forward(&x, None, 0).unwrap()), 0.0);
        let base = t.base_model().unwrap().forward(&x, None, 0).unwrap();
        assert!(
            max_diff(&want, &base) > 1e-3,
            "the base without the adapter differs"
        );
        t.save_adapter(
            adapter_dir.path(),
            &base_dir.path().display().to_string(),
            "CAUSAL_LM",
            &[],
            |_| false,
        )
        .unwrap();
        let peft: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(adapter_dir.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(peft["r"], 4);
        assert_eq!(peft["peft_type"], "LORA");
        let stored = candle_core::safetensors::load(
            adapter_dir.path().join("adapter_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        assert!(stored.keys().all(|k| k.starts_with("base_model.model.")
            && (k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight"))));
        let loaded = Trainable::load(adapter_dir.path(), &Device::Cpu).unwrap();
        let got = loaded.model.forward(&x, None, 0).unwrap();
        assert!(
            max_diff(&want, &got) < 1e-5,
            "{config:?}: {}",
            max_diff(&want, &got)
        );
        t.save_merged(merged_dir.path(), |_| false).unwrap();
        let merged = Trainable::load(merged_dir.path(), &Device::Cpu).unwrap();
        assert_eq!(merged.config, config);
        let got = merged.model.forward(&x, None, 0).unwrap();
        assert!(max_diff(&want, &got) < 1e-5, "{config:?}");
        // The KV cache, with the adapter.
        let mut cache = frozen.new_cache();
        let first = frozen
            .forward(&ids(&[3, 14, 15]), Some(&mut cache), 0)
            .unwrap();
        let rest = frozen
            .forward(&ids(&[9, 2, 6]), Some(&mut cache), 3)
            .unwrap();
        let stepwise = Tensor::cat(&[first, rest], 1).unwrap();
        assert!(max_diff(&want, &stepwise) < 1e-4);
    }
}

#[test]
fn adapter_targets_that_match_nothing_are_named() {
    let mut t = Trainable::seeded(&llama(), SEED, &Device::Cpu).unwrap();
    let e = t
        .attach_adapter(lora(&["q_proj", "c_attn"]), 0)
        .unwrap_err();
    assert!(
        e.contains("`c_attn`") && e.contains("q_proj, k_proj"),
        "{e}"
    );
    let mut t = Trainable::seeded(&gpt2(), SEED, &Device::Cpu).unwrap();
    t.attach_adapter(lora(&["c_attn"]), 0).unwrap();
    assert!(t.attach_adapter(lora(&["c_attn"]), 0).is_err());
}

/// AdamW on the adapter alone fits a sequence and leaves every base weight as it was.
#[test]
fn training_an_adapter_leaves_the_base_unchanged() {
    for config in [gpt2(), llama(), phi3(), neox(true)] {
        let mut t = Trainable::seeded(&config, SEED, &Device::Cpu).unwrap();
        // Embeddings (and tied heads) of a trained model's size: at 0.02 the logits of a
        // frozen tied head can hardly move.
        for (name, var) in t.varmap.data().lock().unwrap().iter() {
            if name.contains("wte") || name.contains("embed") || name.contains("lm_head") {
                var.set(&(var.as_tensor() * 25.0).unwrap()).unwrap();
            }
        }
        let base_before = weights(&t);
        let mut cfg = lora(&["all-linear"]);
        cfg.r = 8;
        cfg.alpha = 16.0;
        t.attach_adapter(cfg, 1).unwrap();
        let vars = crate::policy::train::lm_vars(&t);
        assert!(vars.iter().all(|(n, _)| super::lora::is_adapter_var(n)));
        let schedule = Schedule {
            peak_lr: 2e-2,
            warmup_steps: 5,
            total_steps: 80,
            final_fraction: 0.1,
        };
        let mut trainer = Trainer::new(vars, schedule, 0.0, Some(1.0)).unwrap();
        let batch = Batch::new(&[(vec![7, 8, 9, 10, 11, 12, 13, 14], 0)], 0, &Device::Cpu).unwrap();
        let first = lm_loss(&t.model, &batch)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let mut last = first;
        for _ in 0..80 {
            let loss = lm_loss(&t.model, &batch).unwrap();
            last = loss.to_scalar::<f32>().unwrap();
            trainer.step(&loss).unwrap();
        }
        assert!(last < first - 1.0, "{config:?}: loss {first} -> {last}");
        let after: Vec<(String, Vec<f32>)> = weights(&t)
            .into_iter()
            .filter(|(n, _)| !super::lora::is_adapter_var(n))
            .collect();
        assert_eq!(after, base_before, "{config:?}");
    }
}
