//! Softmax and log-softmax over the last dimension, the attention's with its additive mask
//! folded in, each one pass per row with a one-pass backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::{data, for_rows, per_dtype, real, wide_fn, Real};

/// softmax(x) over the last dimension.
pub fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax { log: false })
}

/// log softmax(x) over the last dimension.
pub fn log_softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax { log: true })
}

/// softmax(scores + mask) over the last dimension, for `scores: [rows, heads, len, keys]`
/// and a mask `[rows, 1, len, keys]` shared by the heads. The mask takes no gradient.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    scores
        .contiguous()?
        .apply_op2(&mask.contiguous()?.detach(), MaskedSoftmax)
}

/// One row: `out = softmax(z)` or `log softmax(z)`, z = x (+ mask).
#[inline(always)]
fn row<T: Real>(x: &[T], mask: Option<&[T]>, log: bool, out: &mut [T]) {
    match mask {
        Some(m) => {
            for ((o, &a), &b) in out.iter_mut().zip(x).zip(m) {
                *o = a + b;
            }
        }
        None => out.copy_from_slice(x),
    }
    let max = real::max(out);
    for o in out.iter_mut() {
        *o -= max;
    }
    if log {
        let lse = T::of(real::sum1(out, |o| o.exp().f64()).ln());
        for o in out.iter_mut() {
            *o -= lse;
        }
    } else {
        for o in out.iter_mut() {
            *o = o.exp();
        }
        let inv = T::of(1.0 / real::sum1(out, |o| o.f64()));
        for o in out.iter_mut() {
            *o *= inv;
        }
    }
}

/// `mask`: the mask's data with the scores' (heads, len).
fn forward<T: Real>(
    x: &[T],
    width: usize,
    mask: Option<(&[T], usize, usize)>,
    log: bool,
) -> Vec<T> {
    let mut out = vec![T::of(0.0); x.len()];
    for_rows(&mut out, width, |first, chunk| {
        forward_rows_wide(x, width, mask, log, first, chunk)
    });
    out
}

wide_fn!(fn forward_rows_wide [T: Real] (x: &[T], width: usize, mask: Option<(&[T], usize, usize)>, log: bool, first: usize, out: &mut [T]) => forward_rows);

#[inline(always)]
fn forward_rows<T: Real>(
    x: &[T],
    width: usize,
    mask: Option<(&[T], usize, usize)>,
    log: bool,
    first: usize,
    out: &mut [T],
) {
    for (r, o) in out.chunks_mut(width).enumerate() {
        let i = first + r;
        // Rows run (row, head, query); the mask's rows (row, query).
        let m = mask.map(|(m, heads, len)| {
            let (b, q) = (i / (heads * len), i % len);
            &m[(b * len + q) * width..][..width]
        });
        row(&x[i * width..][..width], m, log, o);
    }
}

/// The gradient of the input from the output `y` and its gradient `g`:
/// softmax: y·(g − Σ y·g); log-softmax: g − e^y·Σ g.
fn backward<T: Real>(y: &[T], g: &[T], width: usize, log: bool) -> Vec<T> {
    let mut out = vec![T::of(0.0); y.len()];
    for_rows(&mut out, width, |first, chunk| {
        let at = first * width;
        let n = chunk.len();
        backward_rows_wide(&y[at..at + n], &g[at..at + n], width, log, chunk)
    });
    out
}

wide_fn!(fn backward_rows_wide [T: Real] (y: &[T], g: &[T], width: usize, log: bool, out: &mut [T]) => backward_rows);

#[inline(always)]
fn backward_rows<T: Real>(y: &[T], g: &[T], width: usize, log: bool, out: &mut [T]) {
    for ((o, yr), gr) in out
        .chunks_mut(width)
        .zip(y.chunks(width))
        .zip(g.chunks(width))
    {
        if log {
            let s = T::of(real::sum1(gr, |v| v.f64()));
            for ((o, &yv), &gv) in o.iter_mut().zip(yr).zip(gr) {
                *o = gv - yv.exp() * s;
            }
        } else {
            let s = T::of(real::sum2(yr, gr, |a, b| (a * b).f64()));
            for ((o, &yv), &gv) in o.iter_mut().zip(yr).zip(gr) {
                *o = yv * (gv - s);
            }
        }
    }
}

fn last_dim(l: &Layout) -> candle_core::Result<usize> {
    match l.shape().dims().last() {
        Some(&w) if w > 0 => Ok(w),
        _ => candle_core::bail!("softmax over an empty last dimension"),
    }
}

struct Softmax {
    log: bool,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        if self.log {
            "fused-log-softmax"
        } else {
            "fused-softmax"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let w = last_dim(l)?;
        let n = self.name();
        let out = per_dtype!(n; x = (s, l) => forward(x, w, None, self.log));
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(
            &g.contiguous()?,
            &SoftmaxBackward { log: self.log },
        )?))
    }
}

struct MaskedSoftmax;

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        ms: &CpuStorage,
        ml: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, heads, len, keys) = l.shape().dims4()?;
        if ml.shape().dims() != [rows, 1, len, keys] {
            candle_core::bail!(
                "masked softmax: mask {:?} for scores {:?}",
                ml.shape(),
                l.shape()
            );
        }
        let n = self.name();
        let out = per_dtype!(n; x = (s, l), m = (ms, ml) => forward(x, keys, Some((m, heads, len)), false));
        Ok((out, l.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _mask: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBackward { log: false })?;
        Ok((Some(dx), None))
    }
}

struct SoftmaxBackward {
    log: bool,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "fused-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if yl.shape() != gl.shape() {
            candle_core::bail!("softmax backward: gradient shape differs from the output's");
        }
        let w = last_dim(yl)?;
        let n = self.name();
        let out = per_dtype!(n; y = (ys, yl), g = (gs, gl) => backward(y, g, w, self.log));
        Ok((out, yl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;
    use crate::runtime::kernels::testing::{assert_close, check_gradients, rand};
    use crate::runtime::ops::{self, MASKED};

    fn causal_mask(rows: usize, len: usize, dtype: DType) -> Tensor {
        let mut m = vec![0f32; rows * len * len];
        for b in 0..rows {
            for i in 0..len {
                for j in 0..len {
                    // Row 1 also has its first key padded.
                    if j > i || (b == 1 && j == 0 && i > 0) {
                        m[(b * len + i) * len + j] = MASKED as f32;
                    }
                }
            }
        }
        Tensor::from_vec(m, (rows, 1, len, len), &candle_core::Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    #[test]
    fn the_masked_softmax_matches_the_composed_one() {
        let s = rand(&[2, 3, 5, 5], 1, DType::F32);
        let m = causal_mask(2, 5, DType::F32);
        let fused = masked_softmax(&s, &m).unwrap();
        let composed = ops::softmax_composed(&s.broadcast_add(&m).unwrap()).unwrap();
        assert_close(&fused, &composed, 1e-6);
        // Masked entries are exactly zero.
        let p: Vec<f32> = fused.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(p[1], 0.0);
    }

    #[test]
    fn softmax_and_log_softmax_match_the_composed_ones() {
        let x = (rand(&[6, 300], 2, DType::F32) * 10.0).unwrap();
        assert_close(
            &softmax_last(&x).unwrap(),
            &ops::softmax_composed(&x).unwrap(),
            1e-6,
        );
        assert_close(
            &log_softmax_last(&x).unwrap(),
            &ops::log_softmax_composed(&x).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn gradients_match_finite_differences_and_the_composed_backward() {
        let s = rand(&[2, 2, 4, 4], 3, DType::F64);
        let m = causal_mask(2, 4, DType::F64);
        check_gradients(
            &[s],
            |t| Ok(masked_softmax(&t[0], &m)?),
            |t| ops::softmax_composed(&t[0].broadcast_add(&m)?),
        );
        let x = rand(&[3, 6], 4, DType::F64);
        check_gradients(
            std::slice::from_ref(&x),
            |t| Ok(softmax_last(&t[0])?),
            |t| ops::softmax_composed(&t[0]),
        );
        check_gradients(
            &[x],
            |t| Ok(log_softmax_last(&t[0])?),
            |t| ops::log_softmax_composed(&t[0]),
        );
    }
}
