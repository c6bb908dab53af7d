//! `hone show STAGE[.OUTPUT]`: where a stage's outputs are stored, their type, digest and
//! a short summary of their contents.

use std::path::Path;

use clap::Args;

use super::{CliError, SpecArgs, human_size, load_pipeline, out, spec_and_targets, workspace};
use crate::cache::lock::lock_path;
use crate::cache::{LockFile, LockOutput, Store};
use crate::runner;

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// [SPEC] STAGE or STAGE.OUTPUT
    #[arg(value_name = "SPEC|TARGET", required = true)]
    pub positionals: Vec<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub spec: SpecArgs,
}

pub fn run(args: ShowArgs) -> Result<u8, CliError> {
    let (spec_path, targets) = spec_and_targets(&args.positionals)?;
    let [target] = targets.as_slice() else {
        return Err(CliError::Input(
            "`hone show` takes one STAGE or STAGE.OUTPUT".into(),
        ));
    };
    let pipeline = load_pipeline(&spec_path, &args.spec.set)?;
    let (stage_id, output) = match pipeline.index_of(target) {
        Some(_) => (target.as_str(), None),
        None => match target.rsplit_once('.') {
            Some((s, o)) if pipeline.index_of(s).is_some() => (s, Some(o)),
            _ => {
                runner::stage_indices(&pipeline, std::slice::from_ref(target))?;
                return Err(CliError::Input(format!("no stage `{target}`")));
            }
        },
    };
    let i = pipeline.index_of(stage_id).expect("checked");
    let stage = &pipeline.spec.stages[i];
    if let Some(o) = output
        && !stage.signature.outputs.iter().any(|p| p.name == o)
    {
        let names: Vec<&str> = stage
            .signature
            .outputs
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        return Err(CliError::Input(format!(
            "stage `{stage_id}` has no output `{o}` (outputs: {})",
            names.join(", ")
        )));
    }
    let ws = workspace()?;
    let states = runner::status(&pipeline, &spec_path, &ws)?;
    let state = states
        .iter()
        .find(|s| s.id == stage_id)
        .expect("every stage has a state");
    let store = Store::open_existing(&ws)?;
    let current = state
        .fingerprint
        .as_ref()
        .and_then(|fp| store.as_ref()?.cached_run(fp))
        .map(|r| r.outputs);
    let (outputs, note) = match current {
        Some(o) => (o, None),
        None => {
            let locked = LockFile::read(&lock_path(&spec_path))?
                .and_then(|l| l.stages.get(stage_id).cloned());
            match locked {
                Some(entry)
                    if store.as_ref().is_some_and(|s| {
                        entry.outputs.values().all(|o| {
                            s.check_object(&o.digest) == crate::cache::store::Integrity::Intact
                        })
                    }) =>
                {
                    (
                        entry.outputs,
                        Some(format!(
                            "stale: these are the outputs of the last run in the lock file ({})",
                            state.reasons.join("; ")
                        )),
                    )
                }
                _ => {
                    return Err(CliError::Failed(format!(
                        "stage `{stage_id}` has no stored outputs ({}); run `hone run {} {stage_id}` first",
                        state.reasons.join("; "),
                        spec_path.display()
                    )));
                }
            }
        }
    };
    let store = store.expect("outputs were found in the store");
    let shown: Vec<(&String, &LockOutput)> = outputs
        .iter()
        .filter(|(name, _)| output.is_none_or(|o| o == name.as_str()))
        .collect();
    if args.json {
        let items: Vec<serde_json::Value> = shown
            .iter()
            .map(|(name, o)| {
                let path = store.object_rel(&o.digest);
                serde_json::json!({"stage": stage_id, "output": name, "path": path, "type": o.ty, "digest": o.digest, "size": o.size, "summary": summary(&ws.join(&path))})
            })
            .collect();
        let value = serde_json::json!({"stage": stage_id, "kind": stage.kind.name(), "up_to_date": note.is_none(), "note": note, "outputs": items});
        out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&value).expect("json")
        ));
        return Ok(0);
    }
    let mut text = format!("stage `{stage_id}` ({})\n", stage.kind.name());
    if let Some(note) = &note {
        text.push_str(&format!("  note: {note}\n"));
    }
    for (name, o) in shown {
        let path = store.object_rel(&o.digest);
        text.push_str(&format!("  {stage_id}.{name}\n    type    {}\n    path    {}\n    digest  blake3:{}\n    size    {}\n", o.ty, path.display(), o.digest, human_size(o.size)));
        for line in summary(&ws.join(&path)).lines() {
            text.push_str(&format!("    {line}\n"));
        }
    }
    out(&text);
    Ok(0)
}

/// A few lines about an artifact's contents.
fn summary(path: &Path) -> String {
    let Ok(meta) = std::fs::metadata(path) else {
        return "missing from the store".into();
    };
    if meta.is_dir() {
        let mut entries: Vec<String> = std::fs::read_dir(path)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        entries.sort();
        let mut lines = Vec::new();
        for name in entries.iter().filter(|n| n.ends_with(".parquet")) {
            lines.push(format!(
                "{name}: {}",
                parquet_summary(&path.join(name))
                    .lines()
                    .next()
                    .unwrap_or_default()
            ));
        }
        if let Ok(summary) = std::fs::read_to_string(path.join("summary.json")) {
            lines.push(format!(
                "summary.json: {}",
                summary.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
        let more = if entries.len() > 12 {
            format!(" (+{} more)", entries.len() - 12)
        } else {
            String::new()
        };
        entries.truncate(12);
        lines.insert(0, format!("directory: {}{more}", entries.join(", ")));
        return lines.join("\n");
    }
    let Ok(bytes) = std::fs::read(path) else {
        return "unreadable".into();
    };
    if bytes.starts_with(b"PAR1") {
        return parquet_summary(path);
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => {
            let lines = text.lines().count();
            let head: Vec<&str> = text.lines().take(3).collect();
            format!(
                "text, {lines} line{}; first lines:\n  {}",
                if lines == 1 { "" } else { "s" },
                head.join("\n  ")
            )
        }
        Err(_) => "binary file".into(),
    }
}

/// Rows, columns and hone's table kind of a Parquet file.
fn parquet_summary(path: &Path) -> String {
    let reader = std::fs::File::open(path)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
                .map_err(|e| e.to_string())
        });
    match reader {
        Err(e) => format!("unreadable Parquet file: {e}"),
        Ok(builder) => {
            let rows = builder.metadata().file_metadata().num_rows();
            let kind = builder
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .and_then(|kv| {
                    kv.iter()
                        .find(|k| k.key == "hone.table")
                        .and_then(|k| k.value.clone())
                });
            let columns: Vec<String> = builder
                .schema()
                .fields()
                .iter()
                .map(|f| format!("{}: {}", f.name(), f.data_type()))
                .collect();
            format!(
                "Parquet table{}, {rows} rows\ncolumns: {}",
                kind.map(|k| format!(" `{k}`")).unwrap_or_default(),
                columns.join(", ")
            )
        }
    }
}
