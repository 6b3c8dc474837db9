//! Weight deltas: what a locate-then-edit or fine-tuning method returns, as a value that
//! can be applied, saved, loaded and inspected.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::safetensors_io::save_atomic;
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

    fn tensors(&self) -> Vec<&Tensor> {
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
    /// Free-form provenance (method, hyper-parameters, requests) saved with the edit.
    pub meta: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    kedit_weight_edit: u32,
    deltas: Vec<ManifestEntry>,
    meta: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct ManifestEntry {
    param: String,
    kind: String,
}

impl WeightEdit {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, param: ParamId, delta: Delta) {
        self.deltas.push((param, delta));
    }

    /// Saves to one safetensors file (tensors `d{i}.dense` or `d{i}.u`/`d{i}.v`, with a
    /// JSON manifest in the header metadata), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = BTreeMap::new();
        let mut entries = Vec::new();
        for (i, (param, delta)) in self.deltas.iter().enumerate() {
            let kind = match delta {
                Delta::Dense(t) => {
                    tensors.insert(format!("d{i}.dense"), t.to_dtype(DType::F32)?);
                    "dense"
                }
                Delta::LowRank { u, v } => {
                    tensors.insert(format!("d{i}.u"), u.to_dtype(DType::F32)?);
                    tensors.insert(format!("d{i}.v"), v.to_dtype(DType::F32)?);
                    "low_rank"
                }
            };
            entries.push(ManifestEntry {
                param: param.to_string(),
                kind: kind.into(),
            });
        }
        let manifest = Manifest {
            kedit_weight_edit: 1,
            deltas: entries,
            meta: self.meta.clone(),
        };
        let json = serde_json::to_string(&manifest).expect("manifest serialises");
        tensors.insert(
            "manifest".into(),
            Tensor::from_vec(json.into_bytes(), ((),), &Device::Cpu)?,
        );
        save_atomic(&tensors, path)
    }

    pub fn load(path: &Path) -> Result<WeightEdit> {
        std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::model(path, format!("not a weight-edit file: {e}")))?;
        let manifest = tensors
            .get("manifest")
            .ok_or_else(|| Error::tensor(path, "manifest", "is missing"))?
            .to_vec1::<u8>()?;
        let manifest: Manifest = serde_json::from_slice(&manifest)
            .map_err(|e| Error::tensor(path, "manifest", format!("invalid: {e}")))?;
        let mut edit = WeightEdit {
            deltas: Vec::new(),
            meta: manifest.meta,
        };
        for (i, entry) in manifest.deltas.iter().enumerate() {
            let param: ParamId = entry.param.parse()?;
            let get = |name: String| {
                tensors
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| Error::tensor(path, &name, "is missing"))
            };
            let delta = match entry.kind.as_str() {
                "dense" => Delta::Dense(get(format!("d{i}.dense"))?),
                "low_rank" => Delta::LowRank {
                    u: get(format!("d{i}.u"))?,
                    v: get(format!("d{i}.v"))?,
                },
                other => {
                    return Err(Error::tensor(
                        path,
                        "manifest",
                        format!("unknown delta kind `{other}`"),
                    ))
                }
            };
            edit.push(param, delta);
        }
        Ok(edit)
    }
}
