//! Fused CPU kernels with their own backward passes, as candle custom ops: tanh GELU,
//! LayerNorm, RMSNorm, the causal softmax of attention and the log-probability of a target
//! token (log-softmax and gather in one). Composed from elementary candle ops, each of these
//! costs several full-size temporaries forward and several more backward (candle's GELU
//! backward alone makes about ten, two of them through `powf`); here each is one pass over
//! its rows forward and one backward.
//!
//! What the kernels promise:
//! - **f32 on the CPU only.** [`super::ops`] calls them for f32 CPU tensors and keeps the
//!   composed ops for everything else (f64 in tests, CUDA), so the two stay side by side and
//!   the tests compare them.
//! - **The same bits on every x86-64 machine and at every thread count.** Work is split into
//!   fixed-size chunks of rows or elements, never by the number of threads, and every
//!   reduction adds in a fixed order (eight interleaved partial sums, then the eight in
//!   order; chunk partials in chunk order). `exp` is this file's own ([`exp`]), not the C
//!   library's, whose variants differ between CPUs. No fused multiply-add is asked for, and
//!   Rust never contracts `a * b + c` on its own, so wider vector units change speed only.
//! - **Differentiable once.** The backward passes are themselves kernels without a
//!   backward: fine for first-order training, which is all hone does (MetaRM's second-order
//!   term is a finite difference of gradients).

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Storage,
    Tensor, bail,
};
use rayon::prelude::*;

/// Elements per parallel work unit of an elementwise kernel.
const ELEMS: usize = 16 * 1024;

/// Whether the fused kernels apply to `t`: f32 on the CPU.
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// e^x in f32, to about 2 ulp, the same bits on every CPU: x = n ln 2 + r with |r| <= ln 2 / 2
/// (Cody-Waite), e^r by Cephes' degree-6 polynomial, 2^n through the exponent bits. Written
/// without branches so that loops over it vectorise. Inputs are clamped to [-87.34, 88.38],
/// where 2^n stays a normal number: below, the result is about 1.2e-38 (not a subnormal or
/// 0), above about 2.4e38 (not infinity); NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let nan = x.is_nan();
    let x = x.clamp(-87.336_54, 88.376_26);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r2 + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if nan { x } else { e * scale }
}

/// The sum of `v` in a fixed order: eight interleaved partial sums, then those in order.
#[inline]
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let mut total = 0f32;
    for a in acc {
        total += a;
    }
    for x in rest {
        total += x;
    }
    total
}

/// The sum of `a[i] * b[i]`, in the same fixed order as [`sum`].
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut total = 0f32;
    for a in acc {
        total += a;
    }
    for (x, y) in ra.iter().zip(rb) {
        total += x * y;
    }
    total
}

#[inline]
fn max(v: &[f32]) -> f32 {
    v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// The f32 data of a contiguous CPU storage.
fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{op}: f32 only, got {:?}", storage.dtype())
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: the input must be contiguous"),
    }
}

/// Runs `f` on the f32 data of a contiguous CPU tensor.
fn with_data<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(slice(cpu, layout, op)?),
        _ => bail!("{op}: CPU tensors only"),
    }
}

fn cpu(t: &Tensor, op: &str) -> Result<()> {
    if !applies(t) {
        bail!(
            "{op}: f32 CPU tensors only, got {:?} on {:?}",
            t.dtype(),
            t.device()
        )
    }
    Ok(())
}

/// A new f32 tensor of `shape` whose elements `f` writes, `ELEMS` at a time in parallel;
/// `f` gets the offset of its chunk.
fn elementwise(len: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; len];
    out.par_chunks_mut(ELEMS)
        .enumerate()
        .for_each(|(i, chunk)| f(i * ELEMS, chunk));
    out
}

/// Rows per parallel work unit, so that a unit holds about `ELEMS` elements.
fn rows_per_unit(width: usize) -> usize {
    (ELEMS / width.max(1)).max(1)
}

// ---------------------------------------------------------------------------------------
// GELU, tanh approximation (GPT-2's `gelu_new`)

const GELU_C: f32 = 0.797_884_6; // sqrt(2 / pi)
const GELU_A: f32 = 0.044_715;

/// 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), written as x * sigmoid(2u),
/// which needs one `exp` and loses nothing to cancellation for negative x.
#[inline(always)]
fn gelu_one(x: f32) -> f32 {
    let u = GELU_C * (x + GELU_A * x * x * x);
    x / (1.0 + exp(-2.0 * u))
}

/// d gelu / dx = s + x s (1 - s) 2 u' with s = sigmoid(2u), u' = sqrt(2/pi) (1 + 3 a x^2).
#[inline(always)]
fn gelu_grad_one(x: f32) -> f32 {
    let u = GELU_C * (x + GELU_A * x * x * x);
    let s = 1.0 / (1.0 + exp(-2.0 * u));
    let du = GELU_C * (1.0 + 3.0 * GELU_A * x * x);
    s + x * s * (1.0 - s) * 2.0 * du
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "hone-gelu-tanh"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        let y = elementwise(x.len(), |start, out| {
            for (o, &v) in out.iter_mut().zip(&x[start..]) {
                *o = gelu_one(v);
            }
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward)?,
        ))
    }
}

struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "hone-gelu-tanh-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        if x.len() != g.len() {
            bail!(
                "{}: {} inputs but {} gradients",
                self.name(),
                x.len(),
                g.len()
            )
        }
        let dx = elementwise(x.len(), |start, out| {
            for ((o, &v), &gv) in out.iter_mut().zip(&x[start..]).zip(&g[start..]) {
                *o = gv * gelu_grad_one(v);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// The tanh-approximate GELU of an f32 CPU tensor, with its backward pass.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    cpu(x, "gelu_tanh")?;
    x.contiguous()?.apply_op1(Gelu)
}

// ---------------------------------------------------------------------------------------
// LayerNorm and RMSNorm over the last dimension

/// The mean and 1 / standard deviation of a row (two passes: the variance of the centred
/// values, as the composed op computes it).
#[inline]
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = sum(row) / n;
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            let d = x - mean;
            *a += d * d;
        }
    }
    let mut var = 0f32;
    for a in acc {
        var += a;
    }
    for x in rest {
        let d = x - mean;
        var += d * d;
    }
    (mean, 1.0 / (var / n + eps).sqrt())
}

#[inline]
fn rms(row: &[f32], eps: f32) -> f32 {
    1.0 / (dot(row, row) / row.len() as f32 + eps).sqrt()
}

struct Norm {
    eps: f32,
    /// LayerNorm (centred, with a bias) or RMSNorm.
    centred: bool,
}

impl Norm {
    fn name(&self) -> &'static str {
        if self.centred {
            "hone-layer-norm"
        } else {
            "hone-rms-norm"
        }
    }

    /// y = (x - mean) * rstd * w + b, or x * rstd * w.
    fn forward(&self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Result<Vec<f32>> {
        let d = w.len();
        if d == 0 || !x.len().is_multiple_of(d) || b.is_some_and(|b| b.len() != d) {
            bail!(
                "{}: {} values do not form rows of {d}",
                self.name(),
                x.len()
            )
        }
        let mut y = vec![0f32; x.len()];
        let rows = rows_per_unit(d);
        y.par_chunks_mut(rows * d)
            .zip(x.par_chunks(rows * d))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_exact_mut(d).zip(xc.chunks_exact(d)) {
                    if self.centred {
                        let (mean, rstd) = moments(xr, self.eps);
                        let b = b.unwrap_or(&[]);
                        for i in 0..d {
                            yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
                        }
                    } else {
                        let rstd = rms(xr, self.eps);
                        for i in 0..d {
                            yr[i] = xr[i] * rstd * w[i];
                        }
                    }
                }
            });
        Ok(y)
    }

    /// dx, dw and db for upstream gradient `g`:
    /// dx = rstd (g w - mean(g w) - xhat mean(g w xhat)) (RMSNorm: without the first mean),
    /// dw = sum over rows of g xhat, db = sum over rows of g.
    fn backward(&self, x: &[f32], w: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let d = w.len();
        let rows = rows_per_unit(d);
        let mut dx = vec![0f32; x.len()];
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(rows * d)
            .zip(x.par_chunks(rows * d))
            .zip(g.par_chunks(rows * d))
            .map(|((dxc, xc), gc)| {
                let mut dw = vec![0f32; d];
                let mut db = vec![0f32; d];
                let mut xhat = vec![0f32; d];
                let mut gw = vec![0f32; d];
                for ((dxr, xr), gr) in dxc
                    .chunks_exact_mut(d)
                    .zip(xc.chunks_exact(d))
                    .zip(gc.chunks_exact(d))
                {
                    let (mean, rstd) = if self.centred {
                        moments(xr, self.eps)
                    } else {
                        (0.0, rms(xr, self.eps))
                    };
                    for i in 0..d {
                        xhat[i] = (xr[i] - mean) * rstd;
                        gw[i] = gr[i] * w[i];
                        dw[i] += gr[i] * xhat[i];
                        db[i] += gr[i];
                    }
                    let n = d as f32;
                    let mean_gw = if self.centred { sum(&gw) / n } else { 0.0 };
                    let mean_gwx = dot(&gw, &xhat) / n;
                    for i in 0..d {
                        dxr[i] = rstd * (gw[i] - mean_gw - xhat[i] * mean_gwx);
                    }
                }
                (dw, db)
            })
            .collect();
        // Chunk partials added in chunk order: the same sums at any thread count.
        let mut dw = vec![0f32; d];
        let mut db = vec![0f32; d];
        for (pw, pb) in partials {
            for i in 0..d {
                dw[i] += pw[i];
                db[i] += pb[i];
            }
        }
        (dx, dw, db)
    }

    fn grads(&self, x: &Tensor, w: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (dx, dw, db) = with_data(x, self.name(), |x| {
            with_data(w, self.name(), |w| {
                with_data(g, self.name(), |g| {
                    if x.len() != g.len() {
                        bail!(
                            "{}: {} inputs but {} gradients",
                            self.name(),
                            x.len(),
                            g.len()
                        )
                    }
                    Ok(self.backward(x, w, g))
                })
            })
        })?;
        let d = dw.len();
        Ok((
            Tensor::from_vec(dx, x.shape(), &Device::Cpu)?,
            Tensor::from_vec(dw, d, &Device::Cpu)?,
            Tensor::from_vec(db, d, &Device::Cpu)?,
        ))
    }
}

impl CustomOp3 for Norm {
    fn name(&self) -> &'static str {
        Norm::name(self)
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = Norm::name(self);
        let y = self.forward(
            slice(s1, l1, name)?,
            slice(s2, l2, name)?,
            Some(slice(s3, l3, name)?),
        )?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.grads(x, w, grad)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

impl CustomOp2 for Norm {
    fn name(&self) -> &'static str {
        Norm::name(self)
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = Norm::name(self);
        let y = self.forward(slice(s1, l1, name)?, slice(s2, l2, name)?, None)?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(x, w, grad)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// LayerNorm over the last dimension of an f32 CPU tensor, with its backward pass.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    cpu(x, "layer_norm")?;
    let norm = Norm {
        eps: eps as f32,
        centred: true,
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, norm)
}

/// RMSNorm over the last dimension of an f32 CPU tensor, with its backward pass.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    cpu(x, "rms_norm")?;
    let norm = Norm {
        eps: eps as f32,
        centred: false,
    };
    x.contiguous()?.apply_op2(&w.contiguous()?, norm)
}

// ---------------------------------------------------------------------------------------
// Causal softmax of attention scores

/// softmax(scale * s) over the last dimension of scores [.., t_q, t_k], where query q sees
/// keys 0 ..= q + t_k - t_q, or only the last `window` of those; the others get
/// probability 0.
struct CausalSoftmax {
    scale: f32,
    window: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "hone-causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let s = slice(storage, layout, self.name())?;
        let dims = layout.dims();
        let (t_q, t_k) = match dims {
            [.., q, k] if q <= k && *k > 0 => (*q, *k),
            _ => bail!(
                "{}: scores must be [.., t_q, t_k] with t_q <= t_k, got {dims:?}",
                self.name()
            ),
        };
        let mut p = vec![0f32; s.len()];
        let rows = rows_per_unit(t_k);
        p.par_chunks_mut(rows * t_k)
            .zip(s.par_chunks(rows * t_k))
            .enumerate()
            .for_each(|(unit, (pc, sc))| {
                for (r, (pr, sr)) in pc
                    .chunks_exact_mut(t_k)
                    .zip(sc.chunks_exact(t_k))
                    .enumerate()
                {
                    let q = (unit * rows + r) % t_q;
                    let seen = q + (t_k - t_q) + 1;
                    let first = seen.saturating_sub(self.window);
                    let m = max(&sr[first..seen]) * self.scale;
                    for k in first..seen {
                        pr[k] = exp(sr[k] * self.scale - m);
                    }
                    let inv = 1.0 / sum(&pr[first..seen]);
                    for v in &mut pr[first..seen] {
                        *v *= inv;
                    }
                }
            });
        Ok((CpuStorage::F32(p), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let backward = SoftmaxBackward { scale: self.scale };
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &backward)?))
    }
}

/// ds = scale * p * (g - sum(p g)), row by row.
struct SoftmaxBackward {
    scale: f32,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "hone-causal-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let t_k = *l1.dims().last().unwrap_or(&1);
        if p.len() != g.len() || t_k == 0 {
            bail!(
                "{}: {} probabilities but {} gradients",
                self.name(),
                p.len(),
                g.len()
            )
        }
        let mut ds = vec![0f32; p.len()];
        let rows = rows_per_unit(t_k);
        ds.par_chunks_mut(rows * t_k)
            .zip(p.par_chunks(rows * t_k))
            .zip(g.par_chunks(rows * t_k))
            .for_each(|((dc, pc), gc)| {
                for ((dr, pr), gr) in dc
                    .chunks_exact_mut(t_k)
                    .zip(pc.chunks_exact(t_k))
                    .zip(gc.chunks_exact(t_k))
                {
                    let pg = dot(pr, gr);
                    for k in 0..t_k {
                        dr[k] = self.scale * pr[k] * (gr[k] - pg);
                    }
                }
            });
        Ok((CpuStorage::F32(ds), l1.shape().clone()))
    }
}

/// softmax(scale * scores) with a causal mask over the last dimension of f32 CPU scores
/// [.., t_q, t_k] (query q sees keys up to q + t_k - t_q, and with a `window` only the
/// last `window` of them, itself included), with its backward pass.
pub fn causal_softmax(scores: &Tensor, scale: f64, window: Option<usize>) -> Result<Tensor> {
    cpu(scores, "causal_softmax")?;
    scores.contiguous()?.apply_op1(CausalSoftmax {
        scale: scale as f32,
        window: window.unwrap_or(usize::MAX).max(1),
    })
}

// ---------------------------------------------------------------------------------------
// A bias added to every row

/// y [rows, n] + b [n]. Composed, candle's backward sums the gradient over the rows through
/// a general reduction that divides every index; here it is one pass of column sums.
struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "hone-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, self.name())?;
        let b = slice(s2, l2, self.name())?;
        let n = b.len();
        if n == 0 || !y.len().is_multiple_of(n) {
            bail!(
                "{}: {} values do not form rows of {n}",
                self.name(),
                y.len()
            )
        }
        let mut out = vec![0f32; y.len()];
        let rows = rows_per_unit(n);
        out.par_chunks_mut(rows * n)
            .zip(y.par_chunks(rows * n))
            .for_each(|(oc, yc)| {
                for (or, yr) in oc.chunks_exact_mut(n).zip(yc.chunks_exact(n)) {
                    for i in 0..n {
                        or[i] = yr[i] + b[i];
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = b.elem_count();
        let db = with_data(grad, self.name(), |g| Ok(column_sums(g, n)))?;
        Ok((
            Some(grad.clone()),
            Some(Tensor::from_vec(db, n, &Device::Cpu)?),
        ))
    }
}

/// Sums of the columns of `g` (rows of `n`), by fixed chunks of rows added in chunk order.
fn column_sums(g: &[f32], n: usize) -> Vec<f32> {
    let rows = rows_per_unit(n);
    let partials: Vec<Vec<f32>> = g
        .par_chunks(rows * n)
        .map(|gc| {
            let mut acc = vec![0f32; n];
            for gr in gc.chunks_exact(n) {
                for i in 0..n {
                    acc[i] += gr[i];
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0f32; n];
    for p in partials {
        for i in 0..n {
            total[i] += p[i];
        }
    }
    total
}

/// y [rows, n] + b [n] for f32 CPU tensors, with its backward pass.
pub fn add_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    cpu(y, "add_bias")?;
    y.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
}

// ---------------------------------------------------------------------------------------
// The log-probability of a target: log_softmax(logits)[target]

/// logits [n, v] and targets [n] (u32) -> log p(target) [n].
struct TargetLogProb;

impl TargetLogProb {
    fn targets<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [u32]> {
        let CpuStorage::U32(ids) = storage else {
            bail!(
                "target log-prob: targets must be u32, got {:?}",
                storage.dtype()
            )
        };
        match layout.contiguous_offsets() {
            Some((start, end)) => Ok(&ids[start..end]),
            None => bail!("target log-prob: the targets must be contiguous"),
        }
    }
}

/// log sum exp of a row.
#[inline]
fn log_sum_exp(row: &[f32], scratch: &mut [f32]) -> f32 {
    let m = max(row);
    for (e, &x) in scratch.iter_mut().zip(row) {
        *e = exp(x - m);
    }
    m + sum(&scratch[..row.len()]).ln()
}

impl CustomOp2 for TargetLogProb {
    fn name(&self) -> &'static str {
        "hone-target-log-prob"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let logits = slice(s1, l1, self.name())?;
        let targets = Self::targets(s2, l2)?;
        let (n, v) = l1.shape().dims2()?;
        if targets.len() != n {
            bail!(
                "{}: {n} rows of logits but {} targets",
                self.name(),
                targets.len()
            )
        }
        if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
            bail!("{}: target {t} outside the vocabulary of {v}", self.name())
        }
        let mut out = vec![0f32; n];
        let rows = rows_per_unit(v);
        out.par_chunks_mut(rows)
            .zip(logits.par_chunks(rows * v))
            .zip(targets.par_chunks(rows))
            .for_each(|((oc, lc), tc)| {
                let mut scratch = vec![0f32; v];
                for ((o, row), &t) in oc.iter_mut().zip(lc.chunks_exact(v)).zip(tc) {
                    *o = row[t as usize] - log_sum_exp(row, &mut scratch);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // d log p(t) / d logit_j = [j = t] - softmax_j, scaled by each row's gradient; the
        // softmax comes back from the result: log-sum-exp = logit_t - log p(t).
        let (n, v) = logits.dims2()?;
        let dlogits = with_data(logits, self.name(), |logits| {
            with_data(res, self.name(), |res| {
                with_data(grad, self.name(), |grad| {
                    let targets = targets.contiguous()?.to_vec1::<u32>()?;
                    let mut d = vec![0f32; n * v];
                    let rows = rows_per_unit(v);
                    d.par_chunks_mut(rows * v)
                        .enumerate()
                        .for_each(|(unit, dc)| {
                            for (r, dr) in dc.chunks_exact_mut(v).enumerate() {
                                let i = unit * rows + r;
                                let row = &logits[i * v..(i + 1) * v];
                                let t = targets[i] as usize;
                                let lse = row[t] - res[i];
                                let g = grad[i];
                                for j in 0..v {
                                    dr[j] = -g * exp(row[j] - lse);
                                }
                                dr[t] += g;
                            }
                        });
                    Ok(d)
                })
            })
        })?;
        Ok((Some(Tensor::from_vec(dlogits, (n, v), &Device::Cpu)?), None))
    }
}

/// log softmax(logits)[target] for f32 CPU logits [n, v] and u32 targets [n], with its
/// backward pass to the logits.
pub fn target_log_prob(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    cpu(logits, "target_log_prob")?;
    logits
        .contiguous()?
        .apply_op2(&targets.to_dtype(DType::U32)?.contiguous()?, TargetLogProb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::composed;
    use candle_core::Var;
    use rand::{Rng, SeedableRng};

    fn random(shape: &[usize], seed: u64, scale: f32) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.iter().product::<usize>();
        let v: Vec<f32> = (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0) * scale)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Every element within `tol` of its counterpart, relative to the larger magnitude (at
    /// least 1).
    fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let bound = tol * x.abs().max(y.abs()).max(1.0);
            assert!((x - y).abs() <= bound, "{what}[{i}]: {x} vs {y}");
        }
    }

    /// The fused and composed forms of `f` on the same inputs: the values, and the gradients
    /// of a weighted sum of the output (random weights, so no gradient is trivially equal)
    /// with respect to every input.
    fn compare(
        what: &str,
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Result<Tensor>,
        composed: impl Fn(&[Tensor]) -> Result<Tensor>,
        tol: f32,
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let a = fused(&ts).unwrap();
        let b = composed(&ts).unwrap();
        assert_eq!(a.dims(), b.dims(), "{what}: shapes");
        assert_close(&format!("{what} value"), &values(&a), &values(&b), tol);
        let weights = random(a.dims(), 99, 1.0);
        let ga = (&a * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (&b * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (i, t) in ts.iter().enumerate() {
            let (x, y) = (ga.get(t), gb.get(t));
            let (Some(x), Some(y)) = (x, y) else {
                panic!("{what}: input {i} has a gradient in one form only");
            };
            let xv = values(x);
            assert!(
                xv.iter().any(|v| *v != 0.0),
                "{what}: input {i}'s gradient is zero"
            );
            assert_close(&format!("{what} grad {i}"), &xv, &values(y), tol);
        }
    }

    /// Central finite differences of sum(weights * f(x)) against the fused gradient, at a
    /// few coordinates of input `which`.
    fn finite_differences(
        inputs: &[Tensor],
        which: usize,
        f: impl Fn(&[Tensor]) -> Result<Tensor>,
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts).unwrap();
        let weights = random(out.dims(), 7, 1.0);
        let objective = |ts: &[Tensor]| -> f64 {
            let y = f(ts).unwrap().to_dtype(DType::F64).unwrap();
            let w = weights.to_dtype(DType::F64).unwrap();
            (y * w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let grads = (&out * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grad = values(grads.get(&ts[which]).unwrap());
        let base = values(&ts[which]);
        let h = 1e-2f32;
        for i in (0..base.len()).step_by((base.len() / 7).max(1)) {
            let shifted = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                let mut moved = ts.to_vec();
                moved[which] = Tensor::from_vec(v, ts[which].shape(), &Device::Cpu).unwrap();
                objective(&moved)
            };
            let numeric = (shifted(h) - shifted(-h)) / (2.0 * h as f64);
            let analytic = grad[i] as f64;
            assert!(
                (numeric - analytic).abs() <= 2e-2 * analytic.abs().max(1.0),
                "input {which}[{i}]: finite difference {numeric}, gradient {analytic}"
            );
        }
    }

    #[test]
    fn exp_is_close_to_the_library_and_saturates() {
        let mut worst = 0f32;
        for i in -8700..=8830 {
            let x = i as f32 / 100.0 + 0.003;
            let (a, b) = (exp(x), x.exp());
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst < 4e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) < 1e-37 && exp(-200.0) >= 0.0);
        assert!(exp(200.0).is_finite() && exp(200.0) > 2e38);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn reductions_add_in_a_fixed_order() {
        let v: Vec<f32> = (0..37).map(|i| 1.0 / (i as f32 + 1.0)).collect();
        let expected: f64 = v.iter().map(|&x| x as f64).sum();
        assert!((sum(&v) as f64 - expected).abs() < 1e-6);
        assert!((dot(&v, &v) as f64 - v.iter().map(|&x| (x * x) as f64).sum::<f64>()).abs() < 1e-6);
        assert_eq!(sum(&[]), 0.0);
    }

    #[test]
    fn gelu_matches_the_composed_op_and_hand_values() {
        // gelu_tanh(1) = 0.5 (1 + tanh(0.7978846 * 1.044715)) = 0.8411920
        let y = values(&gelu_tanh(&Tensor::new(&[1f32, 0., -3.], &Device::Cpu).unwrap()).unwrap());
        assert_close("gelu", &y, &[0.841_192, 0.0, -0.003_637_4], 1e-5);
        let x = random(&[3, 70_000], 1, 4.0);
        compare(
            "gelu",
            std::slice::from_ref(&x),
            |t| gelu_tanh(&t[0]),
            |t| t[0].gelu(),
            2e-6,
        );
        finite_differences(&[random(&[2, 50], 2, 3.0)], 0, |t| gelu_tanh(&t[0]));
    }

    #[test]
    fn layer_norm_matches_the_composed_op() {
        // Wider than one work unit, so the chunk partials of dw and db are exercised.
        let x = random(&[300, 96], 3, 2.0);
        let w = random(&[96], 4, 1.0);
        let b = random(&[96], 5, 1.0);
        compare(
            "layer_norm",
            &[x, w, b],
            |t| layer_norm(&t[0], &t[1], &t[2], 1e-5),
            |t| composed::layer_norm(&t[0], &t[1], &t[2], 1e-5),
            2e-5,
        );
        let small = [
            random(&[3, 2, 10], 6, 2.0),
            random(&[10], 7, 1.0),
            random(&[10], 8, 1.0),
        ];
        for which in 0..3 {
            finite_differences(&small, which, |t| layer_norm(&t[0], &t[1], &t[2], 1e-5));
        }
    }

    #[test]
    fn rms_norm_matches_the_composed_op() {
        let x = random(&[300, 64], 9, 2.0);
        let w = random(&[64], 10, 1.0);
        compare(
            "rms_norm",
            &[x, w],
            |t| rms_norm(&t[0], &t[1], 1e-5),
            |t| composed::rms_norm(&t[0], &t[1], 1e-5),
            2e-5,
        );
        let small = [random(&[4, 12], 11, 2.0), random(&[12], 12, 1.0)];
        for which in 0..2 {
            finite_differences(&small, which, |t| rms_norm(&t[0], &t[1], 1e-5));
        }
    }

    #[test]
    fn causal_softmax_matches_mask_plus_softmax() {
        for (t_q, t_k) in [(9, 9), (3, 9), (1, 5)] {
            let s = random(&[2, 3, t_q, t_k], 13, 5.0);
            let scale = 0.25;
            compare(
                "causal_softmax",
                &[s],
                |t| causal_softmax(&t[0], scale, None),
                |t| {
                    let mask = crate::model::ops::causal_mask(t_q, t_k, None, &Device::Cpu)?;
                    composed::softmax_last(&(&t[0] * scale)?.broadcast_add(&mask)?)
                },
                1e-5,
            );
        }
        // A query sees itself and its past only: row 0 of a 3 x 3 is [1, 0, 0].
        // A sliding window of 3 against the composed mask.
        let s = random(&[2, 7, 7], 24, 3.0);
        compare(
            "windowed causal_softmax",
            &[s],
            |t| causal_softmax(&t[0], 0.5, Some(3)),
            |t| {
                let mask = crate::model::ops::causal_mask(7, 7, Some(3), &Device::Cpu)?;
                composed::softmax_last(&(&t[0] * 0.5)?.broadcast_add(&mask)?)
            },
            1e-5,
        );
        let p = causal_softmax(&random(&[3, 3], 14, 1.0), 1.0, None).unwrap();
        assert_eq!(p.to_vec2::<f32>().unwrap()[0], vec![1.0, 0.0, 0.0]);
        finite_differences(&[random(&[2, 4, 6], 15, 2.0)], 0, |t| {
            causal_softmax(&t[0], 0.5, None)
        });
    }

    #[test]
    fn target_log_prob_matches_log_softmax_and_gather() {
        let logits = random(&[70, 300], 16, 6.0);
        let targets = Tensor::from_vec(
            (0..70u32).map(|i| (i * 37) % 300).collect::<Vec<_>>(),
            70,
            &Device::Cpu,
        )
        .unwrap();
        let t2 = targets.clone();
        compare(
            "target_log_prob",
            &[logits],
            |t| target_log_prob(&t[0], &targets),
            |t| {
                composed::log_softmax_last(&t[0])?
                    .gather(&t2.unsqueeze(1)?, 1)?
                    .squeeze(1)
            },
            1e-5,
        );
        let small = random(&[3, 11], 17, 3.0);
        let ids = Tensor::new(&[0u32, 5, 10], &Device::Cpu).unwrap();
        finite_differences(&[small], 0, |t| target_log_prob(&t[0], &ids));
        let bad = Tensor::new(&[11u32, 0, 0], &Device::Cpu).unwrap();
        let err = target_log_prob(&random(&[3, 11], 18, 1.0), &bad).unwrap_err();
        assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    }

    #[test]
    fn add_bias_matches_broadcast_add() {
        let y = random(&[700, 40], 22, 2.0);
        let b = random(&[40], 23, 1.0);
        compare(
            "add_bias",
            &[y, b],
            |t| add_bias(&t[0], &t[1]),
            |t| t[0].broadcast_add(&t[1]),
            1e-5,
        );
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let x = random(&[500, 96], 19, 2.0);
        let w = random(&[96], 20, 1.0);
        let b = random(&[96], 21, 1.0);
        let run = || {
            let vars = [&x, &w, &b].map(|t| Var::from_tensor(t).unwrap());
            let y = layer_norm(
                vars[0].as_tensor(),
                vars[1].as_tensor(),
                vars[2].as_tensor(),
                1e-5,
            )
            .unwrap();
            let y = gelu_tanh(&y).unwrap();
            let g = y.sum_all().unwrap().backward().unwrap();
            vars.iter()
                .map(|v| values(g.get(v.as_tensor()).unwrap()))
                .collect::<Vec<_>>()
        };
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(run);
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(run);
        assert_eq!(one, three);
    }
}
