//! The model stages end to end on tiny settings: builtin pretraining -> sft -> generate ->
//! annotate, loading a Hugging Face checkpoint, determinism, and resuming a killed stage.

use std::path::Path;

use serde_json::Value;

use crate::feedback::rows;
use crate::support::Workspace;

const TINY: &str = "source: builtin, vocab_size: 300, d_model: 32, n_layers: 1, n_heads: 2, context: 48, batch_size: 4, device: cpu";

fn world(ws: &Workspace) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/hhh");
    for name in [
        "facts.jsonl",
        "corpus.jsonl",
        "demos.jsonl",
        "prompts.jsonl",
    ] {
        ws.write(
            &format!("data/hhh/{name}"),
            &std::fs::read_to_string(data.join(name)).unwrap(),
        );
    }
}

fn output(ws: &Workspace, stage: &str, name: &str) -> std::path::PathBuf {
    let show: Value =
        serde_json::from_str(&ws.ok(&["show", "p.yaml", stage, "--json"]).stdout).unwrap();
    let o = show["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["output"] == name)
        .unwrap();
    ws.path(o["path"].as_str().unwrap())
}

#[test]
fn pretrain_sft_generate_annotate() {
    let ws = Workspace::new();
    world(&ws);
    ws.write(
        "p.yaml",
        &format!(
            r#"name: lm
seed: 4
stages:
  base: {{ kind: pretrain-load, with: {{ {TINY}, steps: 40, lr: 1.0e-2, warmup_steps: 4 }} }}
  sft: {{ kind: sft, inputs: {{ model: base.model }}, with: {{ max_steps: 8, batch_size: 4, device: cpu }} }}
  gen: {{ kind: generate, inputs: {{ model: sft.model }}, with: {{ max_prompts: 3, n_samples: 2, max_new_tokens: 12, device: cpu }} }}
  label: {{ kind: annotate, inputs: {{ candidates: gen.candidates }}, with: {{ labels: [pairs, scores] }} }}
"#
        ),
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    // Pretraining learns: the last steps' loss is well below the first's.
    let history = rows(&output(&ws, "base", "metrics").join("history.parquet"));
    assert_eq!(history.len(), 40);
    let first = history[0]["loss"].as_f64().unwrap();
    let last = history[39]["loss"].as_f64().unwrap();
    assert!(last < first - 1.0, "pretraining loss {first} -> {last}");
    // The model directory is a Hugging Face checkpoint with hone's metadata.
    let model = output(&ws, "sft", "model");
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "hone.json",
    ] {
        assert!(model.join(file).is_file(), "{file}");
    }
    let loaded = hone::model::Trainable::load(&model, &candle_core::Device::Cpu).unwrap();
    assert_eq!(loaded.config.context_len(), 48);
    assert_eq!(
        rows(&output(&ws, "sft", "metrics").join("history.parquet")).len(),
        8
    );
    // Candidates: K per prompt, with their token ids and log-probs.
    let candidates = rows(&output(&ws, "gen", "candidates"));
    assert_eq!(candidates.len(), 6);
    for c in &candidates {
        assert!(c["token_ids"].as_array().unwrap().len() <= 12);
        assert!(c["logprob_sum"].as_f64().unwrap() < 0.0);
    }
    let comparisons = rows(&output(&ws, "label", "feedback").join("comparisons.parquet"));
    assert!(comparisons.len() <= 3);
    // Same spec and seed: the same bytes.
    let lock = ws.read("p.lock");
    ws.ok(&["run", "p.yaml", "-q", "--force-all"]);
    assert_eq!(ws.read("p.lock"), lock);
}

#[test]
fn a_hugging_face_checkpoint_loads_as_the_base_model() {
    let ws = Workspace::new();
    for (name, model_type) in [("llama-tiny", "llama"), ("qwen2-tiny", "qwen2")] {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name);
        std::fs::create_dir_all(ws.path(&format!("models/{name}"))).unwrap();
        for file in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(
                fixture.join(file),
                ws.path(&format!("models/{name}/{file}")),
            )
            .unwrap();
        }
        ws.write(
            "p.yaml",
            &format!("name: hf\nstages:\n  base: {{ kind: pretrain-load, with: {{ source: hf, path: models/{name}, device: cpu }} }}\n"),
        );
        ws.ok(&["run", "p.yaml", "-q"]);
        let model = output(&ws, "base", "model");
        // Written back as the family it was read as.
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["model_type"], model_type, "{name}");
        let a = hone::model::Trainable::load(&fixture, &candle_core::Device::Cpu).unwrap();
        let b = hone::model::Trainable::load(&model, &candle_core::Device::Cpu).unwrap();
        let x = candle_core::Tensor::new(&[[3u32, 1, 4, 1, 5]], &candle_core::Device::Cpu).unwrap();
        assert_eq!(
            a.model
                .forward(&x, None, 0)
                .unwrap()
                .to_vec3::<f32>()
                .unwrap(),
            b.model
                .forward(&x, None, 0)
                .unwrap()
                .to_vec3::<f32>()
                .unwrap(),
            "{name}"
        );
    }
    // A checkpoint that is not one is bad input with a clear message.
    ws.write("models/broken/config.json", "{\"model_type\": \"bert\"}");
    ws.write("p.yaml", "name: hf\nstages:\n  base: { kind: pretrain-load, with: { source: hf, path: models/broken, device: cpu } }\n");
    let out = ws.hone(&["run", "p.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("unsupported `model_type` `bert`"),
        "{}",
        out.stdout
    );
}

/// A checkpoint's `config.json` is untrusted input: each bad value is a failed stage whose
/// message names the key and the file, never a panic, an abort or a raw shape error.
#[test]
fn an_untrusted_checkpoint_config_is_checked_before_anything_is_built() {
    let ws = Workspace::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/gpt2-tiny");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap())
            .unwrap();
    let cases: [(&str, serde_json::Value, &str); 6] = [
        ("n_head", serde_json::json!(0), "`n_head` is 0"),
        (
            "n_embd",
            serde_json::json!(1_000_000_000_000u64),
            "`n_embd` is 1000000000000",
        ),
        (
            "n_head",
            serde_json::json!(5),
            "`n_embd` (32) is not a multiple of `n_head` (5)",
        ),
        (
            "n_layer",
            serde_json::json!(1000),
            "more than `model.safetensors`",
        ),
        (
            "eos_token_id",
            serde_json::json!(500),
            "`eos_token_id` is 500",
        ),
        (
            "layer_norm_epsilon",
            serde_json::json!(-1.0),
            "`layer_norm_epsilon` is -1",
        ),
    ];
    for (n, (key, value, expect)) in cases.into_iter().enumerate() {
        let dir = format!("models/m{n}");
        for file in ["model.safetensors", "tokenizer.json"] {
            std::fs::create_dir_all(ws.path(&dir)).unwrap();
            std::fs::copy(fixture.join(file), ws.path(&format!("{dir}/{file}"))).unwrap();
        }
        let mut bad = config.clone();
        bad[key] = value;
        ws.write(&format!("{dir}/config.json"), &bad.to_string());
        ws.write(
            "p.yaml",
            &format!("name: hf\nstages:\n  base: {{ kind: pretrain-load, with: {{ source: hf, path: {dir}, device: cpu }} }}\n"),
        );
        let out = ws.hone(&["run", "p.yaml"]);
        assert_eq!(out.code, 1, "{key}: {}\n{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains(expect) && out.stdout.contains(&format!("{dir}/config.json")),
            "{key}: {}",
            out.stdout
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

#[test]
#[cfg(unix)]
fn a_killed_pretraining_resumes_to_the_same_model() {
    let spec = format!(
        "name: resume\nseed: 2\nstages:\n  base: {{ kind: pretrain-load, with: {{ {TINY}, steps: 60, checkpoint_every: 10 }} }}\n"
    );
    let straight = Workspace::new();
    world(&straight);
    straight.write("p.yaml", &spec);
    straight.ok(&["run", "p.yaml", "-q"]);

    let killed = Workspace::new();
    world(&killed);
    killed.write("p.yaml", &spec);
    let mut child = killed.spawn(&["run", "p.yaml", "-q"]);
    // Wait for a checkpoint, then kill hone in the middle of training.
    let resume_dir = killed.path(".hone/resume");
    let mut found = false;
    for _ in 0..3000 {
        if let Ok(entries) = std::fs::read_dir(&resume_dir)
            && entries
                .flatten()
                .any(|e| e.path().join("checkpoint/state.json").is_file())
        {
            found = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(found, "no checkpoint was written");
    child.kill().unwrap();
    child.wait().unwrap();
    let out = killed.ok(&["run", "p.yaml", "-v"]);
    assert!(
        out.stderr.contains("resumed from checkpoint"),
        "{}",
        out.stderr
    );
    assert_eq!(
        killed.read("p.lock"),
        straight.read("p.lock"),
        "a resumed run writes the same bytes"
    );
}

#[test]
fn reward_fit_learns_preferences_and_saves_a_sequence_classifier() {
    let ws = Workspace::new();
    world(&ws);
    ws.write(
        "data/hhh/candidates.jsonl",
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("data/hhh/candidates.jsonl"),
        )
        .unwrap(),
    );
    ws.write(
        "p.yaml",
        &format!(
            r#"name: rm
seed: 6
stages:
  base: {{ kind: pretrain-load, with: {{ {TINY}, steps: 10 }} }}
  label: {{ kind: annotate, with: {{ candidates_path: data/hhh/candidates.jsonl, labels: [pairs, rankings, scores, flags], max_prompts: 40 }} }}
  reward:
    kind: reward-fit
    inputs: {{ model: base.model, feedback: label.feedback, oracle: label.oracle }}
    with: {{ max_steps: 6, batch_size: 4, held_out_fraction: 0.3, device: cpu }}
"#
        ),
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(output(&ws, "reward", "metrics").join("summary.json")).unwrap(),
    )
    .unwrap();
    for key in ["accuracy", "log_loss", "ece"] {
        let v = summary["held_out"][key].as_f64().unwrap();
        assert!(v.is_finite() && v >= 0.0, "{key}: {v}");
    }
    assert!(
        summary["held_out_pairs"].as_u64().unwrap() > 0
            && summary["train_pairs"].as_u64().unwrap() > 0
    );
    assert!(summary["oracle_spearman"].as_f64().unwrap().abs() <= 1.0);
    assert_eq!(
        rows(&output(&ws, "reward", "metrics").join("history.parquet")).len(),
        6
    );
    let model = output(&ws, "reward", "reward_model");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "GPT2ForSequenceClassification");
    assert_eq!(config["num_labels"], 1);
    let tensors =
        candle_core::safetensors::load(model.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(tensors.contains_key("score.weight"));
    assert!(
        !tensors.keys().any(|k| k.starts_with("hone_aux.")),
        "training-only variables stay out of the checkpoint"
    );
    let lock = ws.read("p.lock");
    ws.ok(&["run", "p.yaml", "-q", "--force", "reward"]);
    assert_eq!(ws.read("p.lock"), lock, "reward-fit is deterministic");
}

#[test]
fn odpo_select_chooses_pairs_that_annotate_labels() {
    let ws = Workspace::new();
    world(&ws);
    ws.write(
        "data/hhh/candidates.jsonl",
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("data/hhh/candidates.jsonl"),
        )
        .unwrap(),
    );
    ws.write(
        "p.yaml",
        &format!(
            r#"name: odpo
seed: 8
stages:
  base: {{ kind: pretrain-load, with: {{ {TINY}, steps: 4 }} }}
  pool:
    kind: command
    with: {{ cmd: "head -n 200 data/hhh/candidates.jsonl > ${{outputs.candidates}}", deps: [data/hhh/candidates.jsonl], outputs: {{ candidates: "table:candidates" }} }}
  first: {{ kind: annotate, inputs: {{ candidates: pool.candidates }}, with: {{ max_prompts: 10 }} }}
  reward: {{ kind: reward-fit, inputs: {{ model: base.model, feedback: first.feedback }}, with: {{ max_steps: 2, batch_size: 4, device: cpu }} }}
  d_optimal: {{ kind: odpo-select, inputs: {{ candidates: pool.candidates, reward_model: reward.reward_model }}, with: {{ method: d-optimal, budget: 12, device: cpu }} }}
  uniform: {{ kind: odpo-select, inputs: {{ candidates: pool.candidates }}, with: {{ method: uniform, budget: 12 }} }}
  label: {{ kind: annotate, inputs: {{ pairs: d_optimal.pairs }}, with: {{ annotators: [{{ id: a, temperature: 0.0 }}, {{ id: b, temperature: 1.0 }}], annotators_per_item: 2 }} }}
"#
        ),
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    for stage in ["d_optimal", "uniform"] {
        let pairs = rows(&output(&ws, stage, "pairs"));
        assert_eq!(pairs.len(), 12, "{stage}");
        let distinct: std::collections::BTreeSet<(String, String)> = pairs
            .iter()
            .map(|p| {
                (
                    p["response_a"].as_str().unwrap().to_string(),
                    p["response_b"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(distinct.len(), 12, "{stage}: distinct pairs");
        assert!(pairs.iter().all(|p| p["response_a"] != p["response_b"]));
    }
    let comparisons = rows(&output(&ws, "label", "feedback").join("comparisons.parquet"));
    assert_eq!(comparisons.len(), 24, "12 pairs, 2 annotators each");
    // The noiseless annotator always agrees with the oracle (or the pair is a tie).
    let truth: std::collections::BTreeMap<String, f64> = rows(&output(&ws, "label", "oracle"))
        .iter()
        .map(|r| {
            (
                r["response"].as_str().unwrap().to_string(),
                r["reward"].as_f64().unwrap(),
            )
        })
        .collect();
    for c in comparisons.iter().filter(|c| c["annotator"] == "a") {
        assert!(truth[c["chosen"].as_str().unwrap()] >= truth[c["rejected"].as_str().unwrap()]);
    }
    // Labelling given pairs allows no other label kinds.
    ws.write(
        "p.yaml",
        &ws.read("p.yaml").replace(
            "annotators_per_item: 2 }",
            "annotators_per_item: 2, labels: [pairs, flags] }",
        ),
    );
    let out = ws.hone(&["validate", "p.yaml"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("labels exactly those pairs"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_ensemble_drives_uncertainty_selection() {
    let ws = Workspace::new();
    world(&ws);
    ws.write(
        "data/hhh/candidates.jsonl",
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("data/hhh/candidates.jsonl"),
        )
        .unwrap(),
    );
    ws.write(
        "p.yaml",
        &format!(
            r#"name: active
seed: 9
stages:
  base: {{ kind: pretrain-load, with: {{ {TINY}, steps: 4 }} }}
  pool:
    kind: command
    with: {{ cmd: "head -n 120 data/hhh/candidates.jsonl > ${{outputs.candidates}}", deps: [data/hhh/candidates.jsonl], outputs: {{ candidates: "table:candidates" }} }}
  first: {{ kind: annotate, inputs: {{ candidates: pool.candidates }}, with: {{ max_prompts: 10, pairs_per_prompt: 2 }} }}
  reward: {{ kind: reward-fit, inputs: {{ model: base.model, feedback: first.feedback }}, with: {{ max_steps: 3, batch_size: 4, ensemble: 3, device: cpu }} }}
  single: {{ kind: reward-fit, inputs: {{ model: base.model, feedback: first.feedback }}, with: {{ max_steps: 1, batch_size: 4, device: cpu }} }}
  active: {{ kind: odpo-select, inputs: {{ candidates: pool.candidates, reward_model: reward.reward_model }}, with: {{ method: uncertainty, budget: 10, device: cpu }} }}
"#
        ),
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    let members = output(&ws, "reward", "reward_model").join("members");
    for k in 0..3 {
        assert!(
            members
                .join(k.to_string())
                .join("model.safetensors")
                .is_file(),
            "member {k}"
        );
    }
    let pairs = rows(&output(&ws, "active", "pairs"));
    assert_eq!(pairs.len(), 10);
    let scores: Vec<f64> = pairs.iter().map(|p| p["score"].as_f64().unwrap()).collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "most disputed first: {scores:?}"
    );
    assert!(
        scores[0] > 0.0,
        "members trained on different resamples disagree"
    );
    assert!(pairs.iter().all(|p| p["method"] == "uncertainty"));
    // Without an ensemble, `uncertainty` says what it needs.
    ws.write(
        "p.yaml",
        &ws.read("p.yaml")
            .replace(
                "reward_model: reward.reward_model }}, with: { method: uncertainty",
                "reward_model: single.reward_model }, with: { method: uncertainty",
            )
            .replace(
                "reward_model: reward.reward_model }, with: { method: uncertainty",
                "reward_model: single.reward_model }, with: { method: uncertainty",
            ),
    );
    let out = ws.hone(&["run", "p.yaml"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("needs a reward model fitted with `ensemble: 2` or more"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_head_fit_keeps_the_backbone_and_learns_from_the_init_reward_model() {
    let ws = Workspace::new();
    world(&ws);
    for name in ["candidates.jsonl", "eval_candidates.jsonl"] {
        ws.write(
            &format!("data/hhh/{name}"),
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("data/hhh")
                    .join(name),
            )
            .unwrap(),
        );
    }
    ws.write(
        "p.yaml",
        &format!(
            r#"name: head
seed: 4
stages:
  base: {{ kind: pretrain-load, with: {{ {TINY}, steps: 6 }} }}
  label: {{ kind: annotate, with: {{ candidates_path: data/hhh/candidates.jsonl, max_prompts: 60, pairs_per_prompt: 3, annotators: [{{ id: a, temperature: 0.1 }}] }} }}
  test: {{ kind: annotate, with: {{ candidates_path: data/hhh/eval_candidates.jsonl, max_prompts: 30 }} }}
  features: {{ kind: reward-fit, inputs: {{ model: base.model, feedback: label.feedback }}, with: {{ max_steps: 4, batch_size: 8, device: cpu }} }}
  head:
    kind: reward-fit
    inputs: {{ init: features.reward_model, feedback: label.feedback, oracle: test.oracle }}
    with: {{ train: head, ensemble: 3, held_out_fraction: 0.0, tags: {{ method: uniform, budget: 180 }}, device: cpu }}
  pool:
    kind: command
    with: {{ cmd: "head -n 40 data/hhh/eval_candidates.jsonl > ${{outputs.candidates}}", deps: [data/hhh/eval_candidates.jsonl], outputs: {{ candidates: "table:candidates" }} }}
  active: {{ kind: odpo-select, inputs: {{ candidates: pool.candidates, reward_model: head.reward_model }}, with: {{ method: uncertainty, budget: 5, device: cpu }} }}
"#
        ),
    );
    let out = ws.hone(&["run", "p.yaml", "-q"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(output(&ws, "head", "metrics").join("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["train_mode"], "head");
    assert_eq!(summary["tags"]["method"], "uniform");
    assert_eq!(summary["tags"]["budget"], 180);
    assert_eq!(summary["train_pairs"], 180);
    let accuracy = summary["oracle_pair_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy) && summary["oracle_pairs"].as_u64().unwrap() > 50);
    // Newton's iterations are the history; the objective never rises.
    let history = rows(&output(&ws, "head", "metrics").join("history.parquet"));
    assert!(!history.is_empty() && history.len() < 100);
    let losses: Vec<f64> = history
        .iter()
        .map(|h| h["loss"].as_f64().unwrap())
        .collect();
    assert!(
        losses.windows(2).all(|w| w[1] <= w[0] + 1e-12),
        "{losses:?}"
    );
    // The backbone is the init model's, byte for byte; only the head moved.
    let load = |stage: &str, sub: &str| {
        candle_core::safetensors::load(
            output(&ws, stage, "reward_model")
                .join(sub)
                .join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (before, after) = (load("features", ""), load("head", ""));
    for (name, tensor) in &before {
        let same = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == after[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(same, name != "score.weight", "{name}");
    }
    // Ensemble members share the backbone and differ in their heads.
    let heads: Vec<Vec<f32>> = (0..3)
        .map(|k| {
            load("head", &format!("members/{k}"))["score.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect();
    assert_ne!(heads[0], heads[1]);
    assert_eq!(rows(&output(&ws, "active", "pairs")).len(), 5);
    // A fresh head (`model`) and a reward model to go on from (`init`) exclude each other.
    ws.write(
        "p.yaml",
        &ws.read("p.yaml").replace(
            "inputs: { init: features.reward_model,",
            "inputs: { model: base.model, init: features.reward_model,",
        ),
    );
    let out = ws.hone(&["validate", "p.yaml"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("not both"), "{}", out.stderr);
}

/// With stderr not a terminal (a CI log), a run prints a line when a stage starts and
/// ends and periodic progress lines with the rate and the loss; no escape codes.
#[test]
fn a_run_into_a_log_prints_plain_lines_per_stage_and_progress() {
    let ws = Workspace::new();
    world(&ws);
    ws.write(
        "p.yaml",
        &format!(
            "name: lm\nseed: 4\nstages:\n  base: {{ kind: pretrain-load, with: {{ {TINY}, steps: 12 }} }}\n"
        ),
    );
    let out = ws
        .command(&["run", "p.yaml", "-v"])
        .env("HONE_PROGRESS_INTERVAL", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "escape codes in a log:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("] base: ")).collect();
    assert!(
        lines.first().is_some_and(|l| l.ends_with("base: started")),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("/12 (") && l.contains("/s, eta ") && l.contains("; loss ")),
        "{stderr}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("base: ran in ") && l.contains("; loss ")),
        "{stderr}"
    );
}

/// `model: ORG/NAME` finds the snapshot in the local Hugging Face cache (the layout
/// huggingface_hub writes: refs/main holds the commit, snapshots/COMMIT holds the files,
/// here as symlinks to blobs/ as there); the commit is in the lock; a model that is not
/// there is a spec error naming the path looked at.
#[test]
fn a_model_id_loads_from_the_local_hugging_face_cache() {
    let ws = Workspace::new();
    let hub = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = hub.path().join("models--hone--qwen2-tiny");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/qwen2-tiny");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        let blob = repo.join("blobs").join(file.replace('.', "-"));
        std::fs::copy(fixture.join(file), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snapshot.join(file)).unwrap();
    }
    let spec = |model: &str| {
        format!(
            "name: hf\nstages:\n  base: {{ kind: pretrain-load, with: {{ source: hf, model: {model}, device: cpu }} }}\n"
        )
    };
    let run = |args: &[&str]| {
        let out = ws
            .command(args)
            .env("HF_HUB_CACHE", hub.path())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    ws.write("p.yaml", &spec("hone/qwen2-tiny"));
    let (code, text) = run(&["run", "p.yaml", "-q"]);
    assert_eq!(code, 0, "{text}");
    let lock = ws.read("p.lock");
    assert!(
        lock.contains(&format!("hf:hone/qwen2-tiny@{commit}")),
        "{lock}"
    );
    let (code, text) = run(&["run", "p.yaml", "--json"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("\"cached\""),
        "a second run is cached: {text}"
    );
    // The model is the fixture's.
    let show = run(&["show", "p.yaml", "base", "--json"]).1;
    let show: Value = serde_json::from_str(&show).unwrap();
    let model = show["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["output"] == "model")
        .map(|o| ws.path(o["path"].as_str().unwrap()))
        .unwrap();
    let a = hone::model::Trainable::load(&fixture, &candle_core::Device::Cpu).unwrap();
    let b = hone::model::Trainable::load(&model, &candle_core::Device::Cpu).unwrap();
    let x = candle_core::Tensor::new(&[[3u32, 1, 4]], &candle_core::Device::Cpu).unwrap();
    assert_eq!(
        a.model
            .forward(&x, None, 0)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap(),
        b.model
            .forward(&x, None, 0)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap()
    );
    // Not in the cache: exit 2, naming where it looked.
    ws.write("p.yaml", &spec("hone/absent"));
    let (code, text) = run(&["validate", "p.yaml"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("models--hone--absent/refs/main"), "{text}");
    assert!(
        text.contains("p.yaml:3:"),
        "the error points into the spec: {text}"
    );
}

/// A Hugging Face model's chat template formats the prompts of every model stage when the
/// stage's `template` is left at its default, and travels with the models made from it.
#[test]
fn a_chat_template_formats_prompts_and_travels_with_the_model() {
    use hone::policy::chat::PromptFormat;
    use hone::policy::rollout::{RolloutParams, rollout};

    let ws = Workspace::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/qwen2-tiny");
    std::fs::create_dir_all(ws.path("models/qwen")).unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
    ] {
        std::fs::copy(fixture.join(file), ws.path(&format!("models/qwen/{file}"))).unwrap();
    }
    // A terse template: the model's context is 32 tokens.
    let config = r#"{"chat_template": "{% for m in messages %}{{ m.role[0] }}:{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}a:{% endif %}", "eos_token": "</s>"}"#;
    ws.write("models/qwen/tokenizer_config.json", config);
    ws.write(
        "prompts.jsonl",
        "{\"id\": \"p1\", \"text\": \"Hi?\"}\n{\"id\": \"p2\", \"text\": \"Go.\"}\n",
    );
    ws.write(
        "demos.jsonl",
        "{\"prompt\": \"Hi?\", \"completion\": \"Yo.\"}\n{\"prompt\": \"Go.\", \"completion\": \"No.\"}\n",
    );
    let sample =
        "prompts: prompts.jsonl, n_samples: 1, max_new_tokens: 6, temperature: 0, device: cpu";
    ws.write(
        "p.yaml",
        &format!(
            r#"name: chat
stages:
  base: {{ kind: pretrain-load, with: {{ source: hf, path: models/qwen, device: cpu }} }}
  chat: {{ kind: generate, inputs: {{ model: base.model }}, with: {{ {sample} }} }}
  plain: {{ kind: generate, inputs: {{ model: base.model }}, with: {{ {sample}, template: "Q {{prompt}} A" }} }}
  sft: {{ kind: sft, inputs: {{ model: base.model }}, with: {{ demos: demos.jsonl, max_steps: 2, batch_size: 2, device: cpu }} }}
"#
        ),
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    // The tokenizer files travel: the loaded model and the fine-tuned one keep them.
    for stage in ["base", "sft"] {
        let dir = output(&ws, stage, "model");
        assert_eq!(
            std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap(),
            config,
            "{stage}"
        );
        assert!(dir.join("generation_config.json").is_file(), "{stage}");
    }
    // What generate sampled is what greedy decoding gives from the prompt as the chat
    // template renders it ("u:Hi?\na:"), and from the plain template when one is set.
    let (model, tok) = {
        let t = hone::model::Trainable::load(&fixture, &candle_core::Device::Cpu).unwrap();
        let tok = hone::model::tokenizer::load(&fixture.join("tokenizer.json")).unwrap();
        (t.frozen().unwrap(), tok)
    };
    let chat = PromptFormat::for_model(
        &ws.path("models/qwen"),
        "User: {prompt}\nAssistant:",
        "User: {prompt}\nAssistant:",
    )
    .unwrap();
    assert_eq!(chat.prompt_text("Hi?").unwrap(), "u:Hi?\na:");
    let plain = PromptFormat::Plain("Q {prompt} A".into());
    let stop = vec!["\nUser:".to_string()];
    for (stage, format) in [("chat", &chat), ("plain", &plain)] {
        let table = rows(&output(&ws, stage, "candidates"));
        assert_eq!(table.len(), 2);
        for row in &table {
            let prompt = row["prompt"].as_str().unwrap();
            let ids = format.encode_prompt(&tok, prompt).unwrap();
            let params = RolloutParams::sampling(0.0, 6, &[0], &stop);
            let want = rollout(
                &model,
                &tok,
                &[(&ids, 0)],
                &params,
                &candle_core::Device::Cpu,
            )
            .unwrap()
            .remove(0);
            let got: Vec<u32> = row["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(got, want.tokens, "{stage} {prompt}");
        }
    }

    // A template that does not render the prompt as the start of the whole exchange
    // cannot be trained on: sft fails naming the file, and nothing else is lost.
    ws.write(
        "models/qwen/tokenizer_config.json",
        r#"{"chat_template": "{% if add_generation_prompt %}A{% else %}B{% endif %}"}"#,
    );
    let out = ws.hone(&["run", "p.yaml"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains("tokenizer_config.json")
            && out.stdout.contains("start of the whole exchange"),
        "{}",
        out.stdout
    );
}
