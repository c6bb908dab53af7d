//! LoRA adapters through the stages: sft, dpo, reward-fit and ppo each train an adapter
//! on the model before it, save it in PEFT's format beside a reference to its base, and
//! the next stage loads the chain (base, then each adapter merged in).

use std::path::Path;

use serde_json::Value;

use crate::support::Workspace;

const TINY: &str = "source: builtin, vocab_size: 300, d_model: 32, n_layers: 1, n_heads: 2, context: 64, batch_size: 4, device: cpu";

/// The HHH world's data files, as the shipped specs name them.
fn world(ws: &Workspace) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/hhh");
    for entry in std::fs::read_dir(data).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            ws.write(
                &format!("data/hhh/{name}"),
                &std::fs::read_to_string(&path).unwrap(),
            );
        }
    }
}

fn output(ws: &Workspace, stage: &str, name: &str) -> std::path::PathBuf {
    output_in(ws, stage, name, &[])
}

/// [`output`], with `hone show` run in the environment `env`.
fn output_in(ws: &Workspace, stage: &str, name: &str, env: &[(&str, &Path)]) -> std::path::PathBuf {
    let out = crate::support::Output::of(
        ws.command(&["show", "p.yaml", stage, "--json"])
            .envs(env.iter().copied()),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let show: Value = serde_json::from_str(&out.stdout).unwrap();
    let o = show["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["output"] == name)
        .unwrap();
    ws.path(o["path"].as_str().unwrap())
}

fn spec(sft_adapter: &str) -> String {
    format!(
        r#"name: lora
seed: 5
stages:
  base: {{ kind: pretrain-load, with: {{ {TINY}, steps: 8 }} }}
  sft: {{ kind: sft, inputs: {{ model: base.model }}, with: {{ max_steps: 4, batch_size: 4, lr: 1.0e-2, device: cpu, adapter: {sft_adapter} }} }}
  label: {{ kind: annotate, with: {{ candidates_path: data/hhh/candidates.jsonl, max_prompts: 16, pairs_per_prompt: 2 }} }}
  dpo: {{ kind: dpo, inputs: {{ policy: sft.model, feedback: label.feedback }}, with: {{ max_steps: 3, batch_size: 4, lr: 1.0e-2, device: cpu, adapter: {{ r: 4, target_modules: [c_attn, c_fc] }} }} }}
  reward: {{ kind: reward-fit, inputs: {{ model: sft.model, feedback: label.feedback }}, with: {{ max_steps: 3, batch_size: 8, device: cpu, adapter: {{ r: 2, merge: true }} }} }}
  ppo:
    kind: ppo
    inputs: {{ policy: dpo.policy, reward_model: reward.reward_model }}
    with: {{ iterations: 2, max_prompts: 8, rollouts: 4, minibatch_size: 2, max_new_tokens: 6, lr: 1.0e-2, device: cpu, adapter: {{ r: 4 }} }}
"#
    )
}

/// The names of an adapter's tensors, and its config.
fn adapter(dir: &Path) -> (Vec<String>, Value) {
    let tensors = candle_core::safetensors::load(
        dir.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut names: Vec<String> = tensors.keys().cloned().collect();
    names.sort();
    let config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    (names, config)
}

#[test]
fn every_training_stage_trains_and_saves_a_peft_adapter() {
    let ws = Workspace::new();
    world(&ws);
    ws.write(
        "p.yaml",
        &spec("{ r: 4, alpha: 8, dropout: 0.1, target_modules: [all-linear] }"),
    );
    ws.ok(&["run", "p.yaml", "-q"]);

    // sft: only the adapter is saved, on every linear layer, PEFT's names; the base is
    // referred to by its place in the store, relative to the adapter's.
    let sft = output(&ws, "sft", "model");
    assert!(!sft.join("model.safetensors").exists());
    let (names, config) = adapter(&sft);
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("base_model.model.transformer.h.0.")
                && (n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight")))
    );
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["c_attn", "c_fc", "c_proj"])
    );
    assert_eq!(config["fan_in_fan_out"], true);
    assert_eq!(config["lora_dropout"], 0.1);
    let reference = config["base_model_name_or_path"].as_str().unwrap();
    assert!(reference.starts_with("../../"), "{reference}");
    assert_eq!(
        sft.join(reference).canonicalize().unwrap(),
        output(&ws, "base", "model").canonicalize().unwrap()
    );
    // The adapter learned something: B is no longer zero.
    let tensors = candle_core::safetensors::load(
        sft.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let b = &tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"];
    assert!(
        b.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );

    // dpo on the sft adapter: its own adapter, its base the sft adapter.
    let dpo = output(&ws, "dpo", "policy");
    let (names, config) = adapter(&dpo);
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(
        dpo.join(config["base_model_name_or_path"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        sft.canonicalize().unwrap()
    );

    // reward-fit: the adapter with the head as PEFT's modules_to_save, and (merge) the
    // merged sequence classifier beside it.
    let reward = output(&ws, "reward", "reward_model");
    let (names, config) = adapter(&reward);
    assert!(
        names.contains(&"base_model.model.score.weight".to_string()),
        "{names:?}"
    );
    assert_eq!(config["task_type"], "SEQ_CLS");
    assert_eq!(config["modules_to_save"], serde_json::json!(["score"]));
    assert!(reward.join("model.safetensors").is_file() && reward.join("config.json").is_file());

    // ppo: the adapter alone (no value head), PEFT's default targets for GPT-2.
    let ppo = output(&ws, "ppo", "policy");
    let (names, config) = adapter(&ppo);
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(config["target_modules"], serde_json::json!(["c_attn"]));
    // The chain loads: base, sft, dpo and ppo adapters merged.
    let loaded = hone::model::Trainable::load(&ppo, &candle_core::Device::Cpu).unwrap();
    assert_eq!(loaded.config.context_len(), 64);

    // Deterministic, dropout included.
    let lock = ws.read("p.lock");
    ws.ok(&["run", "p.yaml", "-q", "--force-all"]);
    assert_eq!(ws.read("p.lock"), lock);
}

#[test]
fn adapter_settings_a_stage_cannot_use_are_spec_errors() {
    let ws = Workspace::new();
    world(&ws);
    // Dropout in dpo and ppo; an unknown key; a head-only reward fit.
    for (stage, with, word) in [
        ("dpo", "adapter: { dropout: 0.1 }", "dropout"),
        ("sft", "adapter: { rank: 4 }", "rank"),
        ("sft", "adapter: { r: 0 }", "r"),
        ("reward", "train: head, adapter: {}", "train: head"),
    ] {
        let (kind, inputs) = match stage {
            "dpo" => ("dpo", "{ policy: base.model, feedback: label.feedback }"),
            "sft" => ("sft", "{ model: base.model }"),
            _ => (
                "reward-fit",
                "{ model: base.model, feedback: label.feedback }",
            ),
        };
        ws.write(
            "p.yaml",
            &format!(
                r#"name: bad
stages:
  base: {{ kind: pretrain-load, with: {{ {TINY}, steps: 2 }} }}
  label: {{ kind: annotate, with: {{ candidates_path: data/hhh/candidates.jsonl, max_prompts: 4 }} }}
  {stage}: {{ kind: {kind}, inputs: {inputs}, with: {{ device: cpu, {with} }} }}
"#
            ),
        );
        let out = ws.hone(&["validate", "p.yaml"]);
        assert_eq!(out.code, 2, "{stage} {with}: {}", out.stderr);
        assert!(out.stderr.contains(word), "{with}: {}", out.stderr);
    }
    // A target that is no layer of the model: the stage fails naming it, exit 1.
    ws.write(
        "p.yaml",
        &format!(
            r#"name: bad
stages:
  base: {{ kind: pretrain-load, with: {{ {TINY}, steps: 2 }} }}
  sft: {{ kind: sft, inputs: {{ model: base.model }}, with: {{ max_steps: 1, device: cpu, adapter: {{ target_modules: [q_proj] }} }} }}
"#
        ),
    );
    let out = ws.hone(&["run", "p.yaml", "-q"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stdout.contains("`q_proj`") && out.stdout.contains("c_attn"),
        "stderr: {}\nstdout: {}",
        out.stderr,
        out.stdout
    );
}

/// pipelines/examples/hf_lora.yaml, shortened by overrides, runs end to end on the
/// example model in a Hugging Face cache seeded as README says; every training stage
/// leaves a PEFT adapter, and a second run is all cached.
#[test]
fn the_hf_lora_example_runs_on_a_model_from_the_hugging_face_cache() {
    let ws = Workspace::new();
    world(&ws);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let hub = crate::support::seeded_hf_cache();
    let env = [("HF_HUB_CACHE", hub.path())];
    ws.write(
        "p.yaml",
        &std::fs::read_to_string(repo.join("pipelines/examples/hf_lora.yaml")).unwrap(),
    );
    let shorter = [
        "sft.with.max_steps=4",
        "generate.with.max_prompts=6",
        "generate.with.max_new_tokens=8",
        "pool_label.with.max_prompts=12",
        "reward.with.max_steps=3",
        "ppo.with.iterations=1",
        "ppo.with.rollouts=8",
        "ppo.with.max_new_tokens=8",
        "dpo.with.max_steps=3",
        "evaluate.with.max_prompts=4",
        "evaluate.with.max_new_tokens=8",
    ];
    let run = || {
        let mut args = vec!["run", "p.yaml", "--json"];
        for s in &shorter {
            args.extend(["-S", s]);
        }
        crate::support::Output::of(ws.command(&args).envs(env.iter().copied()))
    };
    let out = run();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let stages = [
        "base",
        "sft",
        "generate",
        "label",
        "pool_label",
        "reward",
        "ppo",
        "dpo",
        "evaluate",
    ];
    assert_eq!(out.with_status("ran").len(), stages.len(), "{}", out.stdout);
    let lock = ws.read("p.lock");
    assert!(lock.contains("hf:hone-examples/qwen2-chat-tiny@"), "{lock}");
    for (stage, name) in [
        ("sft", "model"),
        ("reward", "reward_model"),
        ("ppo", "policy"),
        ("dpo", "policy"),
    ] {
        let dir = output_in(&ws, stage, name, &env);
        assert!(
            !dir.join("model.safetensors").exists(),
            "{stage} saved only its adapter"
        );
        let (names, config) = adapter(&dir);
        assert!(
            names.iter().all(|n| n.starts_with("base_model.model.")),
            "{names:?}"
        );
        let base = config["base_model_name_or_path"].as_str().unwrap();
        // The base is the model before (itself an adapter, but for sft's).
        let base = dir.join(base);
        assert!(
            base.join("config.json").exists() || base.join("adapter_config.json").exists(),
            "{stage}: {}",
            base.display()
        );
    }
    // The model's chat template formatted the prompts, and travelled with the adapters.
    assert!(
        output_in(&ws, "ppo", "policy", &env)
            .join("chat_template.jinja")
            .exists()
    );
    let again = run();
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.with_status("cached").len(), stages.len());
}
