//! Command-line interface (clap derive), one file per subcommand. The only module that
//! prints to stdout.

mod completions;
mod exec_stage;
mod gc;
mod plan;
mod progress;
mod run;
pub mod schema;
mod show;
mod status;
mod validate;
mod verify;
mod world;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use clap::{Args, Parser, Subcommand};

use crate::runner::RunError;
use crate::spec::SpecError;

/// The spec `hone` uses when none is given: `hone.yaml` in the workspace if there is one,
/// else the embedded default pipeline.
pub const DEFAULT_SPECS: [&str; 2] = ["hone.yaml", "pipelines/quickstart.yaml"];

#[derive(Debug, Parser)]
#[command(
    name = "hone",
    version,
    about = "RLHF as a declarative, cached, reproducible pipeline"
)]
pub struct Cli {
    /// Run as if started in DIR (the workspace: `.hone/` and every relative path live there).
    #[arg(short = 'C', long = "workspace", global = true, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// More log output (-v info, -vv debug); `RUST_LOG` also works.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the stale stages of a pipeline (all, or the given targets and what they need).
    Run(run::RunArgs),
    /// Show which stages are up to date and why the others are not.
    Status(status::StatusArgs),
    /// Print the stage graph (text, Graphviz dot or Mermaid).
    Plan(plan::PlanArgs),
    /// Check specs without running anything; every problem is reported.
    Validate(validate::ValidateArgs),
    /// Where a stage's outputs are stored, their type, digest and a summary.
    Show(show::ShowArgs),
    /// Remove stored results that no lock file references.
    Gc(gc::GcArgs),
    /// Check every stored artifact against its digest.
    Verify(verify::VerifyArgs),
    /// Write the JSON Schema of specs (schemas/pipeline.schema.json).
    Schema(schema::SchemaArgs),
    /// Run one stage from the store's inputs into the store, in this process (what a
    /// cluster executor calls; `hone run` schedules it for you).
    ExecStage(exec_stage::ExecStageArgs),
    /// The HHH world: `hone world generate` writes data/hhh.
    World(world::WorldArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
}

/// The spec file and `-S` overrides, shared by the commands that read a spec.
#[derive(Debug, Args, Clone)]
pub struct SpecArgs {
    /// Override a value: `params.NAME=V`, `seed=N` or `STAGE.with.KEY=V` (repeatable).
    #[arg(short = 'S', long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// An error that ends a command, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    /// Bad input or usage (exit 2).
    #[error("error: {0}")]
    Input(String),
    /// Something failed while working (exit 1).
    #[error("error: {0}")]
    Failed(String),
}

impl CliError {
    pub fn code(&self) -> u8 {
        match self {
            CliError::Spec(_) | CliError::Input(_) => 2,
            CliError::Failed(_) => 1,
        }
    }
}

impl From<RunError> for CliError {
    fn from(e: RunError) -> Self {
        if e.is_input() {
            CliError::Input(e.to_string())
        } else {
            CliError::Failed(e.to_string())
        }
    }
}

impl From<crate::cache::CacheError> for CliError {
    fn from(e: crate::cache::CacheError) -> Self {
        CliError::from(RunError::from(e))
    }
}

pub fn init_tracing(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a terminal, and never under NO_COLOR (no-color.org).
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}

/// Set by Ctrl-C (or SIGTERM): running stages are stopped, nothing new starts.
pub static CANCEL: AtomicBool = AtomicBool::new(false);

/// The first Ctrl-C stops running stages and keeps finished ones; a second quits at once.
pub fn install_interrupt_handler() {
    let presses = AtomicUsize::new(0);
    let _ = ctrlc::set_handler(move || {
        if presses.fetch_add(1, Ordering::SeqCst) > 0 {
            eprintln!("interrupted again: stopping at once");
            std::process::exit(130);
        }
        eprintln!(
            "interrupt: stopping running stages; finished stages are kept (Ctrl-C again to quit at once)"
        );
        CANCEL.store(true, Ordering::SeqCst);
    });
}

/// Runs a parsed command line and returns the exit code.
pub fn run(cli: Cli) -> u8 {
    if let Some(dir) = &cli.workspace
        && let Err(e) = std::env::set_current_dir(dir)
    {
        eprintln!("error: cannot enter the workspace `{}`: {e}", dir.display());
        return 2;
    }
    let result = match cli.command {
        Command::Run(args) => run::run(args, cli.quiet),
        Command::Status(args) => status::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Show(args) => show::run(args),
        Command::Gc(args) => gc::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Schema(args) => schema::run(args),
        Command::ExecStage(args) => exec_stage::run(args),
        Command::World(args) => world::run(args),
        Command::Completions(args) => completions::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{err}");
            err.code()
        }
    }
}

/// The workspace root: the current directory, made absolute.
pub fn workspace() -> Result<PathBuf, CliError> {
    std::env::current_dir()
        .map_err(|e| CliError::Failed(format!("cannot read the current directory: {e}")))
}

/// Splits positional arguments into the spec (the first, when it names a YAML file) and
/// stage names; without a spec, the default one.
pub fn spec_and_targets(positionals: &[String]) -> Result<(PathBuf, Vec<String>), CliError> {
    if let Some(first) = positionals.first()
        && (first.ends_with(".yaml") || first.ends_with(".yml") || Path::new(first).is_file())
    {
        return Ok((PathBuf::from(first), positionals[1..].to_vec()));
    }
    Ok((default_spec()?, positionals.to_vec()))
}

pub fn default_spec() -> Result<PathBuf, CliError> {
    DEFAULT_SPECS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| CliError::Input(format!(
            "no spec given and none found here (looked for {}); pass one, e.g. `hone run pipelines/x.yaml`",
            DEFAULT_SPECS.map(|s| format!("`{s}`")).join(", ")
        )))
}

/// Loads and validates a spec into a pipeline.
pub fn load_pipeline(spec: &Path, set: &[String]) -> Result<crate::dag::Pipeline, CliError> {
    Ok(crate::dag::load(spec, set, crate::stages::kinds())?)
}

/// Writes to stdout; a closed pipe (`hone plan | head`) ends the program quietly.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|_| stdout.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// Bytes as people read them.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
