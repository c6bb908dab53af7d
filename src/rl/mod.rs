//! The algorithms as pure functions: losses on tensors (Bradley-Terry, ordinal, flags),
//! evaluation metrics, and optimal design for pair selection. No files, no spec, no CLI;
//! every function is unit-tested against hand-computed numbers.

pub mod design;
pub mod metrics;
pub mod reward;
