//! Weight deltas: what a locate-then-edit or fine-tuning method returns.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::model::ParamId;

/// A change to one weight matrix.
#[derive(Clone, Debug)]
pub enum Delta {
    /// ΔW itself, shaped like the weight.
    Dense(Tensor),
    /// ΔW = u·vᵀ with `u: [out, r]`, `v: [in, r]` (ROME's rank-one update has r = 1).
    LowRank { u: Tensor, v: Tensor },
}

impl Delta {
    /// ΔW as a dense matrix in `dtype`.
    pub fn dense(&self, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Delta::Dense(t) => t.to_dtype(dtype)?,
            Delta::LowRank { u, v } => u.to_dtype(dtype)?.matmul(&v.to_dtype(dtype)?.t()?)?,
        })
    }

    /// `w + ΔW`, in `w`'s type.
    pub fn added_to(&self, w: &Tensor) -> Result<Tensor> {
        Ok((w + self.dense(w.dtype())?)?)
    }

    pub fn shape(&self) -> Result<Vec<usize>> {
        Ok(match self {
            Delta::Dense(t) => t.dims().to_vec(),
            Delta::LowRank { u, v } => vec![u.dim(0)?, v.dim(0)?],
        })
    }

    /// Frobenius norm ‖ΔW‖.
    pub fn norm(&self) -> Result<f64> {
        frobenius(&self.dense(DType::F64)?)
    }

    pub(crate) fn tensors(&self) -> Vec<&Tensor> {
        match self {
            Delta::Dense(t) => vec![t],
            Delta::LowRank { u, v } => vec![u, v],
        }
    }

    /// True when every entry is finite.
    pub fn is_finite(&self) -> Result<bool> {
        for t in self.tensors() {
            if !all_finite(t)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

pub fn frobenius(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .sqrt()?
        .to_scalar::<f64>()?)
}

pub fn all_finite(t: &Tensor) -> Result<bool> {
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(v.iter().all(|x| x.is_finite()))
}

/// The weight changes of one edit (one request, or one batch of requests).
#[derive(Clone, Debug, Default)]
pub struct WeightEdit {
    pub deltas: Vec<(ParamId, Delta)>,
    /// The keys the edit wrote at a parameter (`[n, d_in]`, one row per request), for
    /// methods whose later edits keep earlier ones in place (AlphaEdit accumulates KKᵀ of
    /// the edits applied); empty for every other method. They are saved with the edit and
    /// go with it when it is reverted.
    pub keys: Vec<(ParamId, Tensor)>,
    /// Free-form provenance (method, hyper-parameters, requests) saved with the edit.
    pub meta: BTreeMap<String, String>,
}

impl WeightEdit {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, param: ParamId, delta: Delta) {
        self.deltas.push((param, delta));
    }

    /// The keys written at `param`, as rows (see [`WeightEdit::keys`]).
    pub fn keys_of(&self, param: ParamId) -> impl Iterator<Item = &Tensor> {
        self.keys
            .iter()
            .filter(move |(p, _)| *p == param)
            .map(|(_, k)| k)
    }
}
