//! Models in the local Hugging Face hub cache (what `huggingface-cli download` and
//! transformers' `from_pretrained` fill), found offline: a model id and revision become the
//! snapshot directory `<hub>/models--ORG--NAME/snapshots/<commit>`. The hub directory is
//! `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
//! `~/.cache/huggingface/hub`, as `huggingface_hub` looks for it.
//!
//! A stage that loads one declares the dependency `hf:ORG/NAME@COMMIT` ([`dep`]): the
//! commit goes into the lock, the same on every machine, and the snapshot's files are hashed
//! into the cache key wherever the hub cache lives ([`dep_path`]).

use std::path::{Path, PathBuf};

/// The prefix of a hub-cache dependency.
pub const DEP_PREFIX: &str = "hf:";

/// Where the hub cache is, from the environment.
pub fn hub_dir() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface/hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))
}

/// A resolved snapshot: the commit and its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub commit: String,
    pub dir: PathBuf,
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The snapshot of `model` (`ORG/NAME`) at `revision` (a branch or tag under `refs/`, or
/// a 40-hex commit) in the hub cache `hub`. The error names every path it looked at.
pub fn resolve_in(hub: &Path, model: &str, revision: &str) -> Result<Snapshot, String> {
    let valid = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let parts: Vec<&str> = model.split('/').collect();
    if parts.len() != 2 || !parts.iter().all(|p| valid(p)) {
        return Err(format!(
            "`{model}` is not a Hugging Face model id (`ORG/NAME`)"
        ));
    }
    if revision.is_empty() || revision.contains("..") || revision.starts_with('/') {
        return Err(format!("`{revision}` is not a revision"));
    }
    let repo = hub.join(format!("models--{}--{}", parts[0], parts[1]));
    let commit = if is_commit(revision) {
        revision.to_string()
    } else {
        let reference = repo.join("refs").join(revision);
        match std::fs::read_to_string(&reference) {
            Ok(text) if is_commit(text.trim()) => text.trim().to_string(),
            Ok(_) => return Err(format!("`{}` does not hold a commit", reference.display())),
            Err(_) => {
                return Err(format!(
                    "model `{model}` (revision `{revision}`) is not in the Hugging Face cache: `{}` not found (the cache is `$HF_HUB_CACHE`, `$HF_HOME/hub` or ~/.cache/huggingface/hub; hone never downloads)",
                    reference.display()
                ));
            }
        }
    };
    let dir = repo.join("snapshots").join(&commit);
    if !dir.join("config.json").is_file() {
        return Err(format!(
            "model `{model}` at commit {commit}: `{}` not found in the Hugging Face cache",
            dir.join("config.json").display()
        ));
    }
    Ok(Snapshot { commit, dir })
}

/// [`resolve_in`] the hub cache of this environment.
pub fn resolve(model: &str, revision: &str) -> Result<Snapshot, String> {
    let hub = hub_dir().ok_or_else(|| {
        "no Hugging Face cache: none of HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME, HOME is set"
            .to_string()
    })?;
    resolve_in(&hub, model, revision)
}

/// The dependency a stage declares for `model` at `commit`.
pub fn dep(model: &str, commit: &str) -> String {
    format!("{DEP_PREFIX}{model}@{commit}")
}

/// The digest a hub-cache dependency contributes to a cache key: the commit's, not the
/// files'. A snapshot directory of a commit never changes (the hub cache stores blobs by
/// their hash and links them into it), so the commit names its content; hashing a
/// checkpoint of gigabytes on a stage's first run would add minutes for nothing. The
/// snapshot must be present. `None` for a dependency that is not a hub-cache one.
pub fn dep_digest(dep: &str) -> Option<Result<String, String>> {
    let rest = dep.strip_prefix(DEP_PREFIX)?;
    Some(
        rest.rsplit_once('@')
            .ok_or_else(|| format!("`{dep}` names no commit"))
            .and_then(|(model, commit)| resolve(model, commit))
            .map(|snap| {
                blake3::hash(format!("hf-commit {}", snap.commit).as_bytes())
                    .to_hex()
                    .to_string()
            }),
    )
}

/// Whether a dependency is there: a hub-cache snapshot in this environment, or a path in
/// the workspace.
pub fn dep_present(workspace: &Path, dep: &str) -> bool {
    match dep_digest(dep) {
        Some(result) => result.is_ok(),
        None => std::fs::symlink_metadata(workspace.join(dep)).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn hub() -> tempfile::TempDir {
        let hub = tempfile::tempdir().unwrap();
        let repo = hub.path().join("models--Org--tiny-model");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{COMMIT}\n")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(COMMIT)).unwrap();
        std::fs::write(
            repo.join("snapshots").join(COMMIT).join("config.json"),
            "{}",
        )
        .unwrap();
        hub
    }

    #[test]
    fn a_model_id_resolves_through_its_ref_or_its_commit() {
        let hub = hub();
        let snap = resolve_in(hub.path(), "Org/tiny-model", "main").unwrap();
        assert_eq!(snap.commit, COMMIT);
        assert!(snap.dir.ends_with(format!("snapshots/{COMMIT}")));
        assert_eq!(
            resolve_in(hub.path(), "Org/tiny-model", COMMIT).unwrap(),
            snap
        );
        assert_eq!(
            dep("Org/tiny-model", COMMIT),
            format!("hf:Org/tiny-model@{COMMIT}")
        );
    }

    #[test]
    fn what_is_missing_is_named() {
        let hub = hub();
        let err = resolve_in(hub.path(), "Org/other", "main").unwrap_err();
        assert!(err.contains("models--Org--other/refs/main"), "{err}");
        assert!(err.contains("never downloads"), "{err}");
        let err = resolve_in(hub.path(), "Org/tiny-model", &"f".repeat(40)).unwrap_err();
        assert!(err.contains("config.json"), "{err}");
        for bad in ["tiny-model", "Org/../x", "a/b/c", "Org/"] {
            let err = resolve_in(hub.path(), bad, "main").unwrap_err();
            assert!(err.contains("not a Hugging Face model id"), "{bad}: {err}");
        }
        assert!(resolve_in(hub.path(), "Org/tiny-model", "../main").is_err());
    }
}
