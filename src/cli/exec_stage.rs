//! `hone exec-stage SPEC STAGE`: run one stage in this process, its inputs read from the
//! store and its outputs committed there. `hone run --executor process` uses it; a Slurm
//! or Kubernetes executor would submit it as a job.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use clap::Args;

use super::run::stage_json;
use super::{CANCEL, CliError, SpecArgs, install_interrupt_handler, load_pipeline, out, workspace};
use crate::runner::{self, Status};

#[derive(Debug, Args)]
pub struct ExecStageArgs {
    pub spec_path: PathBuf,
    pub stage: String,
    /// Run even if the stage's result is stored.
    #[arg(long)]
    pub force: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub spec: SpecArgs,
}

pub fn run(args: ExecStageArgs) -> Result<u8, CliError> {
    let pipeline = load_pipeline(&args.spec_path, &args.spec.set)?;
    install_interrupt_handler();
    let report = runner::exec_one(
        &pipeline,
        &args.spec_path,
        &workspace()?,
        &args.stage,
        args.force,
        &CANCEL,
    )?;
    if args.json {
        out(&format!("{}\n", stage_json(&report)));
    } else {
        let detail = match &report.status {
            Status::Failed(why) => format!(": {why}"),
            _ => String::new(),
        };
        out(&format!("{} {}{detail}\n", report.id, report.status.word()));
    }
    Ok(match report.status {
        Status::Ran | Status::Cached => 0,
        Status::Interrupted => 130,
        _ if CANCEL.load(Ordering::SeqCst) => 130,
        _ => 1,
    })
}
