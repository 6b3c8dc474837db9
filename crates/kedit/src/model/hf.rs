//! Loading and saving Hugging Face model directories (`config.json`, safetensors,
//! `tokenizer.json`).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::model::arch::{self, hf_slot, HfWriter};
use crate::model::config::ModelConfig;
use crate::model::params::{ParamId, Params};
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
    Ok((arch::parse(&path, &v)?, v))
}

pub fn load(dir: &Path) -> Result<HfModel> {
    let (config, hf_config) = read_config(dir)?;
    let files = SafetensorFiles::open_dir(dir)?;
    // The weights must be in the files: at least 2 bytes each (f16 and bf16).
    config
        .check_fits(files.total_bytes(), 16)
        .map_err(|m| Error::model(dir.join("config.json"), m))?;
    let embed = hf_slot(config.family, ParamId::TokenEmbed).expect("every family embeds tokens");
    let dropped = arch::spec(config.family)
        .hf_droppable_prefix
        .filter(|_| !files.contains(&embed.name));
    let mut params = Params::new();
    for (id, shape) in config.param_shapes() {
        let slot = hf_slot(config.family, id).expect("every parameter of a family has a slot");
        let name = match dropped {
            Some(prefix) => slot.name.trim_start_matches(prefix).to_string(),
            None => slot.name.clone(),
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
        let t = slot
            .layout
            .to_canonical(&raw, &config)
            .map_err(|e| Error::tensor(files.describe(), &name, e.to_string()))?;
        params.insert(id, t);
    }
    Ok(HfModel {
        config,
        params,
        hf_config,
    })
}

/// Converts canonical tensors back into the checkpoint tensors of `family`.
pub fn to_hf_tensors(cfg: &ModelConfig, params: &Params) -> Result<BTreeMap<String, Tensor>> {
    let mut writer = HfWriter::default();
    for (id, _) in cfg.param_shapes() {
        let slot = hf_slot(cfg.family, id).expect("every parameter of a family has a slot");
        writer.add(slot, params.require(id)?)?;
    }
    writer.finish(cfg)
}

/// The float type named `bf16`, `f16` or `f32` (what `--dtype` takes).
pub fn dtype_named(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => {
            return Err(Error::invalid(format!(
                "dtype `{other}`: expected bf16, f16 or f32"
            )))
        }
    })
}

/// The `torch_dtype` name of a float type a model is saved in.
pub fn torch_dtype_name(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        other => {
            return Err(Error::invalid(format!(
                "cannot save a model in {other:?}: choose bf16, f16 or f32"
            )))
        }
    })
}

/// Writes `config.json`, `model.safetensors` (in `dtype`, with the `{"format": "pt"}`
/// header metadata transformers asks for) and `generation_config.json` into the existing
/// directory `dir` (each file atomically); returns the names of the files written.
pub fn save(
    dir: &Path,
    cfg: &ModelConfig,
    params: &Params,
    hf_config: &Value,
    dtype: DType,
) -> Result<Vec<String>> {
    let dtype_name = torch_dtype_name(dtype)?;
    let tensors = to_hf_tensors(cfg, params)?;
    let tensors = tensors
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(dtype)?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    save_atomic(&tensors, &dir.join("model.safetensors"))?;
    let mut config = hf_config.clone();
    if let Some(obj) = config.as_object_mut() {
        obj.insert("torch_dtype".into(), Value::String(dtype_name.into()));
        obj.insert("dtype".into(), Value::String(dtype_name.into()));
    }
    let text = serde_json::to_string_pretty(&config).expect("JSON values always serialise");
    write_atomic(&dir.join("config.json"), text.as_bytes())?;
    write_atomic(
        &dir.join("generation_config.json"),
        generation_config(cfg).as_bytes(),
    )?;
    Ok(vec![
        "model.safetensors".into(),
        "config.json".into(),
        "generation_config.json".into(),
    ])
}

/// What `save_pretrained` writes as `generation_config.json` for a model whose
/// configuration carries no generation settings: its special tokens.
fn generation_config(cfg: &ModelConfig) -> String {
    let mut v = serde_json::json!({ "_from_model_config": true });
    for (key, id) in [
        ("bos_token_id", cfg.bos_token_id),
        ("eos_token_id", cfg.eos_token_id),
        ("pad_token_id", cfg.pad_token_id),
    ] {
        if let Some(id) = id {
            v[key] = Value::from(id);
        }
    }
    serde_json::to_string_pretty(&v).expect("JSON values always serialise")
}
