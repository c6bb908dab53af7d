//! The one rollout function: a batch of prompts in, a completion for each out, with its
//! tokens, per-token log-probabilities, text, stop reason and seed. Generate, PPO and
//! evaluate sample through it, so they agree on where a response ends: at EOS (kept as
//! the last token) or at the token that completes a stop string (kept; the text is cut
//! before the stop string), or after `max_new_tokens`.
//!
//! Each request carries its own seed, so a completion does not depend on which other
//! prompts are in the batch or in what order: the property that lets true batched
//! decoding go in behind this function without changing a single token.

use candle_core::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use super::{PolicyError, Result};
use crate::model::CausalLm;
use crate::model::sample::{SampleParams, sample};
use crate::model::tokenizer;

/// How completions are drawn.
#[derive(Debug, Clone)]
pub struct RolloutParams<'a> {
    /// 0 is greedy decoding.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub max_new_tokens: usize,
    /// The tokens that end a completion: the end-of-text token
    /// (`stages::lm::end_of_text`), and a chat model's end of turn
    /// (`chat::PromptFormat::stop_tokens`).
    pub eos: &'a [u32],
    /// A completion ends at the first of these strings.
    pub stop: &'a [String],
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    StopString,
    /// `max_new_tokens` ran out first.
    Length,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The sampled tokens up to and including the one that ended the completion (EOS, or
    /// the token that completed a stop string).
    pub tokens: Vec<u32>,
    /// log p of each of `tokens` under the temperature-scaled distribution (see
    /// `model::sample::Sample::logprobs`).
    pub logprobs: Vec<f32>,
    /// The decoded response without EOS, cut before the first stop string, trimmed.
    pub text: String,
    pub stop: StopReason,
    /// The seed of this completion's random stream.
    pub seed: u64,
}

impl<'a> RolloutParams<'a> {
    /// Plain sampling at `temperature`, without top-k or top-p truncation (what PPO and
    /// evaluate use: log-probabilities under the distribution sampled from).
    pub fn sampling(
        temperature: f64,
        max_new_tokens: usize,
        eos: &'a [u32],
        stop: &'a [String],
    ) -> Self {
        RolloutParams {
            temperature,
            top_k: None,
            top_p: None,
            max_new_tokens,
            eos,
            stop,
        }
    }
}

impl Completion {
    /// Ended by EOS or a stop string, not by the token budget.
    pub fn ended(&self) -> bool {
        self.stop != StopReason::Length
    }

    pub fn logprob_sum(&self) -> f64 {
        self.logprobs.iter().map(|&l| f64::from(l)).sum()
    }
}

/// One completion per `(prompt tokens, seed)`, in order. Prompts must fit the model's
/// context with `max_new_tokens` more ([`check_fits`]).
pub fn rollout(
    model: &CausalLm,
    tok: &Tokenizer,
    requests: &[(&[u32], u64)],
    params: &RolloutParams<'_>,
    device: &Device,
) -> Result<Vec<Completion>> {
    let sample_params = SampleParams {
        temperature: params.temperature,
        top_k: params.top_k,
        top_p: params.top_p,
        max_new_tokens: params.max_new_tokens,
        eos_token_ids: params.eos.to_vec(),
    };
    let decode = |ids: &[u32]| tokenizer::decode(tok, ids).map_err(PolicyError::Invalid);
    requests
        .iter()
        .map(|&(prompt, seed)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut s = sample(model, prompt, &sample_params, &mut rng, device)?;
            let (kept, stop, text) = cut(&s.tokens, params.eos, params.stop, decode)?;
            s.tokens.truncate(kept);
            s.logprobs.truncate(kept);
            Ok(Completion {
                tokens: s.tokens,
                logprobs: s.logprobs,
                text,
                stop,
                seed,
            })
        })
        .collect()
}

/// Where a sampled continuation ends: how many of its tokens are kept, why, and the
/// response text. Pure over `decode`, so it is tested with a toy decoder.
pub fn cut(
    tokens: &[u32],
    eos: &[u32],
    stops: &[String],
    decode: impl Fn(&[u32]) -> Result<String>,
) -> Result<(usize, StopReason, String)> {
    let mut kept = tokens.len();
    let mut reason = StopReason::Length;
    for (i, &t) in tokens.iter().enumerate() {
        if eos.contains(&t) {
            kept = i + 1;
            reason = StopReason::Eos;
            break;
        }
        if !stops.is_empty() {
            let text = decode(&tokens[..=i])?;
            if stops.iter().any(|s| text.contains(s.as_str())) {
                kept = i + 1;
                reason = StopReason::StopString;
                break;
            }
        }
    }
    let body: Vec<u32> = tokens[..kept]
        .iter()
        .copied()
        .filter(|t| !eos.contains(t))
        .collect();
    let decoded = decode(&body)?;
    let end = stops
        .iter()
        .filter_map(|s| decoded.find(s.as_str()))
        .min()
        .unwrap_or(decoded.len());
    Ok((kept, reason, decoded[..end].trim().to_string()))
}

/// An error naming the prompt when it and `max_new_tokens` more exceed the context.
pub fn check_fits(
    prompt_id: &str,
    prompt_len: usize,
    max_new_tokens: usize,
    context: usize,
    model_name: &str,
) -> Result<()> {
    if prompt_len + max_new_tokens > context {
        return Err(PolicyError::Invalid(format!(
            "prompt `{prompt_id}` has {prompt_len} tokens; with {max_new_tokens} new ones it exceeds {model_name}'s context of {context}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token t decodes to the letter 'a' + t; token 9 is EOS and decodes to nothing.
    fn decode(ids: &[u32]) -> Result<String> {
        Ok(ids
            .iter()
            .filter(|&&t| t != 9)
            .map(|&t| char::from(b'a' + t as u8))
            .collect())
    }

    #[test]
    fn eos_ends_a_completion_and_is_kept_as_its_last_token() {
        let (kept, why, text) = cut(&[0, 1, 9, 2], &[9], &[], decode).unwrap();
        assert_eq!((kept, why, text.as_str()), (3, StopReason::Eos, "ab"));
    }

    #[test]
    fn any_of_several_end_tokens_ends_it() {
        // A chat model ends its turn with its own token (7) as well as end-of-text (9).
        let (kept, why, text) = cut(&[0, 7, 1, 9], &[9, 7], &[], decode).unwrap();
        assert_eq!((kept, why, text.as_str()), (2, StopReason::Eos, "a"));
    }

    #[test]
    fn a_stop_string_ends_it_at_the_token_that_completes_it() {
        // "abcd": the stop string "cd" is complete after token 3; the text ends before it.
        let stops = vec!["cd".to_string()];
        let (kept, why, text) = cut(&[0, 1, 2, 3, 4, 5], &[9], &stops, decode).unwrap();
        assert_eq!(
            (kept, why, text.as_str()),
            (4, StopReason::StopString, "ab")
        );
    }

    #[test]
    fn without_eos_or_stop_string_everything_is_kept() {
        let stops = vec!["zz".to_string()];
        let (kept, why, text) = cut(&[0, 1, 2], &[9], &stops, decode).unwrap();
        assert_eq!((kept, why, text.as_str()), (3, StopReason::Length, "abc"));
    }

    #[test]
    fn a_prompt_too_long_for_the_context_is_named() {
        assert!(check_fits("p1", 10, 6, 16, "the model").is_ok());
        let err = check_fits("p1", 11, 6, 16, "the model")
            .unwrap_err()
            .to_string();
        assert!(err.contains("prompt `p1` has 11 tokens"), "{err}");
    }

    /// On a real (tiny) checkpoint: a completion depends on its prompt and seed only, not
    /// on the other requests beside it, and its tokens, log-probabilities and text agree.
    #[test]
    fn a_completion_does_not_depend_on_the_rest_of_the_batch() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
        let device = Device::Cpu;
        let trainable = crate::model::Trainable::load(&dir.join("gpt2-tiny"), &device).unwrap();
        let tok = tokenizer::load(&dir.join("gpt2-tiny/tokenizer.json")).unwrap();
        let model = trainable.frozen().unwrap();
        let a = tokenizer::encode(&tok, "hi").unwrap();
        let b = tokenizer::encode(&tok, "two?").unwrap();
        let stop = vec!["\nUser:".to_string()];
        let params = RolloutParams {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            max_new_tokens: 8,
            eos: &[0],
            stop: &stop,
        };
        let together =
            rollout(&model, &tok, &[(&a, 7), (&b, 8), (&a, 9)], &params, &device).unwrap();
        let alone = rollout(&model, &tok, &[(&b, 8)], &params, &device).unwrap();
        assert_eq!(together[1], alone[0]);
        assert_ne!(
            together[0].tokens, together[2].tokens,
            "seeds 7 and 9 differ"
        );
        for c in &together {
            assert_eq!(c.tokens.len(), c.logprobs.len());
            assert!(c.logprobs.iter().all(|l| l.is_finite() && *l <= 0.0));
            assert_eq!(c.stop == StopReason::Length, c.tokens.len() == 8);
        }
    }
}
