//! Fingerprints, the lock file, the workspace file cache and the content-addressed store.

pub mod files;
pub mod fingerprint;
pub mod hf_hub;
pub mod lock;
pub mod material;
pub mod store;

pub use fingerprint::{Fingerprint, fingerprint};
pub use lock::{LockEntry, LockFile, LockOutput};
pub use store::{RunRecord, Store};

/// Problems with the workspace's store or lock file.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(
        "the lock file `{path}` is not valid: {reason}\n  (it is written by hone; restore it from version control or delete it to start over)"
    )]
    BadLock { path: String, reason: String },
    #[error(
        "the store `{path}` was written by a newer or unknown hone (store format `{found}`, this hone reads `{expected}`)"
    )]
    StoreVersion {
        path: String,
        found: String,
        expected: String,
    },
    #[error(
        "the workspace `{path}` is in use by another hone run ({holder}); wait for it to finish, or pass `--wait` to queue behind it"
    )]
    Busy { path: String, holder: String },
}

pub fn io_context(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CacheError {
    let context = context.into();
    move |source| CacheError::Io { context, source }
}
