//! Training and sampling throughput of hone's GPT-2 on the CPU, side by side with the
//! PyTorch reference `shared/bench/torch_reference.py` run in the same invocation.
//!
//! ```text
//! cargo bench --bench train_sample
//! ```
//!
//! The model is the reference's: vocab 2048, 128 positions, d_model 256, 4 layers, 4 heads,
//! MLP 1024 with tanh GELU (`gelu_new`), learned positions, LayerNorm, f32. One difference
//! cannot be configured away: hone's GPT-2 ties the LM head to the token embedding (as
//! GPT-2 does), the reference has an untied `lm_head` (2048 x 256 = 524,288 more
//! parameters, one more [2048, 256] gradient and AdamW update per step; the logits matmul
//! itself is the same size in both).
//!
//! **Training**: one fixed batch of 16 sequences of 129 tokens from the reference's LCG
//! (seed 1234; inputs are the first 128 tokens of a row, targets the next 128, the loss
//! counts every position), hone's `Trainer` (AdamW lr 1e-3, betas (0.9, 0.999), eps 1e-8,
//! weight decay 0.01, constant learning rate, no clipping). Two phases, each in a fresh
//! child process (this executable again), so that one's heap does not affect the other:
//!
//! - **A, training steps**: 3 warm-up steps, then `STEPS` timed steps of forward
//!   (`lm_loss` plus reading the loss, as the reference's `loss.item()`) and
//!   `Trainer::step` (backward, gradient norm, AdamW). The median step gives tokens/s =
//!   16 * 128 / median. The resident memory is printed after every step, with its range
//!   and least-squares trend over the timed steps (a step whose graph is kept alive shows
//!   as hundreds of MiB per step), and the CPU time and minor page faults per timed step
//!   (`getrusage`).
//! - **B, breakdown**: 1 + `STEPS` forward passes each followed by `loss.backward()` alone
//!   (gradients dropped, no update); the medians of the last `STEPS` are the forward and
//!   backward times and their ratio. "Optimizer" is A's median `Trainer::step` minus B's
//!   median backward (an estimate; it includes the gradient-norm pass `Trainer::step`
//!   always makes). B also counts the variables' gradients that still carry a backprop graph
//!   (`Tensor::track_op`): whatever keeps such a gradient keeps the step's graph alive.
//!
//! The weights are drawn from a fixed seed (`WEIGHT_SEED`, through `Trainable::seeded`),
//! so every phase and every run starts from the same model.
//!
//! **Sampling** (in the parent process, on freshly initialised weights: without EOS the
//! speed does not depend on them): 16 prompts of 64 LCG tokens (seed 99), 64 new tokens
//! each, multinomial at temperature 1 with the KV cache, through `sample_batch` (hone
//! samples prompt by prompt, batch 1; the reference runs the 16 prompts as one batch). For
//! comparison, a loop written here (not hone's API) samples the 16 prompts as one batch
//! with hone's model, KV cache and `choose`, and splits its time into forward and token
//! choice. Best of 2 repetitions each, as the reference.
//!
//! **Busy machine check**: around each part (A, B, sampling, PyTorch) the CPU time of the
//! whole machine (`/proc/stat`) is compared with this process's and its children's
//! (`getrusage`); what is left is other processes' load, printed in cores. Numbers taken
//! while that is above a few tenths of a core are not comparable.
//!
//! Environment: `HONE_BENCH_STEPS` (timed training steps, default 10),
//! `HONE_BENCH_THREADS` (threads for both, default 2: sets `RAYON_NUM_THREADS`, which
//! candle's CPU matmul (gemm over rayon) follows, unless it is already set; most other
//! candle CPU ops are single-threaded; PyTorch gets `--threads` and `OMP_NUM_THREADS`),
//! `HONE_TORCH_PYTHON` (default `/tmp/hone-ref-venv/bin/python`; the reference is skipped
//! when it does not exist), `HONE_TORCH_REFERENCE` (the script; default
//! `../shared/bench/torch_reference.py` from the crate root, else
//! `/work/shared/bench/torch_reference.py`), `HONE_BENCH_SKIP_TORCH=1`.
//!
//! Output: a table on stdout and one `BENCH_JSON {...}` line per measurement. Unknown
//! command-line arguments (cargo passes `--bench`) are ignored.

/// The same allocator as the `hone` binary (see src/main.rs): the figures are hone's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use hone::model::sample::{SampleParams, choose, sample_batch};
use hone::model::train::{Batch, Schedule, Trainer, lm_loss};
use hone::model::{CausalLm, Gpt2Config, ModelConfig, Trainable};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

const VOCAB: usize = 2048;
const CTX: usize = 128;
const D_MODEL: usize = 256;
const LAYERS: usize = 4;
const HEADS: usize = 4;
const MLP: usize = 1024;
const BATCH: usize = 16;
const WARMUP: usize = 3;
const PROMPT_LEN: usize = 64;
const NEW_TOKENS: usize = 64;
const GEN_REPS: usize = 2;
/// The seed of the model's initial weights (`Trainable::seeded`), the same in every phase and
/// run: the numbers are measured on the same model each time.
const WEIGHT_SEED: u64 = 0;
const CHILD_ENV: &str = "HONE_BENCH_TRAIN_SAMPLE_CHILD";
/// Other processes' load, in cores, above which a warning is printed.
const BUSY_CORES: f64 = 0.25;

/// The reference's data generator, exactly: x = (x * 1103515245 + 12345) mod 2^31, token =
/// (x >> 16) mod vocab. x < 2^31, so the product fits in a u64.
fn lcg_tokens(n: usize, seed: u64, vocab: u64) -> Vec<u32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = (x * 1_103_515_245 + 12_345) % (1 << 31);
            ((x >> 16) % vocab) as u32
        })
        .collect()
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("error: {name} must be a positive integer, got {v:?}");
                std::process::exit(1);
            }
        },
        Err(_) => default,
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ms(seconds: f64) -> f64 {
    seconds * 1e3
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

fn model_config() -> ModelConfig {
    ModelConfig::Gpt2(Gpt2Config {
        vocab_size: VOCAB,
        n_positions: CTX,
        n_embd: D_MODEL,
        n_layer: LAYERS,
        n_head: HEADS,
        n_inner: Some(MLP),
        activation_function: "gelu_new".into(),
        layer_norm_epsilon: 1e-5,
        bos_token_id: None,
        eos_token_id: None,
    })
}

/// Phase A, as its child process reports it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Steps {
    step_s: f64,
    fwd_s: f64,
    /// Median `Trainer::step`: backward, gradient norm, AdamW.
    update_s: f64,
    tokens_per_s: f64,
    loss_first: f64,
    loss_last: f64,
    /// Per timed step.
    usage: Usage,
    /// Resident memory after each timed step: lowest, highest, and the least-squares
    /// trend in MiB per step (a kept graph shows as hundreds of MiB per step; the
    /// allocator's ups and downs are a few).
    rss_min_mib: f64,
    rss_max_mib: f64,
    rss_trend_mib: f64,
}

/// Phase B, as its child process reports it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Breakdown {
    /// Medians.
    fwd_s: f64,
    bwd_s: f64,
    /// Variables whose gradient from `loss.backward()` carries a backprop graph.
    grads_with_graph: usize,
    vars: usize,
}

/// The reference's numbers, parsed from its stdout.
#[derive(Debug, Default, Clone)]
struct TorchTrain {
    step_s: f64,
    fwd_s: f64,
    bwd_s: f64,
    opt_s: f64,
    tokens_per_s: f64,
    loss_first: f64,
    loss_last: f64,
}

#[derive(Debug, Default)]
struct Torch {
    version: String,
    params: Option<u64>,
    train: Option<TorchTrain>,
    gen_cached: Option<f64>,
    gen_uncached: Option<f64>,
}

fn main() {
    hone::keep_freed_memory();
    let steps = env_usize("HONE_BENCH_STEPS", 10);
    let threads = env_usize("HONE_BENCH_THREADS", 2);
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: first thing in main, before any thread (rayon's pool included) exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    if let Ok(phase) = std::env::var(CHILD_ENV) {
        child(&phase, steps);
        return;
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let candle_threads = candle_core::utils::get_num_threads();
    println!("hone train/sample benchmark (GPT-2 {LAYERS}x{D_MODEL}, vocab {VOCAB}, ctx {CTX})");
    println!(
        "  cores: {cores}; candle matmul threads: {candle_threads} (RAYON_NUM_THREADS={}); \
         torch threads: {threads}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_default()
    );
    println!("  timed training steps: {steps} (after {WARMUP} warm-up steps)");
    println!("  load average at start: {}", load_average());
    println!();

    let mut background = Vec::new();
    println!("A: forward + Trainer::step (child process)");
    let watch = Background::start();
    let a: Steps = run_child("steps").expect("phase A result");
    background.push(("A", watch.cores()));
    println!("B: forward + backward alone (child process)");
    let watch = Background::start();
    let b: Breakdown = run_child("breakdown").expect("phase B result");
    background.push(("B", watch.cores()));
    println!();

    let watch = Background::start();
    let device = Device::Cpu;
    let trainable = Trainable::seeded(&model_config(), WEIGHT_SEED, &device).expect("init model");
    let hone_params: usize = trainable
        .varmap
        .all_vars()
        .iter()
        .map(|v| v.elem_count())
        .sum();
    let frozen = trainable.frozen().expect("frozen copy");
    let prompts: Vec<Vec<u32>> = lcg_tokens(BATCH * PROMPT_LEN, 99, VOCAB as u64)
        .chunks(PROMPT_LEN)
        .map(<[u32]>::to_vec)
        .collect();
    let per_prompt_s = (0..GEN_REPS)
        .map(|_| time_sample_per_prompt(&frozen, &prompts, &device))
        .fold(f64::INFINITY, f64::min);
    let hone_gen = (BATCH * NEW_TOKENS) as f64 / per_prompt_s;
    println!(
        "GEN hone kv_cache=true, per prompt (sample_batch): {per_prompt_s:.3} s for \
         {BATCH}x{NEW_TOKENS} new tokens -> {hone_gen:.0} tokens/s"
    );
    let mut batched = (f64::INFINITY, 0.0, 0.0);
    for _ in 0..GEN_REPS {
        let run = time_sample_batched(&frozen, &prompts, &device);
        if run.0 < batched.0 {
            batched = run;
        }
    }
    let (batched_s, batched_fwd_s, batched_choose_s) = batched;
    let hone_gen_batched = (BATCH * NEW_TOKENS) as f64 / batched_s;
    println!(
        "GEN hone kv_cache=true, batch {BATCH} (bench loop): {batched_s:.3} s -> \
         {hone_gen_batched:.0} tokens/s (forward {batched_fwd_s:.3} s, choose \
         {batched_choose_s:.3} s)"
    );
    background.push(("sampling", watch.cores()));
    println!();

    let watch = Background::start();
    let torch = run_torch(steps, threads);
    if torch.train.is_some() {
        background.push(("PyTorch", watch.cores()));
    }
    let load_end = load_average();
    println!("load average at end: {load_end}");
    let busy: Vec<String> = background
        .iter()
        .map(|(part, c)| format!("{part} {c:.2}"))
        .collect();
    println!("other processes' load, cores: {}", busy.join(", "));
    let max_busy = background.iter().map(|(_, c)| *c).fold(0.0, f64::max);
    if max_busy > BUSY_CORES {
        println!(
            "WARNING: the machine was busy (up to {max_busy:.2} cores used by other \
             processes): these numbers are not comparable"
        );
    }
    println!();

    // The table.
    let tt = torch.train.as_ref();
    let opt_s = a.update_s - b.bwd_s;
    println!("Side by side ({threads} threads each; ratio = hone / PyTorch)");
    println!(
        "{:<50} {:>12} {:>12} {:>10}",
        "", "hone", "PyTorch", "ratio"
    );
    let row = |name: &str, h: Option<f64>, t: Option<f64>, digits: usize| {
        let cell = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        let ratio = match (h, t) {
            (Some(h), Some(t)) if t != 0.0 => format!("{:.2}x", h / t),
            _ => "-".to_string(),
        };
        println!("{name:<50} {:>12} {:>12} {ratio:>10}", cell(h), cell(t));
    };
    row(
        "train tokens/s (higher is better)",
        Some(a.tokens_per_s),
        tt.map(|t| t.tokens_per_s),
        0,
    );
    row(
        "  median step ms",
        Some(ms(a.step_s)),
        tt.map(|t| ms(t.step_s)),
        1,
    );
    row(
        "  forward ms, incl. loss (A)",
        Some(ms(a.fwd_s)),
        tt.map(|t| ms(t.fwd_s)),
        1,
    );
    row(
        "  backward + optimizer ms (A)",
        Some(ms(a.update_s)),
        tt.map(|t| ms(t.bwd_s + t.opt_s)),
        1,
    );
    row(
        "  forward ms, incl. loss (B)",
        Some(ms(b.fwd_s)),
        tt.map(|t| ms(t.fwd_s)),
        1,
    );
    row(
        "  backward ms (B)",
        Some(ms(b.bwd_s)),
        tt.map(|t| ms(t.bwd_s)),
        1,
    );
    row(
        "  optimizer ms (hone: A update - B backward)",
        Some(ms(opt_s)),
        tt.map(|t| ms(t.opt_s)),
        1,
    );
    row(
        "backward/forward (B)",
        Some(b.bwd_s / b.fwd_s),
        tt.map(|t| t.bwd_s / t.fwd_s),
        2,
    );
    row(
        "sample tokens/s, KV cache (hone 16 x batch 1)",
        Some(hone_gen),
        torch.gen_cached,
        0,
    );
    row(
        "sample tokens/s, KV cache, hone batch 16 *",
        Some(hone_gen_batched),
        torch.gen_cached,
        0,
    );
    row(
        "sample tokens/s, no cache, batch 16",
        None,
        torch.gen_uncached,
        0,
    );
    row(
        "parameters (hone: tied head)",
        Some(hone_params as f64),
        torch.params.map(|p| p as f64),
        0,
    );
    row(
        "training loss, first step",
        Some(a.loss_first),
        tt.map(|t| t.loss_first),
        4,
    );
    row(
        "training loss, last step",
        Some(a.loss_last),
        tt.map(|t| t.loss_last),
        4,
    );
    println!("* a loop in this benchmark over hone's model, KV cache and `choose`, not hone's API");
    println!(
        "hone per timed step (A): user {:.2} s, sys {:.2} s, {:.0} minor page faults; \
         resident memory {:.0}-{:.0} MiB over the timed steps (trend {:+.1} MiB/step)",
        a.usage.user_s,
        a.usage.sys_s,
        a.usage.minflt,
        a.rss_min_mib,
        a.rss_max_mib,
        a.rss_trend_mib
    );
    println!(
        "hone: {} of {} variable gradients from loss.backward() carry a backprop graph",
        b.grads_with_graph, b.vars
    );
    match &torch.train {
        None => println!("(PyTorch reference not run)"),
        Some(_) => println!("PyTorch: {}", torch.version),
    }

    // BENCH_JSON lines.
    let background_json: serde_json::Map<String, serde_json::Value> = background
        .iter()
        .map(|(part, c)| (part.to_string(), serde_json::json!(round(*c, 3))))
        .collect();
    let mut json = vec![
        serde_json::json!({
            "bench": "train_sample", "impl": "hone", "what": "train",
            "steps": steps, "threads": candle_threads, "cores": cores,
            "params": hone_params, "lm_head": "tied",
            "median_step_ms": round(ms(a.step_s), 2),
            "fwd_ms": round(ms(a.fwd_s), 2),
            "update_ms": round(ms(a.update_s), 2),
            "tokens_per_s": round(a.tokens_per_s, 1),
            "loss_first": round(a.loss_first, 5),
            "loss_last": round(a.loss_last, 5),
            "user_s_per_step": round(a.usage.user_s, 3),
            "sys_s_per_step": round(a.usage.sys_s, 3),
            "minflt_per_step": a.usage.minflt.round(),
            "rss_min_mib": a.rss_min_mib.round(),
            "rss_max_mib": a.rss_max_mib.round(),
            "rss_trend_mib_per_step": round(a.rss_trend_mib, 1),
            "background_cores": background_json,
        }),
        serde_json::json!({
            "bench": "train_sample", "impl": "hone", "what": "fwd_bwd",
            "fwd_ms": round(ms(b.fwd_s), 2), "bwd_ms": round(ms(b.bwd_s), 2),
            "bwd_fwd_ratio": round(b.bwd_s / b.fwd_s, 3),
            "opt_ms_estimate": round(ms(opt_s), 2),
            "grads_with_graph": b.grads_with_graph, "vars": b.vars,
        }),
        serde_json::json!({
            "bench": "train_sample", "impl": "hone", "what": "sample",
            "kv_cache": true, "batching": "per_prompt", "prompts": BATCH,
            "prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS,
            "seconds": round(per_prompt_s, 4), "tokens_per_s": round(hone_gen, 1),
        }),
        serde_json::json!({
            "bench": "train_sample", "impl": "hone", "what": "sample",
            "kv_cache": true, "batching": "batch16_bench_loop", "prompts": BATCH,
            "prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS,
            "seconds": round(batched_s, 4), "tokens_per_s": round(hone_gen_batched, 1),
            "forward_s": round(batched_fwd_s, 4), "choose_s": round(batched_choose_s, 4),
        }),
    ];
    if let Some(t) = tt {
        json.push(serde_json::json!({
            "bench": "train_sample", "impl": "torch", "what": "train",
            "steps": steps, "threads": threads, "version": torch.version,
            "params": torch.params, "lm_head": "untied",
            "median_step_ms": round(ms(t.step_s), 2),
            "fwd_ms": round(ms(t.fwd_s), 2),
            "bwd_ms": round(ms(t.bwd_s), 2),
            "opt_ms": round(ms(t.opt_s), 2),
            "bwd_fwd_ratio": round(t.bwd_s / t.fwd_s, 3),
            "tokens_per_s": round(t.tokens_per_s, 1),
            "loss_first": round(t.loss_first, 5),
            "loss_last": round(t.loss_last, 5),
        }));
        json.push(serde_json::json!({
            "bench": "train_sample", "impl": "compare", "what": "train",
            "hone_over_torch_tokens_per_s": round(a.tokens_per_s / t.tokens_per_s, 3),
            "hone_bwd_fwd": round(b.bwd_s / b.fwd_s, 3),
            "torch_bwd_fwd": round(t.bwd_s / t.fwd_s, 3),
        }));
    }
    for (cached, value) in [(true, torch.gen_cached), (false, torch.gen_uncached)] {
        if let Some(v) = value {
            json.push(serde_json::json!({
                "bench": "train_sample", "impl": "torch", "what": "sample",
                "kv_cache": cached, "batching": "batch16", "prompts": BATCH,
                "prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS,
                "tokens_per_s": round(v, 1),
            }));
        }
    }
    if let Some(t) = torch.gen_cached {
        json.push(serde_json::json!({
            "bench": "train_sample", "impl": "compare", "what": "sample",
            "hone_per_prompt_over_torch_batch16": round(hone_gen / t, 3),
            "hone_batch16_loop_over_torch_batch16": round(hone_gen_batched / t, 3),
        }));
    }
    println!();
    for line in json {
        println!("BENCH_JSON {line}");
    }
}

/// Runs this executable as a child for one phase, echoing its output; returns the result
/// from its `PHASE_JSON` line.
fn run_child<T: for<'de> Deserialize<'de>>(phase: &str) -> Option<T> {
    let exe = std::env::current_exe().expect("current executable");
    let mut child = Command::new(exe)
        .env(CHILD_ENV, phase)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut result = None;
    let stdout = child.stdout.take().expect("child stdout");
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("child output");
        match line.strip_prefix("PHASE_JSON ") {
            Some(json) => result = Some(serde_json::from_str(json).expect("child result")),
            None => println!("{line}"),
        }
    }
    let status = child.wait().expect("wait for child");
    assert!(status.success(), "phase {phase} failed: {status}");
    result
}

/// Hands a child's result to the parent on stdout.
fn phase_json<T: Serialize>(value: &T) {
    println!(
        "PHASE_JSON {}",
        serde_json::to_string(value).expect("serialise")
    );
}

/// A child process: `steps` runs phase A, `breakdown` phase B.
fn child(phase: &str, steps: usize) {
    let device = Device::Cpu;
    let trainable = Trainable::seeded(&model_config(), WEIGHT_SEED, &device).expect("init model");
    let data = lcg_tokens(BATCH * (CTX + 1), 1234, VOCAB as u64);
    // As the reference: 16 rows of 129 tokens; inputs are tokens 0..128 of a row, targets
    // tokens 1..129, every position counts (`loss_from` 0).
    let sequences: Vec<(Vec<u32>, usize)> =
        data.chunks(CTX + 1).map(|row| (row.to_vec(), 0)).collect();
    let batch = Batch::new(&sequences, 0, &device).expect("batch");
    assert_eq!(batch.inputs.dims(), &[BATCH, CTX]);
    let model = &trainable.model;
    let named = Trainer::named_vars(&trainable.varmap);
    match phase {
        "steps" => phase_json(&training_steps(model, &batch, named, steps)),
        "breakdown" => phase_json(&breakdown(model, &batch, named, steps)),
        other => panic!("unknown phase {other:?}"),
    }
}

/// Phase A: `WARMUP` + `steps` steps of forward (with the loss read) and `Trainer::step`.
fn training_steps(
    model: &CausalLm,
    batch: &Batch,
    named: Vec<(String, Var)>,
    steps: usize,
) -> Steps {
    let schedule = Schedule {
        peak_lr: 1e-3,
        warmup_steps: 1,
        total_steps: 1_000_000,
        final_fraction: 1.0,
    };
    let mut trainer = Trainer::new(named, schedule, 0.01, None).expect("trainer");
    let (mut tot, mut fw, mut upd, mut losses) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut usage_start = Usage::now();
    let mut rss = Vec::new();
    for step in 0..WARMUP + steps {
        if step == WARMUP {
            usage_start = Usage::now();
        }
        let t0 = Instant::now();
        let loss = lm_loss(model, batch).expect("forward");
        let lv = f64::from(loss.to_scalar::<f32>().expect("loss value"));
        let fwd = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        trainer.step(&loss).expect("Trainer::step");
        let up = t1.elapsed().as_secs_f64();
        losses.push(lv);
        let resident = rss_mib();
        if step >= WARMUP {
            tot.push(fwd + up);
            fw.push(fwd);
            upd.push(up);
            rss.push(resident);
        }
        println!(
            "  step {step:3} loss {lv:.4} fwd {:.1}ms Trainer::step {:.1}ms total {:.1}ms \
             rss {resident:.0} MiB",
            ms(fwd),
            ms(up),
            ms(fwd + up),
        );
    }
    let usage = Usage::now().minus(&usage_start, steps);
    let step_s = median(&tot);
    let a = Steps {
        step_s,
        fwd_s: median(&fw),
        update_s: median(&upd),
        tokens_per_s: (BATCH * CTX) as f64 / step_s,
        loss_first: losses[0],
        loss_last: *losses.last().expect("at least one step"),
        usage,
        rss_min_mib: rss.iter().copied().fold(f64::INFINITY, f64::min),
        rss_max_mib: rss.iter().copied().fold(0.0, f64::max),
        rss_trend_mib: slope(&rss),
    };
    println!(
        "TRAIN hone f32: median step {:.1} ms (fwd {:.1} Trainer::step {:.1}) -> {:.0} \
         tokens/s ; loss {:.4} -> {:.4} ; per step user {:.2} s sys {:.2} s (CPU/wall {:.2})",
        ms(a.step_s),
        ms(a.fwd_s),
        ms(a.update_s),
        a.tokens_per_s,
        a.loss_first,
        a.loss_last,
        a.usage.user_s,
        a.usage.sys_s,
        (a.usage.user_s + a.usage.sys_s) / a.step_s
    );
    a
}

/// Phase B: 1 + `steps` forward passes, each followed by `loss.backward()` alone.
fn breakdown(
    model: &CausalLm,
    batch: &Batch,
    named: Vec<(String, Var)>,
    steps: usize,
) -> Breakdown {
    let vars: Vec<Var> = named.into_iter().map(|(_, v)| v).collect();
    let (mut fw, mut bw) = (Vec::new(), Vec::new());
    let mut grads_with_graph = 0;
    for i in 0..1 + steps {
        let t0 = Instant::now();
        let loss = lm_loss(model, batch).expect("forward");
        loss.to_scalar::<f32>().expect("loss value");
        let fwd = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let grads = loss.backward().expect("backward");
        let bwd = t1.elapsed().as_secs_f64();
        if i == 0 {
            grads_with_graph = vars
                .iter()
                .filter(|v| grads.get(v.as_tensor()).is_some_and(Tensor::track_op))
                .count();
        }
        drop(grads);
        println!(
            "  pass {i:3} fwd {:.1}ms backward {:.1}ms",
            ms(fwd),
            ms(bwd)
        );
        if i >= 1 {
            fw.push(fwd);
            bw.push(bwd);
        }
    }
    let b = Breakdown {
        fwd_s: median(&fw),
        bwd_s: median(&bw),
        grads_with_graph,
        vars: vars.len(),
    };
    println!(
        "FWD/BWD hone: forward median {:.1} ms, backward median {:.1} ms, backward/forward \
         {:.2}",
        ms(b.fwd_s),
        ms(b.bwd_s),
        b.bwd_s / b.fwd_s
    );
    b
}

/// Least-squares slope of `values` against their index (0 for fewer than two).
fn slope(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    if values.len() < 2 {
        return 0.0;
    }
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = values.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in values.iter().enumerate() {
        let dx = i as f64 - mean_x;
        num += dx * (y - mean_y);
        den += dx * dx;
    }
    num / den
}

/// CPU time and minor page faults of this process (getrusage).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Usage {
    user_s: f64,
    sys_s: f64,
    minflt: f64,
}

impl Usage {
    fn now() -> Usage {
        Usage::of(libc::RUSAGE_SELF)
    }

    fn of(who: libc::c_int) -> Usage {
        // SAFETY: getrusage fills the zeroed struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut ru) };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        Usage {
            user_s: secs(ru.ru_utime),
            sys_s: secs(ru.ru_stime),
            minflt: ru.ru_minflt as f64,
        }
    }

    /// (self - earlier) / n.
    fn minus(&self, earlier: &Usage, n: usize) -> Usage {
        let n = n as f64;
        Usage {
            user_s: (self.user_s - earlier.user_s) / n,
            sys_s: (self.sys_s - earlier.sys_s) / n,
            minflt: (self.minflt - earlier.minflt) / n,
        }
    }
}

/// Watches how much CPU other processes use: the machine's busy time from /proc/stat minus
/// this process's and its waited-for children's CPU time, per second of wall time.
struct Background {
    start: Instant,
    machine_s: Option<f64>,
    own_s: f64,
}

impl Background {
    fn start() -> Background {
        Background {
            start: Instant::now(),
            machine_s: machine_busy_s(),
            own_s: own_cpu_s(),
        }
    }

    /// Cores' worth of CPU used by other processes since `start` (0 where /proc/stat is
    /// not there).
    fn cores(&self) -> f64 {
        let (Some(before), Some(after)) = (self.machine_s, machine_busy_s()) else {
            return 0.0;
        };
        let others = (after - before) - (own_cpu_s() - self.own_s);
        (others / self.start.elapsed().as_secs_f64()).max(0.0)
    }
}

fn own_cpu_s() -> f64 {
    [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN]
        .into_iter()
        .map(Usage::of)
        .map(|u| u.user_s + u.sys_s)
        .sum()
}

/// Busy CPU time of the whole machine (user, nice, system, irq, softirq, steal), seconds.
fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    (ticks > 0.0).then(|| busy / ticks)
}

/// This process's resident memory (VmRSS), MiB; 0 where /proc is not there.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The 1-, 5- and 15-minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn sample_params() -> SampleParams {
    SampleParams {
        temperature: 1.0,
        top_k: None,
        top_p: None,
        max_new_tokens: NEW_TOKENS,
        eos_token_ids: Vec::new(),
    }
}

/// hone's own API: `sample_batch`, one prompt after another, each with its KV cache.
fn time_sample_per_prompt(model: &CausalLm, prompts: &[Vec<u32>], device: &Device) -> f64 {
    let t0 = Instant::now();
    let samples = sample_batch(model, prompts, &sample_params(), 0, device).expect("sample");
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(samples.iter().all(|s| s.tokens.len() == NEW_TOKENS));
    elapsed
}

/// The 16 prompts as one batch through hone's model and KV cache, each row's token chosen
/// by hone's `choose` from its own stream; returns (total, forward, choose) seconds.
fn time_sample_batched(model: &CausalLm, prompts: &[Vec<u32>], device: &Device) -> (f64, f64, f64) {
    let params = sample_params();
    let mut rngs: Vec<ChaCha8Rng> = (0..prompts.len() as u64)
        .map(ChaCha8Rng::seed_from_u64)
        .collect();
    let (mut fwd_s, mut choose_s) = (0.0, 0.0);
    let t0 = Instant::now();
    let flat: Vec<u32> = prompts.concat();
    let mut input = Tensor::from_vec(flat, (prompts.len(), PROMPT_LEN), device).expect("prompts");
    let mut cache = model.new_cache();
    let mut position = 0;
    let mut produced = vec![Vec::with_capacity(NEW_TOKENS); prompts.len()];
    for i in 0..NEW_TOKENS {
        let tf = Instant::now();
        let t = input.dim(1).expect("dim");
        let logits = model
            .forward(&input, Some(&mut cache), position)
            .expect("forward");
        position += t;
        let last: Vec<Vec<f32>> = logits
            .narrow(1, t - 1, 1)
            .and_then(|l| l.squeeze(1))
            .and_then(|l| l.to_vec2())
            .expect("last logits");
        fwd_s += tf.elapsed().as_secs_f64();
        let tc = Instant::now();
        let next: Vec<u32> = last
            .iter()
            .zip(rngs.iter_mut())
            .map(|(row, rng)| choose(row, &params, rng).0)
            .collect();
        choose_s += tc.elapsed().as_secs_f64();
        for (out, token) in produced.iter_mut().zip(&next) {
            out.push(*token);
        }
        if i + 1 < NEW_TOKENS {
            input = Tensor::from_vec(next, (prompts.len(), 1), device).expect("next tokens");
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(produced.iter().all(|p| p.len() == NEW_TOKENS));
    (elapsed, fwd_s, choose_s)
}

fn reference_script() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HONE_TORCH_REFERENCE") {
        return Some(PathBuf::from(p));
    }
    [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/torch_reference.py"),
        PathBuf::from("/work/shared/bench/torch_reference.py"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

fn run_torch(steps: usize, threads: usize) -> Torch {
    if std::env::var("HONE_BENCH_SKIP_TORCH").is_ok_and(|v| v == "1") {
        println!("PyTorch reference skipped (HONE_BENCH_SKIP_TORCH=1)");
        return Torch::default();
    }
    let python = std::env::var_os("HONE_TORCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/hone-ref-venv/bin/python"));
    if !python.exists() {
        println!(
            "PyTorch reference skipped: no python at {}",
            python.display()
        );
        return Torch::default();
    }
    let Some(script) = reference_script() else {
        println!("PyTorch reference skipped: torch_reference.py not found");
        return Torch::default();
    };
    println!(
        "running {} {} --threads {threads} --steps {steps}",
        python.display(),
        script.display()
    );
    let output = Command::new(&python)
        .arg(&script)
        .args([
            "--threads",
            &threads.to_string(),
            "--steps",
            &steps.to_string(),
        ])
        .env("OMP_NUM_THREADS", threads.to_string())
        .env("MKL_NUM_THREADS", threads.to_string())
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) => {
            println!("PyTorch reference failed to start: {e}");
            return Torch::default();
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        println!(
            "PyTorch reference failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        return Torch::default();
    }
    let mut torch = Torch::default();
    for line in stdout.lines() {
        if line.starts_with("torch ") {
            torch.version = line.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("params ") {
            torch.params = rest.trim().parse().ok();
        } else if line.starts_with("TRAIN ") {
            torch.train = parse_train(line);
            println!("{line}");
        } else if line.starts_with("GEN ") {
            println!("{line}");
            let rate = number_after(line, "-> ");
            if line.contains("kv_cache=True") {
                torch.gen_cached = rate;
            } else if line.contains("kv_cache=False") {
                torch.gen_uncached = rate;
            }
        }
    }
    if torch.train.is_none() {
        println!("could not parse the PyTorch reference's output:\n{stdout}");
    }
    println!();
    torch
}

/// The number that follows the first `key` in `line`.
fn number_after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `TRAIN torch f32: median step X ms (fwd A bwd B opt C) -> T tokens/s ; loss L0 -> L1`.
fn parse_train(line: &str) -> Option<TorchTrain> {
    let loss_part = &line[line.find("; loss ")? + "; loss ".len()..];
    Some(TorchTrain {
        step_s: number_after(line, "median step ")? / 1e3,
        fwd_s: number_after(line, "(fwd ")? / 1e3,
        bwd_s: number_after(line, " bwd ")? / 1e3,
        opt_s: number_after(line, " opt ")? / 1e3,
        tokens_per_s: number_after(line, ") -> ")?,
        loss_first: number_after(loss_part, "")?,
        loss_last: number_after(loss_part, "-> ")?,
    })
}
