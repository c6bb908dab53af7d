//! Validation time against spec size: drives the real `hone validate` as a subprocess.
//!
//! ```text
//! cargo build --release && cargo bench --bench validate_size
//! ```
//!
//! The binary is `$HONE_BIN` if set, else `target/release/hone`. Specs written to a
//! temporary directory:
//!
//! - `params` with 1,000 / 10,000 / 100,000 / 1,000,000 keys, one stage reading one of them
//!   (validation reads, resolves and interpolates all of them);
//! - the "billion laughs" alias bomb (nine anchors, each a list of nine aliases of the
//!   previous: 387 million nodes if expanded), refused with exit 2;
//! - 50,000 levels of block nesting (100 KB), refused with exit 2.
//!
//! Each is validated `HONE_BENCH_RUNS` times (default 5): median, min and max wall time,
//! the exit code, and the peak resident memory of one run (from `/usr/bin/time -f %M` when
//! it is installed). Output: a table and one `BENCH_JSON {...}` line per spec.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn main() {
    let hone = std::env::var_os("HONE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/hone"));
    if !hone.is_file() {
        eprintln!(
            "error: no hone binary at {} (cargo build --release, or set HONE_BIN)",
            hone.display()
        );
        std::process::exit(1);
    }
    let runs: usize = std::env::var("HONE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut specs: Vec<(String, PathBuf)> = Vec::new();
    for keys in [1_000, 10_000, 100_000, 1_000_000] {
        let path = dir.path().join(format!("params{keys}.yaml"));
        std::fs::write(&path, params_spec(keys)).unwrap();
        specs.push((format!("params, {keys} keys"), path));
    }
    let bomb = dir.path().join("bomb.yaml");
    std::fs::write(&bomb, alias_bomb()).unwrap();
    specs.push(("alias bomb (9 x 9 aliases)".into(), bomb));
    let deep = dir.path().join("deep.yaml");
    std::fs::write(
        &deep,
        format!("name: x\nstages: {{}}\nb:\n  {}1\n", "- ".repeat(50_000)),
    )
    .unwrap();
    specs.push(("50,000 nesting levels".into(), deep));

    println!("hone validate: time against spec size ({runs} runs each)");
    println!("  binary: {}", hone.display());
    println!(
        "{:<28} {:>10} {:>6} {:>11} {:>9} {:>9} {:>10}",
        "spec", "bytes", "exit", "median ms", "min ms", "max ms", "peak MB"
    );
    for (name, path) in &specs {
        let bytes = std::fs::metadata(path).unwrap().len();
        let mut times = Vec::new();
        let mut code = None;
        for _ in 0..runs {
            let started = Instant::now();
            let status = Command::new(&hone)
                .arg("validate")
                .arg(path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("hone runs");
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            code = status.code();
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let peak = peak_mb(&hone, path);
        println!(
            "{:<28} {:>10} {:>6} {:>11.1} {:>9.1} {:>9.1} {:>10}",
            name,
            bytes,
            code.map(|c| c.to_string()).unwrap_or("-".into()),
            median,
            times[0],
            times[times.len() - 1],
            peak.map(|p| format!("{p:.1}")).unwrap_or("-".into())
        );
        println!(
            "BENCH_JSON {}",
            serde_json::json!({
                "bench": "validate_size", "spec": name, "bytes": bytes, "exit": code,
                "median_ms": median, "min_ms": times[0], "max_ms": times[times.len() - 1],
                "peak_mb": peak, "runs": runs,
            })
        );
    }
}

fn params_spec(keys: usize) -> String {
    let mut text = String::from("name: big\nparams:\n");
    for i in 0..keys {
        text.push_str(&format!("  k{i}: {i}\n"));
    }
    text.push_str(
        "stages:\n  a: {kind: command, with: {cmd: \"echo ${params.k1} > ${outputs.o}\", outputs: {o: files}}}\n",
    );
    text
}

fn alias_bomb() -> String {
    let mut text = String::from("name: x\nstages: {}\na0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for level in 1..9 {
        let prev = format!("*a{}", level - 1);
        text.push_str(&format!(
            "a{level}: &a{level} [{}]\n",
            [prev.as_str(); 9].join(", ")
        ));
    }
    text
}

/// Peak resident memory of one run in MB, by GNU time, when it is installed.
fn peak_mb(hone: &Path, spec: &Path) -> Option<f64> {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(hone)
        .arg("validate")
        .arg(spec)
        .stdout(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let kb: f64 = text.lines().last()?.trim().parse().ok()?;
    Some(kb / 1024.0)
}
