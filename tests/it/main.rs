//! Integration tests: the real `hone` binary on real files in temporary workspaces.

mod crash;
mod run;
mod support;
mod validate;
