//! Integration tests: the real `hone` binary on real files in temporary workspaces.

mod annotate;
mod crash;
mod feedback;
mod lm_stages;
mod models;
mod run;
mod support;
mod validate;
