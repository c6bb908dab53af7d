//! The crash campaign: a pipeline of model stages killed with SIGKILL at random moments
//! (seeded), each kill followed by another run, until a run finishes; `hone gc` killed
//! too, between runs. What must hold, and what is printed:
//!
//! - **corrupted**: objects in the store that do not match their digest after a kill
//!   (`hone verify`), summed over the kills: must be 0;
//! - **lost**: stages that were stored (`hone status`) at one point and not stored at a
//!   later one, so that finished work ran again: must be 0 (the one stage in flight when
//!   a kill lands is not counted: it was never stored);
//! - **final lock**: equal, byte for byte, to an uninterrupted run's, for every episode
//!   (a fresh workspace killed again and again until a run gets through). The training stages
//!   checkpoint every few steps and resume after a kill, so this also says that a
//!   resumed stage gives the bytes of one that was never interrupted.
//!
//! ```text
//! cargo build --release && cargo bench --bench crash_campaign
//! ```
//!
//! `HONE_BIN` (default `target/release/hone`), `HONE_CRASH_KILLS` (default 30),
//! `HONE_CRASH_SEED` (default 1). Linux/Unix only. Not in the test suite: it takes some
//! minutes (an uninterrupted run of the pipeline is about 10 s on 2 cores).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TINY: &str = "source: builtin, vocab_size: 300, d_model: 32, n_layers: 1, n_heads: 2, context: 64, batch_size: 4, device: cpu";

fn spec() -> String {
    format!(
        r#"name: crash
seed: 3
stages:
  base: {{ kind: pretrain-load, with: {{ {TINY}, steps: 400, checkpoint_every: 25 }} }}
  sft: {{ kind: sft, inputs: {{ model: base.model }}, with: {{ max_steps: 60, batch_size: 4, checkpoint_every: 10, device: cpu }} }}
  label: {{ kind: annotate, with: {{ candidates_path: data/hhh/candidates.jsonl, max_prompts: 24, pairs_per_prompt: 2 }} }}
  reward: {{ kind: reward-fit, inputs: {{ model: sft.model, feedback: label.feedback }}, with: {{ epochs: 3, batch_size: 8, device: cpu }} }}
  ppo:
    kind: ppo
    inputs: {{ policy: sft.model, reward_model: reward.reward_model }}
    with: {{ iterations: 12, checkpoint_every: 3, max_prompts: 20, rollouts: 4, minibatch_size: 2, max_new_tokens: 8, lr: 1e-3, device: cpu }}
  evaluate:
    kind: evaluate
    inputs: {{ sft: sft.model, ppo: ppo.policy, reward_model: reward.reward_model }}
    with: {{ policies: [sft, ppo], max_prompts: 6, max_new_tokens: 8, device: cpu }}
"#
    )
}

/// A small seeded generator (SplitMix64), so a campaign can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn workspace(root: &Path) -> PathBuf {
    let dir = tempfile::Builder::new()
        .prefix("hone-crash-")
        .tempdir()
        .expect("a temporary directory")
        .keep();
    let data = root.join("data/hhh");
    std::fs::create_dir_all(dir.join("data/hhh")).unwrap();
    for name in [
        "facts.jsonl",
        "corpus.jsonl",
        "demos.jsonl",
        "prompts.jsonl",
        "eval_prompts.jsonl",
        "candidates.jsonl",
    ] {
        std::fs::copy(data.join(name), dir.join("data/hhh").join(name)).unwrap();
    }
    std::fs::write(dir.join("p.yaml"), spec()).unwrap();
    dir
}

fn hone(bin: &Path, ws: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .args(args)
        .current_dir(ws)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("hone runs")
}

/// The stages `hone status --json` says are stored.
fn stored(bin: &Path, ws: &Path) -> Vec<String> {
    let out = hone(bin, ws, &["status", "p.yaml", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["up_to_date"] == true)
        .filter_map(|s| s["id"].as_str().map(str::to_string))
        .collect()
}

fn corrupted(bin: &Path, ws: &Path) -> usize {
    let out = hone(bin, ws, &["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.matches("is corrupt").count() + text.matches("cannot be read").count()
}

/// Starts `hone ARGS` and kills it with SIGKILL after `after`; whether it was still
/// running then.
fn kill_after(bin: &Path, ws: &Path, args: &[&str], after: Duration) -> bool {
    let mut child = Command::new(bin)
        .args(args)
        .current_dir(ws)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("hone starts");
    let deadline = Instant::now() + after;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if Instant::now() >= deadline {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = std::env::var_os("HONE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/hone"));
    if !bin.is_file() {
        eprintln!(
            "error: no hone binary at {} (cargo build --release)",
            bin.display()
        );
        std::process::exit(1);
    }
    let kills: usize = std::env::var("HONE_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("HONE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let run = ["run", "p.yaml", "-q", "-j", "1"];

    // The uninterrupted run: the lock to reproduce and how long a run takes.
    let reference = workspace(root);
    let started = Instant::now();
    let out = hone(&bin, &reference, &run);
    assert!(
        out.status.success(),
        "the reference run failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let full = started.elapsed();
    let reference_lock = std::fs::read_to_string(reference.join("p.lock")).unwrap();
    println!(
        "crash campaign: seed {seed}, {kills} kills, uninterrupted run {:.1} s ({})",
        full.as_secs_f64(),
        bin.display()
    );

    // Episodes: a fresh workspace, killed again and again at random moments until a run
    // gets through; then the lock must be the uninterrupted run's.
    let mut rng = Rng(seed);
    let (mut run_kills, mut gc_kills, mut corrupt, mut lost) = (0, 0, 0, 0);
    let (mut episodes, mut equal_locks) = (0, 0);
    let mut kept = Vec::new();
    while run_kills + gc_kills < kills {
        episodes += 1;
        let ws = workspace(root);
        let mut before = stored(&bin, &ws);
        loop {
            let killed = if rng.unit() < 0.15 {
                // gc has little to do; kill it within its first 40 ms.
                let k = kill_after(
                    &bin,
                    &ws,
                    &["gc"],
                    Duration::from_secs_f64(0.04 * rng.unit()),
                );
                gc_kills += usize::from(k);
                if !k {
                    continue;
                }
                k
            } else {
                // Anywhere within a run's length: early kills land in start-up, the lock
                // write and cached stages, later ones in training and checkpoint writes.
                let k = kill_after(&bin, &ws, &run, full.mul_f64(rng.unit()));
                run_kills += usize::from(k);
                k
            };
            if !killed {
                break;
            }
            corrupt += corrupted(&bin, &ws);
            let now = stored(&bin, &ws);
            let gone: Vec<&String> = before.iter().filter(|s| !now.contains(s)).collect();
            if !gone.is_empty() {
                println!("  episode {episodes}: stored stages lost after a kill: {gone:?}");
            }
            lost += gone.len();
            before = now;
        }
        // The last run got through (or every stage was stored already): one more run
        // must find everything stored, and the lock must be the uninterrupted run's.
        let out = hone(&bin, &ws, &["run", "p.yaml", "--json", "-j", "1"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let reran = report["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["status"] == "ran")
            .count();
        lost += reran;
        corrupt += corrupted(&bin, &ws);
        let lock = std::fs::read_to_string(ws.join("p.lock")).unwrap_or_default();
        if out.status.success() && lock == reference_lock {
            equal_locks += 1;
            let _ = std::fs::remove_dir_all(&ws);
        } else {
            println!(
                "  episode {episodes}: the final lock differs; kept {}",
                ws.display()
            );
            kept.push(ws);
        }
    }
    let equal = equal_locks == episodes;
    println!(
        "  {episodes} episodes; kills survived: {} ({run_kills} of hone run, {gc_kills} of hone gc); objects corrupted: {corrupt}; stored stages run again: {lost}; final locks equal to the uninterrupted run's: {equal_locks}/{episodes}",
        run_kills + gc_kills,
    );
    println!(
        "BENCH_JSON {}",
        serde_json::json!({
            "bench": "crash_campaign", "seed": seed, "kills": run_kills + gc_kills,
            "run_kills": run_kills, "gc_kills": gc_kills, "corrupted": corrupt,
            "lost": lost, "episodes": episodes, "final_locks_equal": equal_locks,
            "uninterrupted_s": full.as_secs_f64(),
        })
    );
    let _ = std::fs::remove_dir_all(&reference);
    if !(equal && corrupt == 0 && lost == 0) {
        println!("  workspaces kept for inspection: {kept:?}");
        std::process::exit(1);
    }
}
