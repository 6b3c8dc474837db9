//! Checks shared by the kernels' tests: closeness to the composed reference, and gradients
//! against the composed backward and against f64 central finite differences.

use candle_core::{DType, Device, Tensor, Var};

use crate::error::Result;
use crate::rng::Rng;

pub fn rand(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    let v = Rng::new(seed).normal_vec(n);
    Tensor::from_vec(v, shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// max |a − b| ≤ tol · max(1, max |b|).
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f64) {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let diff = max_abs(&(a - b).unwrap());
    let scale = max_abs(b).max(1.0);
    assert!(
        diff <= tol * scale,
        "max difference {diff:e} above {tol:e} × {scale}"
    );
}

/// The loss Σ out·R with a fixed random R, so that every output element matters.
fn loss(out: &Tensor) -> Tensor {
    let r = rand(out.dims(), 99, out.dtype());
    (out * r).unwrap().sum_all().unwrap()
}

/// For f64 `inputs`: the fused op's gradients equal the composed op's (to 1e-10) and
/// central finite differences of the fused forward (to 1e-6 relative).
pub fn check_gradients(
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    composed: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    check_gradients_within(inputs, fused, composed, 1e-10)
}

/// As [`check_gradients`], with the composed backward matched to `composed_tol` only
/// (candle's GELU backward rounds its constants to six digits; finite differences still
/// hold the fused one to 1e-6).
pub fn check_gradients_within(
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> Result<Tensor>,
    composed: impl Fn(&[Tensor]) -> Result<Tensor>,
    composed_tol: f64,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let gf = loss(&fused(&tensors).unwrap()).backward().unwrap();
    let gc = loss(&composed(&tensors).unwrap()).backward().unwrap();
    for (i, v) in vars.iter().enumerate() {
        let a = gf.get(v.as_tensor()).expect("fused gradient");
        let b = gc.get(v.as_tensor()).expect("composed gradient");
        assert_close(a, b, composed_tol);
        // Finite differences, element by element.
        let base: Vec<f64> = inputs[i].flatten_all().unwrap().to_vec1().unwrap();
        let analytic: Vec<f64> = a.flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-6;
        for (j, want) in analytic.iter().enumerate() {
            let at = |delta: f64| {
                let mut moved = base.clone();
                moved[j] += delta;
                let mut args = inputs.to_vec();
                args[i] = Tensor::from_vec(moved, inputs[i].dims(), &Device::Cpu).unwrap();
                loss(&fused(&args).unwrap()).to_scalar::<f64>().unwrap()
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (numeric - want).abs() <= 1e-6 * want.abs().max(1.0),
                "input {i} element {j}: finite difference {numeric} vs gradient {want}"
            );
        }
    }
}
