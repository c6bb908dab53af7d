//! Reward-model losses. Rewards are scalars per response; every loss is a mean over its
//! items, composed from differentiable candle ops.

use candle_core::{Result, Tensor};

/// log sigmoid(x), stable for large |x|: -relu(-x) - ln(1 + exp(-|x|)).
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let softplus_tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    x.neg()?.relu()?.neg()? - softplus_tail
}

/// Bradley-Terry: mean of -log sigmoid(r_chosen - r_rejected - margin) over pairs.
pub fn bradley_terry_loss(
    chosen: &Tensor,
    rejected: &Tensor,
    margin: Option<&Tensor>,
) -> Result<Tensor> {
    let mut diff = (chosen - rejected)?;
    if let Some(m) = margin {
        diff = (diff - m)?;
    }
    log_sigmoid(&diff)?.mean_all()?.neg()
}

/// The pairs a ranking (best first) implies: every (better, worse) index pair.
pub fn ranking_pairs(n: usize) -> Vec<(usize, usize)> {
    (0..n)
        .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
        .collect()
}

/// Ordered-logit thresholds from free parameters: the first is taken as is, each next one
/// adds softplus(raw) > 0, so they stay increasing whatever the optimiser does.
pub fn ordered_thresholds(raw: &Tensor) -> Result<Tensor> {
    let n = raw.dim(0)?;
    let first = raw.narrow(0, 0, 1)?;
    if n == 1 {
        return Ok(first);
    }
    let gaps = (raw.narrow(0, 1, n - 1)?.exp()? + 1.0)?.log()?;
    Tensor::cat(
        &[&first, &(gaps.cumsum(0)? + first.broadcast_as(n - 1)?)?],
        0,
    )
}

/// Ordered logit: P(score = k | r) = sigmoid(t_k - r) - sigmoid(t_{k-1} - r) for classes
/// 0..=K-1 with K-1 increasing thresholds `t` (t_{-1} = -inf, t_{K-1} = +inf). Returns the
/// mean negative log-likelihood of `classes` (u32, 0-based) given `rewards`.
pub fn ordinal_nll(rewards: &Tensor, thresholds: &Tensor, classes: &[u32]) -> Result<Tensor> {
    let n_thresholds = thresholds.dim(0)?;
    let n = rewards.dim(0)?;
    // sigmoid(t_j - r_i) for every item and threshold: [n, K-1], padded with 0 and 1.
    let cdf = candle_nn::ops::sigmoid(
        &thresholds
            .unsqueeze(0)?
            .broadcast_sub(&rewards.unsqueeze(1)?)?,
    )?;
    let zeros = Tensor::zeros((n, 1), cdf.dtype(), cdf.device())?;
    let ones = Tensor::ones((n, 1), cdf.dtype(), cdf.device())?;
    let padded = Tensor::cat(&[&zeros, &cdf, &ones], 1)?; // [n, K + 1]
    let upper_idx: Vec<u32> = classes
        .iter()
        .map(|&c| c.min(n_thresholds as u32) + 1)
        .collect();
    let lower_idx: Vec<u32> = classes
        .iter()
        .map(|&c| c.min(n_thresholds as u32))
        .collect();
    let device = rewards.device();
    let upper = padded.gather(&Tensor::from_vec(upper_idx, (n, 1), device)?, 1)?;
    let lower = padded.gather(&Tensor::from_vec(lower_idx, (n, 1), device)?, 1)?;
    ((upper - lower)?.clamp(1e-7, 1.0)?.log()?.mean_all()?).neg()
}

/// Flags as evidence against a response: P(flagged) = sigmoid(-(r - bias)), the binary
/// cross-entropy of the observed flags (1 = flagged).
pub fn flag_nll(rewards: &Tensor, bias: &Tensor, flagged: &Tensor) -> Result<Tensor> {
    let logit = rewards.broadcast_sub(bias)?.neg()?;
    let pos = (log_sigmoid(&logit)? * flagged)?;
    let neg = (log_sigmoid(&logit.neg()?)? * (flagged.ones_like()? - flagged)?)?;
    (pos + neg)?.mean_all()?.neg()
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    fn t(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    fn scalar(x: Tensor) -> f32 {
        x.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn log_sigmoid_is_stable_and_exact() {
        // log sigmoid(0) = -ln 2; log sigmoid(-50) = -50 - ln(1 + e^-50) ~ -50; (50) ~ -1.9e-22
        let v = log_sigmoid(&t(&[0.0, -50.0, 50.0, 2.0]))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((v[0] + std::f32::consts::LN_2).abs() < 1e-6);
        assert!((v[1] + 50.0).abs() < 1e-4);
        assert!(v[2].abs() < 1e-6);
        // log sigmoid(2) = -ln(1 + e^-2) = -0.12692801
        assert!((v[3] + 0.126_928_01).abs() < 1e-6);
    }

    #[test]
    fn bradley_terry_by_hand() {
        // pairs: (1, 0) and (0, 1): -(log s(1) + log s(-1)) / 2 = (0.31326169 + 1.31326169) / 2
        let loss = scalar(bradley_terry_loss(&t(&[1.0, 0.0]), &t(&[0.0, 1.0]), None).unwrap());
        assert!((loss - 0.813_261_7).abs() < 1e-6, "{loss}");
        // A margin of 1 on the first pair: -log s(0) = ln 2 for it.
        let loss = scalar(bradley_terry_loss(&t(&[1.0]), &t(&[0.0]), Some(&t(&[1.0]))).unwrap());
        assert!((loss - std::f32::consts::LN_2).abs() < 1e-6);
    }

    #[test]
    fn rankings_expand_to_all_ordered_pairs() {
        assert_eq!(ranking_pairs(3), vec![(0, 1), (0, 2), (1, 2)]);
        assert!(ranking_pairs(1).is_empty());
    }

    #[test]
    fn ordinal_likelihood_by_hand() {
        // thresholds [-1, 1], reward 0: P(0) = s(-1) = 0.26894142, P(1) = s(1) - s(-1) = 0.46211716,
        // P(2) = 1 - s(1) = 0.26894142.
        let thresholds = t(&[-1.0, 1.0]);
        let nll = |class: u32| scalar(ordinal_nll(&t(&[0.0]), &thresholds, &[class]).unwrap());
        assert!((nll(0) + 0.268_941_42f32.ln()).abs() < 1e-5);
        assert!((nll(1) + 0.462_117_16f32.ln()).abs() < 1e-5);
        assert!((nll(2) + 0.268_941_42f32.ln()).abs() < 1e-5);
    }

    #[test]
    fn thresholds_stay_ordered_and_gradients_reach_them() {
        let raw = Var::new(&[0.5f32, -3.0, 2.0], &Device::Cpu).unwrap();
        let th = ordered_thresholds(raw.as_tensor()).unwrap();
        let v = th.to_vec1::<f32>().unwrap();
        // 0.5, 0.5 + softplus(-3) = 0.54858735, + softplus(2) = 2.6755157
        assert!(
            (v[1] - 0.548_587_3).abs() < 1e-5 && (v[2] - 2.675_515_7).abs() < 1e-5,
            "{v:?}"
        );
        let loss = ordinal_nll(&t(&[0.3, 1.0]), &th, &[1, 3]).unwrap();
        let grads = loss.backward().unwrap();
        assert!(grads.get(raw.as_tensor()).is_some());
    }

    #[test]
    fn flag_likelihood_by_hand() {
        // r = 0, bias = 0: P(flag) = 0.5 either way -> ln 2.
        let nll = scalar(flag_nll(&t(&[0.0, 0.0]), &t(&[0.0]), &t(&[1.0, 0.0])).unwrap());
        assert!((nll - std::f32::consts::LN_2).abs() < 1e-6);
        // r = 2 flagged: -log s(-2) = 2.126928
        let nll = scalar(flag_nll(&t(&[2.0]), &t(&[0.0]), &t(&[1.0])).unwrap());
        assert!((nll - 2.126_928).abs() < 1e-5);
    }
}
