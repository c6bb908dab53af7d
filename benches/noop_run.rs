//! Runner overhead benchmark: drives the real `hone` binary as a subprocess.
//!
//! Run with:
//!
//! ```text
//! cargo build --release && cargo bench --bench noop_run
//! ```
//!
//! `cargo bench` builds this benchmark in release mode but does not necessarily rebuild the
//! `hone` binary, so build it first. The binary used is `$HONE_BIN` if set, else
//! `target/release/hone` under the crate root.
//!
//! What is measured, for linear chains of N = 7 and N = 70 trivial `command` stages:
//!
//! - **no-op run**: `hone -C DIR run p.yaml -q` with every stage already stored (R runs,
//!   default 15, override with `HONE_BENCH_RUNS`): median / min / max wall time.
//! - **forced run**: `hone -C DIR run p.yaml -q --force-all` (7 runs), every stage
//!   re-executes its `sh -c` command.
//! - **bare commands**: the same N shell commands run sequentially with
//!   `sh -c` on real temp files, without hone (7 runs).
//! - **overhead per executed stage** = (median forced - median bare) / N.
//!
//! Output: a readable table on stdout, plus one `BENCH_JSON {...}` line per measurement.
//! Unknown command-line arguments (cargo passes `--bench`) are ignored.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const SIZES: [usize; 2] = [7, 70];
const DEFAULT_NOOP_RUNS: usize = 15;
const FORCED_RUNS: usize = 7;
const BARE_RUNS: usize = 7;

fn main() {
    let hone = locate_binary();
    let noop_runs = match std::env::var("HONE_BENCH_RUNS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("error: HONE_BENCH_RUNS must be a positive integer, got {v:?}");
                std::process::exit(1);
            }
        },
        Err(_) => DEFAULT_NOOP_RUNS,
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);

    println!("hone runner overhead benchmark");
    println!("  binary: {}", hone.display());
    println!("  cores:  {cores}");
    println!();

    let mut json_lines = Vec::new();
    let mut noop_rows = Vec::new();
    let mut forced_rows = Vec::new();

    for &n in &SIZES {
        let dir = tempfile::tempdir().expect("create temp workspace");
        std::fs::write(dir.path().join("p.yaml"), chain_spec(n)).expect("write p.yaml");

        // Populate the cache.
        run_hone(&hone, dir.path(), &[]);

        // No-op runs: everything is stored.
        let noop = Stats::new(time_runs(noop_runs, || run_hone(&hone, dir.path(), &[])));
        json_lines.push(serde_json::json!({
            "bench": "noop_run",
            "stages": n,
            "runs": noop_runs,
            "median_ms": round3(noop.median),
            "min_ms": round3(noop.min),
            "max_ms": round3(noop.max),
            "cores": cores,
        }));
        noop_rows.push((n, noop_runs, noop));

        // Forced runs: every stage re-executes.
        let forced = Stats::new(time_runs(FORCED_RUNS, || {
            run_hone(&hone, dir.path(), &["--force-all"])
        }));

        // The same commands without hone.
        let bare = Stats::new(time_bare(n, BARE_RUNS));
        let per_stage = (forced.median - bare.median) / n as f64;
        json_lines.push(serde_json::json!({
            "bench": "forced_run",
            "stages": n,
            "runs": FORCED_RUNS,
            "forced_median_ms": round3(forced.median),
            "forced_min_ms": round3(forced.min),
            "forced_max_ms": round3(forced.max),
            "bare_runs": BARE_RUNS,
            "bare_median_ms": round3(bare.median),
            "overhead_per_stage_ms": round3(per_stage),
            "cores": cores,
        }));
        forced_rows.push((n, forced, bare, per_stage));
    }

    println!("No-op runs (all stages stored): hone -C DIR run p.yaml -q");
    println!(
        "{:>7} {:>5} {:>11} {:>9} {:>9}",
        "stages", "runs", "median ms", "min ms", "max ms"
    );
    for (n, runs, s) in &noop_rows {
        println!(
            "{:>7} {:>5} {:>11.2} {:>9.2} {:>9.2}",
            n, runs, s.median, s.min, s.max
        );
    }
    println!();
    println!(
        "Forced runs: hone -C DIR run p.yaml -q --force-all ({FORCED_RUNS} runs) vs the same \
         commands via sh -c ({BARE_RUNS} runs)"
    );
    println!(
        "{:>7} {:>17} {:>15} {:>15} {:>22}",
        "stages", "forced median ms", "forced min ms", "bare median ms", "overhead/stage ms"
    );
    for (n, forced, bare, per_stage) in &forced_rows {
        println!(
            "{:>7} {:>17.2} {:>15.2} {:>15.2} {:>22.3}",
            n, forced.median, forced.min, bare.median, per_stage
        );
    }
    println!();
    for line in &json_lines {
        println!("BENCH_JSON {line}");
    }
}

fn locate_binary() -> PathBuf {
    let path = match std::env::var_os("HONE_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/hone"),
    };
    if !path.is_file() {
        eprintln!(
            "error: hone binary not found at {}\n\
             build it first: cargo build --release && cargo bench --bench noop_run\n\
             (or point HONE_BIN at a hone binary)",
            path.display()
        );
        std::process::exit(1);
    }
    path
}

/// The command of stage `i` in the chain (with `${...}` placeholders for hone).
fn stage_cmd(i: usize) -> String {
    if i == 0 {
        "echo 0 > ${outputs.out}".to_string()
    } else {
        format!("cat ${{inputs.prev}} > ${{outputs.out}}; echo {i} >> ${{outputs.out}}")
    }
}

/// A linear chain of `n` command stages.
fn chain_spec(n: usize) -> String {
    let mut s = String::from("name: chain\nseed: 1\nstages:\n");
    for i in 0..n {
        s.push_str(&format!("  s{i}:\n    kind: command\n"));
        if i > 0 {
            s.push_str(&format!("    inputs: {{ prev: s{}.out }}\n", i - 1));
        }
        s.push_str(&format!(
            "    with: {{ cmd: \"{}\", outputs: {{ out: files }} }}\n",
            stage_cmd(i)
        ));
    }
    s
}

/// Runs `hone -C dir run p.yaml -q [extra]`; exits the benchmark if it fails.
fn run_hone(hone: &Path, dir: &Path, extra: &[&str]) {
    let out = Command::new(hone)
        .arg("-C")
        .arg(dir)
        .args(["run", "p.yaml", "-q"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("spawn hone");
    if !out.status.success() {
        eprintln!(
            "error: `{} -C {} run p.yaml -q {}` failed ({})\nstdout:\n{}\nstderr:\n{}",
            hone.display(),
            dir.display(),
            extra.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
}

/// The chain's commands run sequentially with `sh -c` on real temp files, timed `runs` times.
fn time_bare(n: usize, runs: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("create temp dir");
    let files: Vec<PathBuf> = (0..n).map(|i| dir.path().join(format!("out{i}"))).collect();
    let cmds: Vec<String> = (0..n)
        .map(|i| {
            let out = shell_quote(&files[i]);
            if i == 0 {
                format!("echo 0 > {out}")
            } else {
                let prev = shell_quote(&files[i - 1]);
                format!("cat {prev} > {out}; echo {i} >> {out}")
            }
        })
        .collect();
    time_runs(runs, || {
        for cmd in &cmds {
            let status = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stdin(Stdio::null())
                .status()
                .expect("spawn sh");
            if !status.success() {
                eprintln!("error: bare command `{cmd}` failed ({status})");
                std::process::exit(1);
            }
        }
    })
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Wall-clock milliseconds of `runs` calls of `f`.
fn time_runs(runs: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn new(mut samples: Vec<f64>) -> Stats {
        assert!(!samples.is_empty());
        samples.sort_by(|a, b| a.total_cmp(b));
        let k = samples.len();
        let median = if k % 2 == 1 {
            samples[k / 2]
        } else {
            (samples[k / 2 - 1] + samples[k / 2]) / 2.0
        };
        Stats {
            median,
            min: samples[0],
            max: samples[k - 1],
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
