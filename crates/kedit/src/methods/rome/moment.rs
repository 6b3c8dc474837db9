//! ROME's key direction under the key statistics: u ∝ C⁻¹k*, C = E[kkᵀ] of
//! `blocks.{l}.mlp.key`.
//!
//! C is factorised once per layer (Cholesky, in f64) and each edit solves C u = k* with the
//! factor: the same u as ROME's explicit `torch.inverse`, without forming the inverse and with
//! f64 accuracy whatever precision the moments were accumulated in. A C that is not
//! numerically positive definite (too few tokens for 1536 dimensions) gets the smallest ridge
//! λ·tr(C)/d·I, λ ∈ {1e-8, 1e-7, …, 1e-2}, that makes it so; the ridge used is reported.

use candle_core::{DType, Device, Tensor};
use faer::linalg::solvers::{Llt, Solve};
use faer::{Mat, Side};

use crate::error::{Error, Result};
use crate::stats::KeyStats;

/// The Cholesky factor of one layer's C (plus the ridge it needed).
pub struct KeyCovariance {
    llt: Llt<f64>,
    /// λ·tr(C)/d added to the diagonal (0 when C was positive definite as it was).
    pub ridge: f64,
    pub n_tokens: u64,
}

/// C as an f64 matrix; non-finite statistics are refused, naming their file.
pub fn moment_matrix(stats: &KeyStats) -> Result<Mat<f64>> {
    let d = stats.moment.dim(0)?;
    let flat = stats
        .moment
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    if flat.iter().any(|x| !x.is_finite()) {
        return Err(Error::EditRefused(format!(
            "the key statistics of layer {} ({}) hold non-finite values",
            stats.layer,
            stats.path.display()
        )));
    }
    Ok(Mat::from_fn(d, d, |i, j| flat[i * d + j]))
}

impl KeyCovariance {
    pub fn from_stats(stats: &KeyStats) -> Result<Self> {
        let moment = moment_matrix(stats)?;
        let d = moment.nrows();
        let mean_diagonal = (0..d).map(|i| moment[(i, i)]).sum::<f64>() / d as f64;
        for ridge in std::iter::once(0.0).chain((-8..=-2).map(|e| 10f64.powi(e) * mean_diagonal)) {
            let c = Mat::from_fn(d, d, |i, j| {
                moment[(i, j)] + if i == j { ridge } else { 0.0 }
            });
            if let Ok(llt) = c.llt(Side::Lower) {
                return Ok(KeyCovariance {
                    llt,
                    ridge,
                    n_tokens: stats.n_tokens,
                });
            }
        }
        Err(Error::EditRefused(format!(
            "the key statistics of layer {} ({}) are not positive definite even with a ridge of \
             1e-2·tr(C)/d: compute them over more tokens",
            stats.layer,
            stats.path.display()
        )))
    }

    /// C⁻¹k as an f64 vector (`[d_ff]`).
    pub fn solve(&self, k: &Tensor) -> Result<Tensor> {
        let k = k.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let rhs = Mat::from_fn(k.len(), 1, |i, _| k[i]);
        let x = self.llt.solve(&rhs);
        let out: Vec<f64> = (0..k.len()).map(|i| x[(i, 0)]).collect();
        Ok(Tensor::from_vec(out, k.len(), &Device::Cpu)?)
    }
}
