//! `hone run`: run the stale stages, with a live display and a summary.

use std::sync::atomic::Ordering;

use clap::Args;

use super::progress::Display;
use super::{
    CANCEL, CliError, SpecArgs, install_interrupt_handler, load_pipeline, out, spec_and_targets,
    workspace,
};
use crate::runner::{self, Executor, RunOptions, RunReport, StageReport, Status};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExecutorArg {
    Thread,
    Process,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The spec (a .yaml file) and/or stages to run; without stages, all of them.
    #[arg(value_name = "SPEC|STAGE")]
    pub positionals: Vec<String>,
    /// Also run everything downstream of the given stages.
    #[arg(long)]
    pub downstream: bool,
    /// Run this stage even if its result is stored (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub force: Vec<String>,
    /// Run every selected stage even if stored.
    #[arg(long)]
    pub force_all: bool,
    /// How many CPU threads stages may use at once (default: the number of cores).
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,
    /// After a failure, go on with the stages that do not depend on it.
    #[arg(short, long)]
    pub keep_going: bool,
    /// Fail if the run would change the lock file (checks that a shared experiment reproduces).
    #[arg(long)]
    pub frozen: bool,
    /// If another run holds the workspace, wait for it instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Run each stage in a worker thread, or in its own `hone exec-stage` process (as a
    /// cluster executor would).
    #[arg(long, value_enum, default_value = "thread")]
    pub executor: ExecutorArg,
    #[command(flatten)]
    pub spec: SpecArgs,
}

pub fn run(args: RunArgs, quiet: bool) -> Result<u8, CliError> {
    let (spec_path, targets) = spec_and_targets(&args.positionals)?;
    let pipeline = load_pipeline(&spec_path, &args.spec.set)?;
    let ws = workspace()?;
    install_interrupt_handler();
    let options = RunOptions {
        targets,
        downstream: args.downstream,
        force: args.force,
        force_all: args.force_all,
        jobs: args.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        keep_going: args.keep_going,
        frozen: args.frozen,
        wait: args.wait,
        executor: match args.executor {
            ExecutorArg::Thread => Executor::InProcess,
            ExecutorArg::Process => Executor::Process {
                program: std::env::current_exe()
                    .map_err(|e| CliError::Failed(format!("cannot find the hone binary: {e}")))?,
                overrides: args.spec.set.clone(),
            },
        },
    };
    let display = Display::new(!quiet && !args.json);
    let report = runner::run(&pipeline, &spec_path, &ws, &options, &CANCEL, &display)?;
    display.clear();
    if args.json {
        out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&json_report(&report)).expect("json")
        ));
    } else if !quiet || !report.ok() {
        out(&summary(&report));
    }
    Ok(if report.interrupted() || CANCEL.load(Ordering::SeqCst) {
        130
    } else if report.ok() {
        0
    } else {
        1
    })
}

pub(super) fn mark(status: &Status) -> &'static str {
    match status {
        Status::Ran => "✓",
        Status::Cached => "·",
        Status::Failed(_) => "✗",
        Status::Skipped(_) => "-",
        Status::Interrupted => "!",
    }
}

fn summary(report: &RunReport) -> String {
    let count = |word: &str| {
        report
            .stages
            .iter()
            .filter(|s| s.status.word() == word)
            .count()
    };
    let mut parts = Vec::new();
    for word in ["ran", "cached", "failed", "skipped", "interrupted"] {
        let n = count(word);
        if n > 0 {
            parts.push(format!("{n} {word}"));
        }
    }
    let width = report.stages.iter().map(|s| s.id.len()).max().unwrap_or(0);
    let mut text = format!(
        "pipeline `{}`: {} stage{} ({}) in {:.2} s\n",
        report.pipeline,
        report.stages.len(),
        if report.stages.len() == 1 { "" } else { "s" },
        parts.join(", "),
        report.wall.as_secs_f64()
    );
    for s in &report.stages {
        let time = if s.status == Status::Ran
            || matches!(s.status, Status::Failed(_)) && !s.duration.is_zero()
        {
            format!("{:>8.2} s", s.duration.as_secs_f64())
        } else {
            String::new()
        };
        let line = format!(
            "  {} {:<width$}  {:<7}{time}",
            mark(&s.status),
            s.id,
            s.status.word()
        );
        text.push_str(line.trim_end());
        text.push('\n');
        match &s.status {
            Status::Failed(why) | Status::Skipped(why) => {
                for line in why.lines() {
                    text.push_str(&format!("      {line}\n"));
                }
            }
            _ => {}
        }
    }
    for v in &report.frozen_violations {
        text.push_str(&format!("--frozen: {v}\n"));
    }
    if let Some(e) = &report.lock_error {
        text.push_str(&format!("error: {e}\n"));
    }
    text
}

fn json_report(report: &RunReport) -> serde_json::Value {
    let stages: Vec<serde_json::Value> = report.stages.iter().map(stage_json).collect();
    serde_json::json!({
        "pipeline": report.pipeline,
        "ok": report.ok(),
        "wall_s": report.wall.as_secs_f64(),
        "stages": stages,
        "frozen_violations": report.frozen_violations,
        "lock_error": report.lock_error,
    })
}

/// One stage's outcome as JSON (shared by `hone run --json` and `hone exec-stage --json`).
pub fn stage_json(s: &StageReport) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": s.id,
        "status": s.status.word(),
        "duration_s": s.duration.as_secs_f64(),
        "fingerprint": s.fingerprint,
        "outputs": s.outputs,
    });
    if let Status::Failed(why) | Status::Skipped(why) = &s.status {
        v["reason"] = serde_json::Value::String(why.clone());
    }
    v
}
