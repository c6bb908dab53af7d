//! hone: RLHF as a declarative pipeline. A YAML spec names stages and how their artifacts
//! connect; hone plans them as a DAG, runs what is stale, caches every artifact by content
//! and records fingerprints and digests in a lock file. See ARCHITECTURE.md for the map.

pub mod artifact;
pub mod cache;
pub mod cli;
pub mod dag;
pub mod feedback;
pub mod model;
pub mod policy;
pub mod report;
pub mod rl;
pub mod runner;
pub mod spec;
pub mod stages;
pub mod world;

/// Tells mimalloc (the binaries' global allocator) to keep freed memory instead of handing
/// it back to the OS after 10 ms: candle allocates a fresh buffer for every tensor op, and
/// memory handed back returns as page faults and zeroed pages on the next training step
/// (about 5% of a step on the reference model, benches/README.md). The resident size stays
/// at its peak instead. Call it first thing in `main`.
pub fn keep_freed_memory() {
    // `mi_option_purge_delay` in mimalloc.h (v2 and v3); libmimalloc-sys names no constant
    // for it. -1: never purge.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets one option of the allocator; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
