//! `aggregate`: many runs' summaries become mean ± 2 SE per series and x, a chart, and the
//! labels each series needs to reach the baseline's final level.

use serde_json::Value;

use crate::feedback::rows;
use crate::support::Workspace;

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
fn runs_become_curves_with_standard_errors_and_savings() {
    let ws = Workspace::new();
    // y = budget/100 for `fast` (+ seed/100), budget/200 for `slow` (+ seed/100).
    ws.write(
        "p.yaml",
        r#"name: agg
stages:
  sweep:
    matrix: { method: [fast, slow], seed: [1, 2, 3], budget: [100, 200] }
    stages:
      run:
        kind: command
        with:
          cmd: >-
            mkdir -p ${outputs.metrics} &&
            awk 'BEGIN { d = ("${item.method}" == "fast") ? 100 : 200;
            printf "{\"tags\": {\"method\": \"${item.method}\", \"budget\": ${item.budget}}, \"acc\": %.4f}\n", ${item.budget} / d + ${item.seed} / 100 }'
            > ${outputs.metrics}/summary.json
          outputs: { metrics: metrics }
  curves:
    kind: aggregate
    inputs: { runs: run@*.metrics }
    with: { x: tags.budget, y: acc, series: tags.method, baseline: slow, title: "a <test>" }
"#,
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    let table = rows(&output(&ws, "curves", "table"));
    assert_eq!(table.len(), 4, "{table:?}");
    let fast_200 = table
        .iter()
        .find(|r| r["series"] == "fast" && r["x"] == 200.0)
        .unwrap();
    // Seeds add 0.01, 0.02, 0.03: mean 2.02, sample sd 0.01, SE 0.01/sqrt(3).
    assert!((fast_200["mean"].as_f64().unwrap() - 2.02).abs() < 1e-9);
    assert!((fast_200["se"].as_f64().unwrap() - 0.01 / 3f64.sqrt()).abs() < 1e-9);
    assert_eq!(fast_200["runs"], 3);
    let report = output(&ws, "curves", "report");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("summary.json")).unwrap())
            .unwrap();
    // slow's final mean is 1.02; fast (1.02 at 100) reaches it at 100: a 50% saving.
    let fast = summary["reach"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["series"] == "fast")
        .unwrap();
    assert_eq!(fast["x"], 100.0);
    assert!((fast["saving"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    let svg = std::fs::read_to_string(report.join("plot.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert!(svg.contains("a &lt;test&gt;"));
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("<svg") && !html.contains("<script"));
    assert!(
        std::fs::read_to_string(report.join("table.md"))
            .unwrap()
            .contains("| fast | 200 | 3 | 2.020 ± 0.012 |")
    );
    // Every row of each Markdown table has as many cells as its header.
    let table = std::fs::read_to_string(report.join("table.md")).unwrap();
    for block in table.split("\n\n") {
        let cells: Vec<usize> = block
            .lines()
            .filter(|l| l.starts_with('|'))
            .map(|l| l.matches('|').count())
            .collect();
        assert!(cells.windows(2).all(|w| w[0] == w[1]), "{block}");
    }
    assert!(table.contains("| fast | 1.020 | 100 | 50% |"), "{table}");

    // A run without the value says which file and which key.
    ws.write(
        "p.yaml",
        &ws.read("p.yaml").replace("y: acc", "y: accuracy"),
    );
    let out = ws.hone(&["run", "p.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("summary.json` has no `accuracy`"),
        "{}",
        out.stdout
    );
}

#[test]
fn runs_with_per_prompt_values_are_clustered_by_run_and_prompt() {
    let ws = Workspace::new();
    // Two runs answer the same three prompts: run 1 scores 1, 2, 6 and run 2 scores
    // 3, 2, 4. Both means are 3, so the spread over runs alone is 0; clustered by run
    // and prompt the variance is 0 + 1 - 8/15 = 7/15 (`report`'s unit test by hand).
    ws.write(
        "p.yaml",
        r#"name: agg
stages:
  sweep:
    matrix: { seed: [1, 2] }
    stages:
      run:
        kind: command
        with:
          cmd: >-
            mkdir -p ${outputs.metrics} &&
            echo '{"tags": {"n": 1}, "policies": {"a": {"score": {"mean": 3.0}}}}' > ${outputs.metrics}/summary.json &&
            if [ ${item.seed} = 1 ]; then v='{"p": 1, "q": 2, "r": 6}'; else v='{"p": 3, "q": 2, "r": 4}'; fi &&
            echo "{\"policies\": {\"a\": {\"score\": {\"mean\": $v}}}}" > ${outputs.metrics}/clusters.json
          outputs: { metrics: metrics }
  curves:
    kind: aggregate
    inputs: { runs: run@*.metrics }
    with: { x: tags.n, y: policies.a.score.mean }
"#,
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    let table = rows(&output(&ws, "curves", "table"));
    assert_eq!(table.len(), 1, "{table:?}");
    assert_eq!(table[0]["mean"], 3.0);
    assert_eq!(table[0]["prompts"], 3);
    let se = table[0]["se"].as_f64().unwrap();
    assert!((se * se - 7.0 / 15.0).abs() < 1e-12, "{se}");
    let report = output(&ws, "curves", "report");
    let md = std::fs::read_to_string(report.join("table.md")).unwrap();
    assert!(md.contains("| 1 | 2 × 3 | 3.000 ± 1.366 |"), "{md}");

    // A key that clusters.json does not have falls back to the spread over the runs.
    ws.write(
        "p.yaml",
        &ws.read("p.yaml")
            .replace("y: policies.a.score.mean", "y: tags.n"),
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    let table = rows(&output(&ws, "curves", "table"));
    assert_eq!(table[0]["prompts"], Value::Null);
    assert_eq!(table[0]["se"], 0.0);

    // A broken clusters.json is an error naming it, not a silent fallback.
    ws.write(
        "p.yaml",
        &ws.read("p.yaml")
            .replace("y: tags.n", "y: policies.a.score.mean")
            .replace("\"p\": 3, ", "\"p\": \"x\", "),
    );
    let out = ws.hone(&["run", "p.yaml"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("clusters.json`: `policies.a.score.mean.p` is"),
        "{}",
        out.stdout
    );
}
