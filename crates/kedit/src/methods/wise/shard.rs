//! Knowledge shards: the random subspace a side memory is written in, and the TIES merge
//! that folds several shards into one memory.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::hash::Fast64;
use crate::rng::Rng;

/// The mask seed of the shard opened after `total_edits` edits of a run seeded `run_seed`:
/// derived, not drawn, so a merged state can be split back by its shards' masks.
pub fn shard_seed(run_seed: u64, total_edits: u64) -> u64 {
    let mut h = Fast64::new();
    h.u64(run_seed);
    h.u64(total_edits);
    h.finish()
}

/// The gradient mask of a shard: each entry of an `[out, in]` weight is free with
/// probability `ratio`, drawn from `seed` (so a saved memory's subspace can be drawn again).
pub fn subspace_mask(
    shape: (usize, usize),
    ratio: f64,
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    let n = shape.0 * shape.1;
    let mask: Vec<f32> = (0..n)
        .map(|_| if rng.uniform() < ratio { 1.0 } else { 0.0 })
        .collect();
    Ok(Tensor::from_vec(mask, shape, device)?)
}

/// TIES-merging (Yadav et al. 2023) of task vectors `deltas` (each `W_i − W`), each given
/// weight `weight / deltas.len()`: keep each one's `density` largest entries by magnitude,
/// elect each entry's sign by the weighted sum, and average the weighted entries that agree
/// with it (divided by the weights that agree: "normalised"). Returns the merged delta.
pub fn ties_merge(deltas: &[Tensor], weight: f64, density: f64) -> Result<Tensor> {
    let Some(first) = deltas.first() else {
        return Err(Error::invalid("nothing to merge"));
    };
    let shape = first.dims().to_vec();
    let w = (weight / deltas.len() as f64) as f32;
    let trimmed: Vec<Vec<f32>> = deltas
        .iter()
        .map(|d| {
            if d.dims() != shape.as_slice() {
                return Err(Error::invalid(format!(
                    "shards of shapes {:?} and {:?} cannot be merged",
                    shape,
                    d.dims()
                )));
            }
            Ok(trim(
                d.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                density,
            ))
        })
        .collect::<Result<_>>()?;
    let n = trimmed[0].len();
    let mut merged = vec![0f32; n];
    for (j, out) in merged.iter_mut().enumerate() {
        let total: f32 = trimmed.iter().map(|t| w * t[j]).sum();
        let elected = total.signum();
        if total == 0.0 {
            continue;
        }
        let (mut sum, mut weights) = (0f32, 0f32);
        for t in &trimmed {
            if t[j] != 0.0 && t[j].signum() == elected {
                sum += w * t[j];
                weights += w;
            }
        }
        if weights > 0.0 {
            *out = sum / weights;
        }
    }
    Ok(Tensor::from_vec(merged, shape, first.device())?.to_dtype(first.dtype())?)
}

/// Zeroes all but the `density` share of entries with the largest magnitude.
fn trim(mut v: Vec<f32>, density: f64) -> Vec<f32> {
    let keep = ((v.len() as f64) * density).round() as usize;
    if keep >= v.len() {
        return v;
    }
    if keep == 0 {
        return vec![0.0; v.len()];
    }
    let mut mags: Vec<f32> = v.iter().map(|x| x.abs()).collect();
    let (_, cut, _) = mags.select_nth_unstable_by(v.len() - keep, |a, b| a.total_cmp(b));
    let cut = *cut;
    let mut above = v.iter().filter(|x| x.abs() > cut).count();
    for x in v.iter_mut() {
        let m = x.abs();
        if m < cut {
            *x = 0.0;
        } else if m == cut {
            // Ties at the cut: keep as many as make up `keep`.
            if above < keep {
                above += 1;
            } else {
                *x = 0.0;
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn disjoint_shards_merge_to_their_union() {
        // Two shards written in disjoint subspaces, merged with total weight 1: each entry
        // has one agreeing shard, whose value it keeps.
        let a = t(&[1.0, 0.0, -2.0, 0.0]);
        let b = t(&[0.0, 3.0, 0.0, -4.0]);
        let m = ties_merge(&[a, b], 1.0, 1.0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(m, vec![1.0, 3.0, -2.0, -4.0]);
    }

    #[test]
    fn the_elected_sign_wins_and_agreeing_values_are_averaged() {
        let a = t(&[2.0, 1.0]);
        let b = t(&[4.0, -3.0]);
        let m = ties_merge(&[a, b], 1.0, 1.0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // Entry 0: both positive, mean 3. Entry 1: sum −2 elects minus; only b agrees.
        assert_eq!(m, vec![3.0, -3.0]);
    }

    #[test]
    fn trimming_keeps_the_largest_share() {
        assert_eq!(
            trim(vec![0.1, -5.0, 2.0, 0.3], 0.5),
            vec![0.0, -5.0, 2.0, 0.0]
        );
        assert_eq!(
            trim(vec![1.0, 1.0, 1.0, 1.0], 0.5)
                .iter()
                .filter(|x| **x != 0.0)
                .count(),
            2
        );
    }

    #[test]
    fn the_mask_frees_about_its_ratio_and_is_reproducible() {
        let a = subspace_mask((100, 100), 0.2, 7, &Device::Cpu).unwrap();
        let b = subspace_mask((100, 100), 0.2, 7, &Device::Cpu).unwrap();
        let free = a.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((free - 2000.0).abs() < 200.0, "{free}");
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    }
}
