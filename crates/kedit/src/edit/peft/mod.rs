//! Weight edits as PEFT LoRA adapters, both ways: `adapter_config.json` plus
//! `adapter_model.safetensors`, which `PeftModel.from_pretrained(base, dir)` loads onto the
//! unedited model.
//!
//! Each edited weight `W` (`[out, in]`, a Hugging Face `nn.Linear` or GPT-2 `Conv1D`)
//! becomes the module's `lora_A.weight` (`[r, in]`) and `lora_B.weight` (`[out, r]`) with
//! `W + (α/r)·B·A`; α = r everywhere, so the scaling is 1 and `B·A` is the delta. A
//! low-rank delta is exported exactly; a dense one by truncated SVD ([`factor`]).

mod config;
mod factor;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::json;

pub use config::AdapterConfig;
pub use factor::{factor, Factors, Truncation};

use crate::edit::{Delta, WeightEdit};
use crate::error::{Error, Result};
use crate::fsio;
use crate::model::arch::{self, HfLayout};
use crate::model::{safetensors_write, Model, ParamId};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Marks an adapter directory as kedit's, so that a later export may replace it.
pub const MARKER: &str = "kedit-adapter.json";

/// Where PEFT puts the wrapped model's modules in its state dict.
const PREFIX: &str = "base_model.model.";

/// How one edited weight was exported.
#[derive(Debug, Clone)]
pub struct ModuleReport {
    pub param: ParamId,
    /// The Hugging Face module (`model.layers.4.mlp.down_proj`).
    pub module: String,
    pub rank: usize,
    pub exact: bool,
    /// The fraction of ‖ΔW‖² the adapter keeps (1 when exact).
    pub energy: f64,
}

/// The Hugging Face module of a canonical weight, if a LoRA can sit on it.
fn lora_module(model: &Model, param: ParamId) -> Result<(String, HfLayout)> {
    let refuse = |why: &str| {
        Error::invalid(format!(
            "cannot export the delta of `{param}` as a LoRA adapter: {why}"
        ))
    };
    if matches!(param, ParamId::TokenEmbed | ParamId::PositionEmbed) {
        return Err(refuse(
            "embeddings take a different adapter (lora_embedding)",
        ));
    }
    let slot = arch::hf_slot(model.config.family, param)
        .ok_or_else(|| refuse("the architecture has no such checkpoint tensor"))?;
    let module = slot
        .name
        .strip_suffix(".weight")
        .ok_or_else(|| refuse("only weight matrices take a LoRA, not biases"))?
        .to_string();
    match slot.layout {
        HfLayout::Plain | HfLayout::Conv1D => Ok((module, slot.layout)),
        _ => Err(refuse(&format!(
            "`{module}` is fused or stored shifted ({:?}) in the checkpoint",
            slot.layout
        ))),
    }
}

/// The deltas of `edit`, one per weight: several deltas of one weight are added (low-rank
/// ones by stacking their factors, which stays exact).
fn merged(edit: &WeightEdit) -> Result<BTreeMap<ParamId, Delta>> {
    let mut out: BTreeMap<ParamId, Delta> = BTreeMap::new();
    for (param, delta) in &edit.deltas {
        let next = match (out.remove(param), delta) {
            (None, d) => d.clone(),
            (Some(Delta::LowRank { u: u0, v: v0 }), Delta::LowRank { u, v }) => Delta::LowRank {
                u: Tensor::cat(&[&u0.to_dtype(DType::F32)?, &u.to_dtype(DType::F32)?], 1)?,
                v: Tensor::cat(&[&v0.to_dtype(DType::F32)?, &v.to_dtype(DType::F32)?], 1)?,
            },
            (Some(prev), d) => Delta::Dense((prev.dense(DType::F32)? + d.dense(DType::F32)?)?),
        };
        out.insert(*param, next);
    }
    Ok(out)
}

/// Writes `edit` (of `model`) as a PEFT LoRA adapter into `dir`: a new or empty directory,
/// or one kedit wrote before when `overwrite`. `base_model` goes into the config as
/// `base_model_name_or_path` (the model's source path when `None`).
pub fn save(
    edit: &WeightEdit,
    model: &Model,
    dir: &Path,
    truncation: Truncation,
    base_model: Option<&str>,
    overwrite: bool,
) -> Result<Vec<ModuleReport>> {
    fsio::check_owned_dir(dir, MARKER, overwrite)?;
    if edit.deltas.is_empty() {
        return Err(Error::invalid(
            "the edit changes no weight: no adapter to write",
        ));
    }
    let mut tensors = BTreeMap::new();
    let mut reports = Vec::new();
    let mut conv1d = false;
    for (param, delta) in merged(edit)? {
        let (module, layout) = lora_module(model, param)?;
        let shape = model.params.require(param)?.dims().to_vec();
        if delta.shape()? != shape {
            return Err(Error::invalid(format!(
                "the delta of `{param}` has shape {:?}; the model's weight is {shape:?}",
                delta.shape()?
            )));
        }
        conv1d |= layout == HfLayout::Conv1D;
        let f = factor(&delta, truncation)?;
        tensors.insert(format!("{PREFIX}{module}.lora_A.weight"), f.a);
        tensors.insert(format!("{PREFIX}{module}.lora_B.weight"), f.b);
        reports.push(ModuleReport {
            param,
            module,
            rank: f.rank,
            exact: f.exact,
            energy: f.energy,
        });
    }
    let config = adapter_config(model, &reports, conv1d, base_model);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    fsio::write_atomic(&dir.join(MARKER), b"{\"written_by\": \"kedit\"}")?;
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    safetensors_write::write(&dir.join(WEIGHTS_FILE), &tensors, &meta)?;
    let text = serde_json::to_string_pretty(&config).expect("JSON values serialise");
    fsio::write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?;
    Ok(reports)
}

/// The config: `r` the most common rank, other ranks by `rank_pattern`; α = rank
/// everywhere (scaling 1).
fn adapter_config(
    model: &Model,
    reports: &[ModuleReport],
    conv1d: bool,
    base_model: Option<&str>,
) -> serde_json::Value {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for r in reports {
        *counts.entry(r.rank).or_default() += 1;
    }
    let r = counts
        .iter()
        .max_by_key(|(rank, n)| (**n, std::cmp::Reverse(**rank)))
        .map_or(1, |(rank, _)| *rank);
    let mut rank_pattern = serde_json::Map::new();
    let mut alpha_pattern = serde_json::Map::new();
    for m in reports.iter().filter(|m| m.rank != r) {
        let key = config::exact_pattern(&m.module);
        rank_pattern.insert(key.clone(), json!(m.rank));
        alpha_pattern.insert(key, json!(m.rank));
    }
    let base = base_model
        .map(str::to_string)
        .unwrap_or_else(|| model.source.path.display().to_string());
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": r,
        "lora_alpha": r,
        "target_modules": reports.iter().map(|m| m.module.clone()).collect::<Vec<_>>(),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": conv1d,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "revision": null,
    })
}

/// Whether `dir` holds a PEFT adapter (its config).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file()
}

/// Reads a PEFT LoRA adapter for `model` as a low-rank weight edit (`u = (α/r)·B`,
/// `v = Aᵀ`). Every tensor must be a `lora_A`/`lora_B` pair of a weight the model has, of
/// its shape.
pub fn load(dir: &Path, model: &Model) -> Result<WeightEdit> {
    let config_path = dir.join(CONFIG_FILE);
    let config = AdapterConfig::read(&config_path)?;
    let path = dir.join(WEIGHTS_FILE);
    std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
    let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
        .map_err(|e| Error::model(&path, format!("not a readable safetensors file: {e}")))?;
    let mut pairs: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
    for (name, t) in tensors {
        let rest = name
            .strip_prefix(PREFIX)
            .map(|r| r.replace(".default.", "."));
        let (module, is_a) = match rest.as_deref() {
            Some(r) if r.ends_with(".lora_A.weight") => {
                (r.trim_end_matches(".lora_A.weight").to_string(), true)
            }
            Some(r) if r.ends_with(".lora_B.weight") => {
                (r.trim_end_matches(".lora_B.weight").to_string(), false)
            }
            _ => {
                return Err(Error::tensor(
                    &path,
                    &name,
                    format!(
                        "is not a LoRA factor (`{PREFIX}<module>.lora_A.weight` or \
                         `.lora_B.weight`); kedit reads plain LoRA adapters"
                    ),
                ))
            }
        };
        let slot = pairs.entry(module).or_default();
        if is_a {
            slot.0 = Some(t);
        } else {
            slot.1 = Some(t);
        }
    }
    let cfg = &model.config;
    let mut edit = WeightEdit::new();
    for (module, (a, b)) in pairs {
        let a_name = format!("{PREFIX}{module}.lora_A.weight");
        let b_name = format!("{PREFIX}{module}.lora_B.weight");
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (None, _) => {
                return Err(Error::tensor(
                    &path,
                    &a_name,
                    "is missing (its lora_B is there)",
                ))
            }
            (_, None) => {
                return Err(Error::tensor(
                    &path,
                    &b_name,
                    "is missing (its lora_A is there)",
                ))
            }
        };
        let param = arch::canonical_of(cfg.family, cfg.n_layers, &module).ok_or_else(|| {
            Error::tensor(
                &path,
                &a_name,
                format!(
                    "module `{module}` is not a weight of this model ({:?}, {} layers)",
                    cfg.family, cfg.n_layers
                ),
            )
        })?;
        lora_module(model, param).map_err(|e| Error::tensor(&path, &a_name, e.to_string()))?;
        let shape = model.params.require(param)?.dims().to_vec();
        let (out, inp) = (shape[0], shape[1]);
        let r = a.dim(0).unwrap_or(0);
        if a.dims() != [r, inp] || r == 0 {
            return Err(Error::tensor(
                &path,
                &a_name,
                format!("has shape {:?}; `{module}` needs [r, {inp}]", a.dims()),
            ));
        }
        if b.dims() != [out, r] {
            return Err(Error::tensor(
                &path,
                &b_name,
                format!(
                    "has shape {:?}; `{module}` with r = {r} needs [{out}, {r}]",
                    b.dims()
                ),
            ));
        }
        let scaling = config.scaling(&config_path, &module, r)?;
        let u = (b.to_dtype(DType::F32)? * scaling)?;
        let v = a.to_dtype(DType::F32)?.t()?.contiguous()?;
        edit.push(param, Delta::LowRank { u, v });
    }
    if edit.deltas.is_empty() {
        return Err(Error::model(&path, "holds no LoRA factors"));
    }
    edit.meta
        .insert("source".into(), format!("PEFT adapter {}", dir.display()));
    Ok(edit)
}
