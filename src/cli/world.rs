//! `hone world generate`: write the HHH world's data files (data/hhh by default).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::CliError;
use crate::world::{DEFAULT_WORLD_SEED, generate};

#[derive(Debug, Args)]
pub struct WorldArgs {
    #[command(subcommand)]
    pub command: WorldCommand,
}

#[derive(Debug, Subcommand)]
pub enum WorldCommand {
    /// Generate the world's files (facts, prompts, corpus, demonstrations, candidates).
    Generate {
        /// Where to write them.
        #[arg(long, default_value = "data/hhh")]
        out: PathBuf,
        /// The world seed (the committed world is seed 1).
        #[arg(long, default_value_t = DEFAULT_WORLD_SEED)]
        seed: u64,
        /// Do not write: exit 1 if the files differ from a fresh generation.
        #[arg(long)]
        check: bool,
    },
}

pub fn run(args: WorldArgs) -> Result<u8, CliError> {
    let WorldCommand::Generate { out, seed, check } = args.command;
    if check {
        let stale: Vec<String> = generate::render_world(seed)
            .into_iter()
            .filter(|f| {
                std::fs::read_to_string(out.join(f.name)).ok().as_deref()
                    != Some(f.contents.as_str())
            })
            .map(|f| f.name.to_string())
            .collect();
        if stale.is_empty() {
            return Ok(0);
        }
        eprintln!(
            "stale in `{}`: {}; run `hone world generate`",
            out.display(),
            stale.join(", ")
        );
        return Ok(1);
    }
    generate::write_world(&out, seed)
        .map_err(|e| CliError::Failed(format!("writing `{}`: {e}", out.display())))?;
    eprintln!("wrote the HHH world (seed {seed}) into `{}`", out.display());
    Ok(0)
}
