//! Typed artifacts and the byte-level rules every artifact obeys: how a file or a
//! directory is digested, and how a file is written so that it is visible only once whole.

pub mod candidates;
pub mod feedback;
pub mod table;

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What an output port produces and an input port accepts. Edges are type-checked
/// with [`ArtifactType::accepts`] before anything runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ArtifactType {
    /// Any file or directory; an input of this type accepts every artifact.
    Files,
    /// A Parquet table; `None` accepts (as an input) any table kind.
    Table(Option<String>),
    /// A causal language model directory (config.json, model.safetensors, tokenizer.json).
    CausalLm,
    /// A reward model directory (a causal-LM backbone and a scalar head).
    RewardModel,
    /// A JSON summary and a Parquet step history.
    Metrics,
    /// A self-contained HTML report.
    Report,
    /// Normalised human feedback: a directory of comparisons, rankings, scores and flags
    /// tables (see `artifact::feedback`).
    Feedback,
}

impl ArtifactType {
    /// The names a spec may use, for suggestions.
    pub const NAMES: &'static [&'static str] = &[
        "files",
        "table",
        "table:<kind>",
        "causal-lm",
        "reward-model",
        "metrics",
        "report",
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "files" => ArtifactType::Files,
            "table" => ArtifactType::Table(None),
            "causal-lm" => ArtifactType::CausalLm,
            "reward-model" => ArtifactType::RewardModel,
            "metrics" => ArtifactType::Metrics,
            "report" => ArtifactType::Report,
            "feedback" => ArtifactType::Feedback,
            other => {
                let kind = other.strip_prefix("table:")?;
                let valid = !kind.is_empty()
                    && kind
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if !valid {
                    return None;
                }
                ArtifactType::Table(Some(kind.to_string()))
            }
        })
    }

    /// Whether an input port of type `self` can take an artifact of type `output`.
    pub fn accepts(&self, output: &ArtifactType) -> bool {
        match (self, output) {
            (ArtifactType::Files, _) => true,
            (ArtifactType::Table(None), ArtifactType::Table(_)) => true,
            (a, b) => a == b,
        }
    }
}

impl fmt::Display for ArtifactType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArtifactType::Files => f.write_str("files"),
            ArtifactType::Table(None) => f.write_str("table"),
            ArtifactType::Table(Some(kind)) => write!(f, "table:{kind}"),
            ArtifactType::CausalLm => f.write_str("causal-lm"),
            ArtifactType::RewardModel => f.write_str("reward-model"),
            ArtifactType::Metrics => f.write_str("metrics"),
            ArtifactType::Report => f.write_str("report"),
            ArtifactType::Feedback => f.write_str("feedback"),
        }
    }
}

impl TryFrom<String> for ArtifactType {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        ArtifactType::parse(&text).ok_or_else(|| format!("unknown artifact type `{text}`"))
    }
}

impl From<ArtifactType> for String {
    fn from(ty: ArtifactType) -> String {
        ty.to_string()
    }
}

/// Whether an artifact on disk is one file or a directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    File,
    Dir,
}

/// The content digest of a file or directory, with its total size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub hex: String,
    pub shape: Shape,
    pub size: u64,
}

/// Digest of a file's bytes: plain blake3, so `b3sum FILE` gives the same hex.
pub fn digest_file(path: &Path) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Digest of a file or directory. A directory's digest is blake3 over a manifest of
/// its entries in path order (`<digest> <x|-> <path>` per file, `dir <path>` per
/// directory), so renaming, adding or changing an executable bit changes it.
pub fn digest_path(path: &Path) -> io::Result<Digest> {
    digest_path_with(path, &mut |p| digest_file(p))
}

/// As [`digest_path`], with the per-file digest supplied by the caller (the workspace
/// file cache uses this to skip files whose size and mtime are unchanged).
pub fn digest_path_with(
    path: &Path,
    file_digest: &mut dyn FnMut(&Path) -> io::Result<String>,
) -> io::Result<Digest> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_file() {
        return Ok(Digest {
            hex: file_digest(path)?,
            shape: Shape::File,
            size: meta.len(),
        });
    }
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "`{}` is neither a file nor a directory (symlinks are not followed)",
            path.display()
        )));
    }
    let mut manifest = String::from("hone-dir-v1\n");
    let mut size = 0;
    walk(path, path, &mut manifest, &mut size, file_digest)?;
    Ok(Digest {
        hex: blake3::hash(manifest.as_bytes()).to_hex().to_string(),
        shape: Shape::Dir,
        size,
    })
}

fn walk(
    root: &Path,
    dir: &Path,
    manifest: &mut String,
    size: &mut u64,
    file_digest: &mut dyn FnMut(&Path) -> io::Result<String>,
) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let rel = path.strip_prefix(root).expect("walked path is under root");
        let rel = rel.to_string_lossy().replace('\\', "/");
        let meta = fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            manifest.push_str(&format!("dir {rel}\n"));
            walk(root, &path, manifest, size, file_digest)?;
        } else if meta.is_file() {
            let exec = if is_executable(&meta) { 'x' } else { '-' };
            manifest.push_str(&format!("{} {exec} {rel}\n", file_digest(&path)?));
            *size += meta.len();
        } else {
            return Err(io::Error::other(format!(
                "`{}` is neither a file nor a directory (symlinks are not followed)",
                path.display()
            )));
        }
    }
    Ok(())
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &fs::Metadata) -> bool {
    false
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory,
/// fsync, rename over the target, fsync of the directory. Readers see the old file
/// or the new one, never a part. The temporary file is `.NAME.tmp-XXXXXX`, so that
/// [`remove_stale_temps`] can find what a killed writer left without touching anything
/// else; the file gets mode 0644 (the target's mode when it exists), not the temporary
/// file's 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.tmp-")
}

/// Removes the temporary files that a [`write_atomic`] of `path` killed before its
/// rename left beside it. Call only while no one else can be writing `path` (hone holds
/// the workspace lock).
pub fn remove_stale_temps(path: &Path) -> io::Result<usize> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = temp_prefix(path);
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.len() > prefix.len() && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// fsync of a directory, so that a rename into it survives a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    let _ = dir;
    Ok(())
}

/// fsyncs every file and directory under `path`, so that a later rename publishes
/// complete contents.
pub fn sync_tree(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            sync_tree(&entry?.path())?;
        }
        sync_dir(path)
    } else {
        File::open(path)?.sync_all()
    }
}

/// How an artifact refers to another one it builds on (a LoRA adapter to its base):
/// when `target` is an object of a store (`objects/ab/<digest>`), the path to it from any
/// directory `nesting` levels inside another object of the same store
/// (`../../ab/<digest>`), which holds wherever the store is and whichever machine reads
/// it, so the referring artifact's bytes do not depend on the workspace's path; else
/// `target`'s absolute path.
pub fn store_reference(target: &Path, nesting: usize) -> String {
    let target = target
        .canonicalize()
        .unwrap_or_else(|_| target.to_path_buf());
    if let (Some(name), Some(shard)) = (target.file_name(), target.parent())
        && let Some(shard_name) = shard.file_name()
        && shard.parent().and_then(Path::file_name) == Some(std::ffi::OsStr::new("objects"))
    {
        let up = "../".repeat(nesting + 2);
        return format!(
            "{up}{}/{}",
            shard_name.to_string_lossy(),
            name.to_string_lossy()
        );
    }
    target.display().to_string()
}

/// Makes a stored artifact read-only (or writable again before deletion), so that a
/// stage cannot alter an input it shares with other stages.
pub fn set_readonly(path: &Path, readonly: bool) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        if !readonly {
            set_mode(path, &meta, false)?;
        }
        for entry in fs::read_dir(path)? {
            set_readonly(&entry?.path(), readonly)?;
        }
        if readonly {
            set_mode(path, &meta, true)?;
        }
        Ok(())
    } else {
        set_mode(path, &meta, readonly)
    }
}

/// Makes the top directory of a tree writable (or read-only again) without touching what
/// is inside: a directory can move to another parent only while writable.
pub fn set_writable_top(path: &Path, writable: bool) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    set_mode(path, &meta, !writable)
}

fn set_mode(path: &Path, meta: &fs::Metadata, readonly: bool) -> io::Result<()> {
    let mut perms = meta.permissions();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = perms.mode();
        // Sealed objects are readable by everyone who can reach the store (a teammate
        // sharing it; restrict the store's own directory to keep others out), whatever
        // mode the writer gave them: transformers writes model.safetensors 0600.
        let read = if meta.is_dir() { 0o555 } else { 0o444 };
        perms.set_mode(if readonly {
            (mode & !0o222) | read
        } else {
            mode | 0o200
        });
    }
    #[cfg(not(unix))]
    perms.set_readonly(readonly);
    fs::set_permissions(path, perms)
}

/// Removes a file or directory tree, even one made read-only by [`set_readonly`].
pub fn remove_path(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => {
            set_readonly(path, false)?;
            fs::remove_dir_all(path)
        }
        Ok(_) => fs::remove_file(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digest_is_plain_blake3() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        fs::write(&path, b"abc").unwrap();
        // b3sum of "abc"
        assert_eq!(
            digest_file(&path).unwrap(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn directory_digest_sees_names_contents_and_structure() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("d");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("sub/x"), b"1").unwrap();
        let first = digest_path(&root).unwrap();
        assert_eq!((first.shape, first.size), (Shape::Dir, 1));
        fs::write(root.join("sub/x"), b"2").unwrap();
        let changed = digest_path(&root).unwrap();
        assert_ne!(first.hex, changed.hex);
        fs::rename(root.join("sub/x"), root.join("sub/y")).unwrap();
        assert_ne!(changed.hex, digest_path(&root).unwrap().hex);
    }

    #[test]
    fn types_parse_and_accept() {
        let table = ArtifactType::parse("table:candidates").unwrap();
        assert!(ArtifactType::parse("table").unwrap().accepts(&table));
        assert!(ArtifactType::Files.accepts(&ArtifactType::RewardModel));
        assert!(!ArtifactType::CausalLm.accepts(&ArtifactType::RewardModel));
        assert!(ArtifactType::parse("table:").is_none());
        assert_eq!(table.to_string(), "table:candidates");
    }
}
