//! Feedback ingest throughput: a million-row feedback file through `feedback-ingest`,
//! driven through the real `hone` binary, with the child's peak memory.
//!
//! ```text
//! cargo build --release && cargo bench --bench ingest
//! ```
//!
//! `HONE_BIN` picks the binary (default `target/release/hone`), `HONE_BENCH_ROWS` the
//! number of rows (default 1,000,000). Formats measured: hone JSONL comparisons, and the
//! same rows as CSV. The input files are generated in a temporary directory; 2% of the
//! rows are deliberately bad (a duplicate, an identical pair, a NaN margin), so the
//! rejects path is exercised too.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn main() {
    let hone = std::env::var_os("HONE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/hone"));
    if !hone.exists() {
        eprintln!(
            "no hone binary at {}: run `cargo build --release` first",
            hone.display()
        );
        std::process::exit(1);
    }
    let rows: usize = std::env::var("HONE_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    println!(
        "feedback-ingest, {rows} rows, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:>6} {:>10} {:>10} {:>12} {:>12}",
        "format", "file MB", "seconds", "rows/s", "peak RSS MB"
    );
    for format in ["jsonl", "csv"] {
        let file = dir.path().join(format!("feedback.{format}"));
        write_rows(&file, format, rows);
        let size_mb = std::fs::metadata(&file).unwrap().len() as f64 / 1e6;
        let ws = dir.path().join(format!("ws-{format}"));
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::rename(&file, ws.join(format!("feedback.{format}"))).unwrap();
        std::fs::write(
            ws.join("p.yaml"),
            format!("name: bench\nstages:\n  ingest: {{ kind: feedback-ingest, with: {{ path: feedback.{format}, format: hone }} }}\n"),
        )
        .unwrap();
        let start = Instant::now();
        let status = Command::new(&hone)
            .args(["-C", ws.to_str().unwrap(), "run", "p.yaml", "-q"])
            .status()
            .unwrap();
        let seconds = start.elapsed().as_secs_f64();
        assert!(status.success(), "hone run failed");
        let peak_mb = peak_child_rss_kb() as f64 / 1024.0;
        println!(
            "{format:>6} {size_mb:>10.1} {seconds:>10.2} {:>12.0} {peak_mb:>12.1}",
            rows as f64 / seconds
        );
        println!(
            "BENCH_JSON {{\"bench\":\"ingest\",\"format\":\"{format}\",\"rows\":{rows},\"seconds\":{seconds:.3},\"rows_per_s\":{:.0},\"peak_rss_mb_all_children_so_far\":{peak_mb:.1}}}",
            rows as f64 / seconds
        );
    }
}

/// Peak resident memory of the largest child waited for so far (Linux reports KiB).
fn peak_child_rss_kb() -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss
}

/// Row `i` as (prompt, chosen, rejected, margin, annotator). Every 50 rows: one identical
/// pair (i % 50 == 0) and one NaN margin (i % 50 == 1).
fn row(i: usize) -> (String, String, String, String, String) {
    let prompt = format!("What is the capital of country number {}?", i % 5000);
    let chosen = format!("The capital of country {} is City{}.", i % 5000, i);
    let rejected = if i.is_multiple_of(50) {
        chosen.clone()
    } else {
        format!("I do not know, sorry ({i}).")
    };
    let margin = if i % 50 == 1 {
        "NaN".to_string()
    } else {
        format!("{:.2}", (i % 7) as f64 * 0.25)
    };
    (prompt, chosen, rejected, margin, format!("ann-{}", i % 13))
}

fn write_rows(path: &Path, format: &str, rows: usize) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    if format == "csv" {
        writeln!(out, "kind,prompt,chosen,rejected,margin,annotator").unwrap();
    }
    for i in 0..rows {
        // Every 50 rows one exact duplicate of the row before it.
        let (prompt, chosen, rejected, margin, annotator) =
            if i % 50 == 3 { row(i - 1) } else { row(i) };
        if format == "csv" {
            writeln!(
                out,
                "comparison,\"{prompt}\",\"{chosen}\",\"{rejected}\",{margin},{annotator}"
            )
            .unwrap();
        } else {
            let margin = if margin == "NaN" {
                "\"NaN\"".to_string()
            } else {
                margin
            };
            writeln!(
                out,
                "{{\"kind\":\"comparison\",\"prompt\":\"{prompt}\",\"chosen\":\"{chosen}\",\"rejected\":\"{rejected}\",\"margin\":{margin},\"annotator\":\"{annotator}\"}}"
            )
            .unwrap();
        }
    }
}
