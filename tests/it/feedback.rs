//! `feedback-ingest` on fixtures in every format and container, valid and malformed: the
//! normalised tables, every reject reason, `on_bad_rows`, and a reader that is not hone.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::Workspace;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/feedback")
            .join(name),
    )
    .unwrap()
}

fn copy_fixture(ws: &Workspace, name: &str) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/feedback")
        .join(name);
    let to = ws.path(&format!("data/{name}"));
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap();
}

/// Runs one `feedback-ingest` stage on `data/NAME` and returns (feedback dir, rejects file).
fn ingest(ws: &Workspace, name: &str, format: &str, extra: &str) -> (PathBuf, PathBuf) {
    copy_fixture(ws, name);
    ws.write(
        "p.yaml",
        &format!("name: fb\nstages:\n  ingest:\n    kind: feedback-ingest\n    with: {{ path: data/{name}, format: {format}{extra} }}\n"),
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    let show: Value =
        serde_json::from_str(&ws.ok(&["show", "p.yaml", "ingest", "--json"]).stdout).unwrap();
    let path_of = |output: &str| {
        let o = show["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["output"] == output)
            .unwrap();
        ws.path(o["path"].as_str().unwrap())
    };
    (path_of("feedback"), path_of("rejects"))
}

/// Every row of a Parquet table as a JSON object, read with hone's reader.
pub fn rows(path: &Path) -> Vec<Value> {
    hone::artifact::table::read_rows(path)
        .unwrap()
        .into_iter()
        .map(Value::Object)
        .collect()
}

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

fn reasons(rejects: &Path) -> Vec<(u64, String)> {
    rows(rejects)
        .iter()
        .map(|r| {
            (
                r["source_row"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn hone_format_fills_all_four_tables() {
    let ws = Workspace::new();
    let (dir, rejects) = ingest(&ws, "hone.jsonl", "hone", "");
    let comparisons = rows(&dir.join("comparisons.parquet"));
    assert_eq!(comparisons.len(), 2);
    assert_eq!(comparisons[0]["chosen"], "The capital of Veloria is Marn.");
    assert_eq!(comparisons[0]["margin"], 1.5);
    assert_eq!(comparisons[0]["annotator"], "ann-1");
    assert_eq!(comparisons[0]["source_row"], 1);
    assert_eq!(
        comparisons[1]["source_row"], 6,
        "blank lines keep line numbers"
    );
    assert_eq!(comparisons[1]["margin"], Value::Null);
    assert_eq!(comparisons[0]["prompt_id"].as_str().unwrap().len(), 16);
    let rankings = rows(&dir.join("rankings.parquet"));
    assert_eq!(rankings[0]["responses"].as_array().unwrap().len(), 3);
    let scores = rows(&dir.join("scores.parquet"));
    assert_eq!(
        (scores[0]["aspect"].as_str(), scores[0]["score"].as_f64()),
        (Some("helpfulness"), Some(3.0))
    );
    let flags = rows(&dir.join("flags.parquet"));
    assert_eq!(
        (flags[0]["flag"].as_str(), flags[0]["value"].as_bool()),
        (Some("unsafe"), Some(true))
    );
    assert!(rows(&rejects).is_empty());
    let s = summary(&dir);
    assert_eq!(
        (
            s["rows_read"].as_u64(),
            s["comparisons"].as_u64(),
            s["rejected"].as_u64()
        ),
        (Some(5), Some(2), Some(0))
    );
}

#[test]
fn every_reject_reason_is_recorded_with_its_row() {
    let ws = Workspace::new();
    let (dir, rejects) = ingest(
        &ws,
        "hone_malformed.jsonl",
        "hone",
        ", max_reject_fraction: 1.0",
    );
    assert_eq!(
        reasons(&rejects),
        vec![
            (2, "duplicate".into()),
            (3, "identical_pair".into()),
            (4, "missing_field".into()),
            (5, "empty_text".into()),
            (6, "out_of_range".into()),
            (7, "not_a_number".into()),
            (8, "malformed".into()),
            (9, "malformed".into()),
            (10, "unknown_kind".into()),
            (11, "too_few_responses".into()),
            (12, "wrong_type".into()),
            (14, "invalid_utf8".into()),
        ]
    );
    let s = summary(&dir);
    assert_eq!(
        (
            s["rows_read"].as_u64(),
            s["comparisons"].as_u64(),
            s["rejected"].as_u64()
        ),
        (Some(14), Some(2), Some(12))
    );
    assert_eq!(s["rejects_by_reason"]["malformed"], 2);
    let first = &rows(&rejects)[0];
    assert!(first["raw"].as_str().unwrap().contains("\"Q1\""), "{first}");
    assert!(
        first["detail"].as_str().unwrap().contains("earlier row"),
        "{first}"
    );
}

#[test]
fn too_many_rejects_or_on_bad_rows_fail_stop_the_stage() {
    let ws = Workspace::new();
    copy_fixture(&ws, "hone_malformed.jsonl");
    ws.write("p.yaml", "name: fb\nstages:\n  ingest: { kind: feedback-ingest, with: { path: data/hone_malformed.jsonl, format: hone } }\n");
    let out = ws.hone(&["run", "p.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("12 of 14 rows rejected (85.7%), more than max_reject_fraction 0.1"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("row 2: duplicate"), "{}", out.stdout);
    ws.write("p.yaml", "name: fb\nstages:\n  ingest: { kind: feedback-ingest, with: { path: data/hone_malformed.jsonl, format: hone, on_bad_rows: fail } }\n");
    let out = ws.hone(&["run", "p.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains(
            "row 2: duplicate: the same labels appear on an earlier row (on_bad_rows: fail)"
        ),
        "{}",
        out.stdout
    );
}

#[test]
fn trl_preference_explicit_implicit_and_conversational() {
    let ws = Workspace::new();
    let (dir, _) = ingest(&ws, "trl_preference.jsonl", "trl-preference", "");
    let c = rows(&dir.join("comparisons.parquet"));
    let triples: Vec<(String, String, String)> = c
        .iter()
        .map(|r| {
            (
                r["prompt"].as_str().unwrap().into(),
                r["chosen"].as_str().unwrap().into(),
                r["rejected"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        triples[0],
        (
            "What colour is the sky?".into(),
            "Blue, on a clear day.".into(),
            "Green.".into()
        )
    );
    assert_eq!(
        triples[1],
        (
            "Question: name a fruit. Answer:".into(),
            "apple".into(),
            "rock".into()
        )
    );
    assert_eq!(
        triples[2],
        (
            "Hi there".into(),
            "Hello! How can I help?".into(),
            "Leave me alone.".into()
        )
    );
    assert_eq!(triples[3], ("2+2?".into(), "4".into(), "5".into()));
    assert_eq!(c[4]["margin"], 0.5);
}

#[test]
fn trl_unpaired_csv_gives_binary_labels_and_rejects_bad_cells() {
    let ws = Workspace::new();
    let (dir, _) = ingest(&ws, "trl_unpaired.csv", "trl-unpaired", "");
    let scores = rows(&dir.join("scores.parquet"));
    let labels: Vec<(String, f64)> = scores
        .iter()
        .map(|s| {
            (
                s["response"].as_str().unwrap().into(),
                s["score"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        labels,
        vec![("4".into(), 1.0), ("5".into(), 0.0), ("Hi!".into(), 1.0)]
    );
    assert_eq!(scores[2]["prompt"], "Say hi, please");
    assert_eq!(scores[0]["aspect"], "label");
    let ws = Workspace::new();
    let (_, rejects) = ingest(
        &ws,
        "trl_unpaired_malformed.csv",
        "trl-unpaired",
        ", max_reject_fraction: 1.0",
    );
    assert_eq!(
        reasons(&rejects),
        vec![
            (2, "wrong_type".into()),
            (3, "missing_field".into()),
            (4, "malformed".into())
        ]
    );
}

#[test]
fn hh_rlhf_transcripts_and_their_rejects() {
    let ws = Workspace::new();
    let (dir, rejects) = ingest(
        &ws,
        "hh_rlhf.jsonl",
        "hh-rlhf",
        ", max_reject_fraction: 0.5",
    );
    let c = rows(&dir.join("comparisons.parquet"));
    assert_eq!(c.len(), 2);
    assert_eq!(c[0]["prompt"], "Human: How do I bake bread?\n\nAssistant:");
    assert_eq!(c[0]["rejected"], "Buy it.");
    assert_eq!(
        reasons(&rejects),
        vec![(3, "prompt_mismatch".into()), (4, "missing_field".into())]
    );
}

#[test]
fn ultrafeedback_ratings_become_scores() {
    let ws = Workspace::new();
    let (dir, rejects) = ingest(
        &ws,
        "ultrafeedback.jsonl",
        "ultrafeedback",
        ", max_reject_fraction: 1.0",
    );
    let scores = rows(&dir.join("scores.parquet"));
    assert_eq!(
        scores.len(),
        6,
        "per completion: helpfulness, honesty (truthfulness is N/A), overall"
    );
    assert_eq!(scores[2]["aspect"], "overall");
    assert_eq!(
        (
            scores[2]["scale_min"].as_f64(),
            scores[2]["scale_max"].as_f64()
        ),
        (Some(1.0), Some(10.0))
    );
    assert_eq!(
        reasons(&rejects),
        vec![(2, "too_few_responses".into()), (3, "out_of_range".into())]
    );
}

#[test]
fn csv_cells_holding_json_lists_and_nan_margins() {
    let ws = Workspace::new();
    let (dir, rejects) = ingest(&ws, "hone.csv", "hone", ", max_reject_fraction: 1.0");
    assert_eq!(rows(&dir.join("comparisons.parquet"))[0]["margin"], 2.0);
    assert_eq!(
        rows(&dir.join("rankings.parquet"))[0]["responses"],
        serde_json::json!(["Veloria trades tea.", "Veloria is a place."])
    );
    // A NaN margin is a missing margin: the comparison is kept without one.
    let comparisons = rows(&dir.join("comparisons.parquet"));
    assert_eq!(comparisons.len(), 2);
    assert!(comparisons[1]["margin"].is_null(), "{:?}", comparisons[1]);
    assert!(reasons(&rejects).is_empty());
}

#[test]
fn parquet_input_written_by_pyarrow() {
    let ws = Workspace::new();
    let (dir, rejects) = ingest(
        &ws,
        "trl_preference.parquet",
        "trl-preference",
        ", max_reject_fraction: 0.5",
    );
    let c = rows(&dir.join("comparisons.parquet"));
    assert_eq!(c.len(), 3);
    assert_eq!(
        c[2]["prompt"], "Hi there",
        "a list<struct> conversation column"
    );
    assert_eq!(reasons(&rejects), vec![(4, "identical_pair".into())]);
    // A damaged Parquet file is a failed stage with a clear message, not a crash.
    ws.write("data/broken.parquet", "PAR1 not really parquet");
    ws.write("p.yaml", "name: fb\nstages:\n  ingest: { kind: feedback-ingest, with: { path: data/broken.parquet, format: hone } }\n");
    let out = ws.hone(&["run", "p.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("opening `") && out.stdout.contains("broken.parquet"),
        "{}",
        out.stdout
    );
}

#[test]
fn spec_errors_of_feedback_ingest() {
    let ws = Workspace::new();
    ws.write("p.yaml", "name: fb\nstages:\n  a: { kind: feedback-ingest, with: { path: data/x.txt, format: trl } }\n  b: { kind: feedback-ingest, with: { format: hone } }\n");
    let out = ws.hone(&["validate", "p.yaml"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("unknown variant `trl`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("missing required key `path` (or bind a `file` input)"),
        "{}",
        out.stderr
    );
    ws.write("p.yaml", "name: fb\nstages:\n  a: { kind: feedback-ingest, with: { path: data/x.txt, format: hone } }\n");
    let out = ws.hone(&["validate", "p.yaml"]);
    assert!(
        out.stderr
            .contains("cannot tell the file type of `data/x.txt`"),
        "{}",
        out.stderr
    );
    let _ = fixture("hone.jsonl");
}

#[test]
fn outputs_open_in_pyarrow() {
    // The tables must open in a reader that is not hone. .ci/run installs pyarrow; a
    // developer without it is told how to get it, and CI (CI=true) fails without it.
    let has_pyarrow = std::process::Command::new("python3")
        .args(["-c", "import pyarrow"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_pyarrow {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have pyarrow (see .ci/run)"
        );
        eprintln!("skipping: pyarrow is not installed (python3 -m pip install pyarrow)");
        return;
    }
    let ws = Workspace::new();
    let (dir, rejects) = ingest(
        &ws,
        "hone_malformed.jsonl",
        "hone",
        ", max_reject_fraction: 1.0",
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_tables.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&dir)
        .arg(&rejects)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["comparisons"]["rows"], 2);
    assert_eq!(
        report["comparisons"]["metadata"]["hone.table"],
        "comparisons"
    );
    assert_eq!(report["comparisons"]["metadata"]["hone.stage"], "ingest");
    assert_eq!(report["rejects"]["rows"], 12);
    assert_eq!(
        report["rankings"]["columns"],
        serde_json::json!([
            "prompt_id",
            "prompt",
            "responses",
            "annotator",
            "source_row"
        ])
    );
}

/// Real-world files: JSON Lines written by Python (`NaN`, `Infinity` tokens, CRLF line
/// ends) with UltraFeedback's "N/A" and an out-of-range rating; every valid rating is
/// kept, every dropped one is a row of the rejects table, missing ones are counted.
#[test]
fn python_jsonl_with_nan_and_na_keeps_every_valid_rating() {
    let ws = Workspace::new();
    let text = concat!(
        r#"{"instruction": "Explain tides.", "completions": [{"response": "The moon pulls the sea.", "overall_score": NaN, "annotations": {"helpfulness": {"Rating": "4"}, "honesty": {"Rating": "N/A"}, "truthfulness": {"Rating": "7"}}}, {"response": "Wind.", "overall_score": 2.0, "annotations": {"helpfulness": {"Rating": "1"}}}]}"#,
        "\r\n",
        r#"{"instruction": "Say hi.", "completions": [{"response": "hi", "overall_score": Infinity, "annotations": {"helpfulness": {"Rating": "5"}}}]}"#,
        "\r\n",
    );
    ws.write("data/uf.jsonl", text);
    ws.write(
        "p.yaml",
        "name: fb\nstages:\n  ingest:\n    kind: feedback-ingest\n    with: { path: data/uf.jsonl, format: ultrafeedback }\n",
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    let show: Value =
        serde_json::from_str(&ws.ok(&["show", "p.yaml", "ingest", "--json"]).stdout).unwrap();
    let path_of = |output: &str| {
        let o = show["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["output"] == output)
            .unwrap();
        ws.path(o["path"].as_str().unwrap())
    };
    let dir = path_of("feedback");
    let scores = rows(&dir.join("scores.parquet"));
    let kept: Vec<(u64, String)> = scores
        .iter()
        .map(|s| {
            (
                s["source_row"].as_u64().unwrap(),
                s["aspect"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        kept,
        [
            (1, "helpfulness".to_string()),
            (1, "helpfulness".into()),
            (1, "overall".into()),
            (2, "helpfulness".into())
        ]
    );
    let s = summary(&dir);
    assert_eq!(
        (
            s["rows_read"].as_u64(),
            s["rejected"].as_u64(),
            s["dropped_values"].as_u64(),
            s["missing_values"].as_u64()
        ),
        (Some(2), Some(0), Some(1), Some(3)),
        "{s}"
    );
    assert_eq!(
        reasons(&path_of("rejects")),
        vec![(1, "out_of_range".into())]
    );
}

/// CSV as spreadsheets write it: a byte-order mark, CRLF line ends and a quoted cell
/// over several lines; row numbers in rejects are the lines where the record starts.
#[test]
fn csv_with_a_bom_crlf_and_multiline_cells() {
    let ws = Workspace::new();
    let text = "\u{feff}kind,prompt,response,score\r\nscore,\"Two\r\nlines\",\"fine, \"\"quoted\"\"\",4\r\nscore,p,r,N/A\r\nscore,p,r,9\r\n";
    ws.write("data/s.csv", text);
    ws.write(
        "p.yaml",
        "name: fb\nstages:\n  ingest:\n    kind: feedback-ingest\n    with: { path: data/s.csv, format: hone, max_reject_fraction: 1.0 }\n",
    );
    ws.ok(&["run", "p.yaml", "-q"]);
    let show: Value =
        serde_json::from_str(&ws.ok(&["show", "p.yaml", "ingest", "--json"]).stdout).unwrap();
    let path_of = |output: &str| {
        let o = show["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["output"] == output)
            .unwrap();
        ws.path(o["path"].as_str().unwrap())
    };
    let dir = path_of("feedback");
    let scores = rows(&dir.join("scores.parquet"));
    assert_eq!(scores.len(), 1);
    assert_eq!(scores[0]["prompt"], "Two\r\nlines");
    assert_eq!(scores[0]["response"], "fine, \"quoted\"");
    let s = summary(&dir);
    assert_eq!(s["missing_values"].as_u64(), Some(1), "{s}");
    assert_eq!(
        reasons(&path_of("rejects")),
        vec![(5, "out_of_range".into())]
    );
}

/// Found by fuzzing (`fuzz/`, feedback_rows): a Parquet file with inconsistent column
/// metadata made the parquet crate panic. It is a failed stage with a message now, and
/// nothing is printed as a crash.
#[test]
fn a_damaged_parquet_file_fails_the_stage_without_a_panic() {
    let ws = Workspace::new();
    copy_fixture(&ws, "damaged.parquet");
    ws.write(
        "p.yaml",
        "name: fb\nstages:\n  ingest: { kind: feedback-ingest, with: { path: data/damaged.parquet, format: trl-preference } }\n",
    );
    let out = ws.hone(&["run", "p.yaml"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("damaged"), "{}", out.stdout);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

/// Found by fuzzing: a 2 KB Parquet file with a damaged page header made the parquet
/// reader issue millions of tiny reads of the file (33 s before it gave up). Read from
/// memory it fails at once; either way it is a reject with a reason, never a crash.
#[test]
fn a_parquet_file_with_a_damaged_page_is_rejected() {
    let ws = Workspace::new();
    copy_fixture(&ws, "slow.parquet");
    ws.write(
        "p.yaml",
        "name: fb\nstages:\n  ingest: { kind: feedback-ingest, with: { path: data/slow.parquet, format: trl-preference } }\n",
    );
    let out = ws.hone(&["run", "p.yaml"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("malformed: unreadable Parquet data"),
        "{}",
        out.stdout
    );
}
