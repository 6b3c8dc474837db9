//! The MLP's activation, act(gate)·up for gated MLPs or act(x) alone, in one pass with its
//! backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::{data, for_rows, per_dtype, wide_fn, Real};
use crate::model::config::Activation;

/// act(gate) · up, elementwise.
pub fn gated(gate: &Tensor, up: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, Gated(act))
}

/// act(x), elementwise.
pub fn activate(x: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Activate(act))
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_CUBIC: f64 = 0.044_715;

/// An activation as code the compiler can vectorise: its value and slope at `x`, with no
/// branch on the kind inside the loops.
trait Act {
    fn eval<T: Real>(x: T) -> (T, T);
}

struct Silu;
struct GeluTanh;
struct GeluErf;
struct Relu;

impl Act for Silu {
    #[inline(always)]
    fn eval<T: Real>(x: T) -> (T, T) {
        let one = T::of(1.0);
        let s = one / (one + (-x).exp());
        (x * s, s * (one + x * (one - s)))
    }
}

impl Act for GeluTanh {
    #[inline(always)]
    fn eval<T: Real>(x: T) -> (T, T) {
        let (one, half) = (T::of(1.0), T::of(0.5));
        let c = T::of(SQRT_2_OVER_PI);
        let k = T::of(GELU_CUBIC);
        let t = (c * (x + k * x * x * x)).tanh();
        let slope =
            half * (one + t) + half * x * (one - t * t) * c * (one + T::of(3.0) * k * x * x);
        (half * x * (one + t), slope)
    }
}

impl Act for GeluErf {
    #[inline(always)]
    fn eval<T: Real>(x: T) -> (T, T) {
        let (one, half) = (T::of(1.0), T::of(0.5));
        let phi = half * (one + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf());
        let density = (-(half * x * x)).exp() * T::of(0.398_942_280_401_432_7);
        (x * phi, phi + x * density)
    }
}

impl Act for Relu {
    #[inline(always)]
    fn eval<T: Real>(x: T) -> (T, T) {
        let positive = x > T::of(0.0);
        (
            if positive { x } else { T::of(0.0) },
            T::of(if positive { 1.0 } else { 0.0 }),
        )
    }
}

/// Elements per "row" for splitting flat elementwise work into parallel tasks.
const CHUNK: usize = 1024;

/// Runs `$run::<T, A>(args)` for the activation kind `$act`.
macro_rules! by_activation {
    ($act:expr, $run:ident, $($arg:expr),*) => {
        match $act {
            Activation::Silu => $run::<_, Silu>($($arg),*),
            Activation::GeluTanh => $run::<_, GeluTanh>($($arg),*),
            Activation::GeluErf => $run::<_, GeluErf>($($arg),*),
            Activation::Relu => $run::<_, Relu>($($arg),*),
        }
    };
}

fn forward<T: Real>(x: &[T], up: Option<&[T]>, act: Activation) -> Vec<T> {
    by_activation!(act, forward_as, x, up)
}

fn forward_as<T: Real, A: Act>(x: &[T], up: Option<&[T]>) -> Vec<T> {
    let mut out = vec![T::of(0.0); x.len()];
    for_rows(&mut out, CHUNK, |first, chunk| {
        forward_chunk_wide::<T, A>(x, up, first * CHUNK, chunk)
    });
    out
}

wide_fn!(fn forward_chunk_wide [T: Real, A: Act] (x: &[T], up: Option<&[T]>, at: usize, out: &mut [T]) => forward_chunk);

#[inline(always)]
fn forward_chunk<T: Real, A: Act>(x: &[T], up: Option<&[T]>, at: usize, out: &mut [T]) {
    let xs = &x[at..at + out.len()];
    match up {
        Some(up) => {
            let us = &up[at..at + out.len()];
            for ((o, &xv), &uv) in out.iter_mut().zip(xs).zip(us) {
                *o = A::eval(xv).0 * uv;
            }
        }
        None => {
            for (o, &xv) in out.iter_mut().zip(xs) {
                *o = A::eval(xv).0;
            }
        }
    }
}

/// Gated: `[2, n]`, the gate's gradient g·up·act'(gate) then the up's g·act(gate).
/// Plain: `[n]`, g·act'(x).
fn backward<T: Real>(x: &[T], up: Option<&[T]>, g: &[T], act: Activation) -> Vec<T> {
    by_activation!(act, backward_as, x, up, g)
}

fn backward_as<T: Real, A: Act>(x: &[T], up: Option<&[T]>, g: &[T]) -> Vec<T> {
    let n = x.len();
    match up {
        Some(up) => {
            let mut out = vec![T::of(0.0); 2 * n];
            let (d_gate, d_up) = out.split_at_mut(n);
            // Both halves are split into the same chunks, zipped so that one task does both.
            let task = 16 * CHUNK;
            let mut pairs: Vec<(usize, &mut [T], &mut [T])> = d_gate
                .chunks_mut(task)
                .zip(d_up.chunks_mut(task))
                .enumerate()
                .map(|(i, (a, b))| (i * task, a, b))
                .collect();
            let run = |(at, dg, du): &mut (usize, &mut [T], &mut [T])| {
                gated_backward_chunk_wide::<T, A>(x, up, g, *at, dg, du)
            };
            if pairs.len() <= 1 || crate::runtime::threads::serial() {
                pairs.iter_mut().for_each(run);
            } else {
                use rayon::prelude::*;
                pairs.par_iter_mut().for_each(run);
            }
            out
        }
        None => {
            let mut out = vec![T::of(0.0); n];
            for_rows(&mut out, CHUNK, |first, chunk| {
                backward_chunk_wide::<T, A>(x, g, first * CHUNK, chunk)
            });
            out
        }
    }
}

wide_fn!(fn gated_backward_chunk_wide [T: Real, A: Act] (x: &[T], up: &[T], g: &[T], at: usize, d_gate: &mut [T], d_up: &mut [T]) => gated_backward_chunk);

#[inline(always)]
fn gated_backward_chunk<T: Real, A: Act>(
    x: &[T],
    up: &[T],
    g: &[T],
    at: usize,
    d_gate: &mut [T],
    d_up: &mut [T],
) {
    let n = d_gate.len();
    let (xs, us, gs) = (&x[at..at + n], &up[at..at + n], &g[at..at + n]);
    for i in 0..n {
        let (a, slope) = A::eval(xs[i]);
        d_gate[i] = gs[i] * us[i] * slope;
        d_up[i] = gs[i] * a;
    }
}

wide_fn!(fn backward_chunk_wide [T: Real, A: Act] (x: &[T], g: &[T], at: usize, out: &mut [T]) => backward_chunk);

#[inline(always)]
fn backward_chunk<T: Real, A: Act>(x: &[T], g: &[T], at: usize, out: &mut [T]) {
    let n = out.len();
    for ((o, &xv), &gv) in out.iter_mut().zip(&x[at..at + n]).zip(&g[at..at + n]) {
        *o = gv * A::eval(xv).1;
    }
}

fn same_shape(a: &Layout, b: &Layout, op: &str) -> candle_core::Result<()> {
    if a.shape() != b.shape() {
        candle_core::bail!("{op}: shapes {:?} and {:?} differ", a.shape(), b.shape());
    }
    Ok(())
}

struct Gated(Activation);

impl CustomOp2 for Gated {
    fn name(&self) -> &'static str {
        "fused-gated-activation"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        same_shape(xl, ul, self.name())?;
        let n = self.name();
        let out = per_dtype!(n; x = (xs, xl), u = (us, ul) => forward(x, Some(u), self.0));
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let both = gate.apply_op3_no_bwd(up, &g.contiguous()?, &GatedBackward(self.0))?;
        let shape = gate.shape();
        let d_gate = gate.track_op().then(|| both.get(0)).transpose()?;
        let d_up = up.track_op().then(|| both.get(1)).transpose()?;
        Ok((
            d_gate.map(|t| t.reshape(shape)).transpose()?,
            d_up.map(|t| t.reshape(shape)).transpose()?,
        ))
    }
}

struct GatedBackward(Activation);

impl CustomOp3 for GatedBackward {
    fn name(&self) -> &'static str {
        "fused-gated-activation-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        same_shape(xl, ul, self.name())?;
        same_shape(xl, gl, self.name())?;
        let n = self.name();
        let out = per_dtype!(n; x = (xs, xl), u = (us, ul), g = (gs, gl) => backward(x, Some(u), g, self.0));
        Ok((out, Shape::from((2, xl.shape().elem_count()))))
    }
}

struct Activate(Activation);

impl CustomOp1 for Activate {
    fn name(&self) -> &'static str {
        "fused-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = self.name();
        let out = per_dtype!(n; x = (s, l) => forward(x, None, self.0));
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(
            &g.contiguous()?,
            &ActivateBackward(self.0),
        )?))
    }
}

struct ActivateBackward(Activation);

impl CustomOp2 for ActivateBackward {
    fn name(&self) -> &'static str {
        "fused-activation-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        same_shape(xl, gl, self.name())?;
        let n = self.name();
        let out = per_dtype!(n; x = (xs, xl), g = (gs, gl) => backward(x, None, g, self.0));
        Ok((out, xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;
    use crate::runtime::kernels::testing::{assert_close, check_gradients_within, rand};
    use crate::runtime::ops;

    const ALL: [Activation; 4] = [
        Activation::Silu,
        Activation::GeluTanh,
        Activation::GeluErf,
        Activation::Relu,
    ];

    #[test]
    fn matches_candles_activations_in_f32() {
        // Large enough to run in parallel tasks.
        let gate = (rand(&[40, 1536], 1, DType::F32) * 3.0).unwrap();
        let up = rand(&[40, 1536], 2, DType::F32);
        for act in ALL {
            let composed = ops::activation_composed(&gate, act).unwrap();
            assert_close(&activate(&gate, act).unwrap(), &composed, 2e-6);
            let want = (composed * &up).unwrap();
            assert_close(&gated(&gate, &up, act).unwrap(), &want, 2e-6);
        }
    }

    #[test]
    fn gradients_match_finite_differences_and_the_composed_backward() {
        let gate = (rand(&[3, 5], 3, DType::F64) * 2.0).unwrap();
        let up = rand(&[3, 5], 4, DType::F64);
        // ReLU's kink is not differentiable; the smooth ones are checked.
        for act in [Activation::Silu, Activation::GeluTanh, Activation::GeluErf] {
            // candle's GELU backward uses six-digit constants.
            let tol = if act == Activation::Silu { 1e-10 } else { 1e-5 };
            check_gradients_within(
                &[gate.clone(), up.clone()],
                |t| Ok(gated(&t[0], &t[1], act)?),
                |t| Ok((ops::activation_composed(&t[0], act)? * &t[1])?),
                tol,
            );
            check_gradients_within(
                std::slice::from_ref(&gate),
                |t| Ok(activate(&t[0], act)?),
                |t| ops::activation_composed(&t[0], act),
                tol,
            );
        }
    }
}
