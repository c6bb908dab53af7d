//! Integration tests: the real `hone` binary on real files in temporary workspaces.

mod aggregate;
mod annotate;
mod chat;
mod crash;
mod faults;
mod feedback;
mod lm_stages;
mod lora;
mod models;
mod policy;
mod run;
mod store;
mod support;
mod validate;
