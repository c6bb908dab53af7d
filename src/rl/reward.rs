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

/// A linear Bradley-Terry model fitted by maximum likelihood: r(x, a) = w · ψ(x, a).
#[derive(Debug, Clone, PartialEq)]
pub struct LinearFit {
    pub weights: Vec<f64>,
    /// The objective at `weights`: summed negative log-likelihood + l2/2 · |w|².
    pub objective: f64,
    /// Newton iterations taken, with the objective and gradient norm after each.
    pub trace: Vec<(f64, f64)>,
}

/// L2-regularised maximum likelihood of a linear Bradley-Terry model by Newton's method:
/// minimises Σ_i -log σ(w · z_i - m_i) + l2/2 · |w|² over w, where z_i = ψ(chosen) -
/// ψ(rejected) and m_i is the pair's margin. The objective is strictly convex (l2 > 0), so
/// the minimum is unique; a backtracking line search keeps every step a descent. This is
/// ODPO's setting (a linear reward on fixed features) and `reward-fit`'s `train: head`.
pub fn fit_linear_bt(z: &[Vec<f64>], margins: &[f64], l2: f64) -> LinearFit {
    assert!(l2 > 0.0, "the ridge keeps the problem strictly convex");
    assert_eq!(z.len(), margins.len(), "one margin per pair");
    let d = z.first().map_or(0, Vec::len);
    let objective = |w: &[f64]| -> f64 {
        let nll: f64 = z
            .iter()
            .zip(margins)
            .map(|(zi, m)| softplus(-(dot(w, zi) - m)))
            .sum();
        nll + 0.5 * l2 * dot(w, w)
    };
    let mut w = vec![0.0; d];
    let mut value = objective(&w);
    let mut trace = Vec::new();
    for _ in 0..100 {
        // Gradient Σ (σ(s_i) - 1) z_i + l2 w and Hessian Σ σ(s_i)(1 - σ(s_i)) z_i z_iᵀ + l2 I.
        let mut gradient: Vec<f64> = w.iter().map(|v| l2 * v).collect();
        let mut hessian = vec![0.0; d * d];
        for i in 0..d {
            hessian[i * d + i] = l2;
        }
        for (zi, m) in z.iter().zip(margins) {
            let p = sigmoid(dot(&w, zi) - m);
            for (g, x) in gradient.iter_mut().zip(zi) {
                *g += (p - 1.0) * x;
            }
            let curvature = p * (1.0 - p);
            for a in 0..d {
                let row = curvature * zi[a];
                for b in 0..=a {
                    hessian[a * d + b] += row * zi[b];
                }
            }
        }
        for a in 0..d {
            for b in 0..a {
                hessian[b * d + a] = hessian[a * d + b];
            }
        }
        let gradient_norm = dot(&gradient, &gradient).sqrt();
        if gradient_norm < 1e-9 {
            break;
        }
        let l = super::design::cholesky(&hessian, d).expect("l2 > 0 makes the Hessian definite");
        let step = super::design::cholesky_solve(&l, d, &gradient);
        // Backtracking: halve the Newton step until the objective decreases.
        let mut scale = 1.0;
        let (mut next, mut next_value);
        loop {
            next = w
                .iter()
                .zip(&step)
                .map(|(v, s)| v - scale * s)
                .collect::<Vec<f64>>();
            next_value = objective(&next);
            if next_value <= value || scale < 1e-10 {
                break;
            }
            scale *= 0.5;
        }
        let improvement = value - next_value;
        w = next;
        value = next_value;
        trace.push((value, gradient_norm));
        if improvement.abs() <= 1e-12 * value.abs().max(1.0) {
            break;
        }
    }
    LinearFit {
        weights: w,
        objective: value,
        trace,
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// ln(1 + e^x), stable for large |x|.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
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

    #[test]
    fn linear_bt_by_hand() {
        // One pair, z = 1, no margin, l2 = 1: the optimum solves w = σ(-w), w ≈ 0.4010581.
        let fit = fit_linear_bt(&[vec![1.0]], &[0.0], 1.0);
        let w = fit.weights[0];
        assert!((w - 0.401_058_138).abs() < 1e-8, "{w}");
        assert!((w - 1.0 / (1.0 + w.exp())).abs() < 1e-10);
        // The objective: ln(1 + e^-w) + w²/2.
        assert!((fit.objective - ((-w).exp().ln_1p() + w * w / 2.0)).abs() < 1e-12);
        // A margin m asks the chosen response to win by m: w = σ(m - w), with m = 1
        // w ≈ 0.5989419.
        let shifted = fit_linear_bt(&[vec![1.0]], &[1.0], 1.0).weights[0];
        assert!((shifted - 0.598_941_862).abs() < 1e-8, "{shifted}");
    }

    #[test]
    fn linear_bt_recovers_a_direction_and_is_symmetric() {
        // Every pair won along e1; the data are symmetric in e2, and so is the unique
        // optimum: w2 = 0 exactly.
        let z = vec![
            vec![1.0, 1.0],
            vec![1.0, -1.0],
            vec![2.0, 0.5],
            vec![2.0, -0.5],
        ];
        let fit = fit_linear_bt(&z, &[0.0; 4], 0.1);
        assert!(fit.weights[0] > 1.0, "{:?}", fit.weights);
        assert!(fit.weights[1].abs() < 1e-9, "{:?}", fit.weights);
        // Objective decreases along the trace.
        assert!(fit.trace.windows(2).all(|t| t[1].0 <= t[0].0 + 1e-12));
        // Swapping every pair's order negates the weights.
        let flipped: Vec<Vec<f64>> = z.iter().map(|v| v.iter().map(|x| -x).collect()).collect();
        let back = fit_linear_bt(&flipped, &[0.0; 4], 0.1);
        for (a, b) in fit.weights.iter().zip(&back.weights) {
            assert!((a + b).abs() < 1e-9);
        }
    }
}
