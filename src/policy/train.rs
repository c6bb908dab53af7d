//! Which variables a stage trains: decided here and nowhere else, so that a change of what
//! trains (LoRA adapters: only the adapter's weights, and a reward model's head) is made
//! in one place for sft, pretraining, dpo, ppo, reward-fit and metarm-adapt.

use candle_core::Var;

use crate::model::Trainable;
use crate::model::reward::RewardModel;
use crate::model::train::Trainer;

/// A causal LM's trainable variables, by name: all of them (with PPO's value head, which
/// lives in the policy's variables and trains with it).
pub fn lm_vars(model: &Trainable) -> Vec<(String, Var)> {
    Trainer::named_vars(&model.varmap)
}

/// A reward model's: its backbone without the language-model head it never uses, and its
/// scalar head.
pub fn reward_model_vars(rm: &RewardModel) -> Vec<(String, Var)> {
    rm.trainable_vars()
}
