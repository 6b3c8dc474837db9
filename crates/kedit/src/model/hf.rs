//! Loading and saving Hugging Face model directories (`config.json`, safetensors,
//! `tokenizer.json`).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::model::config::{Family, ModelConfig};
use crate::model::hf_config;
use crate::model::hf_names::{hf_slot, HfLayout};
use crate::model::params::Params;
use crate::model::safetensors_io::{save_atomic, SafetensorFiles};

pub struct HfModel {
    pub config: ModelConfig,
    pub params: Params,
    pub hf_config: Value,
}

pub fn read_config(dir: &Path) -> Result<(ModelConfig, Value)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::model(&path, format!("invalid JSON: {e}")))?;
    Ok((hf_config::parse(&path, &v)?, v))
}

pub fn load(dir: &Path) -> Result<HfModel> {
    let (config, hf_config) = read_config(dir)?;
    let files = SafetensorFiles::open_dir(dir)?;
    // Some GPT-2 checkpoints drop the `transformer.` prefix.
    let unprefixed = config.family == Family::Gpt2 && !files.contains("transformer.wte.weight");
    let mut params = Params::new();
    for (id, shape) in config.param_shapes() {
        let slot = hf_slot(config.family, id).expect("every parameter of a family has a slot");
        let name = if unprefixed {
            slot.name.trim_start_matches("transformer.").to_string()
        } else {
            slot.name.clone()
        };
        let raw = files.get(&name)?;
        let expected = slot.layout.hf_shape(&shape);
        if raw.dims() != expected.as_slice() {
            return Err(Error::tensor(
                files.describe(),
                &name,
                format!(
                    "has shape {:?}; config.json implies {expected:?} (holding `{id}`)",
                    raw.dims()
                ),
            ));
        }
        let t = from_hf_layout(&raw, slot.layout, &config)
            .map_err(|e| Error::tensor(files.describe(), &name, e.to_string()))?;
        params.insert(id, t);
    }
    Ok(HfModel {
        config,
        params,
        hf_config,
    })
}

/// Converts a checkpoint tensor to the canonical layout.
fn from_hf_layout(raw: &Tensor, layout: HfLayout, cfg: &ModelConfig) -> Result<Tensor> {
    Ok(match layout {
        HfLayout::Plain => raw.clone(),
        HfLayout::Conv1D => raw.t()?.contiguous()?,
        HfLayout::Gpt2Qkv(part) => {
            // q, k and v are equally wide: GPT-2 has no grouped-query attention.
            let n = cfg.n_heads * cfg.head_dim;
            if raw.rank() == 2 {
                raw.t()?.narrow(0, part * n, n)?.contiguous()?
            } else {
                raw.narrow(0, part * n, n)?
            }
        }
        HfLayout::NeoxQkv(part) => {
            let (h, hd) = (cfg.n_heads, cfg.head_dim);
            let rest: Vec<usize> = raw.dims()[1..].to_vec();
            let mut split = vec![h, 3, hd];
            split.extend(&rest);
            let mut out = vec![h * hd];
            out.extend(&rest);
            raw.reshape(split)?
                .narrow(1, part, 1)?
                .contiguous()?
                .reshape(out)?
        }
    })
}

/// Converts canonical tensors back into the checkpoint tensors of `family`.
pub fn to_hf_tensors(cfg: &ModelConfig, params: &Params) -> Result<BTreeMap<String, Tensor>> {
    let mut fused: BTreeMap<String, (HfLayout, Vec<(usize, Tensor)>)> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (id, _) in cfg.param_shapes() {
        let t = params.require(id)?;
        let slot = hf_slot(cfg.family, id).expect("every parameter of a family has a slot");
        match slot.layout {
            HfLayout::Plain => {
                out.insert(slot.name, t.clone());
            }
            HfLayout::Conv1D => {
                out.insert(slot.name, t.t()?.contiguous()?);
            }
            HfLayout::Gpt2Qkv(part) | HfLayout::NeoxQkv(part) => {
                fused
                    .entry(slot.name)
                    .or_insert_with(|| (slot.layout, Vec::new()))
                    .1
                    .push((part, t.clone()));
            }
        }
    }
    for (name, (layout, mut parts)) in fused {
        parts.sort_by_key(|(p, _)| *p);
        let tensors: Vec<&Tensor> = parts.iter().map(|(_, t)| t).collect();
        let t = match layout {
            HfLayout::Gpt2Qkv(_) => {
                let cat = Tensor::cat(&tensors, 0)?;
                if cat.rank() == 2 {
                    cat.t()?.contiguous()?
                } else {
                    cat
                }
            }
            _ => {
                let (h, hd) = (cfg.n_heads, cfg.head_dim);
                let rest: Vec<usize> = tensors[0].dims()[1..].to_vec();
                let mut per_head = vec![h, 1, hd];
                per_head.extend(&rest);
                let split: Vec<Tensor> = tensors
                    .iter()
                    .map(|t| t.reshape(per_head.clone()))
                    .collect::<candle_core::Result<_>>()?;
                let mut out_shape = vec![3 * h * hd];
                out_shape.extend(&rest);
                Tensor::cat(&split, 1)?.reshape(out_shape)?
            }
        };
        out.insert(name, t);
    }
    Ok(out)
}

/// Writes `config.json` and `model.safetensors` into `dir` (each file atomically).
pub fn save(dir: &Path, cfg: &ModelConfig, params: &Params, hf_config: &Value) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors = to_hf_tensors(cfg, params)?;
    let tensors = tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(candle_core::DType::F32)?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    save_atomic(&tensors, &dir.join("model.safetensors"))?;
    let mut config = hf_config.clone();
    if let Some(obj) = config.as_object_mut() {
        obj.insert("torch_dtype".into(), Value::String("float32".into()));
        obj.insert("dtype".into(), Value::String("float32".into()));
    }
    let text = serde_json::to_string_pretty(&config).expect("JSON values always serialise");
    write_atomic(&dir.join("config.json"), text.as_bytes())
}
