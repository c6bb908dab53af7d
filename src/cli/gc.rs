//! `hone gc`: remove stored results that no lock file references.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Args;

use super::{CliError, human_size, out, workspace};
use crate::cache::lock::lock_path;
use crate::cache::{LockFile, Store};

#[derive(Debug, Args)]
#[command(
    after_help = "Where gc looks for lock files: every `*.lock` hone wrote under the workspace \
(hidden directories included; not `.git`, `.hone`, `target` or `node_modules`), every lock file a \
run in this workspace wrote wherever it lives (recorded in `.hone/locks.json`), and each `--keep`."
)]
pub struct GcArgs {
    /// Keep only what the lock files of these specs reference (default: every lock file
    /// gc can find, see below).
    #[arg(value_name = "SPEC")]
    pub specs: Vec<PathBuf>,
    /// Also keep what this lock file references (repeatable).
    #[arg(long, value_name = "LOCK")]
    pub keep: Vec<PathBuf>,
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
    if !args.dry_run {
        // Leftovers of killed runs and of a killed gc (objects half-way out).
        store.clear_tmp()?;
    }
    let mut locks: BTreeSet<PathBuf> = BTreeSet::new();
    let mut gone = Vec::new();
    if args.specs.is_empty() {
        locks.extend(find_locks(&ws).iter().map(|p| absolute(p)));
        for known in store.known_locks() {
            if known.exists() {
                locks.insert(known);
            } else {
                gone.push(known);
            }
        }
    } else {
        locks.extend(args.specs.iter().map(|s| absolute(&lock_path(s))));
    }
    for keep in &args.keep {
        if !keep.is_file() {
            return Err(CliError::Input(format!(
                "--keep `{}`: no such lock file",
                keep.display()
            )));
        }
        locks.insert(absolute(keep));
    }
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
        for lock in &locks {
            let _ = crate::artifact::remove_stale_temps(lock);
        }
        if !gone.is_empty() {
            store.forget_locks(&gone)?;
        }
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
    for lock in &locks {
        out(&format!("  kept: {}\n", shown(lock, &ws)));
    }
    Ok(0)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A lock path relative to the workspace when it is inside it.
fn shown(path: &Path, ws: &Path) -> String {
    let ws = absolute(ws);
    path.strip_prefix(&ws)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.display().to_string())
}

/// Every hone lock file under the workspace, hidden directories included, skipping
/// `.git`, `.hone`, `target/` and `node_modules/`.
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
                if ![".git", ".hone", "target", "node_modules"].contains(&name.as_str()) {
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
