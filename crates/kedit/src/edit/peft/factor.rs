//! A weight delta as LoRA factors `B·A` (`B: [out, r]`, `A: [r, in]`): a low-rank delta
//! exactly, a dense one (or a low-rank one asked for a smaller rank) by truncated SVD.

use candle_core::{DType, Device, Tensor};
use faer::Mat;

use crate::edit::Delta;
use crate::error::{Error, Result};

/// How a delta that is not already of an acceptable rank is cut to one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Truncation {
    /// At most this rank: dense deltas get exactly it (or their full rank), low-rank deltas
    /// of a higher rank are cut to it.
    Rank(usize),
    /// The smallest rank whose singular values keep this fraction of ‖ΔW‖² (dense deltas;
    /// low-rank deltas stay exact).
    Energy(f64),
}

impl Default for Truncation {
    fn default() -> Self {
        Truncation::Energy(0.99)
    }
}

/// LoRA factors of one delta and how faithful they are.
pub struct Factors {
    /// `[r, in]`
    pub a: Tensor,
    /// `[out, r]`
    pub b: Tensor,
    pub rank: usize,
    /// Whether `B·A` is the delta itself (up to float rounding), not a truncation.
    pub exact: bool,
    /// The fraction of ‖ΔW‖² kept (1 when exact).
    pub energy: f64,
}

fn to_mat(t: &Tensor) -> Result<Mat<f64>> {
    let (rows, cols) = t.dims2()?;
    let flat = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(Mat::from_fn(rows, cols, |i, j| flat[i * cols + j]))
}

fn to_tensor(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> Result<Tensor> {
    let flat: Vec<f32> = (0..rows)
        .flat_map(|i| (0..cols).map(move |j| (i, j)))
        .map(|(i, j)| f(i, j) as f32)
        .collect();
    Ok(Tensor::from_vec(flat, (rows, cols), &Device::Cpu)?)
}

/// The factors of `delta` under `truncation`.
pub fn factor(delta: &Delta, truncation: Truncation) -> Result<Factors> {
    if let Delta::LowRank { u, v } = delta {
        let r = u.dim(1)?;
        let keep = match truncation {
            Truncation::Rank(max) => r <= max,
            Truncation::Energy(_) => true,
        };
        if keep {
            return Ok(Factors {
                a: v.to_dtype(DType::F32)?.t()?.contiguous()?,
                b: u.to_dtype(DType::F32)?.contiguous()?,
                rank: r,
                exact: true,
                energy: 1.0,
            });
        }
    }
    truncated_svd(&delta.dense(DType::F64)?, truncation)
}

/// `ΔW ≈ U_r S_r V_rᵀ`, split as `B = U_r S_r^½`, `A = S_r^½ V_rᵀ` so that both factors
/// have the same scale.
fn truncated_svd(dense: &Tensor, truncation: Truncation) -> Result<Factors> {
    let m = to_mat(dense)?;
    let svd = m
        .thin_svd()
        .map_err(|e| Error::invalid(format!("the SVD of a delta did not converge: {e:?}")))?;
    let s: Vec<f64> = svd.S().column_vector().iter().copied().collect();
    let total: f64 = s.iter().map(|x| x * x).sum();
    let full = s.len().max(1);
    let rank = match truncation {
        Truncation::Rank(r) => r.clamp(1, full),
        Truncation::Energy(e) => {
            let mut kept = 0.0;
            let mut r = 0;
            while r < s.len() && (total == 0.0 || kept < e * total) {
                kept += s[r] * s[r];
                r += 1;
            }
            r.clamp(1, full)
        }
    };
    let kept: f64 = s.iter().take(rank).map(|x| x * x).sum();
    let energy = if total == 0.0 { 1.0 } else { kept / total };
    let (u, v) = (svd.U(), svd.V());
    let root = |k: usize| s.get(k).copied().unwrap_or(0.0).sqrt();
    Ok(Factors {
        b: to_tensor(m.nrows(), rank, |i, k| u[(i, k)] * root(k))?,
        a: to_tensor(rank, m.ncols(), |k, j| v[(j, k)] * root(k))?,
        rank,
        exact: rank >= s.iter().filter(|&&x| x > 0.0).count(),
        energy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(rows: usize, cols: usize, rng: &mut Rng) -> Tensor {
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn a_low_rank_delta_is_its_own_factors_and_a_dense_rank_two_one_is_recovered() {
        let mut rng = Rng::new(7);
        let (u, v) = (random(12, 2, &mut rng), random(9, 2, &mut rng));
        let low = Delta::LowRank {
            u: u.clone(),
            v: v.clone(),
        };
        let f = factor(&low, Truncation::default()).unwrap();
        assert!(f.exact && f.rank == 2 && f.energy == 1.0);
        assert_eq!(max_abs_diff(&f.b, &u), 0.0);
        let dense = low.dense(DType::F32).unwrap();
        let want = dense.clone();
        // A rank-2 matrix stored dense: the SVD finds rank 2 and keeps all of it.
        let f = factor(&Delta::Dense(dense), Truncation::Energy(0.999_999)).unwrap();
        assert_eq!(f.rank, 2);
        let back = f.b.matmul(&f.a).unwrap();
        assert!(max_abs_diff(&back, &want) < 1e-4);
        // Cut to rank 1: what is lost is the second singular value's share.
        let f = factor(&low, Truncation::Rank(1)).unwrap();
        assert!(!f.exact && f.rank == 1 && f.energy < 1.0 && f.energy > 0.0);
    }

    #[test]
    fn the_energy_rule_picks_the_smallest_rank_that_keeps_the_fraction() {
        let mut rng = Rng::new(3);
        let dense = random(20, 15, &mut rng);
        let f = factor(&Delta::Dense(dense.clone()), Truncation::Energy(0.5)).unwrap();
        assert!(f.energy >= 0.5);
        let smaller = factor(&Delta::Dense(dense), Truncation::Rank(f.rank - 1)).unwrap();
        assert!(
            smaller.energy < 0.5,
            "{} at rank {}",
            smaller.energy,
            f.rank - 1
        );
    }
}
