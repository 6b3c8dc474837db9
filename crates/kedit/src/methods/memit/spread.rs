//! The update of one layer for a batch of requests, with K = the requests' keys at this layer
//! (columns), R = the part of each request's residual change this layer takes on, and C =
//! E[kkᵀ] of the layer's keys over a corpus:
//!
//! - MEMIT (Meng et al., 2023, eq. 14), a soft constraint: the least-squares update that maps
//!   each key to its share while moving keys typical of the corpus as little as λ asks,
//!
//!     ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹;
//!
//! - EMMET (Gupta et al., 2024), an equality constraint: ΔW K = R (up to a ridge ε on D for
//!   ill-conditioned batches), with the least change under C' = wC + μI,
//!
//!     ΔW = R D⁻¹ Kᵀ C'⁻¹,   D = Kᵀ C'⁻¹ K + ε I.
//!
//! Either ΔW has rank at most n (the batch size) and is kept as the factors R (`[d, n]`) and
//! V (`[d_ff, n]`): ΔW = R Vᵀ. Every system is symmetric positive definite when C is and is
//! solved by Cholesky in f64.

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

/// Which problem a layer's update solves (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Objective {
    /// MEMIT, with λ = `mom2_update_weight`.
    Memit { lambda: f64 },
    /// EMMET, with w = `mom2_update_weight`, μ = `update_norm_lambda`, ε = `emmet_lambda`.
    Emmet { weight: f64, norm: f64, ridge: f64 },
}

/// ΔW as a rank-n delta, from the keys `keys` (`[n, d_ff]`), the residual shares `resid`
/// (`[n, d]`) and the moment `c` (`[d_ff, d_ff]`); in `dtype`.
pub fn layer_update(
    keys: &Tensor,
    resid: &Tensor,
    c: &Mat<f64>,
    objective: Objective,
    dtype: DType,
) -> Result<Delta> {
    match objective {
        Objective::Memit { lambda } => spread_update(keys, resid, c, lambda, dtype),
        Objective::Emmet {
            weight,
            norm,
            ridge,
        } => equality_update(keys, resid, c, weight, norm, ridge, dtype),
    }
}

/// EMMET's ΔW = R D⁻¹ Kᵀ C'⁻¹ (C' = wC + μI, D = Kᵀ C'⁻¹ K + εI) as R Vᵀ, V = C'⁻¹ K D⁻¹.
fn equality_update(
    keys: &Tensor,
    resid: &Tensor,
    c: &Mat<f64>,
    weight: f64,
    norm: f64,
    ridge: f64,
    dtype: DType,
) -> Result<Delta> {
    let (k, r) = operands(keys, resid, c)?;
    let (n, d_ff) = (k.nrows(), k.ncols());
    let c_prime = Mat::from_fn(d_ff, d_ff, |i, j| {
        weight * c[(i, j)] + if i == j { norm } else { 0.0 }
    });
    let c_llt = c_prime.llt(Side::Lower).map_err(|_| {
        Error::EditRefused(format!(
            "EMMET's wC + μI (w = {weight}, μ = {norm}) is not positive definite: \
             give `update_norm_lambda` a positive value"
        ))
    })?;
    let kt = k.transpose().to_owned(); // [d_ff, n]
    let y = c_llt.solve(&kt); // C'⁻¹K, [d_ff, n]
    let mut d = &k * &y; // KᵀC'⁻¹K, [n, n]
    for i in 0..n {
        d[(i, i)] += ridge;
    }
    let d_llt = d.llt(Side::Lower).map_err(|_| {
        Error::EditRefused(format!(
            "EMMET's D = KᵀC'⁻¹K + εI (ε = {ridge}, {n} keys) is not positive definite: \
             the batch's keys are dependent; raise `emmet_lambda`"
        ))
    })?;
    let v = d_llt.solve(y.transpose()).transpose().to_owned(); // C'⁻¹K D⁻¹, [d_ff, n]
    factors(r.transpose().to_owned(), v, dtype)
}

/// The keys (`[n, d_ff]`) and residual shares (`[n, d]`) as f64 matrices, checked against
/// each other and the moment.
pub(super) fn operands(
    keys: &Tensor,
    resid: &Tensor,
    c: &Mat<f64>,
) -> Result<(Mat<f64>, Mat<f64>)> {
    let k = to_mat(keys)?;
    let r = to_mat(resid)?;
    let (n, d_ff, resid_rows) = (k.nrows(), k.ncols(), r.nrows());
    if resid_rows != n || c.nrows() != d_ff || c.ncols() != d_ff {
        return Err(Error::invalid(format!(
            "the layer solve got {n} keys of width {d_ff}, {resid_rows} residuals and a {}x{} \
             moment",
            c.nrows(),
            c.ncols()
        )));
    }
    Ok((k, r))
}

/// ΔW = U Vᵀ, refused when a factor is not finite.
pub(super) fn factors(u: Mat<f64>, v: Mat<f64>, dtype: DType) -> Result<Delta> {
    let finite =
        |m: &Mat<f64>| (0..m.nrows()).all(|i| (0..m.ncols()).all(|j| m[(i, j)].is_finite()));
    if !finite(&v) || !finite(&u) {
        return Err(Error::EditRefused(
            "the layer solve produced non-finite values: the batch is ill-conditioned".into(),
        ));
    }
    Ok(Delta::LowRank {
        u: to_tensor(&u, dtype)?,
        v: to_tensor(&v, dtype)?,
    })
}

/// MEMIT's ΔW = R Kᵀ (λC + KKᵀ)⁻¹ as R Vᵀ, V = (λC + KKᵀ)⁻¹K.
fn spread_update(
    keys: &Tensor,
    resid: &Tensor,
    c: &Mat<f64>,
    lambda: f64,
    dtype: DType,
) -> Result<Delta> {
    let (k, r) = operands(keys, resid, c)?;
    let n = k.nrows();
    let kt = k.transpose().to_owned(); // [d_ff, n]
    let a = c * lambda + &kt * &k;
    let llt = a.llt(Side::Lower).map_err(|_| {
        Error::EditRefused(format!(
            "MEMIT's system λC + KKᵀ (λ = {lambda}, {n} keys) is not positive definite: \
             the keys are dependent and λ gives no room"
        ))
    })?;
    let v = llt.solve(&kt); // [d_ff, n]
    factors(r.transpose().to_owned(), v, dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn max_abs(t: &Tensor) -> f64 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// K ΔWᵀ: what the update maps each key to.
    fn mapped(keys: &Tensor, delta: &Delta) -> Tensor {
        let Delta::LowRank { u, v } = delta else {
            panic!("a low-rank delta")
        };
        keys.matmul(v).unwrap().matmul(&u.t().unwrap()).unwrap()
    }

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
        let delta = layer_update(
            &keys,
            &resid,
            &c,
            Objective::Memit { lambda: 1e-9 },
            DType::F64,
        )
        .unwrap();
        let err = max_abs(&(mapped(&keys, &delta) - &resid).unwrap());
        assert!(err < 1e-6, "ΔW k_i = r_i: error {err}");
        // λ large: the update is damped toward zero.
        let damped = layer_update(
            &keys,
            &resid,
            &c,
            Objective::Memit { lambda: 1e9 },
            DType::F64,
        )
        .unwrap();
        let size = max_abs(&mapped(&keys, &damped));
        assert!(size < 1e-3, "{size}");
    }

    #[test]
    fn dependent_keys_without_a_prior_are_refused() {
        let mut rng = Rng::new(4);
        let k = random(1, 5, &mut rng);
        let keys = Tensor::cat(&[&k, &k], 0).unwrap();
        let resid = random(2, 3, &mut rng);
        let c = Mat::<f64>::zeros(5, 5);
        let e = layer_update(
            &keys,
            &resid,
            &c,
            Objective::Memit { lambda: 0.0 },
            DType::F64,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not positive definite"), "{e}");
    }

    /// EMMET with the ridge ε on D is MEMIT with λ = wε: R(KᵀC⁻¹K/w + εI)⁻¹KᵀC⁻¹/w =
    /// R(KᵀC⁻¹K + wεI)⁻¹KᵀC⁻¹ = R Kᵀ(wεC + KKᵀ)⁻¹ (push-through identity).
    #[test]
    fn emmet_with_a_ridge_is_memit_with_lambda_w_epsilon() {
        let mut rng = Rng::new(6);
        let (n, d_ff, d) = (5, 16, 4);
        let keys = random(n, d_ff, &mut rng);
        let resid = random(n, d, &mut rng);
        let basis = to_mat(&random(d_ff, d_ff, &mut rng)).unwrap();
        let c = &basis * basis.transpose() / d_ff as f64 + Mat::<f64>::identity(d_ff, d_ff);
        for (weight, ridge) in [(1e4, 0.1), (3.0, 2.0)] {
            let emmet = Objective::Emmet {
                weight,
                norm: 0.0,
                ridge,
            };
            let memit = Objective::Memit {
                lambda: weight * ridge,
            };
            let a = mapped(
                &c_rows(&c),
                &layer_update(&keys, &resid, &c, emmet, DType::F64).unwrap(),
            );
            let b = mapped(
                &c_rows(&c),
                &layer_update(&keys, &resid, &c, memit, DType::F64).unwrap(),
            );
            let scale = max_abs(&b);
            let err = max_abs(&(a - &b).unwrap()) / scale;
            assert!(
                scale > 1e-6 && err < 1e-9,
                "w = {weight}, ε = {ridge}: {err}"
            );
        }
    }

    /// Every row of C as a key: the updates compared on the whole space, not only on K.
    fn c_rows(c: &Mat<f64>) -> Tensor {
        let d = c.nrows();
        let v: Vec<f64> = (0..d * d).map(|i| c[(i / d, i % d)]).collect();
        Tensor::from_vec(v, (d, d), &Device::Cpu).unwrap()
    }

    /// EMMET maps every key exactly whatever weight C has (ε → 0); without C or a norm
    /// term its C' is singular and the batch is refused, saying which key helps.
    #[test]
    fn emmet_meets_its_constraint_exactly() {
        let mut rng = Rng::new(5);
        let (n, d_ff, d) = (3, 10, 4);
        let keys = random(n, d_ff, &mut rng);
        let resid = random(n, d, &mut rng);
        let basis = to_mat(&random(d_ff, d_ff, &mut rng)).unwrap();
        let c = &basis * basis.transpose() / d_ff as f64 + Mat::<f64>::identity(d_ff, d_ff);
        for weight in [1.0, 1e4] {
            let objective = Objective::Emmet {
                weight,
                norm: 0.0,
                ridge: 1e-12,
            };
            let delta = layer_update(&keys, &resid, &c, objective, DType::F64).unwrap();
            let err = max_abs(&(mapped(&keys, &delta) - &resid).unwrap());
            assert!(err < 1e-6, "w = {weight}: ΔW k_i = r_i, error {err}");
        }
        let zero = Mat::<f64>::zeros(d_ff, d_ff);
        let objective = Objective::Emmet {
            weight: 1.0,
            norm: 0.0,
            ridge: 0.1,
        };
        let e = layer_update(&keys, &resid, &zero, objective, DType::F64).unwrap_err();
        assert!(e.to_string().contains("update_norm_lambda"), "{e}");
    }
}
