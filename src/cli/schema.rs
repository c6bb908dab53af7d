//! `hone schema`: write (or check) the JSON Schema of specs.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, out};
use crate::spec::schema::pipeline_schema_json;

pub const SCHEMA_PATH: &str = "schemas/pipeline.schema.json";

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Where to write it; `-` for stdout.
    #[arg(long, default_value = SCHEMA_PATH)]
    pub out: PathBuf,
    /// Do not write: exit 1 if the file differs from what this hone generates.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: SchemaArgs) -> Result<u8, CliError> {
    let text = pipeline_schema_json();
    if args.out.as_os_str() == "-" {
        out(&text);
        return Ok(0);
    }
    if args.check {
        let current = std::fs::read_to_string(&args.out).unwrap_or_default();
        if current != text {
            eprintln!(
                "`{}` is stale: run `hone schema` and commit the result",
                args.out.display()
            );
            return Ok(1);
        }
        return Ok(0);
    }
    crate::artifact::write_atomic(&args.out, text.as_bytes())
        .map_err(|e| CliError::Failed(format!("writing `{}`: {e}", args.out.display())))?;
    eprintln!("wrote `{}`", args.out.display());
    Ok(0)
}
