//! `hone verify`: re-digest every stored artifact and check every run record.

use clap::Args;

use super::{CliError, human_size, out, workspace};
use crate::cache::Store;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Remove corrupt objects and the run records that use them, so the next run recomputes them.
    #[arg(long)]
    pub fix: bool,
}

pub fn run(args: VerifyArgs) -> Result<u8, CliError> {
    let ws = workspace()?;
    let Some(store) = Store::open_existing(&ws)? else {
        out("nothing to verify: no `.hone/` store here\n");
        return Ok(0);
    };
    let _guard = if args.fix {
        Some(store.lock(false, "hone verify --fix")?)
    } else {
        None
    };
    let io = |e: std::io::Error| CliError::Failed(format!("reading the store: {e}"));
    let mut problems = Vec::new();
    let mut corrupt = std::collections::BTreeSet::new();
    let (mut n_objects, mut bytes) = (0, 0u64);
    for digest in store.list_objects().map_err(io)? {
        n_objects += 1;
        match crate::artifact::digest_path(&store.object_path(&digest)) {
            Ok(d) if d.hex == digest => bytes += d.size,
            Ok(d) => {
                problems.push(format!(
                    "object {digest} is corrupt: its content digests to {}",
                    d.hex
                ));
                corrupt.insert(digest);
            }
            Err(e) => {
                problems.push(format!("object {digest} cannot be read: {e}"));
                corrupt.insert(digest);
            }
        }
    }
    let mut bad_runs = Vec::new();
    let runs = store.list_runs().map_err(io)?;
    for fp in &runs {
        match store.read_run(fp) {
            None => {
                problems.push(format!("run record {fp} cannot be read"));
                bad_runs.push(fp.clone());
            }
            Some(record) => {
                for (name, o) in &record.outputs {
                    if corrupt.contains(&o.digest) {
                        problems.push(format!(
                            "stage `{}` output `{name}` uses corrupt object {}",
                            record.stage, o.digest
                        ));
                        bad_runs.push(fp.clone());
                    } else if !store.has_object(&o.digest) {
                        problems.push(format!(
                            "stage `{}` output `{name}`: object {} is missing",
                            record.stage, o.digest
                        ));
                        bad_runs.push(fp.clone());
                    }
                }
            }
        }
    }
    let mut text = format!(
        "checked {n_objects} objects ({}) and {} run records\n",
        human_size(bytes),
        runs.len()
    );
    for p in &problems {
        text.push_str(&format!("  problem: {p}\n"));
    }
    if problems.is_empty() {
        text.push_str("all intact\n");
        out(&text);
        return Ok(0);
    }
    if args.fix {
        for digest in &corrupt {
            store.remove_object(digest).map_err(io)?;
        }
        for fp in &bad_runs {
            store.remove_run(fp).map_err(io)?;
        }
        text.push_str(&format!(
            "fixed: removed {} objects and {} run records; the next `hone run` recomputes them\n",
            corrupt.len(),
            bad_runs.len()
        ));
        out(&text);
        return Ok(0);
    }
    text.push_str(
        "run `hone verify --fix` to drop the damaged results so the next run recomputes them\n",
    );
    out(&text);
    Ok(1)
}
