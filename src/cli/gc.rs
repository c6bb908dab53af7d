//! `hone gc`: remove stored results that no lock file references.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, human_size, out, workspace};
use crate::cache::lock::lock_path;
use crate::cache::{LockFile, Store};

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Keep only what the lock files of these specs reference (default: every `*.lock`
    /// file in the workspace).
    #[arg(value_name = "SPEC")]
    pub specs: Vec<PathBuf>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: GcArgs) -> Result<u8, CliError> {
    let ws = workspace()?;
    let Some(store) = Store::open_existing(&ws)? else {
        out("nothing to collect: no `.hone/` store here\n");
        return Ok(0);
    };
    let _guard = store.lock(false, "hone gc")?;
    let locks: Vec<PathBuf> = if args.specs.is_empty() {
        find_locks(&ws)
    } else {
        args.specs.iter().map(|s| lock_path(s)).collect()
    };
    let mut keep_runs = BTreeSet::new();
    let mut keep_objects = BTreeSet::new();
    for path in &locks {
        let Some(lock) = LockFile::read(path)? else {
            return Err(CliError::Input(format!(
                "no lock file `{}`",
                path.display()
            )));
        };
        for entry in lock.stages.values() {
            keep_runs.insert(entry.fingerprint.clone());
            keep_objects.extend(entry.outputs.values().map(|o| o.digest.clone()));
        }
    }
    let io = |e: std::io::Error| CliError::Failed(format!("reading the store: {e}"));
    let mut removed_runs = 0;
    for fp in store.list_runs().map_err(io)? {
        if !keep_runs.contains(&fp) {
            removed_runs += 1;
            if !args.dry_run {
                store.remove_run(&fp).map_err(io)?;
            }
        }
    }
    let (mut removed_objects, mut freed) = (0, 0u64);
    for digest in store.list_objects().map_err(io)? {
        if !keep_objects.contains(&digest) {
            removed_objects += 1;
            freed += store.object_size(&digest);
            if !args.dry_run {
                store.remove_object(&digest).map_err(io)?;
            }
        }
    }
    if !args.dry_run {
        let _ = store.clear_resume();
    }
    out(&format!(
        "{} {removed_objects} object{} ({}) and {removed_runs} run record{}; kept what {} lock file{} reference\n",
        if args.dry_run {
            "would remove"
        } else {
            "removed"
        },
        if removed_objects == 1 { "" } else { "s" },
        human_size(freed),
        if removed_runs == 1 { "" } else { "s" },
        locks.len(),
        if locks.len() == 1 { "" } else { "s" },
    ));
    Ok(0)
}

/// Every hone lock file under the workspace, skipping hidden directories and `target/`.
fn find_locks(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    stack.push(path);
                }
            } else if name.ends_with(".lock")
                && std::fs::read_to_string(&path).is_ok_and(|t| t.starts_with("# hone lock file"))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}
