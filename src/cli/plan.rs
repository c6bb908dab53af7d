//! `hone plan`: the stage graph in run order, as text, Graphviz dot or Mermaid.

use clap::{Args, ValueEnum};

use super::{CliError, SpecArgs, load_pipeline, out, spec_and_targets};
use crate::runner::stage_indices;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Dot,
    Mermaid,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The spec and/or the stages to plan for.
    #[arg(value_name = "SPEC|STAGE")]
    pub positionals: Vec<String>,
    /// Include everything downstream of the given stages.
    #[arg(long)]
    pub downstream: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    #[command(flatten)]
    pub spec: SpecArgs,
}

pub fn run(args: PlanArgs) -> Result<u8, CliError> {
    let (spec_path, targets) = spec_and_targets(&args.positionals)?;
    let pipeline = load_pipeline(&spec_path, &args.spec.set)?;
    let targets = stage_indices(&pipeline, &targets)?;
    let selected = pipeline.select(&targets, args.downstream);
    out(&match args.format {
        Format::Text => format!(
            "pipeline `{}`: {} stages\n{}",
            pipeline.spec.name,
            selected.len(),
            pipeline.render_text(&selected)
        ),
        Format::Dot => pipeline.render_dot(&selected),
        Format::Mermaid => pipeline.render_mermaid(&selected),
    });
    Ok(0)
}
