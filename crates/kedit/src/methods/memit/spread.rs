//! MEMIT's update of one layer for a batch of requests (Meng et al., 2023, eq. 14):
//!
//!   ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹
//!
//! with K = the requests' keys at this layer (columns), R = the part of each request's
//! residual change this layer takes on (rows of `resid`), C = E[kkᵀ] of the layer's keys over
//! a corpus, and λ = `mom2_update_weight`: the least-squares update that maps each key to its
//! share of the change while moving keys typical of the corpus as little as λ asks.
//!
//! ΔW has rank at most n (the batch size), so it is kept as the factors R (`[d, n]`) and
//! V = (λC + KKᵀ)⁻¹K (`[d_ff, n]`): ΔW = R Vᵀ. The system is symmetric positive definite when
//! C is (or λ = 0 and the keys are independent) and is solved by Cholesky in f64.

use candle_core::{DType, Device, Tensor};
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

use crate::edit::Delta;
use crate::error::{Error, Result};

/// A `[rows, cols]` tensor as an f64 matrix.
pub fn to_mat(t: &Tensor) -> Result<Mat<f64>> {
    let (rows, cols) = t.dims2()?;
    let flat = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(Mat::from_fn(rows, cols, |i, j| flat[i * cols + j]))
}

fn to_tensor(m: &Mat<f64>, dtype: DType) -> Result<Tensor> {
    let (rows, cols) = (m.nrows(), m.ncols());
    let mut flat = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        for j in 0..cols {
            flat.push(m[(i, j)]);
        }
    }
    Ok(Tensor::from_vec(flat, (rows, cols), &Device::Cpu)?.to_dtype(dtype)?)
}

/// ΔW = R Kᵀ (λC + KKᵀ)⁻¹ as a rank-n delta, from the keys `keys` (`[n, d_ff]`), the residual
/// shares `resid` (`[n, d]`), the moment `c` (`[d_ff, d_ff]`) and λ; in `dtype`.
pub fn spread_update(
    keys: &Tensor,
    resid: &Tensor,
    c: &Mat<f64>,
    lambda: f64,
    dtype: DType,
) -> Result<Delta> {
    let k = to_mat(keys)?; // [n, d_ff]
    let r = to_mat(resid)?; // [n, d]
    let (n, d_ff) = (k.nrows(), k.ncols());
    if r.nrows() != n || c.nrows() != d_ff || c.ncols() != d_ff {
        return Err(Error::invalid(format!(
            "MEMIT's solve got {n} keys of width {d_ff}, {} residuals and a {}x{} moment",
            r.nrows(),
            c.nrows(),
            c.ncols()
        )));
    }
    let kt = k.transpose().to_owned(); // [d_ff, n]
    let a = c * lambda + &kt * &k;
    let llt = a.llt(Side::Lower).map_err(|_| {
        Error::EditRefused(format!(
            "MEMIT's system λC + KKᵀ (λ = {lambda}, {n} keys) is not positive definite: \
             the keys are dependent and λ gives no room"
        ))
    })?;
    let v = llt.solve(&kt); // [d_ff, n]
    let u = r.transpose().to_owned(); // [d, n]
    let finite =
        |m: &Mat<f64>| (0..m.nrows()).all(|i| (0..m.ncols()).all(|j| m[(i, j)].is_finite()));
    if !finite(&v) || !finite(&u) {
        return Err(Error::EditRefused(
            "MEMIT's solve produced non-finite values: the batch is ill-conditioned".into(),
        ));
    }
    Ok(Delta::LowRank {
        u: to_tensor(&u, dtype)?,
        v: to_tensor(&v, dtype)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(rows: usize, cols: usize, rng: &mut Rng) -> Tensor {
        let v: Vec<f64> = (0..rows * cols).map(|_| rng.normal()).collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    /// With λ → 0 the update maps every key exactly onto its residual share; with a
    /// large λ it barely moves what C describes.
    #[test]
    fn the_update_maps_each_key_to_its_share() {
        let mut rng = Rng::new(3);
        let (n, d_ff, d) = (4, 12, 6);
        let keys = random(n, d_ff, &mut rng);
        let resid = random(n, d, &mut rng);
        let basis = to_mat(&random(d_ff, d_ff, &mut rng)).unwrap();
        let c = &basis * basis.transpose() / d_ff as f64;
        let delta = spread_update(&keys, &resid, &c, 1e-9, DType::F64).unwrap();
        let Delta::LowRank { u, v } = &delta else {
            panic!("a low-rank delta")
        };
        let mapped = keys.matmul(v).unwrap().matmul(&u.t().unwrap()).unwrap(); // K ΔWᵀ
        let err = (mapped - &resid)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(err < 1e-6, "ΔW k_i = r_i: error {err}");
        // λ large: the update is damped toward zero.
        let damped = spread_update(&keys, &resid, &c, 1e9, DType::F64).unwrap();
        let Delta::LowRank { u, v } = &damped else {
            panic!("a low-rank delta")
        };
        let size = keys
            .matmul(v)
            .unwrap()
            .matmul(&u.t().unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(size < 1e-3, "{size}");
    }

    #[test]
    fn dependent_keys_without_a_prior_are_refused() {
        let mut rng = Rng::new(4);
        let k = random(1, 5, &mut rng);
        let keys = Tensor::cat(&[&k, &k], 0).unwrap();
        let resid = random(2, 3, &mut rng);
        let c = Mat::<f64>::zeros(5, 5);
        let e = spread_update(&keys, &resid, &c, 0.0, DType::F64).unwrap_err();
        assert!(e.to_string().contains("not positive definite"), "{e}");
    }
}
