//! The content-addressed store under `.hone/` in the workspace.
//!
//! ```text
//! .hone/
//!   FORMAT                      store format version
//!   lock                        held (flock) by the run that owns the workspace
//!   objects/ab/<digest>         artifacts (files or directories), read-only, named by content
//!   runs/ab/<fingerprint>.json  run records: which objects a fingerprint produced
//!   resume/<fingerprint>/       checkpoints of a stage in flight, kept across crashes
//!   logs/<stage>.log            the latest log of each stage
//!   tmp/                        work in progress, cleared when a run starts
//!   files.json                  size+mtime fast path for workspace file digests
//! ```
//!
//! An object appears by an atomic rename of a complete, fsynced file or tree; a run record
//! is written (atomically) only after all its objects are in place. A crash therefore
//! leaves at worst unreferenced objects, which `hone gc` removes.
//!
//! Only this module knows that the store is a local directory: a remote store (S3 through
//! `object_store`) would implement the same operations and fetch objects into a local
//! cache for `object_path`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{CacheError, LockOutput, io_context};
use crate::artifact::{self, Digest};

/// The store layout version this hone reads and writes.
pub const STORE_FORMAT: &str = "1";

pub struct Store {
    /// The workspace root (where `.hone/` lives).
    pub workspace: PathBuf,
    root: PathBuf,
}

/// What one execution of a fingerprint produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub format: u32,
    pub fingerprint: String,
    pub stage: String,
    pub kind: String,
    pub outputs: BTreeMap<String, LockOutput>,
    pub duration_s: f64,
    /// Seconds since the Unix epoch when the stage finished.
    pub finished_at: u64,
}

/// The workspace lock; released when dropped.
pub struct WorkspaceLock {
    _file: File,
}

impl Store {
    /// Opens (creating if needed) the store of `workspace`.
    pub fn open(workspace: &Path) -> Result<Store, CacheError> {
        let root = workspace.join(".hone");
        let store = Store {
            workspace: workspace.to_path_buf(),
            root,
        };
        let format_path = store.root.join("FORMAT");
        match fs::read_to_string(&format_path) {
            Ok(found) if found.trim() == STORE_FORMAT => {}
            Ok(found) => {
                return Err(CacheError::StoreVersion {
                    path: store.root.display().to_string(),
                    found: found.trim().to_string(),
                    expected: STORE_FORMAT.to_string(),
                });
            }
            Err(_) => {
                fs::create_dir_all(&store.root)
                    .map_err(io_context(format!("creating `{}`", store.root.display())))?;
                artifact::write_atomic(&format_path, format!("{STORE_FORMAT}\n").as_bytes())
                    .map_err(io_context("writing the store format"))?;
                // The store is a cache: keep it out of version control.
                let _ = fs::write(store.root.join(".gitignore"), "*\n");
            }
        }
        Ok(store)
    }

    /// Opens the store only if it exists (read-only commands do not create one).
    pub fn open_existing(workspace: &Path) -> Result<Option<Store>, CacheError> {
        if workspace.join(".hone").is_dir() {
            Store::open(workspace).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The workspace file-digest cache kept in the store (`files.json`).
    pub fn file_cache(&self) -> super::files::FileCache {
        super::files::FileCache::load(self.root.join("files.json"))
    }

    /// Removes every stage's resume checkpoints (`hone gc`).
    pub fn clear_resume(&self) -> io::Result<()> {
        match fs::remove_dir_all(self.root.join("resume")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The size in bytes of a stored object (a directory's files together).
    pub fn object_size(&self, digest: &str) -> u64 {
        crate::artifact::digest_path(&self.object_path(digest))
            .map(|d| d.size)
            .unwrap_or(0)
    }

    /// Takes the workspace lock. Without `wait`, a busy workspace is an error that names
    /// the holder; with it, this blocks until the other run ends.
    pub fn lock(&self, wait: bool, what: &str) -> Result<WorkspaceLock, CacheError> {
        use std::io::{Read, Seek, Write};
        let path = self.root.join("lock");
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_context(format!("opening `{}`", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = if holder.trim().is_empty() {
                    "unknown process".to_string()
                } else {
                    holder.trim().to_string()
                };
                if !wait {
                    return Err(CacheError::Busy {
                        path: self.workspace.display().to_string(),
                        holder,
                    });
                }
                tracing::warn!("workspace is in use ({holder}); waiting");
                file.lock()
                    .map_err(io_context("waiting for the workspace lock"))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_context("locking the workspace")(e)),
        }
        let _ = file.set_len(0);
        let _ = file.seek(io::SeekFrom::Start(0));
        let _ = write!(file, "pid {}: {what}", std::process::id());
        Ok(WorkspaceLock { _file: file })
    }

    /// Removes leftovers of runs that were killed. Call only while holding the lock.
    pub fn clear_tmp(&self) -> Result<(), CacheError> {
        let tmp = self.root.join("tmp");
        artifact::remove_path(&tmp).map_err(io_context("clearing `.hone/tmp`"))?;
        fs::create_dir_all(&tmp).map_err(io_context("creating `.hone/tmp`"))
    }

    /// A fresh directory for one stage's work in progress.
    pub fn new_tmp_dir(&self, stage: &str) -> Result<PathBuf, CacheError> {
        let base = self.root.join("tmp");
        fs::create_dir_all(&base).map_err(io_context("creating `.hone/tmp`"))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", stage.replace('@', "_")))
            .tempdir_in(&base)
            .map_err(io_context("creating a temporary directory"))?;
        Ok(dir.keep())
    }

    pub fn resume_dir(&self, fingerprint: &str) -> PathBuf {
        self.root.join("resume").join(fingerprint)
    }

    pub fn log_path(&self, stage: &str) -> PathBuf {
        self.root.join("logs").join(format!("{stage}.log"))
    }

    /// Where an object lives. Its path relative to the workspace is what stages see.
    pub fn object_path(&self, digest: &str) -> PathBuf {
        self.root.join("objects").join(&digest[..2]).join(digest)
    }

    /// The object path relative to the workspace (short, and free of the user's home).
    pub fn object_rel(&self, digest: &str) -> PathBuf {
        PathBuf::from(".hone")
            .join("objects")
            .join(&digest[..2])
            .join(digest)
    }

    pub fn has_object(&self, digest: &str) -> bool {
        fs::symlink_metadata(self.object_path(digest)).is_ok()
    }

    /// Moves a finished output into the store: digest, fsync, make read-only, rename.
    /// An identical object already stored is kept and the new copy dropped.
    pub fn commit(&self, produced: &Path) -> Result<Digest, CacheError> {
        let context = || format!("storing `{}`", produced.display());
        let digest = artifact::digest_path(produced).map_err(io_context(context()))?;
        let target = self.object_path(&digest.hex);
        if fs::symlink_metadata(&target).is_ok() {
            artifact::remove_path(produced).map_err(io_context(context()))?;
            return Ok(digest);
        }
        let parent = target.parent().expect("objects have a parent");
        fs::create_dir_all(parent).map_err(io_context(context()))?;
        artifact::sync_tree(produced).map_err(io_context(context()))?;
        artifact::set_readonly(produced, true).map_err(io_context(context()))?;
        fs::rename(produced, &target).map_err(io_context(context()))?;
        artifact::sync_dir(parent).map_err(io_context(context()))?;
        Ok(digest)
    }

    fn run_path(&self, fingerprint: &str) -> PathBuf {
        self.root
            .join("runs")
            .join(&fingerprint[..2])
            .join(format!("{fingerprint}.json"))
    }

    /// The run record of a fingerprint, if it exists and all its objects are present.
    pub fn cached_run(&self, fingerprint: &str) -> Option<RunRecord> {
        let record = self.read_run(fingerprint)?;
        record
            .outputs
            .values()
            .all(|o| self.has_object(&o.digest))
            .then_some(record)
    }

    pub fn read_run(&self, fingerprint: &str) -> Option<RunRecord> {
        let bytes = fs::read(self.run_path(fingerprint)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn write_run(&self, record: &RunRecord) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec_pretty(record).expect("run record serialises");
        artifact::write_atomic(&self.run_path(&record.fingerprint), &bytes)
            .map_err(io_context("writing a run record"))
    }

    pub fn remove_run(&self, fingerprint: &str) -> io::Result<()> {
        match fs::remove_file(self.run_path(fingerprint)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every object digest in the store.
    pub fn list_objects(&self) -> io::Result<Vec<String>> {
        list_two_level(&self.root.join("objects"), |name| {
            (name.len() == 64).then(|| name.to_string())
        })
    }

    /// Every fingerprint with a run record.
    pub fn list_runs(&self) -> io::Result<Vec<String>> {
        list_two_level(&self.root.join("runs"), |name| {
            name.strip_suffix(".json").map(str::to_string)
        })
    }

    pub fn remove_object(&self, digest: &str) -> io::Result<()> {
        artifact::remove_path(&self.object_path(digest))
    }
}

fn list_two_level(dir: &Path, keep: impl Fn(&str) -> Option<String>) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    let Ok(shards) = fs::read_dir(dir) else {
        return Ok(out);
    };
    for shard in shards {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        for entry in fs::read_dir(shard.path())? {
            let name = entry?.file_name();
            if let Some(k) = keep(&name.to_string_lossy()) {
                out.push(k);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_moves_content_in_by_digest_and_deduplicates() {
        let ws = tempfile::tempdir().unwrap();
        let store = Store::open(ws.path()).unwrap();
        let tmp = store.new_tmp_dir("s").unwrap();
        fs::write(tmp.join("a"), b"abc").unwrap();
        let d = store.commit(&tmp.join("a")).unwrap();
        assert!(store.has_object(&d.hex));
        assert!(!tmp.join("a").exists());
        assert_eq!(fs::read(store.object_path(&d.hex)).unwrap(), b"abc");
        fs::write(tmp.join("b"), b"abc").unwrap();
        assert_eq!(store.commit(&tmp.join("b")).unwrap(), d);
        assert_eq!(store.list_objects().unwrap(), vec![d.hex.clone()]);
        assert!(
            fs::metadata(store.object_path(&d.hex))
                .unwrap()
                .permissions()
                .readonly()
        );
    }

    #[test]
    fn a_second_lock_is_refused_with_the_holder_named() {
        let ws = tempfile::tempdir().unwrap();
        let store = Store::open(ws.path()).unwrap();
        let _held = store.lock(false, "hone run a.yaml").unwrap();
        match store.lock(false, "hone run b.yaml") {
            Err(CacheError::Busy { holder, .. }) => {
                assert!(holder.contains("hone run a.yaml"), "{holder}")
            }
            other => panic!("expected Busy, got {:?}", other.err()),
        }
    }

    #[test]
    fn an_unknown_store_format_is_refused() {
        let ws = tempfile::tempdir().unwrap();
        fs::create_dir_all(ws.path().join(".hone")).unwrap();
        fs::write(ws.path().join(".hone/FORMAT"), "99\n").unwrap();
        assert!(matches!(
            Store::open(ws.path()),
            Err(CacheError::StoreVersion { .. })
        ));
    }
}
