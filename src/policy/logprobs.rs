//! Per-token log-probabilities (and values, with a value head) of given sequences:
//! what PPO's ratio and KL penalty, DPO's reference and evaluate's KL are made of.

use candle_core::{Device, Tensor};

use super::{PolicyError, Result};
use crate::model::CausalLm;
use crate::model::train::token_logprobs;

/// A response's per-token log-probabilities and values (empty without a value head).
pub type TokenValues = (Vec<f64>, Vec<f64>);

/// For each (tokens, prompt length): the response tokens' log-probabilities and, with a
/// value head, the values of the states before them. Batched forward passes of a detached
/// model.
pub fn per_token(
    model: &CausalLm,
    head: Option<(&Tensor, &Tensor)>,
    sequences: &[(Vec<u32>, usize)],
    pad: u32,
    temperature: f64,
    device: &Device,
) -> Result<Vec<TokenValues>> {
    let mut out = Vec::with_capacity(sequences.len());
    for chunk in sequences.chunks(16) {
        let len = chunk.iter().map(|(t, _)| t.len()).max().unwrap_or(2).max(2);
        let mut ids = Vec::with_capacity(chunk.len() * len);
        for (tokens, _) in chunk {
            ids.extend(tokens.iter().copied());
            ids.extend(std::iter::repeat_n(pad, len - tokens.len()));
        }
        let ids = Tensor::from_vec(ids, (chunk.len(), len), device)?;
        let (logp, hidden) = token_logprobs(model, &ids, temperature)?;
        let logp: Vec<Vec<f32>> = logp.to_vec2()?;
        let values: Option<Vec<Vec<f32>>> = match head {
            Some((w, b)) => Some(value_of(&hidden, &w.detach(), &b.detach(), len - 1)?.to_vec2()?),
            None => None,
        };
        for (k, (tokens, prompt_len)) in chunk.iter().enumerate() {
            // Response token j sits at position prompt_len + j; its log-probability and
            // its state's value are at index prompt_len + j - 1.
            let range = prompt_len - 1..tokens.len() - 1;
            let lp = logp[k][range.clone()]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let v = values
                .as_ref()
                .map(|v| v[k][range].iter().map(|&x| f64::from(x)).collect())
                .unwrap_or_default();
            out.push((lp, v));
        }
    }
    Ok(out)
}

/// Values [b, n] of the first `n` positions from hidden states [b, t, h].
pub fn value_of(hidden: &Tensor, weight: &Tensor, bias: &Tensor, n: usize) -> Result<Tensor> {
    hidden
        .narrow(1, 0, n)
        .and_then(|h| h.broadcast_matmul(&weight.t()?))
        .and_then(|v| v.squeeze(2))
        .and_then(|v| v.broadcast_add(bias))
        .map_err(PolicyError::from)
}
