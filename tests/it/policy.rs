//! The policy stages end to end on tiny settings: PPO and DPO from an SFT-like policy,
//! `evaluate` comparing them, determinism, and a killed PPO resuming.

use std::path::Path;

use serde_json::Value;

use crate::feedback::rows;
use crate::support::Workspace;

const TINY: &str = "source: builtin, vocab_size: 300, d_model: 32, n_layers: 1, n_heads: 2, context: 64, batch_size: 4, device: cpu";

fn world(ws: &Workspace) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/hhh");
    for name in [
        "facts.jsonl",
        "corpus.jsonl",
        "prompts.jsonl",
        "eval_prompts.jsonl",
        "candidates.jsonl",
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

fn spec(ppo_extra: &str) -> String {
    format!(
        r#"name: loop
seed: 3
stages:
  base: {{ kind: pretrain-load, with: {{ {TINY}, steps: 8 }} }}
  label: {{ kind: annotate, with: {{ candidates_path: data/hhh/candidates.jsonl, max_prompts: 24, pairs_per_prompt: 2 }} }}
  reward: {{ kind: reward-fit, inputs: {{ model: base.model, feedback: label.feedback }}, with: {{ epochs: 3, batch_size: 8, device: cpu }} }}
  ppo:
    kind: ppo
    inputs: {{ policy: base.model, reward_model: reward.reward_model }}
    with: {{ max_prompts: 20, rollouts: 4, minibatch_size: 2, max_new_tokens: 8, lr: 1e-3, device: cpu{ppo_extra} }}
  dpo: {{ kind: dpo, inputs: {{ policy: base.model, feedback: label.feedback }}, with: {{ max_steps: 3, batch_size: 4, device: cpu }} }}
  evaluate:
    kind: evaluate
    inputs: {{ base: base.model, ppo: ppo.policy, dpo: dpo.policy, reward_model: reward.reward_model, histories: [ppo.metrics, dpo.metrics] }}
    with: {{ policies: [base, ppo, dpo], max_prompts: 6, max_new_tokens: 8, device: cpu }}
"#
    )
}

#[test]
fn ppo_dpo_and_evaluate_close_the_loop() {
    let ws = Workspace::new();
    world(&ws);
    ws.write(
        "p.yaml",
        &spec(", iterations: 3, credit: abc, kl_estimator: k3"),
    );
    ws.ok(&["run", "p.yaml", "-q"]);

    // PPO: one history row per iteration; the saved policy has no value head and is a
    // causal LM again; it moved away from the reference.
    let history = rows(&output(&ws, "ppo", "metrics").join("history.parquet"));
    assert_eq!(history.len(), 3);
    assert!(
        history.iter().all(|r| r["kl"].as_f64().unwrap() >= 0.0),
        "k3 is never negative"
    );
    assert!(
        history[1..].iter().any(|r| r["kl"].as_f64().unwrap() > 0.0),
        "the policy moved: {history:?}"
    );
    let policy = output(&ws, "ppo", "policy");
    let tensors =
        candle_core::safetensors::load(policy.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(!tensors.keys().any(|k| k.starts_with("hone_value.")));
    assert!(policy.join("tokenizer.json").is_file() && policy.join("config.json").is_file());

    // DPO: the reference log-probabilities are an artifact, one row per pair.
    let pairs = rows(&output(&ws, "label", "feedback").join("comparisons.parquet")).len();
    let reference = rows(&output(&ws, "dpo", "reference_logprobs"));
    assert_eq!(reference.len(), pairs);
    assert!(
        reference
            .iter()
            .all(|r| r["chosen_logprob"].as_f64().unwrap() < 0.0)
    );

    // Evaluate: every policy scored; the baseline's KL to itself is 0 and it ties itself.
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(output(&ws, "evaluate", "metrics").join("summary.json")).unwrap(),
    )
    .unwrap();
    let base = &summary["policies"]["base"];
    assert!(base["kl"]["mean"].as_f64().unwrap().abs() < 1e-4, "{base}");
    assert_eq!(base["win_rate_oracle"], 0.5);
    for name in ["ppo", "dpo"] {
        let entry = &summary["policies"][name];
        for key in ["oracle_reward", "rm_score", "kl", "helpfulness"] {
            assert!(
                entry[key]["mean"].as_f64().unwrap().is_finite(),
                "{name}.{key}: {entry}"
            );
        }
        let w = entry["win_rate_oracle"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&w));
        // The paired difference against the baseline: every answer has its baseline
        // twin, so its mean is the difference of the means; its interval is clustered by
        // prompt like every other.
        let diff = entry["diff_oracle"]["mean"].as_f64().unwrap();
        let means = entry["oracle_reward"]["mean"].as_f64().unwrap()
            - base["oracle_reward"]["mean"].as_f64().unwrap();
        assert!((diff - means).abs() < 1e-9, "{diff} vs {means}");
        assert!(entry["diff_oracle"]["se"].as_f64().unwrap() >= 0.0);
        assert!(entry["win_rate_oracle_se"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(
        base["win_rate_oracle_se"], 0.0,
        "a tie with itself has no spread"
    );
    assert!(
        summary["standard_errors"]
            .as_str()
            .unwrap()
            .contains("by prompt")
    );
    let samples = rows(&output(&ws, "evaluate", "metrics").join("samples.parquet"));
    assert_eq!(samples.len(), 3 * 6);
    let html =
        std::fs::read_to_string(output(&ws, "evaluate", "report").join("index.html")).unwrap();
    assert!(
        html.contains("<svg") && html.contains("win rate") && html.contains("KL to the reference")
    );
    assert!(
        !html.contains("<script") && !html.contains("http://")
            || html.contains("http://www.w3.org/2000/svg")
    );

    // Deterministic: forcing the whole loop again writes the same lock.
    let lock = ws.read("p.lock");
    ws.ok(&[
        "run", "p.yaml", "-q", "--force", "ppo", "--force", "dpo", "--force", "evaluate",
    ]);
    assert_eq!(ws.read("p.lock"), lock);
}

#[test]
#[cfg(unix)]
fn a_killed_ppo_resumes_to_the_same_policy() {
    killed_ppo_resumes(", iterations: 12, checkpoint_every: 2");
}

#[test]
#[cfg(unix)]
fn a_killed_ppo_with_a_separate_critic_resumes_to_the_same_policy() {
    killed_ppo_resumes(
        ", iterations: 12, checkpoint_every: 2, critic: reward-model, critic_lr: 1e-3",
    );
}

#[cfg(unix)]
fn killed_ppo_resumes(extra: &str) {
    let spec = spec(extra);
    let straight = Workspace::new();
    world(&straight);
    straight.write("p.yaml", &spec);
    straight.ok(&["run", "p.yaml", "-q", "ppo"]);

    let killed = Workspace::new();
    world(&killed);
    killed.write("p.yaml", &spec);
    killed.ok(&["run", "p.yaml", "-q", "reward"]);
    let mut child = killed.spawn(&["run", "p.yaml", "-q", "ppo"]);
    let resume_dir = killed.path(".hone/resume");
    let mut found = false;
    for _ in 0..6000 {
        if let Ok(entries) = std::fs::read_dir(&resume_dir)
            && entries
                .flatten()
                .any(|e| e.path().join("checkpoint/state.json").is_file())
        {
            found = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(found, "no checkpoint was written");
    child.kill().unwrap();
    child.wait().unwrap();
    let out = killed.ok(&["run", "p.yaml", "-v", "ppo"]);
    assert!(
        out.stderr.contains("resumed from checkpoint"),
        "{}",
        out.stderr
    );
    assert_eq!(
        rows(&output(&killed, "ppo", "metrics").join("history.parquet")),
        rows(&output(&straight, "ppo", "metrics").join("history.parquet")),
    );
    assert_eq!(
        killed.read("p.lock"),
        straight.read("p.lock"),
        "a resumed PPO writes the same bytes"
    );
}

#[test]
fn metarm_adapt_spreads_the_policy_samples_or_passes_through() {
    let ws = Workspace::new();
    world(&ws);
    ws.write(
        "p.yaml",
        &format!(
            r#"name: meta
seed: 4
stages:
  base: {{ kind: pretrain-load, with: {{ {TINY}, steps: 8 }} }}
  label: {{ kind: annotate, with: {{ candidates_path: data/hhh/candidates.jsonl, max_prompts: 24, pairs_per_prompt: 2 }} }}
  reward: {{ kind: reward-fit, inputs: {{ model: base.model, feedback: label.feedback }}, with: {{ epochs: 2, batch_size: 8, device: cpu }} }}
  sample: {{ kind: generate, inputs: {{ model: base.model }}, with: {{ max_prompts: 6, n_samples: 3, max_new_tokens: 8, device: cpu }} }}
  judge: {{ kind: annotate, inputs: {{ candidates: sample.candidates }} }}
  adapt:
    kind: metarm-adapt
    inputs: {{ reward_model: reward.reward_model, feedback: label.feedback, candidates: sample.candidates, oracle: judge.oracle }}
    with: {{ steps: 4, batch_size: 4, meta_prompts: 3, k: 3, eta: 1.0, lr: 1e-3, order: second, device: cpu }}
  same:
    kind: metarm-adapt
    inputs: {{ reward_model: reward.reward_model, feedback: label.feedback, candidates: sample.candidates }}
    with: {{ steps: 0, device: cpu }}
"#
        ),
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    let weights = |stage: &str| {
        candle_core::safetensors::load(
            output(&ws, stage, "reward_model").join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()["score.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let summary = |stage: &str| -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(output(&ws, stage, "metrics").join("summary.json")).unwrap(),
        )
        .unwrap()
    };

    // Four meta steps: one row each; the inner step raised J on its batch; the model moved.
    let history = rows(&output(&ws, "adapt", "metrics").join("history.parquet"));
    assert_eq!(history.len(), 4);
    let mean = |key: &str| {
        history
            .iter()
            .map(|r| r[key].as_f64().unwrap())
            .sum::<f64>()
            / 4.0
    };
    assert!(
        mean("difference_loss_after") > mean("difference_loss"),
        "{history:?}"
    );
    assert_ne!(weights("adapt"), weights("reward"));
    let s = summary("adapt");
    for key in ["oracle_pair_accuracy", "oracle_spearman"] {
        assert!(
            s.get(key).is_some() && s["before"].get(key).is_some(),
            "{s}"
        );
    }
    assert!(s["policy_samples"]["pairs"].as_u64().unwrap() > 0, "{s}");
    let hone: Value = serde_json::from_str(
        &std::fs::read_to_string(output(&ws, "adapt", "reward_model").join("hone.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(hone["hone"]["stage"], "metarm-adapt");

    // `steps: 0`: the same weights, no history, the same metrics before and after.
    assert_eq!(weights("same"), weights("reward"));
    assert!(rows(&output(&ws, "same", "metrics").join("history.parquet")).is_empty());
    let s = summary("same");
    assert_eq!(s["policy_samples"], s["before"]["policy_samples"]);
    assert_eq!(s["held_out"], s["before"]["held_out"]);
}

#[test]
fn a_separate_critic_needs_the_policys_tokenizer() {
    let ws = Workspace::new();
    world(&ws);
    let tiny_other = TINY.replace("vocab_size: 300", "vocab_size: 320");
    ws.write(
        "p.yaml",
        &format!(
            r#"name: critic
seed: 3
stages:
  base: {{ kind: pretrain-load, with: {{ {TINY}, steps: 2 }} }}
  other: {{ kind: pretrain-load, with: {{ {tiny_other}, steps: 2 }} }}
  label: {{ kind: annotate, with: {{ candidates_path: data/hhh/candidates.jsonl, max_prompts: 8 }} }}
  reward: {{ kind: reward-fit, inputs: {{ model: other.model, feedback: label.feedback }}, with: {{ max_steps: 1, device: cpu }} }}
  ppo:
    kind: ppo
    inputs: {{ policy: base.model, reward_model: reward.reward_model }}
    with: {{ iterations: 1, rollouts: 2, max_new_tokens: 4, critic: reward-model, device: cpu }}
"#
        ),
    );
    let out = ws.hone(&["run", "p.yaml"]);
    assert_ne!(out.code, 0);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("has another tokenizer") && text.contains("critic: policy"),
        "{text}"
    );
}

#[test]
fn ppo_with_a_leave_one_out_baseline_trains_without_a_critic() {
    let ws = Workspace::new();
    world(&ws);
    ws.write(
        "p.yaml",
        &spec(", iterations: 3, samples_per_prompt: 2, baseline: leave-one-out"),
    );
    ws.ok(&["run", "p.yaml", "-q", "ppo"]);
    let history = rows(&output(&ws, "ppo", "metrics").join("history.parquet"));
    assert_eq!(history.len(), 3);
    assert!(
        history
            .iter()
            .all(|r| r["value_loss"].as_f64().unwrap() == 0.0),
        "no critic is trained: {history:?}"
    );
    assert!(
        history[1..]
            .iter()
            .any(|r| r["kl"].as_f64().unwrap() != 0.0),
        "the policy moved: {history:?}"
    );

    // Groups must fill the rollouts, and a leave-one-out baseline needs two answers a
    // prompt and no separate critic.
    for (extra, expected) in [
        (", samples_per_prompt: 3", "must divide `rollouts` (4)"),
        (
            ", samples_per_prompt: 0",
            "`samples_per_prompt` must be at least 1",
        ),
        (
            ", baseline: leave-one-out",
            "set `samples_per_prompt` to 2 or more",
        ),
        (
            ", samples_per_prompt: 2, baseline: leave-one-out, critic: reward-model",
            "never uses",
        ),
    ] {
        ws.write("p.yaml", &spec(extra));
        let out = ws.hone(&["validate", "p.yaml"]);
        assert_eq!(out.code, 2, "{extra}");
        assert!(out.stderr.contains(expected), "{extra}: {}", out.stderr);
    }
}
