//! Direct preference optimisation (Rafailov et al., 2023) and its IPO variant (Azar et al.,
//! 2023), on summed response log-probabilities under the policy and the frozen reference.

use candle_core::{Result, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::reward::log_sigmoid;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DpoLoss {
    /// -log σ(β h), with conservative label smoothing ε: -(1-ε) log σ(β h) - ε log σ(-β h).
    #[default]
    Sigmoid,
    /// (h - 1/(2β))²: IPO, which does not push h to infinity on deterministic preferences.
    Ipo,
}

/// The DPO loss over a batch of pairs, where h = (log π(y_c) - log π_ref(y_c)) -
/// (log π(y_r) - log π_ref(y_r)). Returns (mean loss, the implicit reward margins β h).
pub fn dpo_loss(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    reference_chosen: &Tensor,
    reference_rejected: &Tensor,
    beta: f64,
    label_smoothing: f64,
    kind: DpoLoss,
) -> Result<(Tensor, Tensor)> {
    let h = ((policy_chosen - reference_chosen)? - (policy_rejected - reference_rejected)?)?;
    let margins = (&h * beta)?;
    let loss = match kind {
        DpoLoss::Sigmoid => {
            let agree = (log_sigmoid(&margins)? * (1.0 - label_smoothing))?;
            let disagree = (log_sigmoid(&margins.neg()?)? * label_smoothing)?;
            (agree + disagree)?.mean_all()?.neg()?
        }
        DpoLoss::Ipo => (h - 1.0 / (2.0 * beta))?.sqr()?.mean_all()?,
    };
    Ok((loss, margins))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn t(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    #[test]
    fn dpo_by_hand() {
        // h = (-1 - -2) - (-3 - -2) = 2; β = 0.5: β h = 1.
        let (pc, pr, rc, rr) = (t(&[-1.0]), t(&[-3.0]), t(&[-2.0]), t(&[-2.0]));
        let (loss, margins) = dpo_loss(&pc, &pr, &rc, &rr, 0.5, 0.0, DpoLoss::Sigmoid).unwrap();
        let sigmoid_1 = 1.0 / (1.0 + (-1f64).exp());
        assert!((loss.to_scalar::<f32>().unwrap() as f64 + sigmoid_1.ln()).abs() < 1e-6);
        assert!((margins.to_vec1::<f32>().unwrap()[0] - 1.0).abs() < 1e-6);
        // Label smoothing 0.1: -0.9 log σ(1) - 0.1 log σ(-1).
        let (smoothed, _) = dpo_loss(&pc, &pr, &rc, &rr, 0.5, 0.1, DpoLoss::Sigmoid).unwrap();
        let expected = -0.9 * sigmoid_1.ln() - 0.1 * (1.0 - sigmoid_1).ln();
        assert!((smoothed.to_scalar::<f32>().unwrap() as f64 - expected).abs() < 1e-6);
        // IPO: (h - 1/(2β))² = (2 - 1)² = 1.
        let (ipo, _) = dpo_loss(&pc, &pr, &rc, &rr, 0.5, 0.0, DpoLoss::Ipo).unwrap();
        assert!((ipo.to_scalar::<f32>().unwrap() - 1.0).abs() < 1e-6);
        // Equal policy and reference: h = 0, loss ln 2.
        let (even, _) = dpo_loss(&rc, &rr, &rc, &rr, 0.5, 0.0, DpoLoss::Sigmoid).unwrap();
        assert!((even.to_scalar::<f32>().unwrap() as f64 - 2f64.ln()).abs() < 1e-6);
    }
}
