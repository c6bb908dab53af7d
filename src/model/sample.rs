//! Sampling with a KV cache: temperature, top-k, top-p, a token budget, stop at EOS, seeded,
//! returning each sampled token's log-probability (PPO needs them). The prompt is run once;
//! every new token costs one single-position forward pass.

use candle_core::{Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::CausalLm;

#[derive(Debug, Clone, PartialEq)]
pub struct SampleParams {
    /// 0 is greedy decoding.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub max_new_tokens: usize,
    /// Sampling stops after any of these (a chat model may end a turn with one of
    /// several).
    pub eos_token_ids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub tokens: Vec<u32>,
    /// log p(token) under the temperature-scaled distribution, before top-k/top-p
    /// truncation (the policy's own probability, which is what PPO's ratio needs). For
    /// greedy decoding, under the unscaled distribution.
    pub logprobs: Vec<f32>,
    pub stopped_at_eos: bool,
}

/// Samples a continuation of `prompt` (at least one token).
pub fn sample(
    model: &CausalLm,
    prompt: &[u32],
    params: &SampleParams,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<Sample> {
    if prompt.is_empty() {
        candle_core::bail!("cannot sample from an empty prompt");
    }
    let mut cache = model.new_cache();
    let mut out = Sample {
        tokens: Vec::new(),
        logprobs: Vec::new(),
        stopped_at_eos: false,
    };
    let mut input = Tensor::new(prompt, device)?.unsqueeze(0)?;
    let mut position = 0;
    for _ in 0..params.max_new_tokens {
        let t = input.dim(1)?;
        let logits = model.forward(&input, Some(&mut cache), position)?;
        position += t;
        let last: Vec<f32> = logits.squeeze(0)?.get(t - 1)?.to_vec1()?;
        let (token, logprob) = choose(&last, params, rng);
        out.tokens.push(token);
        out.logprobs.push(logprob);
        if params.eos_token_ids.contains(&token) {
            out.stopped_at_eos = true;
            break;
        }
        input = Tensor::new(&[token], device)?.unsqueeze(0)?;
    }
    Ok(out)
}

/// Samples every prompt; prompt `i` draws from its own stream seeded by (`seed`, `i`), so a
/// sample does not depend on which other prompts are in the batch.
pub fn sample_batch(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    params: &SampleParams,
    seed: u64,
    device: &Device,
) -> Result<Vec<Sample>> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, prompt)| {
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            sample(model, prompt, params, &mut rng, device)
        })
        .collect()
}

/// Picks the next token from one position's logits.
pub fn choose(logits: &[f32], params: &SampleParams, rng: &mut impl Rng) -> (u32, f32) {
    let temperature = if params.temperature > 0.0 {
        params.temperature
    } else {
        1.0
    };
    let log_probs = log_softmax(logits, temperature);
    if params.temperature <= 0.0 {
        let best = argmax(logits);
        return (best as u32, log_probs[best]);
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| log_probs[b].total_cmp(&log_probs[a]).then(a.cmp(&b)));
    if let Some(k) = params.top_k {
        order.truncate(k.max(1));
    }
    if let Some(p) = params.top_p {
        let mut mass = 0.0;
        let mut keep = 0;
        for &i in &order {
            mass += f64::from(log_probs[i].exp());
            keep += 1;
            if mass >= p {
                break;
            }
        }
        order.truncate(keep.max(1));
    }
    let total: f64 = order.iter().map(|&i| f64::from(log_probs[i].exp())).sum();
    let mut draw = rng.random::<f64>() * total;
    for &i in &order {
        draw -= f64::from(log_probs[i].exp());
        if draw <= 0.0 {
            return (i as u32, log_probs[i]);
        }
    }
    let last = *order.last().expect("at least one token");
    (last as u32, log_probs[last])
}

fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

fn log_softmax(logits: &[f32], temperature: f64) -> Vec<f32> {
    let scaled: Vec<f64> = logits.iter().map(|&l| f64::from(l) / temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = scaled.iter().map(|s| (s - max).exp()).sum::<f64>().ln() + max;
    scaled.iter().map(|s| (s - log_sum) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> SampleParams {
        SampleParams {
            temperature,
            top_k,
            top_p,
            max_new_tokens: 1,
            eos_token_ids: Vec::new(),
        }
    }

    #[test]
    fn greedy_takes_the_argmax_with_its_log_probability() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (token, lp) = choose(&[0.0, 2.0, 1.0], &params(0.0, None, None), &mut rng);
        // log softmax([0, 2, 1])[1] = 2 - ln(e^0 + e^2 + e^1) = -0.40760596
        assert_eq!(token, 1);
        assert!((lp + 0.40760596).abs() < 1e-6);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_the_head() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            assert_eq!(
                choose(&[0.0, 3.0, 1.0], &params(1.0, Some(1), None), &mut rng).0,
                1
            );
            // p = softmax([0, 3, 1]) = [0.0420, 0.8438, 0.1142]; top_p 0.8 keeps token 1 only.
            assert_eq!(
                choose(&[0.0, 3.0, 1.0], &params(1.0, None, Some(0.8)), &mut rng).0,
                1
            );
        }
    }

    #[test]
    fn sampling_frequencies_follow_the_temperature_scaled_softmax() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let logits = [0.0f32, 1.0, 2.0];
        let n = 20_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[choose(&logits, &params(2.0, None, None), &mut rng).0 as usize] += 1;
        }
        // softmax([0, 0.5, 1]) = [0.18632372, 0.30719589, 0.50648039]
        for (c, p) in counts.iter().zip([0.18632372, 0.30719589, 0.50648039]) {
            let freq = *c as f64 / n as f64;
            let se = (p * (1.0 - p) / n as f64).sqrt();
            assert!((freq - p).abs() < 4.0 * se, "{counts:?}");
        }
    }
}
