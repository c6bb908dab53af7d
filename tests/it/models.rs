//! hone's GPT-2 and Llama against Hugging Face transformers: tiny random-weight
//! checkpoints, logits, loss and greedy decoding written by
//! `scripts/make_model_fixtures.py` (see its header for the setup).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use hone::model::sample::{SampleParams, sample};
use hone::model::train::{Batch, lm_loss};
use hone::model::{ModelConfig, Trainable};
use rand::SeedableRng;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn expected(model: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(model).join("expected.json")).unwrap())
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

const TOLERANCE: f32 = 1e-4;

/// Every fixture under tests/fixtures/models/ (scripts/make_model_fixtures.py).
const MODELS: [&str; 11] = [
    "gpt2-tiny",
    "llama-tiny",
    "qwen2-tiny",
    "mistral-tiny",
    "llama3-tiny",
    "qwen3-tiny",
    "mistral-window-tiny",
    "gemma2-tiny",
    "phi3-tiny",
    "gemma3-tiny",
    "neox-tiny",
];

#[test]
fn logits_loss_and_greedy_decoding_match_transformers() {
    for model_name in MODELS {
        let want = expected(model_name);
        let trainable = Trainable::load(&fixture(model_name), &Device::Cpu).unwrap();
        let model = trainable.frozen().unwrap();
        for (n, seq) in want["sequences"].as_array().unwrap().iter().enumerate() {
            let input = ids(&seq["input_ids"]);
            let logits = model
                .forward(
                    &Tensor::new(input.as_slice(), &Device::Cpu)
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap(),
                    None,
                    0,
                )
                .unwrap();
            let got = logits.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
            let mut worst = 0f32;
            for (row_got, row_want) in got.iter().zip(seq["logits"].as_array().unwrap()) {
                for (g, w) in row_got.iter().zip(row_want.as_array().unwrap()) {
                    worst = worst.max((g - w.as_f64().unwrap() as f32).abs());
                }
            }
            assert!(
                worst < TOLERANCE,
                "{model_name} sequence {n}: max logit difference {worst}"
            );
        }
        // The loss on the second sequence.
        let loss_seq = ids(
            &want["sequences"][want["loss"]["sequence_index"].as_u64().unwrap() as usize]["input_ids"]
        );
        let batch = Batch::new(&[(loss_seq, 0)], 0, &Device::Cpu).unwrap();
        let loss = lm_loss(&model, &batch).unwrap().to_scalar::<f32>().unwrap();
        let want_loss = want["loss"]["value"].as_f64().unwrap() as f32;
        assert!(
            (loss - want_loss).abs() < TOLERANCE,
            "{model_name}: loss {loss} vs {want_loss}"
        );
        // Greedy decoding: 8 argmax steps, and the same stopping at end-of-text.
        let greedy = &want["greedy"];
        let prompt = ids(&greedy["prompt_ids"]);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let params = SampleParams {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            max_new_tokens: 8,
            eos_token_ids: Vec::new(),
        };
        let free = sample(&model, &prompt, &params, &mut rng, &Device::Cpu).unwrap();
        assert_eq!(
            free.tokens,
            ids(&greedy["argmax_ids"])[prompt.len()..],
            "{model_name}: argmax decoding"
        );
        let stopping = SampleParams {
            eos_token_ids: vec![0],
            ..params
        };
        let stopped = sample(&model, &prompt, &stopping, &mut rng, &Device::Cpu).unwrap();
        assert_eq!(
            stopped.tokens,
            ids(&greedy["output_ids"])[prompt.len()..],
            "{model_name}: generate() with EOS"
        );
        assert_eq!(stopped.stopped_at_eos, greedy["eos_hit"].as_bool().unwrap());
        // The log-probabilities that sampling reports are the model's.
        let first = ids(&want["sequences"][0]["input_ids"]);
        let last_logprobs: Vec<f32> = want["last_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let one = SampleParams {
            max_new_tokens: 1,
            ..params
        };
        let next = sample(&model, &first, &one, &mut rng, &Device::Cpu).unwrap();
        let token = next.tokens[0] as usize;
        assert!(
            (next.logprobs[0] - last_logprobs[token]).abs() < TOLERANCE,
            "{model_name}: log-prob of the greedy token"
        );
    }
}

#[test]
fn checkpoint_configs_from_transformers_parse() {
    for model_name in MODELS {
        let text = std::fs::read_to_string(fixture(model_name).join("config.json")).unwrap();
        let config = ModelConfig::from_hf_json(&text).unwrap();
        assert_eq!(config.vocab_size(), 96);
        // Round trip through hone's own config.json.
        assert_eq!(
            ModelConfig::from_hf_json(&config.to_hf_json()).unwrap(),
            config
        );
    }
}

#[test]
fn the_tokenizer_agrees_with_the_python_one() {
    let tokenizer = hone::model::tokenizer::load(&fixture("tokenizer.json")).unwrap();
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer_expected.json")).unwrap())
            .unwrap();
    for sample in want["samples"].as_array().unwrap() {
        let text = sample["text"].as_str().unwrap();
        let got = hone::model::tokenizer::encode(&tokenizer, text).unwrap();
        assert_eq!(got, ids(&sample["ids"]), "{text:?}");
    }
}

/// The Python with torch, transformers and peft that the round-trip tests run
/// (HONE_TRANSFORMERS_PYTHON; `.ci/run` installs one). Without it a test is skipped with a
/// message, except under `CI=true`, where it fails: CI must never pass one silently.
fn reference_python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("HONE_TRANSFORMERS_PYTHON") {
        Some(python) if !python.is_empty() => Some(PathBuf::from(python)),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
            "{test}: HONE_TRANSFORMERS_PYTHON is not set under CI=true; .ci/run installs torch, \
             transformers and peft and sets it (CONTRIBUTING.md, \"The transformers round trip\")"
        ),
        _ => {
            eprintln!(
                "SKIPPED {test}: HONE_TRANSFORMERS_PYTHON is not set (a Python with torch, \
                 transformers and peft; CONTRIBUTING.md, \"The transformers round trip\")"
            );
            None
        }
    }
}

/// A checkpoint hone saves loads in transformers with the same logits: hone loads each
/// fixture (written by transformers), saves it, and `scripts/check_hf_checkpoint.py` loads
/// that with `AutoModelForCausalLM` and compares logits, greedy decoding, log-probabilities
/// and loss with the fixture's `expected.json` (see [`reference_python`]).
#[test]
fn a_checkpoint_saved_by_hone_loads_in_transformers() {
    let Some(python) = reference_python("a_checkpoint_saved_by_hone_loads_in_transformers") else {
        return;
    };
    let mut dirs = Vec::new();
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    for model_name in MODELS {
        let dir = tempfile::tempdir().unwrap();
        let trainable = Trainable::load(&fixture(model_name), &Device::Cpu).unwrap();
        trainable.save(dir.path()).unwrap();
        std::fs::copy(fixture("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
        if !args.is_empty() {
            args.push("--and".into());
        }
        args.push(dir.path().into());
        args.push(fixture(model_name).join("expected.json").into());
        dirs.push(dir);
    }
    run_check(&python, "check_hf_checkpoint.py", &args);
}

/// Runs `scripts/SCRIPT ARGS` with the reference Python (all fixtures in one process:
/// torch's import takes seconds) and fails with its output when a check fails.
fn run_check(python: &Path, script: &str, args: &[std::ffi::OsString]) {
    let out = std::process::Command::new(python)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("scripts")
                .join(script),
        )
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "HONE_TRANSFORMERS_PYTHON=`{}` does not run: {e}",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "{script}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reward models both ways: hone's `*ForSequenceClassification` checkpoint loads in
/// transformers with the same rewards (within 1e-4), and the checkpoint transformers saves
/// from it (which has no LM head) loads back in hone with the same rewards.
#[test]
fn a_reward_model_round_trips_through_transformers() {
    use hone::model::reward::RewardModel;
    let Some(python) = reference_python("a_reward_model_round_trips_through_transformers") else {
        return;
    };
    // No token 0 (the padding id written into the config): transformers reads the reward
    // at the last token that is not padding.
    let sequences: Vec<Vec<u32>> = vec![
        vec![17, 42, 5, 88, 63],
        vec![3, 95, 27, 27, 60, 11, 74, 1, 50],
    ];
    let rewards = |rm: &RewardModel| -> Vec<f32> {
        sequences
            .iter()
            .map(|seq| {
                let ids = Tensor::new(seq.as_slice(), &Device::Cpu)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap();
                let hidden = rm.base.model.hidden(&ids, None, 0).unwrap();
                let last = hidden
                    .narrow(1, seq.len() - 1, 1)
                    .unwrap()
                    .squeeze(1)
                    .unwrap();
                last.matmul(&rm.head.as_tensor().t().unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()[0]
            })
            .collect()
    };
    let mut made = Vec::new();
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    for model_name in MODELS {
        let (dir, back) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let base = Trainable::load(&fixture(model_name), &Device::Cpu).unwrap();
        let rm = RewardModel::from_causal(base, 7, &Device::Cpu).unwrap();
        rm.save(dir.path(), 0).unwrap();
        let want = rewards(&rm);
        let expected = dir.path().join("expected_rewards.json");
        std::fs::write(
            &expected,
            serde_json::json!({"sequences": sequences, "rewards": want}).to_string(),
        )
        .unwrap();
        if !args.is_empty() {
            args.push("--and".into());
        }
        args.extend([dir.path().into(), expected.into(), back.path().into()]);
        made.push((model_name, dir, back, want));
    }
    run_check(&python, "check_hf_reward_model.py", &args);
    // transformers' own checkpoints, back in hone.
    for (model_name, _dir, back, want) in &made {
        let again = RewardModel::load(back.path(), 0, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{model_name}: {e}"));
        for (a, b) in rewards(&again).iter().zip(want) {
            assert!((a - b).abs() < 1e-4, "{model_name}: {a} against {b}");
        }
    }
}

/// A LoRA adapter hone saves loads in PEFT with the same logits, adapted and merged: on
/// every fixture, an adapter on all its linear layers (random A and B, so that it changes
/// the output), saved by hone naming the fixture as its base, loaded by
/// `scripts/check_peft_adapter.py` with `PeftModel.from_pretrained`.
#[test]
fn a_lora_adapter_saved_by_hone_loads_in_peft() {
    use rand_distr::{Distribution, Normal};
    let Some(python) = reference_python("a_lora_adapter_saved_by_hone_loads_in_peft") else {
        return;
    };
    let sequence: Vec<u32> = vec![5, 17, 42, 8, 63, 2, 11];
    let mut dirs = Vec::new();
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    for model_name in MODELS {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Trainable::load(&fixture(model_name), &Device::Cpu).unwrap();
        t.attach_adapter(
            hone::model::lora::LoraConfig {
                r: 4,
                alpha: 8.0,
                dropout: 0.0,
                target_modules: vec!["all-linear".into()],
                rslora: false,
            },
            1,
        )
        .unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let normal = Normal::new(0.0f32, 0.2).unwrap();
        for (name, var) in t.varmap.data().lock().unwrap().iter() {
            if name.ends_with(".lora_B.weight") {
                let v: Vec<f32> = (0..var.elem_count())
                    .map(|_| normal.sample(&mut rng))
                    .collect();
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        let ids = Tensor::new(sequence.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = t.model.forward(&ids, None, 0).unwrap().squeeze(0).unwrap();
        let base = fixture(model_name).canonicalize().unwrap();
        t.save_adapter(
            dir.path(),
            &base.display().to_string(),
            "CAUSAL_LM",
            &[],
            |_| false,
        )
        .unwrap();
        let expected = dir.path().join("expected_logits.json");
        std::fs::write(
            &expected,
            serde_json::json!({"ids": sequence, "logits": logits.to_vec2::<f32>().unwrap()})
                .to_string(),
        )
        .unwrap();
        if !args.is_empty() {
            args.push("--and".into());
        }
        args.extend([dir.path().into(), expected.into()]);
        dirs.push(dir);
    }
    run_check(&python, "check_peft_adapter.py", &args);
}

/// Checkpoints stored in bf16 or f16 (as most published ones are) load, converted to f32:
/// the model computes exactly what the f32 model does with each weight rounded to that
/// dtype.
#[test]
fn bf16_and_f16_checkpoints_load_as_their_rounded_weights() {
    use candle_core::DType;
    let source = fixture("qwen2-tiny");
    let original = Trainable::load(&source, &Device::Cpu).unwrap();
    let stored =
        candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu).unwrap();
    let x = Tensor::new(&[[3u32, 1, 4, 1, 5, 9, 2, 6]], &Device::Cpu).unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let dir = tempfile::tempdir().unwrap();
        for file in ["config.json", "tokenizer.json"] {
            std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
        }
        let halved: std::collections::HashMap<String, Tensor> = stored
            .iter()
            .map(|(name, t)| (name.clone(), t.to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&halved, dir.path().join("model.safetensors")).unwrap();
        let loaded = Trainable::load(dir.path(), &Device::Cpu).unwrap();
        // The f32 model with every weight rounded through `dtype`.
        let rounded = Trainable::load(&source, &Device::Cpu).unwrap();
        for (_, var) in rounded.varmap.data().lock().unwrap().iter() {
            var.set(
                &var.as_tensor()
                    .to_dtype(dtype)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap(),
            )
            .unwrap();
        }
        let logits = |t: &Trainable| {
            t.model
                .forward(&x, None, 0)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(logits(&loaded), logits(&rounded), "{dtype:?}");
        assert_ne!(
            logits(&loaded),
            logits(&original),
            "{dtype:?} rounds some weight"
        );
    }
}
