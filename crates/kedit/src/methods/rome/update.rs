//! The rank-one update of the MLP output projection W (`[d, d_ff]`):
//!
//!   ΔW = (v* − W k − b) uᵀ / (uᵀ k),   u = C⁻¹k* / ‖C⁻¹k*‖  (or k*/‖k*‖ without C)
//!
//! so that (W + ΔW) k = v* − b… exactly, while keys orthogonal to u (under C) are left
//! alone. ROME uses the prompt-only key k here but the template-averaged k* inside u; that
//! mismatch makes some updates enormous ("disabling edits"). R-ROME uses k = k* in both
//! places.

use candle_core::{DType, Tensor};

use crate::edit::Delta;
use crate::error::{Error, Result};

/// The left vector u (`[d_ff]`, unit norm) from the key direction (C⁻¹k*, or k* without C):
/// the keys the update responds to.
pub fn left_vector(direction: &Tensor) -> Result<Tensor> {
    let u = direction.to_dtype(DType::F64)?;
    let norm = u.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
    if !(norm > 0.0 && norm.is_finite()) {
        return Err(Error::EditRefused(format!(
            "the key direction has norm {norm}"
        )));
    }
    Ok((u / norm)?)
}

/// ΔW as a rank-one delta, from the weight `w` (`[d, d_ff]`), its bias, the key `k` the
/// update must map exactly, the target `v_star` and the left vector `u`.
pub fn rank_one_update(
    w: &Tensor,
    bias: Option<&Tensor>,
    k: &Tensor,
    v_star: &Tensor,
    u: &Tensor,
) -> Result<Delta> {
    let dtype = w.dtype();
    let w = w.to_dtype(DType::F64)?;
    let k = k.to_dtype(DType::F64)?;
    let u = u.to_dtype(DType::F64)?;
    let mut current = w.matmul(&k.unsqueeze(1)?)?.squeeze(1)?;
    if let Some(b) = bias {
        current = (current + b.to_dtype(DType::F64)?)?;
    }
    let denominator = (&u * &k)?.sum_all()?.to_scalar::<f64>()?;
    let k_norm = k.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
    if denominator.is_nan() || denominator.abs() <= 1e-8 * k_norm.max(1e-30) {
        return Err(Error::EditRefused(format!(
            "the key is (nearly) orthogonal to the update direction: uᵀk = {denominator:.3e}"
        )));
    }
    let right = ((v_star.to_dtype(DType::F64)? - current)? / denominator)?;
    Ok(Delta::LowRank {
        u: right.to_dtype(dtype)?.unsqueeze(1)?,
        v: u.to_dtype(dtype)?.unsqueeze(1)?,
    })
}
