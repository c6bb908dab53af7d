//! Building blocks with a backward pass. candle-nn's fused `layer_norm`, `rms_norm` and
//! `softmax_last_dim` record no backward op (gradients would silently stop there). For f32
//! on the CPU these call hone's own fused kernels, which have one ([`super::kernels`]);
//! everywhere else (f64, CUDA) they are composed from elementary tensor ops
//! ([`composed`]), each of which candle can differentiate.

use candle_core::{D, DType, Device, Result, Tensor};

use super::kernels;

/// LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if kernels::applies(x) {
        return kernels::layer_norm(x, weight, bias, eps);
    }
    composed::layer_norm(x, weight, bias, eps)
}

/// RMSNorm over the last dimension: x / sqrt(mean(x^2) + eps) * weight.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if kernels::applies(x) {
        return kernels::rms_norm(x, weight, eps);
    }
    composed::rms_norm(x, weight, eps)
}

/// GELU with the tanh approximation (GPT-2's `gelu_new`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if kernels::applies(x) {
        return kernels::gelu_tanh(x);
    }
    x.gelu()
}

/// x [.., in] @ w [in, out] (+ bias [out]), as one 2-D matmul over all leading positions.
/// `broadcast_matmul` would run one matmul per batch row and, backward, make a weight
/// gradient per batch row and sum them; here the weight gradient is a single gemm. `w` may
/// be a transposed view ([out, in] weights as `w.t()`).
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let n_in = x.dim(D::Minus1)?;
    let rows = x.elem_count() / n_in.max(1);
    let x2 = x.reshape((rows, n_in))?;
    let y = if x2.track_op() && !w.track_op() && x2.device().is_cpu() {
        x2.apply_op1(FrozenWeight { w: w.clone() })?
    } else {
        x2.matmul(w)?
    };
    let y = match bias {
        Some(b) if kernels::applies(&y) => kernels::add_bias(&y, b)?,
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    if let Some(last) = dims.last_mut() {
        *last = w.dim(1)?;
    }
    y.reshape(dims)
}

/// `x · w` for a weight that takes no gradient (a frozen base weight under a LoRA adapter,
/// handed out detached) and an `x` that does. candle's matmul backward computes the
/// right-hand side's gradient whatever it is (`xᵀ · grad`, plus a zeros and an add):
/// as much memory as the weight and as much work as the forward pass, for a gradient
/// nothing reads. This op's forward is the same matmul call candle makes (the same bits),
/// and its backward is `grad · wᵀ` alone, as candle computes the left-hand side's.
/// CPU only (the caller falls back to the plain matmul elsewhere).
struct FrozenWeight {
    w: Tensor,
}

impl candle_core::CustomOp1 for FrozenWeight {
    fn name(&self) -> &'static str {
        "hone-frozen-weight-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, k) = layout.shape().dims2()?;
        let (k2, n) = self.w.dims2()?;
        if k != k2 {
            candle_core::bail!("frozen-weight matmul: x is [{m}, {k}], the weight [{k2}, {n}]");
        }
        let (w_storage, w_layout) = self.w.storage_and_layout();
        let candle_core::Storage::Cpu(w_storage) = &*w_storage else {
            candle_core::bail!("frozen-weight matmul: the weight is not on the CPU");
        };
        let out = storage.matmul(w_storage, (1, m, n, k), layout, w_layout)?;
        Ok((out, candle_core::Shape::from((m, n))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w.t()?)?))
    }
}

/// log softmax(logits)[target] over the last dimension: logits [.., v], targets [..] (any
/// integer dtype) -> [..].
pub fn target_log_probs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let shape = targets.dims().to_vec();
    let v = logits.dim(D::Minus1)?;
    let n = targets.elem_count();
    let flat = logits.reshape((n, v))?;
    let ids = targets.reshape(n)?;
    let picked = if kernels::applies(&flat) {
        kernels::target_log_prob(&flat, &ids)?
    } else {
        composed::log_softmax_last(&flat)?
            .gather(&ids.unsqueeze(1)?.contiguous()?, 1)?
            .squeeze(1)?
    };
    picked.reshape(shape)
}

/// The composed forms: elementary candle ops, differentiable by candle itself, any dtype and
/// device. The reference the fused kernels are tested against.
pub mod composed {
    use candle_core::{D, Result, Tensor};

    /// LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias.
    pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
        normed.broadcast_mul(weight)?.broadcast_add(bias)
    }

    /// RMSNorm over the last dimension: x / sqrt(mean(x^2) + eps) * weight.
    pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
        let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
        x.broadcast_div(&(mean_square + eps)?.sqrt()?)?
            .broadcast_mul(weight)
    }

    /// Softmax over the last dimension. The max is subtracted for stability and detached:
    /// the result does not depend on it, so no gradient needs to flow through it.
    pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
        let max = x.max_keepdim(D::Minus1)?.detach();
        let exp = x.broadcast_sub(&max)?.exp()?;
        exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
    }

    /// Log-softmax over the last dimension.
    pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
        let max = x.max_keepdim(D::Minus1)?.detach();
        let shifted = x.broadcast_sub(&max)?;
        let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        shifted.broadcast_sub(&log_sum)
    }
}

pub use composed::{log_softmax_last, softmax_last};

/// Additive causal mask [t_q, t_k] for queries at positions `t_k - t_q .. t_k`: 0 where a
/// query may attend, -inf where the key lies in its future or, with a `window`, more than
/// `window - 1` positions in its past.
pub fn causal_mask(
    t_q: usize,
    t_k: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let offset = t_k - t_q;
    let window = window.unwrap_or(usize::MAX).max(1);
    let values: Vec<f32> = (0..t_q)
        .flat_map(|q| {
            (0..t_k).map(move |k| {
                let last = q + offset;
                if k <= last && last - k < window {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(values, (t_q, t_k), device)
}

/// How attention scores are formed, beyond q k^T.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AttentionOptions {
    /// The factor on q k^T; 1 / sqrt(head size) when none.
    pub scale: Option<f64>,
    /// Each query sees only the last `window` positions, itself included.
    pub window: Option<usize>,
    /// Gemma 2's soft cap: scores become cap * tanh(scores / cap).
    pub softcap: Option<f64>,
}

/// Scaled dot-product attention: q [b, h, t_q, d], k and v [b, h, t_k, d].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: AttentionOptions) -> Result<Tensor> {
    attention_probs(q, k, opts)?.matmul(v)
}

/// The causal attention weights [b, h, t_q, t_k] of queries q over keys k.
pub fn attention_probs(q: &Tensor, k: &Tensor, opts: AttentionOptions) -> Result<Tensor> {
    let (_, _, t_q, d) = q.dims4()?;
    let t_k = k.dim(2)?;
    let window = opts.window;
    let scores = q.matmul(&k.t()?.contiguous()?)?;
    let scale = opts.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let (scores, scale) = match opts.softcap {
        Some(cap) => (((scores * (scale / cap))?.tanh()? * cap)?, 1.0),
        None => (scores, scale),
    };
    if kernels::applies(&scores) {
        return kernels::causal_softmax(&scores, scale, window);
    }
    let scores = (scores * scale)?;
    let scores = if t_q > 1 || window.is_some_and(|w| w < t_k) {
        scores.broadcast_add(&causal_mask(t_q, t_k, window, q.device())?)?
    } else {
        scores
    };
    softmax_last(&scores)
}

/// Rotary position embedding as Hugging Face's Llama applies it (`rotate_half`): x is
/// [b, h, t, d]; cos and sin are [t, d].
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let first = x.narrow(D::Minus1, 0, d / 2)?;
    let second = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&second.neg()?, &first], D::Minus1)?;
    x.broadcast_mul(cos)?
        .broadcast_add(&rotated.broadcast_mul(sin)?)
}

/// RoPE on the first `rotary` of each head's `head_dim` dimensions of x [b, h, t, d] (all
/// of them when `rotary == head_dim`, none when 0), the rest passed through: Phi-3's and
/// GPT-NeoX's partial rotary embedding.
pub fn apply_partial_rope(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    rotary: usize,
    head_dim: usize,
) -> Result<Tensor> {
    if rotary == 0 {
        return Ok(x.clone());
    }
    if rotary == head_dim {
        return apply_rope(x, cos, sin);
    }
    let turned = apply_rope(&x.narrow(3, 0, rotary)?, cos, sin)?;
    Tensor::cat(&[&turned, &x.narrow(3, rotary, head_dim - rotary)?], 3)
}

/// RoPE's inverse frequencies theta^(-2i/d) for i < d/2, with Llama 3's scaling when given.
pub fn rope_inv_freq(
    head_dim: usize,
    theta: f64,
    scaling: Option<&super::llama::Llama3Scaling>,
) -> Vec<f32> {
    let half = head_dim / 2;
    let plain = (0..half).map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32);
    let Some(s) = scaling else {
        return plain.collect();
    };
    let old = s.original_max_position_embeddings as f64;
    let (low, high, factor) = (s.low_freq_factor, s.high_freq_factor, s.factor);
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    plain
        .map(|f| {
            let f = f64::from(f);
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let scaled = if wavelen > low_wavelen {
                f / factor
            } else if wavelen < high_wavelen {
                f
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            };
            scaled as f32
        })
        .collect()
}

/// cos and sin tables [t, d] for positions `start .. start + t` (constants, not variables),
/// from the inverse frequencies of [`rope_inv_freq`] (d = 2 * their number).
pub fn rope_tables(
    start: usize,
    t: usize,
    inv_freq: &[f32],
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let head_dim = 2 * inv_freq.len();
    let mut angles = Vec::with_capacity(t * head_dim);
    for pos in start..start + t {
        for _ in 0..2 {
            angles.extend(inv_freq.iter().map(|f| pos as f32 * f));
        }
    }
    let angles = Tensor::from_vec(angles, (t, head_dim), device)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// Repeats key/value heads for grouped-query attention: [b, kv, t, d] -> [b, kv * n, t, d].
pub fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n, t, d))?
        .contiguous()?
        .reshape((b, kv * n, t, d))
}

/// Mean cross-entropy of `logits` [n, vocab] against `targets` [n] (u32), ignoring
/// positions whose `weights` [n] are 0; weights are 0 or 1.
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let picked = target_log_probs(logits, targets)?;
    let weights = weights.to_dtype(DType::F32)?;
    let total = weights.sum_all()?.to_scalar::<f32>()?.max(1.0);
    (picked * weights)?.sum_all()?.neg()? / f64::from(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    /// A linear layer over a detached weight gives the bits of the plain matmul, forward
    /// and backward to x, and leaves no gradient for the weight. By hand: x = [[1, 2]],
    /// w = [[1, 0, 2], [3, 1, 0]] (2 x 3): x w = [[7, 2, 2]]; with loss sum(y * [1, 2, 3]),
    /// dx = [1, 2, 3] wᵀ = [[7, 5]].
    #[test]
    fn a_frozen_weight_gets_no_gradient_and_changes_no_bit() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 0., 2.], [3., 1., 0.]], &dev).unwrap();
        let x = candle_core::Var::new(&[[1f32, 2.]], &dev).unwrap();
        let c = Tensor::new(&[1f32, 2., 3.], &dev).unwrap();
        let frozen = linear(x.as_tensor(), &w, None).unwrap();
        assert_eq!(frozen.to_vec2::<f32>().unwrap(), vec![vec![7f32, 2., 2.]]);
        let grads = frozen
            .broadcast_mul(&c)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(
            grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![7f32, 5.]]
        );
        assert!(grads.get(&w).is_none(), "the frozen weight got a gradient");
        // Against candle's own matmul on random values, bit for bit.
        let w = Tensor::randn(0f32, 1., (64, 48), &dev).unwrap();
        let x = candle_core::Var::randn(0f32, 1., (2, 5, 64), &dev).unwrap();
        let g = Tensor::randn(0f32, 1., (2, 5, 48), &dev).unwrap();
        // Contiguous (GPT-2's Conv1D) and a transposed view (the other layers' weight.t()).
        let stored = Tensor::randn(0f32, 1., (48, 64), &dev).unwrap();
        for w in [w, stored.t().unwrap()] {
            let bits = |t: &Tensor| -> Vec<u32> {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.iter().map(|v| v.to_bits()).collect()
            };
            let ours = linear(x.as_tensor(), &w, None).unwrap();
            let plain = x.as_tensor().reshape((10, 64)).unwrap();
            let plain = plain.matmul(&w).unwrap().reshape((2, 5, 48)).unwrap();
            assert_eq!(bits(&ours), bits(&plain));
            let gx = |y: &Tensor| {
                let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                bits(grads.get(x.as_tensor()).unwrap())
            };
            assert_eq!(gx(&ours), gx(&plain));
        }
    }

    #[test]
    fn layer_norm_matches_hand_computation() {
        // x = [1, 2, 3]: mean 2, var 2/3, (x - 2)/sqrt(2/3 + 1e-5) = [-1.2247357, 0, 1.2247357]
        let x = Tensor::new(&[[1f32, 2., 3.]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[1f32, 2., 1.], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0f32, 0., 1.], &Device::Cpu).unwrap();
        let y = layer_norm(&x, &w, &b, 1e-5)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        close(&y, &[-1.2247357, 0.0, 2.2247357]);
    }

    #[test]
    fn softmax_and_log_softmax_agree() {
        let x = Tensor::new(&[[0f32, 1., 2.], [5., 5., 5.]], &Device::Cpu).unwrap();
        let p = softmax_last(&x).unwrap().to_vec2::<f32>().unwrap();
        // exp([0,1,2]) / sum = [0.09003057, 0.24472847, 0.66524096]
        close(&p[0], &[0.09003057, 0.24472847, 0.66524096]);
        close(&p[1], &[1.0 / 3.0; 3]);
        let lp = log_softmax_last(&x)
            .unwrap()
            .exp()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        close(&lp[0], &p[0]);
    }

    #[test]
    fn causal_mask_lets_each_query_see_its_past() {
        let m = causal_mask(2, 3, None, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0], vec![0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(m[1], vec![0.0, 0.0, 0.0]);
    }

    #[test]
    fn gradients_flow_through_every_composed_op() {
        use candle_core::Var;
        let w = Var::new(&[1f32, 1., 1.], &Device::Cpu).unwrap();
        let b = Var::new(&[0f32, 0., 0.], &Device::Cpu).unwrap();
        let x = Tensor::new(&[[1f32, 2., 4.]], &Device::Cpu).unwrap();
        let y = layer_norm(&x, w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        let y = rms_norm(&y, w.as_tensor(), 1e-5).unwrap();
        let loss = softmax_last(&y)
            .unwrap()
            .narrow(1, 2, 1)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for var in [&w, &b] {
            let g = grads.get(var.as_tensor()).expect("a gradient");
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0 && norm.is_finite());
        }
    }
}
