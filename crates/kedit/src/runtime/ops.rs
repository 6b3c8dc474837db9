//! The numerical building blocks of the forward pass, all composed from differentiable
//! primitives.
//!
//! candle's fused kernels (rms_norm, layer_norm, softmax, rope) have no backward: gradients
//! through them are silently dropped. Composed versions cost a few percent at inference
//! and keep one code path for inference and differentiation alike.

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, DType, Device, Layout, Shape, Storage, Tensor,
    D,
};

use crate::error::Result;
use crate::model::config::Activation;
use crate::runtime::kernels;

/// A large finite negative for masked attention scores: -inf would make gradients NaN.
pub const MASKED: f64 = -1.0e9;

/// RMSNorm: x / sqrt(mean(x²) + eps) · w; the fused kernel where it can run.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if kernels::fusable(x) && x.dtype() == w.dtype() {
        return Ok(kernels::norm::rms_norm(x, w, eps)?);
    }
    rms_norm_composed(x, w, eps)
}

/// RMSNorm from primitives: the reference for the fused kernel, and the path for other
/// dtypes and devices.
pub fn rms_norm_composed(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// LayerNorm: (x − mean) / sqrt(var + eps) · w + b, variance biased as in PyTorch; the
/// fused kernel where it can run.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    if kernels::fusable(x) && x.dtype() == w.dtype() {
        let y = kernels::norm::layer_norm(x, w, eps)?;
        return Ok(match b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        });
    }
    layer_norm_composed(x, w, b, eps)
}

/// LayerNorm from primitives: the reference for the fused kernel.
pub fn layer_norm_composed(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var + eps)?.sqrt()?.recip()?;
    let y = centred.broadcast_mul(&inv)?.broadcast_mul(w)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Softmax over the last dimension; the fused kernel where it can run.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if kernels::fusable(x) {
        return Ok(kernels::softmax::softmax_last(x)?);
    }
    softmax_composed(x)
}

/// log-softmax over the last dimension; the fused kernel where it can run.
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    if kernels::fusable(x) {
        return Ok(kernels::softmax::log_softmax_last(x)?);
    }
    log_softmax_composed(x)
}

/// softmax(scores + mask) over the last dimension, for attention scores
/// `[rows, heads, len, keys]` and a mask `[rows, 1, len, keys]`.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if kernels::fusable(scores) && scores.dtype() == mask.dtype() {
        return Ok(kernels::softmax::masked_softmax(scores, mask)?);
    }
    softmax_composed(&scores.broadcast_add(mask)?)
}

/// Softmax from primitives. The max is detached: softmax is shift-invariant, so its
/// gradient does not depend on it.
pub fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

/// log-softmax from primitives (numerically stable).
pub fn log_softmax_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// act(x); the fused kernel where it can run.
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    if kernels::fusable(x) {
        return Ok(kernels::gate::activate(x, act)?);
    }
    activation_composed(x, act)
}

/// act(gate) · up for gated MLPs; the fused kernel where it can run.
pub fn gated_activation(gate: &Tensor, up: &Tensor, act: Activation) -> Result<Tensor> {
    if kernels::fusable(gate) && gate.dtype() == up.dtype() {
        return Ok(kernels::gate::gated(gate, up, act)?);
    }
    Ok((activation_composed(gate, act)? * up)?)
}

/// candle's activations: the reference for the fused kernel.
pub fn activation_composed(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => x.silu()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::GeluErf => x.gelu_erf()?,
        Activation::Relu => x.relu()?,
    })
}

/// How a linear layer's weight takes part in a pass.
#[derive(Clone, Copy)]
pub enum Weight<'a> {
    /// Multiplied as it is: gradients flow to it, or nothing is differentiated.
    Plain(&'a Tensor),
    /// The model's own weight: no gradient is computed for `W` (candle's matmul backward
    /// always computes both operands' gradients, and for frozen weights that is a third of
    /// the backward pass spent on numbers nobody reads). `transposed` is Wᵀ laid out
    /// contiguously, which the forward multiplies by (see `Params::transposed`).
    Frozen {
        w: &'a Tensor,
        transposed: &'a Tensor,
    },
}

impl<'a> Weight<'a> {
    pub fn tensor(self) -> &'a Tensor {
        match self {
            Weight::Plain(w) | Weight::Frozen { w, .. } => w,
        }
    }
}

/// y = x·Wᵀ + b for `x` of shape `[..., in]` and `W` of shape `[out, in]`.
pub fn linear(x: &Tensor, weight: Weight<'_>, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (last, lead) = dims
        .split_last()
        .expect("linear needs a tensor of rank ≥ 1");
    let rows: usize = lead.iter().product();
    let x2 = x.reshape((rows, *last))?;
    let y = match weight {
        Weight::Frozen { w, transposed } if x2.track_op() => {
            x2.contiguous()?.apply_op1(FrozenLinear {
                weight: w.clone(),
                transposed: transposed.clone(),
            })?
        }
        Weight::Frozen { transposed, .. } => x2.matmul(transposed)?,
        Weight::Plain(w) => x2.matmul(&w.t()?)?,
    };
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = lead.to_vec();
    out_dims.push(weight.tensor().dim(0)?);
    Ok(y.reshape(out_dims)?)
}

/// x·Wᵀ with a backward that returns only the input's gradient.
struct FrozenLinear {
    weight: Tensor,
    transposed: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        // The product on the storages themselves: no copy of the input or the output.
        let (m, k) = layout.shape().dims2()?;
        let (w, w_layout) = self.transposed.storage_and_layout();
        let Storage::Cpu(w) = &*w else {
            candle_core::bail!("frozen linear: expected the weight on the CPU")
        };
        let n = w_layout.shape().dims2()?.1;
        if w_layout.shape().dims2()?.0 != k {
            candle_core::bail!(
                "frozen linear: input {:?} times weight {:?}",
                layout.shape(),
                w_layout.shape()
            );
        }
        let out = storage.matmul(w, (1, m, n, k), layout, w_layout)?;
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// A `[rows, 1]` column of ones/zeros or a `[rows, n]` selection matrix, in `dtype`.
pub fn host_tensor(
    data: Vec<f32>,
    shape: impl Into<Shape>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64], shape: &[usize]) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn softmax_rows_sum_to_one_and_masked_entries_vanish() {
        let x = t(&[1.0, 2.0, MASKED, 0.5, 0.5, 0.5], &[2, 3]);
        let p = softmax_last(&x).unwrap().to_vec2::<f64>().unwrap();
        for row in &p {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        assert!(p[0][2] < 1e-300);
        let lp = log_softmax_last(&x).unwrap().to_vec2::<f64>().unwrap();
        assert!((lp[1][0] - (1.0f64 / 3.0).ln()).abs() < 1e-12);
    }

    #[test]
    fn norms_match_hand_computation() {
        let x = t(&[3.0, 4.0], &[1, 2]);
        let w = t(&[1.0, 2.0], &[2]);
        let y = rms_norm(&x, &w, 0.0).unwrap().to_vec2::<f64>().unwrap();
        let rms = (12.5f64).sqrt();
        assert!((y[0][0] - 3.0 / rms).abs() < 1e-12 && (y[0][1] - 8.0 / rms).abs() < 1e-12);
        let b = t(&[0.5, -0.5], &[2]);
        let y = layer_norm(&x, &w, Some(&b), 0.0)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        assert!((y[0][0] - (-1.0 + 0.5)).abs() < 1e-12 && (y[0][1] - (2.0 - 0.5)).abs() < 1e-12);
    }

    #[test]
    fn frozen_linear_matches_matmul_and_passes_input_gradient_only() {
        let x =
            candle_core::Var::from_tensor(&t(&[1.0, 2.0, 3.0, -1.0, 0.5, 2.0], &[2, 3])).unwrap();
        let w = t(
            &[0.1, 0.2, 0.3, -0.4, 0.5, 0.6, 0.7, 0.8, -0.9, 1.0, 1.1, 1.2],
            &[4, 3],
        );
        // Multiply by a constant first so that x's consumer is a tracked op.
        let xs = (x.as_tensor() * 1.0).unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        let frozen = linear(
            &xs,
            Weight::Frozen {
                w: &w,
                transposed: &wt,
            },
            None,
        )
        .unwrap();
        let plain = linear(&xs, Weight::Plain(&w), None).unwrap();
        let diff = (&frozen - &plain)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
        let g_frozen = frozen.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g_plain = plain.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let a = g_frozen.get(x.as_tensor()).unwrap();
        let b = g_plain.get(x.as_tensor()).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
    }
}
