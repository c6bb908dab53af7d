//! Training and sampling data from the workspace: prompts from JSONL, and how an epoch's
//! examples are batched.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::{PolicyError, Result};
use crate::artifact::feedback::prompt_id;

/// (id, text) of every prompt in a JSONL file.
pub fn read_prompts(path: &std::path::Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| PolicyError::input(path, e))?;
    let mut prompts = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| PolicyError::input(path, format!("line {}: {e}", i + 1)))?;
        let text = v
            .get("text")
            .or_else(|| v.get("prompt"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                PolicyError::input(path, format!("line {}: no `text` or `prompt`", i + 1))
            })?;
        let id = match v.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => prompt_id(text),
        };
        prompts.push((id, text.to_string()));
    }
    Ok(prompts)
}

/// The batches of one epoch: examples shuffled (seeded by epoch), cut into chunks of 8
/// batches' worth, sorted by length within each chunk (length bucketing: little padding,
/// still random across chunks), then split into batches whose order is shuffled too.
pub fn epoch_batches(
    examples: &[(Vec<u32>, usize)],
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.shuffle(&mut rng);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for chunk in order.chunks(batch_size * 8) {
        let mut chunk = chunk.to_vec();
        chunk.sort_by_key(|&i| (examples[i].0.len(), i));
        batches.extend(chunk.chunks(batch_size).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_batches_cover_every_example_once_with_similar_lengths() {
        let examples: Vec<(Vec<u32>, usize)> =
            (0..50).map(|i| (vec![0; 1 + (i * 7) % 23], 0)).collect();
        let batches = epoch_batches(&examples, 4, 9, 0);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        assert_eq!(batches, epoch_batches(&examples, 4, 9, 0), "deterministic");
        assert_ne!(
            batches,
            epoch_batches(&examples, 4, 9, 1),
            "reshuffled per epoch"
        );
        // Within a batch, lengths are sorted neighbours of one chunk.
        for b in &batches {
            let lens: Vec<usize> = b.iter().map(|&i| examples[i].0.len()).collect();
            assert!(lens.windows(2).all(|w| w[0] <= w[1]), "{lens:?}");
        }
    }
}
