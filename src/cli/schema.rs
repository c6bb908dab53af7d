//! `hone schema`: write (or check) the generated schemas: the JSON Schema of specs and the
//! column schema of every table kind.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, out};
use crate::spec::schema::pipeline_schema_json;
use crate::stages::table_kinds;

pub const SCHEMA_DIR: &str = "schemas";

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// The directory to write into; `-` prints the pipeline schema on stdout.
    #[arg(long, default_value = SCHEMA_DIR)]
    pub out: PathBuf,
    /// Do not write: exit 1 if any file differs from what this hone generates.
    #[arg(long)]
    pub check: bool,
}

/// Every generated schema file: (path relative to the schema directory, content).
pub fn generated() -> Vec<(String, String)> {
    let mut files = vec![(
        "pipeline.schema.json".to_string(),
        pipeline_schema_json(crate::stages::kinds()),
    )];
    for kind in table_kinds() {
        files.push((format!("tables/{}.json", kind.name), kind.schema_json()));
    }
    files
}

pub fn run(args: SchemaArgs) -> Result<u8, CliError> {
    if args.out.as_os_str() == "-" {
        out(&pipeline_schema_json(crate::stages::kinds()));
        return Ok(0);
    }
    let mut stale = Vec::new();
    for (rel, text) in generated() {
        let path = Path::new(&args.out).join(&rel);
        if args.check {
            if std::fs::read_to_string(&path).unwrap_or_default() != text {
                stale.push(path.display().to_string());
            }
            continue;
        }
        crate::artifact::write_atomic(&path, text.as_bytes())
            .map_err(|e| CliError::Failed(format!("writing `{}`: {e}", path.display())))?;
        eprintln!("wrote `{}`", path.display());
    }
    if !stale.is_empty() {
        eprintln!(
            "stale: {}; run `hone schema` and commit the result",
            stale.join(", ")
        );
        return Ok(1);
    }
    Ok(0)
}
