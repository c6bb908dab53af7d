//! Tokenizers: loading a `tokenizer.json` for single inputs (padding and truncation off, so
//! a single text is never padded to a batch length), and training a byte-level BPE on a
//! shipped corpus for the built-in model.

use std::path::Path;

use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// The end-of-text token of tokenizers hone trains (id 0).
pub const END_OF_TEXT: &str = "<|endoftext|>";

pub fn load(path: &Path) -> Result<Tokenizer, String> {
    let mut tokenizer =
        Tokenizer::from_file(path).map_err(|e| format!("`{}`: {e}", path.display()))?;
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).map_err(|e| e.to_string())?;
    Ok(tokenizer)
}

/// Token ids of `text`, without added special tokens.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, String> {
    Ok(tokenizer
        .encode(text, false)
        .map_err(|e| e.to_string())?
        .get_ids()
        .to_vec())
}

pub fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String, String> {
    tokenizer.decode(ids, true).map_err(|e| e.to_string())
}

/// The id of a token, if the vocabulary has it.
pub fn token_id(tokenizer: &Tokenizer, token: &str) -> Option<u32> {
    tokenizer.token_to_id(token)
}

/// Trains a GPT-2 style byte-level BPE of `vocab_size` tokens on `texts`, with
/// `<|endoftext|>` as token 0. Deterministic for the same texts.
pub fn train_bpe(texts: &[String], vocab_size: usize) -> Result<Tokenizer, String> {
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
    tokenizer
        .train(&mut trainer, texts.iter().cloned())
        .map_err(|e| e.to_string())?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trained_bpe_round_trips_and_puts_end_of_text_first() {
        let texts: Vec<String> = (0..200)
            .map(|i| format!("User: What is the capital of Veloria {i}?\nAssistant: It is Marn."))
            .collect();
        let tokenizer = train_bpe(&texts, 300).unwrap();
        assert_eq!(token_id(&tokenizer, END_OF_TEXT), Some(0));
        let text = "User: What is the capital of Veloria?\nAssistant: It is Marn.";
        let ids = encode(&tokenizer, text).unwrap();
        assert!(
            ids.len() < text.len() / 2,
            "merges compress: {} tokens",
            ids.len()
        );
        assert_eq!(decode(&tokenizer, &ids).unwrap(), text);
        assert!(tokenizer.get_vocab_size(true) <= 300);
    }
}
