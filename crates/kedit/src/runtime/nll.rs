//! log p(target | row) fused with the log-softmax, for losses over a large vocabulary.
//!
//! Composed from primitives, log-softmax over `[n, 49152]` logits plus its backward is a
//! dozen full passes over the matrix, each allocating; here the forward is one pass per row
//! (max, then Σ exp) and the backward one more (softmax − one-hot), over rows in parallel.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::runtime::kernels::{real, wide_fn, Real};

/// `[n]`: log-softmax of `logits: [n, vocab]` at `targets[i]` in row `i`; differentiable.
pub fn target_log_probs(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (n, vocab) = logits.dims2()?;
    if targets.len() != n {
        return Err(Error::invalid(format!(
            "{} targets for {n} rows of logits",
            targets.len()
        )));
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::invalid(format!(
            "target id {t} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(logits.contiguous()?.apply_op1(TargetLogProb {
        targets: targets.to_vec(),
    })?)
}

struct TargetLogProb {
    targets: Vec<u32>,
}

/// exp(x) in f32, ~1e-7 relative error: 2^k · p(r) after reducing x = k·ln2 + r.
/// A loop over it vectorises, unlike calls to libm's expf.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    // Adding 1.5·2²³ rounds to an integer held in the low mantissa bits: unlike `round`
    // (a libm call without SSE4.1), it vectorises on any x86-64.
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + SHIFTER;
    let k = t - SHIFTER;
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    // Minimax-style polynomial for e^r on |r| ≤ ln2/2 (Cephes expf coefficients).
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let k_bits = t.to_bits().wrapping_sub(SHIFTER.to_bits());
    f32::from_bits(e.to_bits().wrapping_add(k_bits << 23))
}

fn slice<'a, T: candle_core::WithDType>(
    s: &'a [T],
    layout: &Layout,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("target_log_probs expects contiguous logits"),
    }
}

wide_fn!(fn row_lse_wide [T: Real] (row: &[T]) -> f64 => row_lse);

/// log Σ exp over one row, in f64.
#[inline(always)]
fn row_lse<T: Real>(row: &[T]) -> f64 {
    let max = real::max(row);
    max.f64() + real::sum1(row, |x| (x - max).exp().f64()).ln()
}

fn forward<T: Real>(x: &[T], vocab: usize, targets: &[u32]) -> Vec<T> {
    x.par_chunks(vocab)
        .zip(targets.par_iter())
        .map(|(row, &t)| T::of(row[t as usize].f64() - row_lse_wide(row)))
        .collect()
}

wide_fn!(fn gradient_row_wide [T: Real] (row: &[T], target: usize, g: f64, out: &mut [T]) => gradient_row);

/// The gradient of g · log p(target) with respect to one row of logits: g·(onehot − p).
#[inline(always)]
fn gradient_row<T: Real>(row: &[T], target: usize, g: f64, out: &mut [T]) {
    let lse = row_lse(row);
    let minus_g = T::of(-g);
    for (o, &xi) in out.iter_mut().zip(row) {
        *o = minus_g * T::of(xi.f64() - lse).exp();
    }
    out[target] = T::of(out[target].f64() + g);
}

fn backward<T: Real>(x: &[T], vocab: usize, targets: &[u32], grad: &[T]) -> Vec<T> {
    let mut out = vec![T::of(0.0); x.len()];
    out.par_chunks_mut(vocab)
        .zip(x.par_chunks(vocab))
        .zip(targets.par_iter().zip(grad.par_iter()))
        .for_each(|((o, row), (&t, &g))| gradient_row_wide(row, t as usize, g.f64(), o));
    out
}

impl CustomOp1 for TargetLogProb {
    fn name(&self) -> &'static str {
        "target-log-prob"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, vocab) = layout.shape().dims2()?;
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(forward(slice(v, layout)?, vocab, &self.targets)),
            CpuStorage::F64(v) => CpuStorage::F64(forward(slice(v, layout)?, vocab, &self.targets)),
            _ => candle_core::bail!("target_log_probs: logits must be f32 or f64"),
        };
        Ok((out, Shape::from(n)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (_, vocab) = arg.dims2()?;
        let grad = grad.contiguous()?;
        let (a, al) = arg.storage_and_layout();
        let (g, gl) = grad.storage_and_layout();
        let data = match (&*a, &*g) {
            (Storage::Cpu(CpuStorage::F32(x)), Storage::Cpu(CpuStorage::F32(gv))) => {
                CpuStorage::F32(backward(
                    slice(x, al)?,
                    vocab,
                    &self.targets,
                    slice(gv, gl)?,
                ))
            }
            (Storage::Cpu(CpuStorage::F64(x)), Storage::Cpu(CpuStorage::F64(gv))) => {
                CpuStorage::F64(backward(
                    slice(x, al)?,
                    vocab,
                    &self.targets,
                    slice(gv, gl)?,
                ))
            }
            _ => candle_core::bail!("target_log_probs backward: expected f32/f64 CPU tensors"),
        };
        Ok(Some(Tensor::from_storage(
            Storage::Cpu(data),
            arg.shape().clone(),
            candle_core::op::BackpropOp::none(),
            false,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var};

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst: f64 = 0.0;
        for i in 0..200_000 {
            let x = -87.0 + 97.0 * (i as f32 / 200_000.0);
            let want = (x as f64).exp();
            worst = worst.max(((fast_exp(x) as f64 - want) / want).abs());
        }
        assert!(worst < 3e-7, "{worst}");
    }

    #[test]
    fn matches_composed_log_softmax_and_its_gradient() {
        let mut rng = Rng::new(4);
        let (n, v) = (3, 50);
        let data: Vec<f64> = (0..n * v).map(|_| rng.normal() * 4.0).collect();
        let x = Var::from_vec(data, (n, v), &Device::Cpu).unwrap();
        let targets = [3u32, 0, 49];
        let w = Tensor::new(&[0.5f64, -1.0, 2.0], &Device::Cpu).unwrap();
        let fused = target_log_probs(x.as_tensor(), &targets).unwrap();
        let idx = Tensor::new(&targets, &Device::Cpu)
            .unwrap()
            .unsqueeze(1)
            .unwrap();
        let composed = crate::runtime::ops::log_softmax_last(x.as_tensor())
            .unwrap()
            .gather(&idx, 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let a = fused.to_vec1::<f64>().unwrap();
        let b = composed.to_vec1::<f64>().unwrap();
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-12, "{p} vs {q}");
        }
        let ga = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (composed * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let d = (ga.get(x.as_tensor()).unwrap() - gb.get(x.as_tensor()).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(d < 1e-12, "{d}");
        assert!(target_log_probs(x.as_tensor(), &[0, 1]).is_err());
        assert!(target_log_probs(x.as_tensor(), &[0, 1, 50]).is_err());
    }

    #[test]
    fn f32_agrees_with_f64() {
        let mut rng = Rng::new(5);
        let data: Vec<f32> = (0..2 * 1000).map(|_| (rng.normal() * 6.0) as f32).collect();
        let x = Tensor::from_vec(data, (2, 1000), &Device::Cpu).unwrap();
        let a = target_log_probs(&x, &[7, 999])
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = target_log_probs(&x.to_dtype(candle_core::DType::F64).unwrap(), &[7, 999])
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for (p, q) in a.iter().zip(&b) {
            assert!((*p as f64 - q).abs() < 1e-5, "{p} vs {q}");
        }
    }
}
