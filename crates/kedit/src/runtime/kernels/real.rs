//! The float types the kernels run on, with the few functions they need.

use candle_core::WithDType;

use crate::runtime::nll::fast_exp;

pub trait Real: WithDType + Copy + Send + Sync + std::ops::Neg<Output = Self> {
    fn of(v: f64) -> Self;
    fn f64(self) -> f64;
    /// e^x, 0 below e^-87 (where f32 underflows anyway; masked scores land there).
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn erf(self) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn of(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp(self) -> Self {
        // Both computed, then selected: a branch here would stop the loops vectorising.
        let e = fast_exp(self);
        if self < -87.0 {
            0.0
        } else {
            e
        }
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        // tanh x = 1 − 2/(e^{2x} + 1), exact at both ends and vectorisable.
        let e = Real::exp(2.0 * self.clamp(-20.0, 20.0));
        1.0 - 2.0 / (e + 1.0)
    }
    #[inline(always)]
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f32(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn of(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    #[inline(always)]
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f64(self)
    }
}

/// Lanes of the reductions below: independent accumulators, so that the loop vectorises
/// (a single running sum is a dependency chain the compiler may not reorder).
const LANES: usize = 8;

/// Σ f(a[i], b[i], c[i]) in f64 over equal-length rows.
#[inline(always)]
pub fn sum3<T: Real>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> f64) -> f64 {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [0.0f64; LANES];
    let full = n / LANES * LANES;
    for ((ca, cb), cc) in a[..full]
        .chunks_exact(LANES)
        .zip(b[..full].chunks_exact(LANES))
        .zip(c[..full].chunks_exact(LANES))
    {
        for l in 0..LANES {
            acc[l] += f(ca[l], cb[l], cc[l]);
        }
    }
    let mut s: f64 = acc.iter().sum();
    for i in full..n {
        s += f(a[i], b[i], c[i]);
    }
    s
}

/// Σ f(a[i]) in f64.
#[inline(always)]
pub fn sum1<T: Real>(a: &[T], f: impl Fn(T) -> f64) -> f64 {
    sum3(a, a, a, |x, _, _| f(x))
}

/// Σ f(a[i], b[i]) in f64.
#[inline(always)]
pub fn sum2<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> f64) -> f64 {
    sum3(a, b, a, |x, y, _| f(x, y))
}

/// The largest element (−∞ for an empty row).
#[inline(always)]
pub fn max<T: Real>(a: &[T]) -> T {
    let big = |x: T, y: T| if y > x { y } else { x };
    let mut acc = [T::of(f64::NEG_INFINITY); LANES];
    let full = a.len() / LANES * LANES;
    for c in a[..full].chunks_exact(LANES) {
        for l in 0..LANES {
            acc[l] = big(acc[l], c[l]);
        }
    }
    let mut m = acc.iter().copied().fold(T::of(f64::NEG_INFINITY), big);
    for &x in &a[full..] {
        m = big(m, x);
    }
    m
}
