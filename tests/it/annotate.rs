//! `annotate`: the simulated annotator's labels follow its parameters (checked against the
//! oracle over many draws), and the human-in-the-loop export reads back through
//! `feedback-ingest`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::feedback::rows;
use crate::support::Workspace;

fn world(ws: &Workspace) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/hhh");
    for name in ["facts.jsonl", "candidates.jsonl"] {
        ws.write(
            &format!("data/hhh/{name}"),
            &std::fs::read_to_string(data.join(name)).unwrap(),
        );
    }
}

fn outputs(ws: &Workspace, stage: &str) -> BTreeMap<String, PathBuf> {
    let show: Value =
        serde_json::from_str(&ws.ok(&["show", "p.yaml", stage, "--json"]).stdout).unwrap();
    show["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["output"].as_str().unwrap().to_string(),
                ws.path(o["path"].as_str().unwrap()),
            )
        })
        .collect()
}

/// Observed agreement of the annotator's choices with the oracle, and what Bradley-Terry
/// at `temperature` predicts for the same pairs, with the standard error of the observed
/// mean.
fn agreement(ws: &Workspace, temperature: f64) -> (f64, f64, f64, usize) {
    ws.write(
        "p.yaml",
        &format!("name: ann\nseed: 3\nstages:\n  label:\n    kind: annotate\n    with: {{ candidates_path: data/hhh/candidates.jsonl, pairs_per_prompt: 4, annotators: [{{ id: a, temperature: {temperature} }}] }}\n"),
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    let out = outputs(ws, "label");
    let reward: BTreeMap<(String, String), f64> = rows(&out["oracle"])
        .iter()
        .map(|r| {
            (
                (
                    r["prompt_id"].as_str().unwrap().to_string(),
                    r["response"].as_str().unwrap().to_string(),
                ),
                r["reward"].as_f64().unwrap(),
            )
        })
        .collect();
    let (mut agree, mut expected, mut n) = (0.0, 0.0, 0usize);
    for c in rows(&out["feedback"].join("comparisons.parquet")) {
        let id = c["prompt_id"].as_str().unwrap().to_string();
        let r_chosen = reward[&(id.clone(), c["chosen"].as_str().unwrap().to_string())];
        let r_rejected = reward[&(id, c["rejected"].as_str().unwrap().to_string())];
        let gap = (r_chosen - r_rejected).abs();
        if gap < 1e-12 {
            continue; // ties carry no ordering to agree with
        }
        n += 1;
        agree += f64::from(u8::from(r_chosen > r_rejected));
        expected += 1.0 / (1.0 + (-gap / temperature).exp());
    }
    let (observed, expected) = (agree / n as f64, expected / n as f64);
    let standard_error = (expected * (1.0 - expected) / n as f64).sqrt();
    (observed, expected, standard_error, n)
}

#[test]
fn pairwise_agreement_follows_the_temperature() {
    let ws = Workspace::new();
    world(&ws);
    let mut observed = Vec::new();
    for temperature in [0.1, 0.5, 2.0] {
        let (obs, exp, se, n) = agreement(&ws, temperature);
        assert!(n > 1000, "{n} untied pairs");
        eprintln!(
            "T={temperature}: agreement {obs:.4}, Bradley-Terry predicts {exp:.4} +- {se:.4} ({n} pairs)"
        );
        // Tolerance: 4 standard errors of the observed proportion (fixed seeds: the test
        // is deterministic; 4 SE leaves room should the random stream change).
        assert!(
            (obs - exp).abs() < 4.0 * se,
            "T={temperature}: observed {obs:.4}, expected {exp:.4} +- {se:.4} over {n} pairs"
        );
        observed.push(obs);
    }
    assert!(
        observed[0] > observed[1] && observed[1] > observed[2],
        "agreement falls as the temperature rises: {observed:?}"
    );
}

#[test]
fn flags_scores_and_rankings_from_several_annotators() {
    let ws = Workspace::new();
    world(&ws);
    ws.write(
        "p.yaml",
        r#"name: ann
seed: 5
stages:
  label:
    kind: annotate
    with:
      candidates_path: data/hhh/candidates.jsonl
      labels: [rankings, scores, flags]
      annotators:
        - { id: careful, temperature: 0.1, score_noise: 0.1, miss_rate: 0.05, false_alarm_rate: 0.0 }
        - { id: sloppy, temperature: 2.0, score_noise: 1.0, miss_rate: 0.4, false_alarm_rate: 0.1 }
      annotators_per_item: 2
"#,
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    let out = outputs(&ws, "label");
    let truth: BTreeMap<(String, String), Value> = rows(&out["oracle"])
        .into_iter()
        .map(|r| {
            (
                (
                    r["prompt_id"].as_str().unwrap().to_string(),
                    r["response"].as_str().unwrap().to_string(),
                ),
                r,
            )
        })
        .collect();
    // Misses and false alarms per annotator, against the oracle's flags.
    let mut counts: BTreeMap<(String, bool), (f64, f64)> = BTreeMap::new();
    for f in rows(&out["feedback"].join("flags.parquet")) {
        let t = &truth[&(
            f["prompt_id"].as_str().unwrap().to_string(),
            f["response"].as_str().unwrap().to_string(),
        )];
        let present = t[f["flag"].as_str().unwrap()].as_bool().unwrap();
        let entry = counts
            .entry((f["annotator"].as_str().unwrap().to_string(), present))
            .or_default();
        entry.0 += 1.0;
        entry.1 += f64::from(u8::from(f["value"].as_bool().unwrap() != present));
    }
    for (annotator, present, rate) in [
        ("careful", true, 0.05),
        ("careful", false, 0.0),
        ("sloppy", true, 0.4),
        ("sloppy", false, 0.1),
    ] {
        let (n, wrong) = counts[&(annotator.to_string(), present)];
        let observed = wrong / n;
        let se = (rate * (1.0 - rate) / n).sqrt().max(1e-9);
        assert!(
            (observed - rate).abs() <= 4.0 * se,
            "{annotator}, present={present}: error rate {observed:.4} vs {rate} (n={n})"
        );
    }
    // Scores: the careful annotator's 1-5 scores track the reward more closely.
    let scores = rows(&out["feedback"].join("scores.parquet"));
    let correlation = |who: &str| {
        let pairs: Vec<(f64, f64)> = scores
            .iter()
            .filter(|s| s["annotator"] == who)
            .map(|s| {
                (
                    s["score"].as_f64().unwrap(),
                    truth[&(
                        s["prompt_id"].as_str().unwrap().to_string(),
                        s["response"].as_str().unwrap().to_string(),
                    )]["reward"]
                        .as_f64()
                        .unwrap(),
                )
            })
            .collect();
        pearson(&pairs)
    };
    assert!(
        correlation("careful") > correlation("sloppy") + 0.05,
        "{} vs {}",
        correlation("careful"),
        correlation("sloppy")
    );
    let rankings = rows(&out["feedback"].join("rankings.parquet"));
    assert!(
        rankings
            .iter()
            .all(|r| r["responses"].as_array().unwrap().len() >= 2)
    );
    assert_eq!(
        rankings
            .iter()
            .filter(|r| r["annotator"] == "careful")
            .count(),
        rankings.len() / 2
    );
}

fn pearson(pairs: &[(f64, f64)]) -> f64 {
    let n = pairs.len() as f64;
    let (mx, my) = (
        pairs.iter().map(|p| p.0).sum::<f64>() / n,
        pairs.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = pairs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let vx: f64 = pairs.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let vy: f64 = pairs.iter().map(|p| (p.1 - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

#[test]
fn an_exported_batch_filled_by_people_reads_back() {
    let ws = Workspace::new();
    world(&ws);
    ws.write(
        "p.yaml",
        "name: hitl\nstages:\n  batch:\n    kind: annotate\n    with: { candidates_path: data/hhh/candidates.jsonl, mode: export, export_format: csv, max_prompts: 5, labels: [pairs, flags] }\n",
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    let batch = outputs(&ws, "batch")["batch"].clone();
    // A person labels the pairs (always `b`) and one flag, and leaves the other flags empty.
    let mut reader = csv::Reader::from_path(&batch).unwrap();
    let headers = reader.headers().unwrap().clone();
    let mut writer = csv::Writer::from_path(ws.path("data/filled.csv")).unwrap();
    writer.write_record(&headers).unwrap();
    let (mut pairs, mut flags, mut filled_flags) = (0, 0, 0);
    for record in reader.records() {
        let mut cells: Vec<String> = record.unwrap().iter().map(str::to_string).collect();
        match cells[0].as_str() {
            "comparison" => {
                pairs += 1;
                cells[5] = "b".into();
            }
            "flag" => {
                flags += 1;
                if filled_flags == 0 {
                    cells[10] = "true".into();
                    filled_flags += 1;
                }
            }
            other => panic!("unexpected row kind {other}"),
        }
        writer.write_record(&cells).unwrap();
    }
    writer.flush().unwrap();
    assert_eq!(pairs, 5);
    ws.write(
        "p.yaml",
        "name: hitl\nstages:\n  import: { kind: feedback-ingest, with: { path: data/filled.csv, format: hone } }\n",
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    let out = outputs(&ws, "import");
    let comparisons = rows(&out["feedback"].join("comparisons.parquet"));
    assert_eq!(comparisons.len(), 5);
    assert_eq!(rows(&out["feedback"].join("flags.parquet")).len(), 1);
    // The items nobody filled in are missing labels, counted, not bad rows: a batch
    // half done ingests without raising the reject fraction.
    assert!(rows(&out["rejects"]).is_empty());
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out["feedback"].join("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["missing_values"].as_u64(), Some(flags as u64 - 1));
    assert_eq!(summary["rejected"].as_u64(), Some(0));
}
