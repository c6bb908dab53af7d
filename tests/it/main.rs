//! Integration tests: the real `hone` binary on real files in temporary workspaces.

mod crash;
mod feedback;
mod run;
mod support;
mod validate;
