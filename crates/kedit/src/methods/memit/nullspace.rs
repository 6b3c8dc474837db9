//! AlphaEdit (Fang et al., ICLR 2025): MEMIT's per-layer update projected onto the null
//! space of the knowledge the model already holds.
//!
//! C = E[kkᵀ] is the layer's key statistics (a mean over the corpus's tokens, as AlphaEdit's
//! `get_cov` reads `mom2.moment()`). Its eigenvectors Û whose eigenvalues are below
//! `nullspace_threshold` span directions the corpus's keys (nearly) never take; P = ÛÛᵀ
//! projects onto them. With K the batch's keys as columns (`[d_ff, n]`), R the residual
//! shares (`[d, n]`) and C_prev = Σ K_old K_oldᵀ over the keys earlier edits wrote at this
//! layer, the update solves
//!
//! ```text
//! (P (K Kᵀ + C_prev) + L2·I) X = P K Rᵀ,   ΔW = Xᵀ.
//! ```
//!
//! The matrix is not symmetric, so it is solved by LU in f64. X = A⁻¹PK Rᵀ, so ΔW stays
//! rank n as R Vᵀ with V = A⁻¹PK (`[d_ff, n]`). Since A maps range(P) into itself and L2 > 0,
//! V lies in range(P): ΔW k = R Vᵀ k = 0 for every key k with P k = 0 — a preserved key.

use candle_core::{DType, Tensor};
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

use crate::edit::Delta;
use crate::error::{Error, Result};

use super::spread::{factors, operands, to_mat};

/// P = ÛÛᵀ for one layer, and how many directions it keeps.
#[derive(Clone, Debug)]
pub struct Projection {
    pub p: Mat<f64>,
    /// The rank of P: eigenvalues of C below the threshold.
    pub rank: usize,
    /// C's width (d_ff).
    pub width: usize,
}

/// The projection onto the eigenvectors of the symmetric `c` whose eigenvalues are below
/// `threshold` in absolute value (AlphaEdit takes singular values; for a symmetric C they
/// are the eigenvalues' magnitudes).
pub fn null_space_projection(c: &Mat<f64>, threshold: f64) -> Result<Projection> {
    let d = c.nrows();
    if c.ncols() != d {
        return Err(Error::invalid(format!(
            "the key statistics are {}x{}, not square",
            d,
            c.ncols()
        )));
    }
    let evd = c.self_adjoint_eigen(Side::Lower).map_err(|e| {
        Error::EditRefused(format!(
            "the eigendecomposition of the key statistics failed: {e:?}"
        ))
    })?;
    let values = evd.S().column_vector();
    let kept: Vec<usize> = (0..d).filter(|&i| values[i].abs() < threshold).collect();
    let u = evd.U();
    let basis = Mat::from_fn(d, kept.len(), |i, j| u[(i, kept[j])]);
    let p = &basis * basis.transpose();
    Ok(Projection {
        p,
        rank: kept.len(),
        width: d,
    })
}

/// Σ KᵀK over `keys` (each `[n_i, d_ff]`): the C_prev of earlier edits; zero when none.
pub fn accumulated(keys: &[&Tensor], width: usize) -> Result<Mat<f64>> {
    let mut c = Mat::<f64>::zeros(width, width);
    if keys.is_empty() {
        return Ok(c);
    }
    let all = Tensor::cat(keys, 0)?.to_dtype(DType::F64)?;
    let k = to_mat(&all)?;
    if k.ncols() != width {
        return Err(Error::invalid(format!(
            "earlier edits' keys have width {}, the layer's keys {width}",
            k.ncols()
        )));
    }
    c += k.transpose() * &k;
    Ok(c)
}

/// AlphaEdit's ΔW (see the module documentation) as R Vᵀ, from the keys `keys`
/// (`[n, d_ff]`), the residual shares `resid` (`[n, d]`), the projection `p`, the earlier
/// edits' `c_prev` and the ridge `l2`; in `dtype`.
pub fn null_space_update(
    keys: &Tensor,
    resid: &Tensor,
    p: &Mat<f64>,
    c_prev: &Mat<f64>,
    l2: f64,
    dtype: DType,
) -> Result<Delta> {
    let (k, r) = operands(keys, resid, p)?;
    let d_ff = k.ncols();
    if c_prev.nrows() != d_ff || c_prev.ncols() != d_ff {
        return Err(Error::invalid(format!(
            "C_prev is {}x{}; the keys have width {d_ff}",
            c_prev.nrows(),
            c_prev.ncols()
        )));
    }
    let kt = k.transpose().to_owned(); // [d_ff, n]
    let m = &kt * &k + c_prev; // KKᵀ + C_prev
    let mut a = p * &m;
    for i in 0..d_ff {
        a[(i, i)] += l2;
    }
    let pk = p * &kt; // [d_ff, n]
    let v = a.partial_piv_lu().solve(&pk); // A⁻¹PK
    factors(r.transpose().to_owned(), v, dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::memit::spread::{layer_update, Objective};
    use crate::rng::Rng;
    use candle_core::Device;
    use faer::linalg::solvers::DenseSolveCore;

    fn random(rows: usize, cols: usize, rng: &mut Rng) -> Mat<f64> {
        Mat::from_fn(rows, cols, |_, _| rng.normal())
    }

    fn tensor(m: &Mat<f64>) -> Tensor {
        let flat: Vec<f64> = (0..m.nrows())
            .flat_map(|i| (0..m.ncols()).map(move |j| (i, j)))
            .map(|(i, j)| m[(i, j)])
            .collect();
        Tensor::from_vec(flat, (m.nrows(), m.ncols()), &Device::Cpu).unwrap()
    }

    fn dense(delta: &Delta) -> Mat<f64> {
        to_mat(&delta.dense(DType::F64).unwrap()).unwrap()
    }

    fn max_abs(m: &Mat<f64>) -> f64 {
        (0..m.nrows())
            .flat_map(|i| (0..m.ncols()).map(move |j| (i, j)))
            .map(|(i, j)| m[(i, j)].abs())
            .fold(0.0, f64::max)
    }

    /// A random orthonormal basis Q (`[d, d]`) and C = Q diag(λ) Qᵀ with the first `big`
    /// eigenvalues large (the preserved knowledge) and the rest below the threshold.
    fn synthetic(d: usize, big: usize, rng: &mut Rng) -> (Mat<f64>, Mat<f64>) {
        let q = random(d, d, rng).qr().compute_Q();
        let lambda: Vec<f64> = (0..d)
            .map(|i| {
                if i < big {
                    1.0 + i as f64
                } else {
                    1e-4 * (i + 1) as f64
                }
            })
            .collect();
        let c = Mat::from_fn(d, d, |i, j| {
            (0..d).map(|t| q[(i, t)] * lambda[t] * q[(j, t)]).sum()
        });
        (q, c)
    }

    #[test]
    fn the_projection_keeps_the_small_eigenvalues_directions() {
        let mut rng = Rng::new(11);
        let (d, big) = (12, 5);
        let (q, c) = synthetic(d, big, &mut rng);
        let proj = null_space_projection(&c, 2e-2).unwrap();
        assert_eq!(proj.rank, d - big);
        // P is the orthogonal projection onto the last d − big directions of Q.
        let p = &proj.p;
        assert!(max_abs(&(p * p - p)) < 1e-10, "P² = P");
        assert!(max_abs(&(p - p.transpose())) < 1e-10, "P = Pᵀ");
        for t in 0..d {
            let col = q.col(t).as_mat().to_owned();
            let image = p * &col;
            let expected = if t < big {
                Mat::zeros(d, 1)
            } else {
                col.clone()
            };
            assert!(max_abs(&(image - expected)) < 1e-10, "direction {t}");
        }
        assert_eq!(null_space_projection(&c, 1e-9).unwrap().rank, 0);
        assert_eq!(null_space_projection(&c, 1e9).unwrap().rank, d);
    }

    /// Keys in the span C's large eigenvalues describe are not moved at all, whatever
    /// the batch and the earlier edits.
    #[test]
    fn preserved_keys_are_not_moved() {
        let mut rng = Rng::new(12);
        let (d_ff, big, d, n) = (16, 6, 5, 3);
        let (q, c) = synthetic(d_ff, big, &mut rng);
        let proj = null_space_projection(&c, 2e-2).unwrap();
        let keys = random(n, d_ff, &mut rng);
        let resid = random(n, d, &mut rng);
        let old = random(4, d_ff, &mut rng);
        let c_prev = old.transpose() * &old;
        let delta = null_space_update(
            &tensor(&keys),
            &tensor(&resid),
            &proj.p,
            &c_prev,
            0.5,
            DType::F64,
        )
        .unwrap();
        let dw = dense(&delta); // [d, d_ff]
                                // Preserved keys: combinations of the first `big` directions of Q.
        let mix = random(big, 7, &mut rng);
        let preserved = q.subcols(0, big) * &mix; // [d_ff, 7]
        let moved = max_abs(&(&dw * &preserved));
        assert!(moved < 1e-9, "ΔW k = {moved} for preserved keys");
        // The batch's own keys are moved.
        assert!(max_abs(&(&dw * keys.transpose())) > 1e-3);
    }

    /// With P = I and C_prev = 0 the update is ΔW = R Kᵀ(KKᵀ + L2·I)⁻¹ — MEMIT with
    /// λC = L2·I.
    #[test]
    fn without_projection_or_history_it_is_ridge_regression() {
        let mut rng = Rng::new(13);
        let (d_ff, d, n, l2) = (10, 4, 3, 0.7);
        let keys = tensor(&random(n, d_ff, &mut rng));
        let resid = tensor(&random(n, d, &mut rng));
        let eye = Mat::<f64>::identity(d_ff, d_ff);
        let zero = Mat::<f64>::zeros(d_ff, d_ff);
        let ours = null_space_update(&keys, &resid, &eye, &zero, l2, DType::F64).unwrap();
        let k = to_mat(&keys).unwrap();
        let r = to_mat(&resid).unwrap();
        let a = k.transpose() * &k + &eye * l2;
        let inv = a.partial_piv_lu().inverse();
        let expected = r.transpose() * &k * inv;
        let err = max_abs(&(dense(&ours) - &expected));
        assert!(err < 1e-9, "error {err}");
        // The same as MEMIT's solve with λC = L2·I.
        let memit = layer_update(
            &keys,
            &resid,
            &eye,
            Objective::Memit { lambda: l2 },
            DType::F64,
        )
        .unwrap();
        assert!(max_abs(&(dense(&memit) - &expected)) < 1e-9);
    }

    /// Earlier edits' keys are kept (nearly) in place when C_prev holds them.
    #[test]
    fn earlier_keys_move_less_with_their_history() {
        let mut rng = Rng::new(14);
        let (d_ff, d) = (20, 6);
        let eye = Mat::<f64>::identity(d_ff, d_ff);
        let old = random(3, d_ff, &mut rng);
        let keys = tensor(&random(2, d_ff, &mut rng));
        let resid = tensor(&random(2, d, &mut rng));
        let c_prev = accumulated(&[&tensor(&old)], d_ff).unwrap();
        assert!(max_abs(&(&c_prev - old.transpose() * &old)) < 1e-12);
        let zero = Mat::<f64>::zeros(d_ff, d_ff);
        let l2 = 1e-3;
        let with = dense(&null_space_update(&keys, &resid, &eye, &c_prev, l2, DType::F64).unwrap());
        let without =
            dense(&null_space_update(&keys, &resid, &eye, &zero, l2, DType::F64).unwrap());
        let moved = |dw: &Mat<f64>| max_abs(&(dw * old.transpose()));
        assert!(
            moved(&with) < 0.01 * moved(&without),
            "{} vs {}",
            moved(&with),
            moved(&without)
        );
        assert_eq!(max_abs(&accumulated(&[], d_ff).unwrap()), 0.0);
    }

    #[test]
    fn a_singular_system_is_refused() {
        let mut rng = Rng::new(15);
        let keys = tensor(&random(2, 6, &mut rng));
        let resid = tensor(&random(2, 3, &mut rng));
        let zero = Mat::<f64>::zeros(6, 6);
        // P = 0 and L2 = 0: A = 0.
        let e = null_space_update(&keys, &resid, &zero, &zero, 0.0, DType::F64).unwrap_err();
        assert!(matches!(e, Error::EditRefused(_)), "{e}");
    }
}
