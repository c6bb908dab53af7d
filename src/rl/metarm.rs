//! MetaRM (Dou et al., 2024, "MetaRM: Shifted Distributions Alignment via Meta-Learning"):
//! keep a reward model able to tell apart the responses of a policy that has moved away from
//! the data it was fitted on, without new labels.
//!
//! One step, on a meta batch X_s of the policy's own (unlabelled) responses and a preference
//! batch X_t:
//!
//! ```text
//! J(θ)  = mean over prompts and pairs i < j of σ(|r_θ(x, s_i) − r_θ(x, s_j)|)   on X_s
//! θ'    = θ + η ∇J(θ)                                   (one step of gradient ascent)
//! θ    ← θ − α ∇_θ L_BT(θ')                             (Bradley-Terry on X_t, at θ')
//! ```
//!
//! ∇_θ L(θ') = (I + η ∇²J(θ)) ∇L(θ'). The first-order version drops the Hessian term (as
//! first-order MAML does); the second-order version keeps it, as a Hessian-vector product
//! by central differences of ∇J (two more backward passes on X_s). candle can differentiate
//! a gradient (`CANDLE_GRAD_DO_NOT_DETACH`), but its models hold their weights as
//! variables, so a forward pass at θ' written as a function of θ would need every model
//! rebuilt from tensors; the finite difference uses the models as they are.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// The difference loss: the mean of σ(|r_i − r_j|) over `pairs` of indices into `rewards`
/// (the pairs of responses to the same prompt). Larger when the reward model spreads the
/// responses apart.
pub fn difference_loss(rewards: &Tensor, pairs: &[(u32, u32)]) -> Result<Tensor> {
    let device = rewards.device();
    let first: Vec<u32> = pairs.iter().map(|p| p.0).collect();
    let second: Vec<u32> = pairs.iter().map(|p| p.1).collect();
    let a = rewards.index_select(&Tensor::new(first.as_slice(), device)?, 0)?;
    let b = rewards.index_select(&Tensor::new(second.as_slice(), device)?, 0)?;
    let gap = (a - b)?.abs()?;
    // σ(x) = 1 / (1 + e^-x), from differentiable ops.
    (gap.neg()?.exp()? + 1.0)?.recip()?.mean_all()
}

/// Every pair i < j within each group of consecutive indices: `sizes` are the numbers of
/// responses per prompt, in order.
pub fn within_group_pairs(sizes: &[usize]) -> Vec<(u32, u32)> {
    let mut pairs = Vec::new();
    let mut start = 0u32;
    for &n in sizes {
        for i in 0..n as u32 {
            for j in i + 1..n as u32 {
                pairs.push((start + i, start + j));
            }
        }
        start += n as u32;
    }
    pairs
}

/// How the meta-gradient treats the inner step's dependence on θ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// ∇L(θ') applied at θ.
    First,
    /// (I + η ∇²J(θ)) ∇L(θ'), the Hessian-vector product by central differences.
    Second,
}

/// What one meta step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetaStats {
    /// J(θ) before the inner step.
    pub difference: f64,
    /// J(θ') after it (on the same meta batch): how far the inner step spread the rewards.
    pub difference_after: f64,
    /// L_BT(θ'), the loss whose gradient the outer step follows.
    pub loss: f64,
    /// The norm of ∇J(θ).
    pub difference_grad_norm: f64,
}

/// One MetaRM meta-gradient: `difference` computes J at the variables' current values and
/// `loss` the preference loss. On return the variables hold θ again and the gradient store
/// holds ∇_θ L(θ + η∇J(θ)) for each of `vars` (to hand to an optimiser, whose step α is
/// the outer learning rate).
pub fn meta_gradient(
    vars: &[Var],
    eta: f64,
    order: Order,
    mut difference: impl FnMut() -> Result<Tensor>,
    mut loss: impl FnMut() -> Result<Tensor>,
) -> Result<(GradStore, MetaStats)> {
    let j = difference()?;
    let j_value = f64::from(j.to_scalar::<f32>()?);
    let j_grads = gradients(&j, vars)?;
    let j_norm = norm(&j_grads)?;
    let theta: Vec<Tensor> = vars
        .iter()
        .map(|v| v.as_tensor().copy())
        .collect::<Result<_>>()?;
    // θ' = θ + η ∇J(θ)
    for ((var, t), g) in vars.iter().zip(&theta).zip(&j_grads) {
        var.set(&(t + (g * eta)?)?)?;
    }
    let difference_after = f64::from(difference()?.to_scalar::<f32>()?);
    let l = loss()?;
    let l_value = f64::from(l.to_scalar::<f32>()?);
    let mut grads = l.backward()?;
    let l_grads = gradients_from(&mut grads, vars)?;
    let restore = |vars: &[Var]| -> Result<()> {
        for (var, t) in vars.iter().zip(&theta) {
            var.set(t)?;
        }
        Ok(())
    };
    restore(vars)?;
    if order == Order::Second {
        // H v ≈ (∇J(θ + εv) − ∇J(θ − εv)) / 2ε with v = ∇L(θ'), ε relative to |θ| / |v|.
        let v_norm = norm(&l_grads)?;
        if v_norm > 0.0 {
            let theta_norm = norm(&theta)?.max(1.0);
            let eps = 1e-3 * theta_norm / v_norm;
            let mut at = |sign: f64| -> Result<Vec<Tensor>> {
                for ((var, t), v) in vars.iter().zip(&theta).zip(&l_grads) {
                    var.set(&(t + (v * (sign * eps))?)?)?;
                }
                let grads = gradients(&difference()?, vars)?;
                restore(vars)?;
                Ok(grads)
            };
            let plus = at(1.0)?;
            let minus = at(-1.0)?;
            for (((var, v), p), m) in vars.iter().zip(&l_grads).zip(&plus).zip(&minus) {
                let hv = ((p - m)? / (2.0 * eps))?;
                grads.insert(var.as_tensor(), (v + (hv * eta)?)?);
            }
        }
    }
    Ok((
        grads,
        MetaStats {
            difference: j_value,
            difference_after,
            loss: l_value,
            difference_grad_norm: j_norm,
        },
    ))
}

/// The gradient of `value` for each variable (zeros where it does not depend on one).
fn gradients(value: &Tensor, vars: &[Var]) -> Result<Vec<Tensor>> {
    let mut grads = value.backward()?;
    gradients_from(&mut grads, vars)
}

fn gradients_from(grads: &mut GradStore, vars: &[Var]) -> Result<Vec<Tensor>> {
    vars.iter()
        .map(|v| match grads.get(v.as_tensor()) {
            Some(g) => Ok(g.detach()),
            None => {
                let zeros = v.as_tensor().zeros_like()?;
                grads.insert(v.as_tensor(), zeros.clone());
                Ok(zeros)
            }
        })
        .collect()
}

fn norm(tensors: &[Tensor]) -> Result<f64> {
    let mut sum = 0.0f64;
    for t in tensors {
        sum += f64::from(t.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    Ok(sum.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::reward::bradley_terry_loss;
    use candle_core::Device;

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn difference_loss_by_hand() {
        // Rewards of two prompts' responses: [1, 0, 3] and [2, 2].
        let r = Tensor::new(&[1.0f32, 0.0, 3.0, 2.0, 2.0], &Device::Cpu).unwrap();
        let pairs = within_group_pairs(&[3, 2]);
        assert_eq!(pairs, vec![(0, 1), (0, 2), (1, 2), (3, 4)]);
        let j = difference_loss(&r, &pairs)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // (σ(1) + σ(2) + σ(3) + σ(0)) / 4
        let want = (sigmoid(1.0) + sigmoid(2.0) + sigmoid(3.0) + 0.5) / 4.0;
        assert!((f64::from(j) - want).abs() < 1e-6, "{j} vs {want}");
        assert!((want - 0.766_107_4).abs() < 1e-6);
    }

    /// A linear reward model r = θ·φ with θ = (0.5, -0.5). Meta batch: one prompt with
    /// responses φ1 = (1, 0), φ2 = (0, 1), so d = r1 - r2 = 1. Preference batch: one pair
    /// where φ2 is chosen over φ1 (against the current θ).
    fn linear_step(order: Order) -> (Vec<f32>, MetaStats) {
        let dev = Device::Cpu;
        let theta = Var::new(&[0.5f32, -0.5], &dev).unwrap();
        let meta = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let chosen = Tensor::new(&[[0.0f32, 1.0]], &dev).unwrap();
        let rejected = Tensor::new(&[[1.0f32, 0.0]], &dev).unwrap();
        let reward = |phi: &Tensor| phi.matmul(&theta.as_tensor().unsqueeze(1)?)?.squeeze(1);
        let (grads, stats) = meta_gradient(
            std::slice::from_ref(&theta),
            1.0,
            order,
            || difference_loss(&reward(&meta)?, &[(0, 1)]),
            || bradley_terry_loss(&reward(&chosen)?, &reward(&rejected)?, None),
        )
        .unwrap();
        // θ is restored after the step.
        assert_eq!(theta.as_tensor().to_vec1::<f32>().unwrap(), vec![0.5, -0.5]);
        let g = grads
            .get(theta.as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        (g, stats)
    }

    #[test]
    fn first_order_meta_step_by_hand() {
        // J = σ(1) = 0.7310586; ∇J = σ(1)(1 - σ(1)) (1, -1) = 0.19661193 (1, -1).
        // θ' = θ + ∇J = (0.69661193, -0.69661193); z = θ'·(φc - φr) = -1.39322386.
        // L = -log σ(z) = 1.614985; ∇L = -σ(-z) (φc - φr) = σ(1.39322386) (1, -1)
        //   = 0.80111 (1, -1).
        let (g, stats) = linear_step(Order::First);
        let s1 = sigmoid(1.0);
        let grad_j = s1 * (1.0 - s1);
        assert!((stats.difference - s1).abs() < 1e-6);
        // J(θ') = σ(1 + 2 · 0.19661193) = σ(1.39322386) = 0.80111
        assert!((stats.difference_after - 0.801_106).abs() < 1e-5);
        assert!((stats.difference_grad_norm - grad_j * 2f64.sqrt()).abs() < 1e-6);
        let z = -2.0 * (0.5 + grad_j);
        assert!(
            (stats.loss + sigmoid(z).ln()).abs() < 1e-5,
            "{}",
            stats.loss
        );
        assert!((stats.loss - 1.614_985).abs() < 1e-4);
        let want = sigmoid(-z);
        assert!((want - 0.801_11).abs() < 1e-4);
        assert!((f64::from(g[0]) - want).abs() < 1e-5, "{g:?}");
        assert!((f64::from(g[1]) + want).abs() < 1e-5, "{g:?}");
    }

    #[test]
    fn second_order_meta_step_by_hand() {
        // ∇²J = σ''(1) (1, -1)(1, -1)ᵀ with σ''(x) = σ(1 - σ)(1 - 2σ) = -0.0908577 at 1;
        // ∇²J ∇L(θ') = -0.0908577 · 2 · 0.80111 (1, -1) = -0.145573 (1, -1), so the
        // meta-gradient is (0.801106 - 0.145573) (1, -1) = 0.655533 (1, -1).
        let (g, _) = linear_step(Order::Second);
        let s1 = sigmoid(1.0);
        let second = s1 * (1.0 - s1) * (1.0 - 2.0 * s1);
        let v = sigmoid(2.0 * (0.5 + s1 * (1.0 - s1)));
        let want = v + second * 2.0 * v;
        assert!((want - 0.655_533).abs() < 1e-5, "{want}");
        // Central differences in f32: a few 1e-4 of error.
        assert!((f64::from(g[0]) - want).abs() < 2e-3, "{g:?} vs {want}");
        assert!((f64::from(g[1]) + want).abs() < 2e-3, "{g:?} vs {want}");
    }

    #[test]
    fn the_inner_step_raises_the_difference_loss() {
        // On a random linear model the ascent step spreads the rewards apart: J(θ') > J(θ).
        let dev = Device::Cpu;
        let theta = Var::new(&[0.3f32, -0.1, 0.2], &dev).unwrap();
        let phi = Tensor::new(
            &[
                [1.0f32, 0.2, 0.0],
                [0.5, 1.0, 0.3],
                [0.0, 0.1, 1.0],
                [0.4, 0.4, 0.4],
            ],
            &dev,
        )
        .unwrap();
        let pairs = within_group_pairs(&[2, 2]);
        let j = |t: &Tensor| -> f32 {
            let r = phi
                .matmul(&t.unsqueeze(1).unwrap())
                .unwrap()
                .squeeze(1)
                .unwrap();
            difference_loss(&r, &pairs)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let before = j(theta.as_tensor());
        let grads = difference_loss(
            &phi.matmul(&theta.as_tensor().unsqueeze(1).unwrap())
                .unwrap()
                .squeeze(1)
                .unwrap(),
            &pairs,
        )
        .unwrap()
        .backward()
        .unwrap();
        let g = grads.get(theta.as_tensor()).unwrap();
        let after = j(&(theta.as_tensor() + (g * 0.5).unwrap()).unwrap());
        assert!(after > before, "{after} <= {before}");
    }
}
