//! `hone status`: which stages are up to date, and why the others are not.

use clap::Args;

use super::{CliError, SpecArgs, load_pipeline, out, spec_and_targets, workspace};
use crate::runner;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The spec (default: `hone.yaml`, else `pipelines/quickstart.yaml`).
    #[arg(value_name = "SPEC")]
    pub spec_path: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 when any stage is stale (0 when everything is up to date), for a CI check.
    #[arg(long)]
    pub exit_code: bool,
    #[command(flatten)]
    pub spec: SpecArgs,
}

pub fn run(args: StatusArgs) -> Result<u8, CliError> {
    let (spec_path, _) = spec_and_targets(&args.spec_path.into_iter().collect::<Vec<_>>())?;
    let pipeline = load_pipeline(&spec_path, &args.spec.set)?;
    let states = runner::status(&pipeline, &spec_path, &workspace()?)?;
    let stale = states.iter().filter(|s| !s.up_to_date).count();
    let code = u8::from(args.exit_code && stale > 0);
    if args.json {
        let stages: Vec<serde_json::Value> = states
            .iter()
            .map(|s| serde_json::json!({"id": s.id, "up_to_date": s.up_to_date, "reasons": s.reasons, "fingerprint": s.fingerprint}))
            .collect();
        out(&format!(
            "{}\n",
            serde_json::to_string_pretty(
                &serde_json::json!({"pipeline": pipeline.spec.name, "stages": stages})
            )
            .expect("json")
        ));
        return Ok(code);
    }
    let mut text = format!(
        "pipeline `{}` ({}): {} up to date, {stale} stale\n",
        pipeline.spec.name,
        spec_path.display(),
        states.len() - stale
    );
    let width = states.iter().map(|s| s.id.len()).max().unwrap_or(0);
    for s in &states {
        let word = if s.up_to_date { "ok   " } else { "stale" };
        let first = s
            .reasons
            .first()
            .map(|r| format!("  {r}"))
            .unwrap_or_default();
        text.push_str(format!("  {word} {:<width$}{first}", s.id).trim_end());
        text.push('\n');
        for r in s.reasons.iter().skip(1) {
            text.push_str(&format!("        {:<width$}  {r}\n", ""));
        }
    }
    out(&text);
    Ok(code)
}
