//! PPO for RLHF, following InstructGPT and "The N+ implementation details of RLHF with PPO"
//! (Huang et al., 2024): per-token KL penalty to a frozen reference, the reward model's
//! score placed on the response's tokens (`sparse`, `uniform`, or `abc`, attention-based
//! credit, Chan et al. 2024), GAE, whitening, and the clipped policy and value losses.
//! Per-sequence quantities are plain f64 slices; the losses are candle tensors so that
//! they differentiate.

use candle_core::{Result, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How KL(π || π_ref) is estimated from one sampled token (Schulman's estimators).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// log π - log π_ref: unbiased, can be negative.
    #[default]
    K1,
    /// (ρ - 1) - log ρ with ρ = π_ref / π: unbiased and never negative.
    K3,
}

/// The KL estimate of each token from its log-probabilities under the policy and the
/// reference.
pub fn kl_per_token(logp: &[f64], logp_ref: &[f64], estimator: KlEstimator) -> Vec<f64> {
    logp.iter()
        .zip(logp_ref)
        .map(|(&p, &r)| match estimator {
            KlEstimator::K1 => p - r,
            KlEstimator::K3 => {
                let log_ratio = r - p;
                log_ratio.exp_m1() - log_ratio
            }
        })
        .collect()
}

/// Where a response's scalar reward goes among its tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Credit {
    /// All of it on the last token (InstructGPT).
    #[default]
    Sparse,
    /// Attention-based credit (ABC): a share β by the reward model's last-layer attention
    /// from the final token, the rest on the last token.
    Abc,
    /// Spread evenly over the tokens.
    Uniform,
}

/// The score of one response of `n` tokens placed on its tokens. For `abc`,
/// `attention` holds the reward model's attention of the final token over the response's
/// tokens (any non-negative weights; they are renormalised to sum to 1) and `beta` the
/// share it distributes: r_t = β α_t r + (1 - β) r [t = T]. Every variant sums to `score`.
pub fn shape_score(
    score: f64,
    n: usize,
    credit: Credit,
    attention: Option<&[f64]>,
    beta: f64,
) -> Vec<f64> {
    let mut out = vec![0.0; n];
    if n == 0 {
        return out;
    }
    match credit {
        Credit::Sparse => out[n - 1] = score,
        Credit::Uniform => out.iter_mut().for_each(|r| *r = score / n as f64),
        Credit::Abc => {
            let weights = attention.unwrap_or(&[]);
            let total: f64 = weights.iter().take(n).filter(|w| w.is_finite()).sum();
            if weights.len() < n || total <= 0.0 {
                // No usable attention: all credit at the end (the sparse reward).
                out[n - 1] = score;
                return out;
            }
            for (r, w) in out.iter_mut().zip(weights) {
                *r = beta * score * w / total;
            }
            out[n - 1] += (1.0 - beta) * score;
        }
    }
    out
}

/// Weights over `m` tokens spread onto `n` tokens of the same text (the reward model's
/// tokens onto the policy's): token j of n covers [j/n, (j+1)/n) of the text, and gets
/// each source weight in proportion to the overlap. The total is kept.
pub fn resample_weights(weights: &[f64], n: usize) -> Vec<f64> {
    let m = weights.len();
    if m == n || m == 0 || n == 0 {
        return if m == n {
            weights.to_vec()
        } else {
            vec![0.0; n]
        };
    }
    let mut out = vec![0.0; n];
    for (i, w) in weights.iter().enumerate() {
        let (lo, hi) = (i as f64 / m as f64, (i + 1) as f64 / m as f64);
        let first = ((lo * n as f64).floor() as usize).min(n - 1);
        let last = ((hi * n as f64).ceil() as usize).min(n);
        for (j, slot) in out.iter_mut().enumerate().take(last).skip(first) {
            let (a, b) = (j as f64 / n as f64, (j + 1) as f64 / n as f64);
            let overlap = (hi.min(b) - lo.max(a)).max(0.0);
            *slot += w * overlap * m as f64;
        }
    }
    out
}

/// Generalised advantage estimation over one response: δ_t = r_t + γ V_{t+1} - V_t (V after
/// the last token is 0), A_t = δ_t + γ λ A_{t+1}. Returns (advantages, returns = A + V).
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut advantages = vec![0.0; n];
    let mut next_advantage = 0.0;
    for t in (0..n).rev() {
        let next_value = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next_value - values[t];
        next_advantage = delta + gamma * lambda * next_advantage;
        advantages[t] = next_advantage;
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    (advantages, returns)
}

/// What a response's score is measured against before it becomes an advantage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// The critic's values, through GAE (InstructGPT).
    #[default]
    Critic,
    /// RLOO (Ahmadian et al. 2024; OpenRLHF's `rloo`): each of a prompt's responses is
    /// scored against the mean score of the prompt's other responses, and the advantages
    /// are the returns of those centred rewards (with the KL penalty); no critic.
    LeaveOneOut,
}

/// Each score minus the mean of the other scores of its group; groups are consecutive runs
/// of `group` scores (a prompt's responses). The centred scores of a group sum to 0, and a
/// reward model's constant offset for the prompt cancels. `group` must divide the length
/// and be at least 2.
pub fn leave_one_out(scores: &[f64], group: usize) -> Vec<f64> {
    assert!(group >= 2 && scores.len().is_multiple_of(group));
    scores
        .chunks(group)
        .flat_map(|g| {
            let total: f64 = g.iter().sum();
            g.iter().map(move |s| s - (total - s) / (group - 1) as f64)
        })
        .collect()
}

/// (x - mean) / std over all values (population variance, + 1e-8); with `shift_mean`
/// false the mean is added back (rewards keep their sign, as in TRL).
pub fn whiten(values: &[f64], shift_mean: bool) -> Vec<f64> {
    if values.is_empty() {
        return Vec::new();
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let scale = 1.0 / (var + 1e-8).sqrt();
    values
        .iter()
        .map(|v| {
            let w = (v - mean) * scale;
            if shift_mean { w } else { w + mean }
        })
        .collect()
}

/// The adaptive KL coefficient of Ziegler et al. (2019): moves the coefficient towards the
/// value that keeps the measured KL at `target`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveKl {
    pub coef: f64,
    pub target: f64,
    pub horizon: f64,
}

impl AdaptiveKl {
    /// After `n` samples whose mean KL was `kl`: coef *= 1 + clip(kl/target - 1, ±0.2)·n/horizon.
    pub fn update(&mut self, kl: f64, n: usize) {
        let error = (kl / self.target - 1.0).clamp(-0.2, 0.2);
        self.coef *= 1.0 + error * n as f64 / self.horizon;
    }
}

/// Σ x·mask / Σ mask.
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let total = mask.sum_all()?;
    (x * mask)?
        .sum_all()?
        .broadcast_div(&total.clamp(1e-8, f64::INFINITY)?)
}

/// The clipped surrogate: mean over unmasked tokens of max(-A ρ, -A clip(ρ, 1 ± ε)) with
/// ρ = exp(log π - log π_old). Returns (loss, the share of tokens where clipping was
/// active, the approximate KL mean((ρ - 1) - log ρ)).
pub fn policy_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    clip: f64,
) -> Result<(Tensor, f64, f64)> {
    let log_ratio = (logp - old_logp)?;
    let ratio = log_ratio.exp()?;
    let unclipped = (advantages.neg()? * &ratio)?;
    let clipped = (advantages.neg()? * ratio.clamp(1.0 - clip, 1.0 + clip)?)?;
    let loss = masked_mean(&unclipped.maximum(&clipped)?, mask)?;
    let clip_fraction = masked_mean(&clipped.gt(&unclipped)?.to_dtype(mask.dtype())?, mask)?
        .to_scalar::<f32>()? as f64;
    let approx_kl = masked_mean(&((&ratio - 1.0)? - &log_ratio)?, mask)?
        .detach()
        .to_scalar::<f32>()? as f64;
    Ok((loss, clip_fraction, approx_kl))
}

/// The clipped value loss: 0.5 · mean over unmasked tokens of max((V - R)², (V_clip - R)²)
/// with V_clip = V_old + clip(V - V_old, ±ε).
pub fn value_loss(
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    mask: &Tensor,
    clip: f64,
) -> Result<Tensor> {
    let clipped = (old_values + (values - old_values)?.clamp(-clip, clip)?)?;
    let a = (values - returns)?.sqr()?;
    let b = (clipped - returns)?.sqr()?;
    masked_mean(&a.maximum(&b)?, mask)? * 0.5
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn t(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }

    #[test]
    fn kl_estimators_by_hand() {
        // log π = -1, log π_ref = -2: k1 = 1; k3 = (e^-1 - 1) + 1 = e^-1.
        let k1 = kl_per_token(&[-1.0, -2.0], &[-2.0, -2.0], KlEstimator::K1);
        assert_eq!(k1, vec![1.0, 0.0]);
        let k3 = kl_per_token(&[-1.0, -3.0], &[-2.0, -2.0], KlEstimator::K3);
        close(k3[0], (-1f64).exp());
        // log ρ = 1: (e - 1) - 1.
        close(k3[1], std::f64::consts::E - 2.0);
        assert!(k3.iter().all(|k| *k >= 0.0));
    }

    #[test]
    fn gae_by_hand() {
        // r = [0, 1], V = [0.5, 0.2], γ = 0.9, λ = 0.8.
        // δ1 = 1 - 0.2 = 0.8; A1 = 0.8. δ0 = 0 + 0.9·0.2 - 0.5 = -0.32; A0 = -0.32 + 0.72·0.8.
        let (a, r) = gae(&[0.0, 1.0], &[0.5, 0.2], 0.9, 0.8);
        close(a[1], 0.8);
        close(a[0], -0.32 + 0.72 * 0.8);
        close(r[0], a[0] + 0.5);
        close(r[1], 1.0);
        // γ = λ = 1 with zero values: the advantage is the reward to go.
        let (a, _) = gae(&[1.0, 2.0, 3.0], &[0.0; 3], 1.0, 1.0);
        assert_eq!(a, vec![6.0, 5.0, 3.0]);
    }

    #[test]
    fn leave_one_out_by_hand() {
        // [1, 2, 3, 6]: 1 - 11/3, 2 - 10/3, 3 - 9/3, 6 - 6/3.
        let centred = leave_one_out(&[1.0, 2.0, 3.0, 6.0], 4);
        let expected = [-8.0 / 3.0, -4.0 / 3.0, 0.0, 4.0];
        for (c, e) in centred.iter().zip(expected) {
            assert!((c - e).abs() < 1e-12, "{centred:?}");
        }
        // Pairs, each group on its own; a group of equal scores gives zeros.
        assert_eq!(
            leave_one_out(&[1.0, 3.0, 5.0, 5.0], 2),
            vec![-2.0, 2.0, 0.0, 0.0]
        );
        // A constant added to a group leaves its centred scores unchanged.
        let shifted = leave_one_out(&[11.0, 12.0, 13.0, 16.0], 4);
        for (a, b) in shifted.iter().zip(&centred) {
            assert!((a - b).abs() < 1e-12);
        }
        // With zero values and lambda 1, GAE's advantages are the returns to go.
        let (advantages, _) = gae(&[0.5, -0.25, 2.0], &[0.0; 3], 1.0, 1.0);
        assert_eq!(advantages, vec![2.25, 1.75, 2.0]);
    }

    #[test]
    fn whitening_by_hand() {
        // [1, 3]: mean 2, population std 1.
        let w = whiten(&[1.0, 3.0], true);
        close(w[0], -1.0);
        close(w[1], 1.0);
        let kept = whiten(&[1.0, 3.0], false);
        close(kept[0], 1.0);
        close(kept[1], 3.0);
    }

    #[test]
    fn every_credit_sums_to_the_score_and_abc_follows_attention() {
        let attention = [1.0, 3.0, 0.0, 4.0]; // renormalised: 1/8, 3/8, 0, 1/2
        for credit in [Credit::Sparse, Credit::Uniform, Credit::Abc] {
            let r = shape_score(2.0, 4, credit, Some(&attention), 0.8);
            close(r.iter().sum::<f64>(), 2.0);
        }
        let r = shape_score(2.0, 4, Credit::Abc, Some(&attention), 0.8);
        close(r[0], 0.8 * 2.0 / 8.0);
        close(r[1], 0.8 * 2.0 * 3.0 / 8.0);
        close(r[2], 0.0);
        close(r[3], 0.8 * 2.0 * 0.5 + 0.2 * 2.0);
        assert_eq!(
            shape_score(2.0, 3, Credit::Sparse, None, 0.8),
            vec![0.0, 0.0, 2.0]
        );
        assert_eq!(
            shape_score(2.0, 2, Credit::Abc, None, 0.8),
            vec![0.0, 2.0],
            "no attention: sparse"
        );
    }

    #[test]
    fn resampled_weights_keep_their_total_and_order() {
        // 2 tokens onto 4: each splits in half.
        assert_eq!(resample_weights(&[0.2, 0.8], 4), vec![0.1, 0.1, 0.4, 0.4]);
        // 3 onto 2: the middle one is shared.
        let w = resample_weights(&[0.3, 0.3, 0.4], 2);
        close(w[0], 0.3 + 0.15);
        close(w[1], 0.15 + 0.4);
        assert_eq!(resample_weights(&[0.5, 0.5], 2), vec![0.5, 0.5]);
    }

    #[test]
    fn adaptive_kl_moves_towards_the_target() {
        let mut kl = AdaptiveKl {
            coef: 0.1,
            target: 6.0,
            horizon: 10_000.0,
        };
        kl.update(12.0, 1000); // error clipped to 0.2: coef · (1 + 0.02)
        close(kl.coef, 0.102);
        kl.update(3.0, 1000); // error -0.5 clipped to -0.2
        close(kl.coef, 0.102 * 0.98);
    }

    #[test]
    fn clipped_policy_loss_by_hand() {
        // Token 1: ratio e^0.5 ≈ 1.6487 > 1.2 with A = 1: clipped, -1.2.
        // Token 2: ratio 1 with A = -2: loss 2. Token 3 masked out.
        let (loss, clip_fraction, _) = policy_loss(
            &t(&[0.5, 0.0, 9.0]),
            &t(&[0.0, 0.0, 0.0]),
            &t(&[1.0, -2.0, 5.0]),
            &t(&[1.0, 1.0, 0.0]),
            0.2,
        )
        .unwrap();
        close(loss.to_scalar::<f32>().unwrap() as f64, (-1.2 + 2.0) / 2.0);
        close(clip_fraction, 0.5);
        // A negative advantage with a ratio below 1 - ε: clipped at 0.8·|A|.
        let (loss, _, _) =
            policy_loss(&t(&[-1.0]), &t(&[0.0]), &t(&[-1.0]), &t(&[1.0]), 0.2).unwrap();
        close(loss.to_scalar::<f32>().unwrap() as f64, 0.8);
    }

    #[test]
    fn clipped_value_loss_by_hand() {
        // V = 2, V_old = 0, R = 1, ε = 0.5: (2-1)² = 1, V_clip = 0.5: (0.5-1)² = 0.25;
        // max 1, halved: 0.5. Second token: V = 1 = R, V_clip = 1 (within): 0.
        let loss = value_loss(
            &t(&[2.0, 1.0]),
            &t(&[0.0, 0.8]),
            &t(&[1.0, 1.0]),
            &t(&[1.0, 1.0]),
            0.5,
        )
        .unwrap();
        close(loss.to_scalar::<f32>().unwrap() as f64, 0.25);
    }
}
