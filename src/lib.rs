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
