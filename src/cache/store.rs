//! The content-addressed store under `.hone/` in the workspace.
//!
//! ```text
//! .hone/
//!   FORMAT                      store format version
//!   lock                        held (flock) by the run that owns the workspace
//!   objects/ab/<digest>         artifacts (files or directories), read-only, named by content
//!   stamps/ab/<digest>.json     each object's files as committed (size, mtime, ctime, inode)
//!   runs/ab/<fingerprint>.json  run records: which objects a fingerprint used and produced
//!   locks.json                  the lock files runs in this workspace wrote (for `hone gc`)
//!   resume/<fingerprint>/       checkpoints of a stage in flight, kept across crashes
//!   logs/<stage>.log            the latest log of each stage
//!   tmp/                        work in progress, cleared when a run starts
//!   files.json                  size+mtime fast path for workspace file digests
//! ```
//!
//! An object appears by an atomic rename of a complete, fsynced file or tree; a run record
//! is written (atomically) only after all its objects are in place. An object leaves the
//! same way: renamed out of `objects/` into `tmp/` first, then deleted, so no half-deleted
//! object is ever found under its name. A crash therefore leaves at worst unreferenced
//! objects (which `hone gc` removes) and leftovers in `tmp/` (which the next run or gc
//! clears).
//!
//! An object is trusted only while it matches its digest: [`Store::check_object`] compares
//! its files with the stamp recorded at commit (one `stat` per file) and re-hashes it when
//! anything differs; a damaged object is never a cache hit, and committing the same output
//! again replaces it.
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
    /// Input port -> digests of the objects the stage read (absent in records written
    /// before hone kept them): what `hone verify --fix` follows to find results derived
    /// from a damaged object.
    #[serde(default)]
    pub inputs: BTreeMap<String, Vec<String>>,
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
    /// An intact object of the same digest already stored is kept and the new copy
    /// dropped; one that no longer matches its digest is replaced (so re-running a stage,
    /// `--force` included, repairs a damaged object).
    pub fn commit(&self, produced: &Path) -> Result<Digest, CacheError> {
        let context = || format!("storing `{}`", produced.display());
        let digest = artifact::digest_path(produced).map_err(io_context(context()))?;
        let target = self.object_path(&digest.hex);
        if self.keep_existing(&digest.hex, &target) {
            artifact::remove_path(produced).map_err(io_context(context()))?;
            return Ok(digest);
        }
        let parent = target.parent().expect("objects have a parent");
        fs::create_dir_all(parent).map_err(io_context(context()))?;
        artifact::sync_tree(produced).map_err(io_context(context()))?;
        // A directory is made read-only only once it is in place: moving a directory to
        // another parent needs write permission on it (its `..` entry changes).
        artifact::set_readonly(produced, true).map_err(io_context(context()))?;
        let is_dir = fs::symlink_metadata(produced)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if is_dir {
            artifact::set_writable_top(produced, true).map_err(io_context(context()))?;
        }
        if let Err(e) = fs::rename(produced, &target) {
            // Another process may have stored the same content a moment ago.
            if self.keep_existing(&digest.hex, &target) {
                artifact::remove_path(produced).map_err(io_context(context()))?;
                return Ok(digest);
            }
            return Err(io_context(context())(e));
        }
        if is_dir {
            artifact::set_writable_top(&target, false).map_err(io_context(context()))?;
        }
        artifact::sync_dir(parent).map_err(io_context(context()))?;
        if let Ok(stamp) = take_stamp(&target) {
            self.write_stamp(&digest.hex, &stamp);
        }
        Ok(digest)
    }

    /// Whether an object already at `target` is intact and can stand for a new copy; a
    /// damaged one is moved out of the way (atomically) so the new copy can take its name.
    fn keep_existing(&self, hex: &str, target: &Path) -> bool {
        if fs::symlink_metadata(target).is_err() {
            return false;
        }
        match artifact::digest_path(target) {
            Ok(d) if d.hex == hex => {
                if let Ok(stamp) = take_stamp(target) {
                    self.write_stamp(hex, &stamp);
                }
                true
            }
            _ => {
                tracing::warn!("replacing the damaged object {hex}");
                if let Err(e) = self.discard(target) {
                    tracing::warn!("could not move the damaged object {hex} away: {e}");
                }
                false
            }
        }
    }

    /// Removes a file or tree by renaming it into `tmp/` first (atomic), then deleting it:
    /// a crash part-way leaves the rest in `tmp/`, never a part under the old name.
    fn discard(&self, path: &Path) -> io::Result<()> {
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if meta.is_file() {
            // Unlinking a file is atomic already.
            return match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let trash_dir = self.root.join("tmp");
        fs::create_dir_all(&trash_dir)?;
        let trash = tempfile::Builder::new()
            .prefix("trash-")
            .tempdir_in(&trash_dir)?
            .keep();
        artifact::set_writable_top(path, true)?;
        let dest = trash.join("object");
        fs::rename(path, &dest)?;
        if let Some(parent) = path.parent() {
            artifact::sync_dir(parent)?;
        }
        artifact::remove_path(&trash)
    }

    fn run_path(&self, fingerprint: &str) -> PathBuf {
        self.root
            .join("runs")
            .join(&fingerprint[..2])
            .join(format!("{fingerprint}.json"))
    }

    /// The run record of a fingerprint, if it exists and all its objects are intact.
    pub fn cached_run(&self, fingerprint: &str) -> Option<RunRecord> {
        match self.lookup(fingerprint) {
            Lookup::Hit(record) => Some(record),
            _ => None,
        }
    }

    /// What the store holds for a fingerprint: a usable result, one whose objects are
    /// missing or damaged (never to be used), or nothing.
    pub fn lookup(&self, fingerprint: &str) -> Lookup {
        let Some(record) = self.read_run(fingerprint) else {
            return Lookup::Miss;
        };
        for (name, output) in &record.outputs {
            match self.check_object(&output.digest) {
                Integrity::Intact => {}
                Integrity::Missing => {
                    return Lookup::Missing {
                        output: name.clone(),
                    };
                }
                Integrity::Damaged(why) => {
                    tracing::warn!(
                        stage = %record.stage,
                        "stored output `{name}` is damaged ({why}); it will be recomputed"
                    );
                    return Lookup::Damaged {
                        output: name.clone(),
                        why,
                    };
                }
            }
        }
        Lookup::Hit(record)
    }

    /// Whether an object is present and matches its digest: a `stat` of each of its files
    /// against the stamp taken at commit, a full re-hash when the stamp is missing, not yet
    /// settled, or differs (and a fresh stamp once the content is confirmed).
    pub fn check_object(&self, digest: &str) -> Integrity {
        let path = self.object_path(digest);
        if fs::symlink_metadata(&path).is_err() {
            return Integrity::Missing;
        }
        let now = take_stamp(&path);
        if let (Ok(now), Some(then)) = (&now, self.read_stamp(digest))
            && then.settled
            && then.entries == now.entries
        {
            return Integrity::Intact;
        }
        match artifact::digest_path(&path) {
            Ok(d) if d.hex == digest => {
                if let Ok(now) = now {
                    self.write_stamp(digest, &now);
                }
                Integrity::Intact
            }
            Ok(d) => Integrity::Damaged(format!(
                "object {} digests to {}",
                &digest[..12],
                &d.hex[..12]
            )),
            Err(e) => Integrity::Damaged(format!("object {} cannot be read: {e}", &digest[..12])),
        }
    }

    fn stamp_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("stamps")
            .join(&digest[..2])
            .join(format!("{digest}.json"))
    }

    fn read_stamp(&self, digest: &str) -> Option<Stamp> {
        serde_json::from_slice(&fs::read(self.stamp_path(digest)).ok()?).ok()
    }

    /// Stamps are a cache of "this object was verified": losing one costs a re-hash, so a
    /// failed write is not an error.
    fn write_stamp(&self, digest: &str, stamp: &Stamp) {
        let bytes = serde_json::to_vec(stamp).expect("a stamp serialises");
        if let Err(e) = artifact::write_atomic(&self.stamp_path(digest), &bytes) {
            tracing::debug!("could not write the stamp of {digest}: {e}");
        }
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

    /// Removes an object (and its stamp): renamed out of `objects/` first, so that no
    /// half-deleted object can ever be found under its name.
    pub fn remove_object(&self, digest: &str) -> io::Result<()> {
        self.discard(&self.object_path(digest))?;
        match fs::remove_file(self.stamp_path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Records that a run wrote the lock file `lock` (absolute), so that `hone gc` keeps
    /// its results wherever the lock lives. Call while holding the workspace lock.
    pub fn register_lock(&self, lock: &Path) -> Result<(), CacheError> {
        let lock = std::path::absolute(lock).map_err(io_context("resolving the lock path"))?;
        let mut known = self.known_locks();
        if known.contains(&lock) {
            return Ok(());
        }
        known.push(lock);
        known.sort();
        let bytes = serde_json::to_vec_pretty(&known).expect("paths serialise");
        artifact::write_atomic(&self.root.join("locks.json"), &bytes)
            .map_err(io_context("writing `.hone/locks.json`"))
    }

    /// The lock files runs in this workspace have written (some may be gone since).
    pub fn known_locks(&self) -> Vec<PathBuf> {
        fs::read(self.root.join("locks.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Forgets lock files that no longer exist (`hone gc`).
    pub fn forget_locks(&self, gone: &[PathBuf]) -> Result<(), CacheError> {
        let known: Vec<PathBuf> = self
            .known_locks()
            .into_iter()
            .filter(|l| !gone.contains(l))
            .collect();
        let bytes = serde_json::to_vec_pretty(&known).expect("paths serialise");
        artifact::write_atomic(&self.root.join("locks.json"), &bytes)
            .map_err(io_context("writing `.hone/locks.json`"))
    }
}

/// What the store holds for a fingerprint.
#[derive(Debug)]
pub enum Lookup {
    Hit(RunRecord),
    /// A run record whose output object is gone (removed by `hone gc`, or by hand).
    Missing {
        output: String,
    },
    /// A run record whose output object no longer matches its digest.
    Damaged {
        output: String,
        why: String,
    },
    Miss,
}

/// Whether an object can be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    Intact,
    Missing,
    Damaged(String),
}

/// An object's files as committed: what a `stat` sees. Any write to a file changes its
/// ctime (which no user call can set back), a replaced file has a new inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    /// False when a file changed within two seconds of the stamp (a later write could
    /// fall in the same timestamp tick, git's "racy clean" case): such a stamp is not
    /// trusted, the next check re-hashes and stamps again.
    settled: bool,
    entries: Vec<EntryStamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EntryStamp {
    path: String,
    dir: bool,
    size: u64,
    mode: u32,
    inode: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn take_stamp(path: &Path) -> io::Result<Stamp> {
    let mut entries = Vec::new();
    let mut stack = vec![(path.to_path_buf(), String::new())];
    while let Some((full, rel)) = stack.pop() {
        let meta = fs::symlink_metadata(&full)?;
        entries.push(entry_stamp(&meta, rel.clone()));
        if meta.is_dir() {
            for entry in fs::read_dir(&full)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((entry.path(), child));
            }
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let settled = entries
        .iter()
        .all(|e| e.mtime_ns.max(e.ctime_ns) + 2_000_000_000 < now);
    Ok(Stamp { settled, entries })
}

#[cfg(unix)]
fn entry_stamp(meta: &fs::Metadata, path: String) -> EntryStamp {
    use std::os::unix::fs::MetadataExt;
    EntryStamp {
        path,
        dir: meta.is_dir(),
        size: if meta.is_dir() { 0 } else { meta.len() },
        mode: meta.mode(),
        inode: meta.ino(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
    }
}

#[cfg(not(unix))]
fn entry_stamp(meta: &fs::Metadata, path: String) -> EntryStamp {
    // Without ctime and inodes the stamp never settles: every check re-hashes.
    EntryStamp {
        path,
        dir: meta.is_dir(),
        size: meta.len(),
        mode: 0,
        inode: 0,
        mtime_ns: i128::MAX / 2,
        ctime_ns: i128::MAX / 2,
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
