//! The Editor: a model plus the edits applied to it, every one reversible.
//!
//! Weights are immutable reference-counted tensors, so a checkpoint is a cheap copy of the
//! parameter map and restoring it gives bit-identical weights — no arithmetic undo.

pub mod delta;

use candle_core::Tensor;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{Model, ParamId, Params};
use crate::runtime::TokenBatch;
pub use delta::{Delta, WeightEdit};

/// When an edit is refused.
#[derive(Clone, Debug, Serialize)]
pub struct Guard {
    /// Refuse a delta with ‖ΔW‖ / ‖W‖ above this (ROME's "disabling edits" are far above).
    pub max_relative_norm: f64,
    /// Run a short forward pass after applying; refuse if any logit is not finite.
    pub check_forward: bool,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            max_relative_norm: 4.0,
            check_forward: true,
        }
    }
}

/// A saved state of the weights.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    params: Params,
    applied: usize,
}

/// What the editor records of each applied edit.
#[derive(Clone, Debug, Serialize)]
pub struct AppliedEdit {
    pub params: Vec<String>,
    pub relative_norms: Vec<f64>,
}

pub struct Editor {
    model: Model,
    original: Params,
    applied: Vec<AppliedEdit>,
    pub guard: Guard,
}

impl Editor {
    pub fn new(model: Model) -> Self {
        Editor {
            original: model.params.clone(),
            model,
            applied: Vec::new(),
            guard: Guard::default(),
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Gives the (possibly edited) model back.
    pub fn into_model(self) -> Model {
        self.model
    }

    /// Edits applied since the original or the last restore.
    pub fn applied(&self) -> &[AppliedEdit] {
        &self.applied
    }

    /// Applies every delta of `edit`, or none: a delta with NaN/Inf, a wrong shape, an
    /// exploding norm, or weights that make the model's logits non-finite is refused with
    /// the model left exactly as it was.
    pub fn apply(&mut self, edit: &WeightEdit) -> Result<&AppliedEdit> {
        let before = self.checkpoint();
        match self.try_apply(edit) {
            Ok(record) => {
                self.applied.push(record);
                Ok(self.applied.last().expect("just pushed"))
            }
            Err(e) => {
                self.restore(&before);
                Err(e)
            }
        }
    }

    fn try_apply(&mut self, edit: &WeightEdit) -> Result<AppliedEdit> {
        if edit.deltas.is_empty() {
            return Err(Error::EditRefused("the edit changes no weight".into()));
        }
        let mut record = AppliedEdit {
            params: Vec::new(),
            relative_norms: Vec::new(),
        };
        for (id, delta) in &edit.deltas {
            let w = self.model.params.require(*id)?.clone();
            if delta.shape()? != w.dims() {
                return Err(Error::EditRefused(format!(
                    "the delta for `{id}` has shape {:?}; the weight is {:?}",
                    delta.shape()?,
                    w.dims()
                )));
            }
            if !delta.is_finite()? {
                return Err(Error::EditRefused(format!(
                    "the delta for `{id}` has NaN or Inf entries"
                )));
            }
            let dense = delta.dense(w.dtype())?;
            let ratio = delta::frobenius(&dense)? / delta::frobenius(&w)?.max(f64::MIN_POSITIVE);
            if ratio.is_nan() || ratio > self.guard.max_relative_norm {
                return Err(Error::EditRefused(format!(
                    "the update of `{id}` has norm {ratio:.3e} × the weight's, above the limit {} \
                     (an exploding update)",
                    self.guard.max_relative_norm
                )));
            }
            let updated = (&w + dense)?;
            if !delta::all_finite(&updated)? {
                return Err(Error::EditRefused(format!(
                    "`{id}` would have NaN or Inf entries"
                )));
            }
            self.model.params.replace(*id, updated)?;
            record.params.push(id.to_string());
            record.relative_norms.push(ratio);
        }
        if self.guard.check_forward {
            self.check_logits_finite()?;
        }
        Ok(record)
    }

    fn check_logits_finite(&self) -> Result<()> {
        let vocab = self.model.config.vocab_size as u32;
        let probe: Vec<u32> = (0..8u32).map(|i| (i * 7919 + 13) % vocab).collect();
        let logits = self
            .model
            .forward(&TokenBatch::single(&probe))
            .run()?
            .logits;
        let finite = match logits {
            Some(l) => delta::all_finite(&l)?,
            None => true,
        };
        if finite {
            Ok(())
        } else {
            Err(Error::EditRefused(
                "the edited model produces NaN or Inf logits".into(),
            ))
        }
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            params: self.model.params.clone(),
            applied: self.applied.len(),
        }
    }

    pub fn restore(&mut self, cp: &Checkpoint) {
        self.model.params = cp.params.clone();
        self.applied.truncate(cp.applied);
    }

    /// Undoes every edit: the weights are bit-identical to the original.
    pub fn revert_all(&mut self) {
        self.model.params = self.original.clone();
        self.applied.clear();
    }

    /// A weight by canonical name.
    pub fn param(&self, id: ParamId) -> Result<&Tensor> {
        self.model.params.require(id)
    }

    /// Saves the edited model as a Hugging Face directory.
    pub fn save_model(&self, dir: &std::path::Path) -> Result<()> {
        self.model.save_hf(dir)
    }

    /// True when the current weights are bit-identical to the original ones.
    pub fn is_pristine(&self) -> Result<bool> {
        params_identical(&self.model.params, &self.original)
    }
}

/// Bitwise equality of two parameter sets.
pub fn params_identical(a: &Params, b: &Params) -> Result<bool> {
    if a.len() != b.len() {
        return Ok(false);
    }
    for ((ia, ta), (ib, tb)) in a.iter().zip(b.iter()) {
        if ia != ib || ta.dims() != tb.dims() || ta.dtype() != tb.dtype() {
            return Ok(false);
        }
        if ta.id() == tb.id() {
            continue;
        }
        let bits = |t: &Tensor| -> Result<Vec<u8>> {
            let t = t.flatten_all()?;
            Ok(match t.dtype() {
                candle_core::DType::F64 => t
                    .to_vec1::<f64>()?
                    .iter()
                    .flat_map(|x| x.to_bits().to_le_bytes())
                    .collect(),
                _ => t
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|x| x.to_bits().to_le_bytes())
                    .collect(),
            })
        };
        if bits(ta)? != bits(tb)? {
            return Ok(false);
        }
    }
    Ok(true)
}
