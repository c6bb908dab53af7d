//! The HHH world: a small synthetic world with a known truth (facts, prompts, an oracle
//! that scores responses on helpfulness, honesty and harmlessness) and the simulated
//! annotator that labels from it. It gives every RLHF method an honest yardstick.
//!
//! - `facts`: the seeded table of fictional countries (`World`).
//! - `prompts`: templated prompts, their train/eval split, `World::parse_prompt`, the chat format.
//! - `responses`: templated responses of controlled quality (`respond`, `ResponseStyle`).
//! - `oracle`: `score(world, prompt, response)`, the true reward and flags.
//! - `annotator`: Bradley-Terry, Plackett-Luce, ordered probit and flag noise on rewards.
//! - `generate`: `write_world`, the shipped `data/hhh/` files.
//!
//! Nothing here does I/O except `generate::write_world`, and all randomness comes from an
//! explicit seed or an explicit `rand::Rng`.

pub mod annotator;
pub mod facts;
pub mod generate;
pub mod oracle;
pub mod prompts;
pub mod responses;

pub use facts::{Attribute, Entity, World};
pub use generate::{DEFAULT_WORLD_SEED, write_world};
pub use oracle::{OracleFlags, OracleScore, REWARD_WEIGHTS, score};
pub use prompts::{Prompt, PromptKind, format_chat_prompt, format_dialogue};
pub use responses::{ResponseStyle, respond};

/// An independent seed for one part of the world (the facts, the split, the corpus...),
/// so that changing how one part is drawn leaves the others as they were.
pub(crate) fn derive_seed(seed: u64, part: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.update(part.as_bytes());
    let digest = hasher.finalize();
    let mut first_bytes = [0u8; 8];
    first_bytes.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_seeds_differ_by_part_and_are_stable() {
        assert_ne!(derive_seed(1, "facts"), derive_seed(1, "split"));
        assert_ne!(derive_seed(1, "facts"), derive_seed(2, "facts"));
        assert_eq!(derive_seed(1, "facts"), derive_seed(1, "facts"));
    }
}
