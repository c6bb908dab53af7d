//! `hone validate`: check specs (structure, kinds, parameters, references, types, cycles)
//! without running anything.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, SpecArgs, default_spec, out};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Specs to check (default: `hone.yaml`, else `pipelines/quickstart.yaml`).
    #[arg(value_name = "SPEC")]
    pub specs: Vec<PathBuf>,
    #[command(flatten)]
    pub spec: SpecArgs,
}

pub fn run(args: ValidateArgs) -> Result<u8, CliError> {
    let specs = if args.specs.is_empty() {
        vec![default_spec()?]
    } else {
        args.specs
    };
    let mut code = 0;
    for path in &specs {
        match crate::dag::load(path, &args.spec.set, crate::stages::kinds()) {
            Ok(p) => out(&format!(
                "ok: `{}` (pipeline `{}`, {} stages)\n",
                path.display(),
                p.spec.name,
                p.spec.stages.len()
            )),
            Err(err) => {
                eprintln!("{err}");
                code = 2;
            }
        }
    }
    Ok(code)
}
