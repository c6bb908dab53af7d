//! The training loop's parts: AdamW with linear warm-up and cosine decay, global gradient
//! clipping, and the causal-LM loss on chosen positions (all of a text for pretraining,
//! only the completion for SFT).

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};

use super::CausalLm;
use super::ops::masked_cross_entropy;

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub peak_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// The learning rate at the end of the cosine, as a fraction of the peak.
    pub final_fraction: f64,
}

impl Schedule {
    /// Linear warm-up from 0 to the peak over `warmup_steps`, then cosine decay to
    /// `final_fraction * peak` at `total_steps`.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = (self.total_steps.saturating_sub(self.warmup_steps)).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.peak_lr * (self.final_fraction + (1.0 - self.final_fraction) * cosine)
    }
}

/// AdamW (decoupled weight decay, as candle-nn's and PyTorch's) over named variables, with
/// weight decay only on matrices (not on norms and biases). Written out rather than taken
/// from candle-nn so that its moments can be checkpointed: a stage killed mid-training
/// resumes to the same bytes as one that was never interrupted.
pub struct Trainer {
    vars: Vec<(String, Var)>,
    first_moment: Vec<Tensor>,
    second_moment: Vec<Tensor>,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub max_grad_norm: Option<f64>,
    pub step: usize,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Trainer {
    /// `vars` are sorted by name, which fixes the order of the moments on disk.
    pub fn new(
        mut vars: Vec<(String, Var)>,
        schedule: Schedule,
        weight_decay: f64,
        max_grad_norm: Option<f64>,
    ) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(Trainer {
            first_moment: vars.iter().map(|(_, v)| zeros(v)).collect::<Result<_>>()?,
            second_moment: vars.iter().map(|(_, v)| zeros(v)).collect::<Result<_>>()?,
            vars,
            schedule,
            weight_decay,
            max_grad_norm,
            step: 0,
        })
    }

    /// Every variable of a `VarMap`, with its name.
    pub fn named_vars(varmap: &candle_nn::VarMap) -> Vec<(String, Var)> {
        varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// One optimiser step on `loss`; returns the gradient norm before clipping.
    pub fn step(&mut self, loss: &Tensor) -> Result<f64> {
        self.step_with(loss.backward()?)
    }

    /// One optimiser step on gradients computed elsewhere (MetaRM's meta-gradient); returns
    /// their norm before clipping.
    pub fn step_with(&mut self, mut grads: GradStore) -> Result<f64> {
        let plain: Vec<Var> = self.vars.iter().map(|(_, v)| v.clone()).collect();
        let norm = clip_gradients(&mut grads, &plain, self.max_grad_norm)?;
        let lr = self.schedule.lr(self.step);
        self.step += 1;
        let t = self.step as i32;
        let (correction1, correction2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let decay = if var.rank() >= 2 {
                self.weight_decay
            } else {
                0.0
            };
            if var.device().is_cpu() {
                // On the CPU one fused pass over the raw values: the same arithmetic as the
                // tensor version below, without its dozen temporaries per variable (which
                // made the optimizer cost as much as the backward pass).
                let (m, v, theta) = adamw_cpu(
                    &self.first_moment[i].flatten_all()?.to_vec1::<f32>()?,
                    &self.second_moment[i].flatten_all()?.to_vec1::<f32>()?,
                    &var.as_tensor().flatten_all()?.to_vec1::<f32>()?,
                    &g.flatten_all()?.to_vec1::<f32>()?,
                    AdamWStep {
                        lr,
                        decay,
                        correction1,
                        correction2,
                    },
                );
                let shape = var.shape().clone();
                let device = var.device().clone();
                var.set(&Tensor::from_vec(theta, shape.clone(), &device)?)?;
                self.first_moment[i] = Tensor::from_vec(m, shape.clone(), &device)?;
                self.second_moment[i] = Tensor::from_vec(v, shape, &device)?;
                continue;
            }
            // candle leaves some gradients attached to the backward graph; stored in the
            // moments they would keep every step's graph alive (memory grows per step).
            let g = g.detach();
            let g = &g;
            let m = ((&self.first_moment[i] * BETA1)? + (g * (1.0 - BETA1))?)?;
            let v = ((&self.second_moment[i] * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let theta = (var.as_tensor() * (1.0 - lr * decay))?;
            let update = ((&m / correction1)? / ((&v / correction2)?.sqrt()? + EPS)?)?;
            var.set(&(theta - (update * lr)?)?)?;
            self.first_moment[i] = m;
            self.second_moment[i] = v;
        }
        Ok(norm)
    }

    pub fn lr(&self) -> f64 {
        self.schedule.lr(self.step)
    }

    /// Writes the moments (`m.NAME`, `v.NAME`) to a safetensors file; the step goes with the
    /// caller's own record.
    pub fn save_state(&self, path: &std::path::Path) -> Result<()> {
        let mut map = std::collections::HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            map.insert(format!("m.{name}"), self.first_moment[i].clone());
            map.insert(format!("v.{name}"), self.second_moment[i].clone());
        }
        candle_core::safetensors::save(&map, path)
    }

    /// Restores moments saved by [`Trainer::save_state`] and the step count.
    pub fn load_state(&mut self, path: &std::path::Path, step: usize) -> Result<()> {
        let device = self
            .vars
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(Device::Cpu);
        let map = candle_core::safetensors::load(path, &device)?;
        for (i, (name, _)) in self.vars.iter().enumerate() {
            let m = map.get(&format!("m.{name}")).ok_or_else(|| {
                candle_core::Error::Msg(format!("optimizer state lacks `m.{name}`"))
            })?;
            let v = map.get(&format!("v.{name}")).ok_or_else(|| {
                candle_core::Error::Msg(format!("optimizer state lacks `v.{name}`"))
            })?;
            self.first_moment[i] = m.clone();
            self.second_moment[i] = v.clone();
        }
        self.step = step;
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct AdamWStep {
    lr: f64,
    decay: f64,
    correction1: f64,
    correction2: f64,
}

/// One AdamW update of a variable's values (m, v, theta) in f32, as candle-nn computes it:
/// theta' = theta (1 - lr wd) - lr m̂ / (sqrt(v̂) + eps).
fn adamw_cpu(
    m: &[f32],
    v: &[f32],
    theta: &[f32],
    g: &[f32],
    s: AdamWStep,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    // Each element in f64, stored back as f32: no rounding between the steps of the update.
    let shrink = 1.0 - s.lr * s.decay;
    let mut m_out = Vec::with_capacity(m.len());
    let mut v_out = Vec::with_capacity(v.len());
    let mut theta_out = Vec::with_capacity(theta.len());
    for k in 0..theta.len() {
        let gk = f64::from(g[k]);
        let mk = f64::from(m[k]) * BETA1 + gk * (1.0 - BETA1);
        let vk = f64::from(v[k]) * BETA2 + gk * gk * (1.0 - BETA2);
        let update = (mk / s.correction1) / ((vk / s.correction2).sqrt() + EPS);
        theta_out.push((f64::from(theta[k]) * shrink - update * s.lr) as f32);
        m_out.push(mk as f32);
        v_out.push(vk as f32);
    }
    (m_out, v_out, theta_out)
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`; returns the
/// norm before scaling.
pub fn clip_gradients(grads: &mut GradStore, vars: &[Var], max_norm: Option<f64>) -> Result<f64> {
    let mut total = 0f64;
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += if g.device().is_cpu() {
                // In order and in f64, so the norm (which decides the clipping and is logged)
                // does not depend on how a reduction is split across threads.
                g.flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|&x| f64::from(x) * f64::from(x))
                    .sum::<f64>()
            } else {
                f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?)
            };
        }
    }
    let norm = total.sqrt();
    if let Some(max) = max_norm
        && norm > max
        && norm.is_finite()
    {
        let scale = max / (norm + 1e-6);
        for var in vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// A batch of token sequences padded to one length, with a 0/1 mask of the target
/// positions that count in the loss.
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
    pub weights: Tensor,
}

impl Batch {
    /// From (tokens, first position whose prediction counts): position `i`'s target is
    /// token `i + 1`; targets before `loss_from` (the prompt) and padding do not count.
    pub fn new(sequences: &[(Vec<u32>, usize)], pad_id: u32, device: &Device) -> Result<Batch> {
        let len = sequences
            .iter()
            .map(|(s, _)| s.len())
            .max()
            .unwrap_or(1)
            .max(2)
            - 1;
        let mut inputs = Vec::with_capacity(sequences.len() * len);
        let mut targets = Vec::with_capacity(sequences.len() * len);
        let mut weights = Vec::with_capacity(sequences.len() * len);
        for (tokens, loss_from) in sequences {
            for i in 0..len {
                inputs.push(tokens.get(i).copied().unwrap_or(pad_id));
                let target = tokens.get(i + 1).copied();
                targets.push(target.unwrap_or(pad_id));
                // Predicting token i + 1 counts when it exists and lies in the counted part.
                weights.push(if target.is_some() && i + 1 >= *loss_from {
                    1f32
                } else {
                    0.0
                });
            }
        }
        let n = sequences.len();
        Ok(Batch {
            inputs: Tensor::from_vec(inputs, (n, len), device)?,
            targets: Tensor::from_vec(targets, n * len, device)?,
            weights: Tensor::from_vec(weights, n * len, device)?,
        })
    }
}

/// Each token's log-probability given the ones before it, for right-padded `ids` [b, t]:
/// entry [i, j] is log p(ids[i, j + 1] | ids[i, ..=j]) under logits / `temperature`.
/// Returns those [b, t - 1] and the final hidden states [b, t, hidden] (a value head reads
/// them). Differentiable when `model` holds variables.
pub fn token_logprobs(
    model: &CausalLm,
    ids: &Tensor,
    temperature: f64,
) -> Result<(Tensor, Tensor)> {
    let (b, t) = ids.dims2()?;
    let hidden = model.hidden(ids, None, 0)?;
    let logits = model.logits(&hidden.narrow(1, 0, t - 1)?)?;
    let logits = if temperature > 0.0 && temperature != 1.0 {
        (logits / temperature)?
    } else {
        logits
    };
    let targets = ids.narrow(1, 1, t - 1)?.contiguous()?;
    let picked = super::ops::target_log_probs(&logits, &targets)?;
    debug_assert_eq!(picked.dims2()?, (b, t - 1));
    Ok((picked, hidden))
}

/// Mean next-token cross-entropy over the batch's counted positions.
pub fn lm_loss(model: &CausalLm, batch: &Batch) -> Result<Tensor> {
    let logits = model.forward(&batch.inputs, None, 0)?;
    let (b, t, v) = logits.dims3()?;
    masked_cross_entropy(
        &logits.reshape((b * t, v))?,
        &batch.targets,
        &batch.weights.to_dtype(DType::F32)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = Schedule {
            peak_lr: 1e-3,
            warmup_steps: 10,
            total_steps: 110,
            final_fraction: 0.1,
        };
        assert!((s.lr(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr(9) - 1e-3).abs() < 1e-12);
        assert!((s.lr(10) - 1e-3).abs() < 1e-12);
        // Halfway through the cosine: 0.1 + 0.9 * 0.5 = 0.55 of the peak.
        assert!((s.lr(60) - 0.55e-3).abs() < 1e-12);
        assert!((s.lr(110) - 1e-4).abs() < 1e-12);
        assert!((s.lr(500) - 1e-4).abs() < 1e-12);
    }

    #[test]
    fn adamw_matches_candle_nn() {
        use candle_nn::Optimizer;
        let init = [[0.5f32, -1.0], [2.0, 0.25]];
        let ours = Var::new(&init, &Device::Cpu).unwrap();
        let theirs = Var::new(&init, &Device::Cpu).unwrap();
        let schedule = Schedule {
            peak_lr: 0.1,
            warmup_steps: 1,
            total_steps: 1000,
            final_fraction: 1.0,
        };
        let mut trainer =
            Trainer::new(vec![("w".into(), ours.clone())], schedule, 0.01, None).unwrap();
        let params = candle_nn::ParamsAdamW {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let mut reference = candle_nn::AdamW::new(vec![theirs.clone()], params).unwrap();
        for _ in 0..5 {
            trainer
                .step(&ours.as_tensor().sqr().unwrap().sum_all().unwrap())
                .unwrap();
            reference
                .backward_step(&theirs.as_tensor().sqr().unwrap().sum_all().unwrap())
                .unwrap();
        }
        let a = ours
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = theirs
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn batch_counts_only_completion_targets() {
        // tokens 10 11 12 13, completion starts at index 2: targets 11 (no), 12 (yes), 13 (yes).
        let b = Batch::new(
            &[(vec![10, 11, 12, 13], 2), (vec![20, 21], 1)],
            0,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(
            b.inputs.to_vec2::<u32>().unwrap(),
            vec![vec![10, 11, 12], vec![20, 21, 0]]
        );
        assert_eq!(
            b.targets.to_vec1::<u32>().unwrap(),
            vec![11, 12, 13, 21, 0, 0]
        );
        assert_eq!(
            b.weights.to_vec1::<f32>().unwrap(),
            vec![0., 1., 1., 1., 0., 0.]
        );
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let a = Var::new(&[3f32, 0.], &Device::Cpu).unwrap();
        let b = Var::new(&[0f32, 4.], &Device::Cpu).unwrap();
        // loss = 3a0 + 4b1: gradient (3, 0), (0, 4), norm 5.
        let loss = ((a.as_tensor() * 1.0).unwrap().sum_all().unwrap() * 0.0).unwrap();
        let loss = (loss
            + (a.as_tensor().get(0).unwrap() * 3.0).unwrap()
            + (b.as_tensor().get(1).unwrap() * 4.0).unwrap())
        .unwrap();
        let mut grads = loss.backward().unwrap();
        let norm = clip_gradients(&mut grads, &[a.clone(), b.clone()], Some(1.0)).unwrap();
        assert!((norm - 5.0).abs() < 1e-5);
        let ga = grads.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert!((ga[0] - 0.6).abs() < 1e-4, "{ga:?}");
    }
}
