//! The algorithms as pure functions: losses on tensors (Bradley-Terry, ordinal, flags, PPO's
//! clipped losses, DPO, MetaRM's difference loss and meta-gradient), per-sequence arithmetic (GAE, whitening, KL estimators, credit
//! assignment), evaluation metrics, and optimal design for pair selection. No files, no
//! spec, no CLI; every function is unit-tested against hand-computed numbers.

pub mod design;
pub mod dpo;
pub mod metarm;
pub mod metrics;
pub mod ppo;
pub mod reward;
