//! Digests of workspace files with a size+mtime fast path: a file whose size, mtime and
//! inode match the cached entry is not read again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::artifact::{self, Digest};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: u128,
    inode: u64,
    digest: String,
}

/// The cache, loaded from `.hone/files.json` and saved back when it changed.
#[derive(Debug, Default)]
pub struct FileCache {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
    dirty: bool,
}

impl FileCache {
    pub fn load(path: PathBuf) -> Self {
        // A damaged cache only costs re-hashing; it is never an error.
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        FileCache {
            path,
            entries,
            dirty: false,
        }
    }

    pub fn save(&mut self) -> std::io::Result<()> {
        if self.dirty {
            artifact::write_atomic(
                &self.path,
                &serde_json::to_vec(&self.entries).expect("serialises"),
            )?;
            self.dirty = false;
        }
        Ok(())
    }

    /// The digest of a workspace file or directory (`rel` relative to `workspace`).
    pub fn digest(&mut self, workspace: &Path, rel: &str) -> std::io::Result<Digest> {
        let full = workspace.join(rel);
        artifact::digest_path_with(&full, &mut |file| self.file_digest(workspace, file))
    }

    fn file_digest(&mut self, workspace: &Path, file: &Path) -> std::io::Result<String> {
        let meta = std::fs::metadata(file)?;
        let mtime = meta.modified()?;
        let mtime_ns = mtime
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let inode = inode(&meta);
        let key = file
            .strip_prefix(workspace)
            .unwrap_or(file)
            .to_string_lossy()
            .into_owned();
        if let Some(e) = self.entries.get(&key)
            && e.size == meta.len()
            && e.mtime_ns == mtime_ns
            && e.inode == inode
        {
            return Ok(e.digest.clone());
        }
        let digest = artifact::digest_file(file)?;
        // A file modified in the last moments could change again within the same mtime
        // tick (git's "racy clean" problem): hash it, but do not trust the fast path yet.
        let settled = SystemTime::now()
            .duration_since(mtime)
            .map(|age| age > Duration::from_secs(2))
            .unwrap_or(false);
        if settled {
            self.entries.insert(
                key,
                Entry {
                    size: meta.len(),
                    mtime_ns,
                    inode,
                    digest: digest.clone(),
                },
            );
            self.dirty = true;
        }
        Ok(digest)
    }
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.ino()
}

#[cfg(not(unix))]
fn inode(_meta: &std::fs::Metadata) -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_trusts_settled_files_and_rehashes_changed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.txt");
        std::fs::write(&file, b"one").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut cache = FileCache::load(dir.path().join("files.json"));
        let first = cache.digest(dir.path(), "data.txt").unwrap();
        cache.save().unwrap();
        let mut cache = FileCache::load(dir.path().join("files.json"));
        assert_eq!(cache.digest(dir.path(), "data.txt").unwrap(), first);
        std::fs::write(&file, b"two!").unwrap();
        assert_ne!(cache.digest(dir.path(), "data.txt").unwrap().hex, first.hex);
    }
}
