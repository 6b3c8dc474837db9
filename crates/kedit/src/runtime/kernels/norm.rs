//! RMSNorm, y = x / sqrt(mean(x²) + eps) · w, and LayerNorm without its bias,
//! y = (x − mean) / sqrt(var + eps) · w, each in one pass per row, with its backward.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::{data, for_rows, per_dtype, real, wide_fn, Real};

/// RMSNorm of `x: [..., d]` with `w: [d]` (both f32 or both f64, on the CPU).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(
        &w.contiguous()?,
        Norm {
            eps,
            centred: false,
        },
    )
}

/// LayerNorm of `x: [..., d]` with `w: [d]`, the variance biased as in PyTorch; the bias,
/// if any, is the caller's to add.
pub fn layer_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Norm { eps, centred: true })
}

/// RMSNorm, or LayerNorm when `centred`.
#[derive(Clone, Copy)]
struct Norm {
    eps: f64,
    centred: bool,
}

/// 1 / sqrt(mean(x²) + eps) of one row, the sum in f64.
#[inline(always)]
fn inverse_rms<T: Real>(row: &[T], eps: f64) -> T {
    let ms = real::sum1(row, |v| v.f64() * v.f64()) / row.len() as f64;
    T::of(1.0 / (ms + eps).sqrt())
}

fn forward<T: Real>(x: &[T], w: &[T], norm: Norm) -> Vec<T> {
    let d = w.len();
    let mut out = vec![T::of(0.0); x.len()];
    for_rows(&mut out, d, |first, chunk| {
        let x = &x[first * d..][..chunk.len()];
        if norm.centred {
            layer_forward_rows_wide(x, w, norm.eps, chunk)
        } else {
            forward_rows_wide(x, w, norm.eps, chunk)
        }
    });
    out
}

wide_fn!(fn forward_rows_wide [T: Real] (x: &[T], w: &[T], eps: f64, out: &mut [T]) => forward_rows);

#[inline(always)]
fn forward_rows<T: Real>(x: &[T], w: &[T], eps: f64, out: &mut [T]) {
    let d = w.len();
    for (y, xr) in out.chunks_mut(d).zip(x.chunks(d)) {
        let inv = inverse_rms(xr, eps);
        for ((y, &xv), &wv) in y.iter_mut().zip(xr).zip(w) {
            *y = xv * inv * wv;
        }
    }
}

fn backward<T: Real>(x: &[T], w: &[T], g: &[T], norm: Norm) -> Vec<T> {
    let d = w.len();
    let mut out = vec![T::of(0.0); x.len()];
    for_rows(&mut out, d, |first, chunk| {
        let at = first * d;
        let n = chunk.len();
        let (x, g) = (&x[at..at + n], &g[at..at + n]);
        if norm.centred {
            layer_backward_rows_wide(x, w, g, norm.eps, chunk)
        } else {
            backward_rows_wide(x, w, g, norm.eps, chunk)
        }
    });
    out
}

wide_fn!(fn backward_rows_wide [T: Real] (x: &[T], w: &[T], g: &[T], eps: f64, out: &mut [T]) => backward_rows);

/// RMSNorm: dL/dx = inv·w·g − x·inv³·Σ(w·g·x)/d, row by row.
#[inline(always)]
fn backward_rows<T: Real>(x: &[T], w: &[T], g: &[T], eps: f64, out: &mut [T]) {
    let d = w.len();
    for ((dx, xr), gr) in out.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
        let inv = inverse_rms(xr, eps);
        let dot = real::sum3(xr, gr, w, |xv, gv, wv| (xv * gv * wv).f64());
        let inv_f = inv.f64();
        let c = T::of(inv_f * inv_f * inv_f * dot / d as f64);
        for (((dx, &xv), &gv), &wv) in dx.iter_mut().zip(xr).zip(gr).zip(w) {
            *dx = inv * wv * gv - xv * c;
        }
    }
}

/// The mean of one row and 1 / sqrt(var + eps), the sums in f64.
#[inline(always)]
fn mean_and_inverse_std<T: Real>(row: &[T], eps: f64) -> (T, T) {
    let d = row.len() as f64;
    let mean = T::of(real::sum1(row, |v| v.f64()) / d);
    let var = real::sum1(row, |v| (v - mean).f64() * (v - mean).f64()) / d;
    (mean, T::of(1.0 / (var + eps).sqrt()))
}

wide_fn!(fn layer_forward_rows_wide [T: Real] (x: &[T], w: &[T], eps: f64, out: &mut [T]) => layer_forward_rows);

#[inline(always)]
fn layer_forward_rows<T: Real>(x: &[T], w: &[T], eps: f64, out: &mut [T]) {
    let d = w.len();
    for (y, xr) in out.chunks_mut(d).zip(x.chunks(d)) {
        let (mean, inv) = mean_and_inverse_std(xr, eps);
        for ((y, &xv), &wv) in y.iter_mut().zip(xr).zip(w) {
            *y = (xv - mean) * inv * wv;
        }
    }
}

wide_fn!(fn layer_backward_rows_wide [T: Real] (x: &[T], w: &[T], g: &[T], eps: f64, out: &mut [T]) => layer_backward_rows);

/// LayerNorm: with x̂ = (x − mean)·inv and g' = g·w,
/// dL/dx = inv·(g' − mean(g') − x̂·mean(g'·x̂)), row by row.
#[inline(always)]
fn layer_backward_rows<T: Real>(x: &[T], w: &[T], g: &[T], eps: f64, out: &mut [T]) {
    let d = w.len();
    for ((dx, xr), gr) in out.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
        let (mean, inv) = mean_and_inverse_std(xr, eps);
        let mean_gw = T::of(real::sum2(gr, w, |gv, wv| (gv * wv).f64()) / d as f64);
        let mean_gw_xhat = T::of(
            real::sum3(xr, gr, w, |xv, gv, wv| ((xv - mean) * inv * gv * wv).f64()) / d as f64,
        );
        for (((dx, &xv), &gv), &wv) in dx.iter_mut().zip(xr).zip(gr).zip(w) {
            *dx = inv * (gv * wv - mean_gw - (xv - mean) * inv * mean_gw_xhat);
        }
    }
}

fn check_width(x: &Layout, w: &Layout) -> candle_core::Result<usize> {
    let d = w.shape().elem_count();
    match x.shape().dims().last() {
        Some(&last) if last == d && w.shape().rank() == 1 => Ok(d),
        _ => candle_core::bail!(
            "norm: weight {:?} does not match the input's last dimension {:?}",
            w.shape(),
            x.shape()
        ),
    }
}

impl CustomOp2 for Norm {
    fn name(&self) -> &'static str {
        if self.centred {
            "fused-layer-norm"
        } else {
            "fused-rms-norm"
        }
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        check_width(xl, wl)?;
        let n = self.name();
        let out = per_dtype!(n; x = (xs, xl), w = (ws, wl) => forward(x, w, *self));
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() {
            Some(x.apply_op3_no_bwd(w, &g.contiguous()?, &NormBackward(*self))?)
        } else {
            None
        };
        // The weight's gradient, Σ over rows of g·x̂: rare (no method here trains a norm),
        // so composed.
        let dw = if w.track_op() {
            let ones = w.ones_like()?.detach();
            let normalised = x.detach().contiguous()?.apply_op2(&ones, *self)?;
            let d = w.dim(0)?;
            Some(
                (g * normalised)?
                    .reshape(((), d))?
                    .sum(0)?
                    .reshape(w.shape())?,
            )
        } else {
            None
        };
        Ok((dx, dw))
    }
}

struct NormBackward(Norm);

impl CustomOp3 for NormBackward {
    fn name(&self) -> &'static str {
        "fused-norm-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        check_width(xl, wl)?;
        if xl.shape() != gl.shape() {
            candle_core::bail!("norm backward: gradient shape differs from the input's");
        }
        let n = self.name();
        let out =
            per_dtype!(n; x = (xs, xl), w = (ws, wl), g = (gs, gl) => backward(x, w, g, self.0));
        Ok((out, xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::kernels::testing::{assert_close, check_gradients, rand};
    use crate::runtime::ops;

    #[test]
    fn matches_the_composed_norms_in_f32() {
        let x = (rand(&[3, 5, 64], 1, candle_core::DType::F32) + 0.7).unwrap();
        let w = rand(&[64], 2, candle_core::DType::F32);
        let fused = rms_norm(&x, &w, 1e-5).unwrap();
        let composed = ops::rms_norm_composed(&x, &w, 1e-5).unwrap();
        assert_close(&fused, &composed, 2e-6);
        let fused = layer_norm(&x, &w, 1e-5).unwrap();
        let composed = ops::layer_norm_composed(&x, &w, None, 1e-5).unwrap();
        assert_close(&fused, &composed, 2e-6);
    }

    #[test]
    fn gradients_match_finite_differences_and_the_composed_backward() {
        let x = rand(&[4, 7], 3, candle_core::DType::F64);
        let w = rand(&[7], 4, candle_core::DType::F64);
        check_gradients(
            &[x.clone(), w.clone()],
            |t| Ok(rms_norm(&t[0], &t[1], 1e-6)?),
            |t| ops::rms_norm_composed(&t[0], &t[1], 1e-6),
        );
        check_gradients(
            &[x, w],
            |t| Ok(layer_norm(&t[0], &t[1], 1e-6)?),
            |t| ops::layer_norm_composed(&t[0], &t[1], None, 1e-6),
        );
    }
}
