//! Hugging Face model directories: `model.safetensors` (its JSON header mutated as
//! structure — dtypes, shapes, offsets — and the file as bytes), `config.json` of every
//! architecture, and `model.safetensors.index.json` (shard names among them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::mutate::{self, below, chance, nasty_u64};
use super::tiny;
use crate::error::{Error, Result};
use crate::model::hf;
use crate::model::safetensors_io::save_atomic;
use crate::model::Model;
use crate::rng::Rng;

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Writes the tiny llama model as a Hugging Face directory.
pub fn tiny_dir(dir: &Path) -> Result<()> {
    let model = tiny::llama(2)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    hf::save(
        dir,
        &model.config,
        &model.params,
        &model.hf_config,
        candle_core::DType::F32,
    )?;
    Ok(())
}

/// A safetensors file split into its header (as JSON) and its data section.
fn split(bytes: &[u8]) -> Option<(Value, Vec<u8>)> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    Some((header, bytes[8 + n..].to_vec()))
}

/// One structural change to a safetensors header: a tensor's dtype, shape or offsets.
fn mutate_header(rng: &mut Rng, header: &mut Value) {
    let Some(map) = header.as_object_mut() else {
        return;
    };
    let names: Vec<String> = map
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    if names.is_empty() {
        return;
    }
    let name = &names[below(rng, names.len())];
    // An earlier mutation may have made the entry something other than an object.
    let Some(info) = map.get_mut(name).filter(|i| i.is_object()) else {
        return;
    };
    match below(rng, 6) {
        0 => {
            info["dtype"] = json!(
                ["F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "Q4", "", "f32"]
                    [below(rng, 10)]
            )
        }
        1 => {
            if let Some(shape) = info.get_mut("shape").and_then(Value::as_array_mut) {
                if shape.is_empty() || chance(rng, 0.3) {
                    shape.push(json!(nasty_u64(rng)));
                } else {
                    let i = below(rng, shape.len());
                    shape[i] = json!(nasty_u64(rng));
                }
            }
        }
        2 => {
            if let Some(off) = info.get_mut("data_offsets").and_then(Value::as_array_mut) {
                if !off.is_empty() {
                    let i = below(rng, off.len());
                    off[i] = json!(nasty_u64(rng));
                }
            }
        }
        3 => info["shape"] = json!([]),
        4 => {
            let i = below(rng, 3);
            let k = ["dtype", "shape", "data_offsets"][i];
            if let Some(o) = info.as_object_mut() {
                o.shift_remove(k);
            }
        }
        _ => mutate::json_value(rng, header),
    }
}

/// One case of `model.safetensors`: the mutated file in `dir` (beside a good config.json).
pub fn safetensors_case(rng: &mut Rng, seed: &[u8], dir: &Path) -> Result<()> {
    let mut bytes = seed.to_vec();
    if chance(rng, 0.7) {
        if let Some((mut header, data)) = split(seed) {
            for _ in 0..1 + below(rng, 3) {
                mutate_header(rng, &mut header);
            }
            let text = serde_json::to_vec(&header).expect("JSON values serialise");
            let mut len = text.len() as u64;
            if chance(rng, 0.1) {
                len = nasty_u64(rng);
            }
            bytes = len.to_le_bytes().to_vec();
            bytes.extend(text);
            bytes.extend(data);
        }
    }
    if chance(rng, 0.4) {
        for _ in 0..1 + below(rng, 3) {
            mutate::bytes(rng, &mut bytes);
        }
    }
    write(&dir.join("model.safetensors"), &bytes)?;
    let model = Model::load(dir)?;
    tiny::exercise(&model, rng)
}

/// One case of `config.json`: a mutated copy of `seed` in `dir` (which holds the
/// matching weights).
pub fn config_case(rng: &mut Rng, seed: &Value, dir: &Path) -> Result<()> {
    let mut v = seed.clone();
    mutate::json_many(rng, &mut v, 3);
    // Pretty-printing deep nesting multiplies the size by the depth: only small ones.
    let mut bytes = if chance(rng, 0.5) && mutate::json_size(&v) < 1 << 16 {
        serde_json::to_vec_pretty(&v)
    } else {
        serde_json::to_vec(&v)
    }
    .expect("JSON values serialise");
    if chance(rng, 0.15) {
        mutate::bytes(rng, &mut bytes);
    }
    write(&dir.join("config.json"), &bytes)?;
    let model = Model::load(dir)?;
    tiny::exercise(&model, rng)
}

/// Splits the tiny model of `dir` into two shards and an index; returns the index.
pub fn shard(dir: &Path) -> Result<Value> {
    let single = dir.join("model.safetensors");
    let model = Model::load(dir)?;
    let tensors = hf::to_hf_tensors(&model.config, &model.params)?;
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut parts = [BTreeMap::new(), BTreeMap::new()];
    let mut map = serde_json::Map::new();
    for (i, (name, t)) in tensors.into_iter().enumerate() {
        map.insert(name.clone(), json!(names[i % 2]));
        parts[i % 2].insert(name, t);
    }
    for (file, part) in names.iter().zip(&parts) {
        save_atomic(part, &dir.join(file))?;
    }
    std::fs::remove_file(&single).map_err(|e| Error::io(&single, e))?;
    Ok(json!({"metadata": {"total_size": 0}, "weight_map": map}))
}

/// One case of `model.safetensors.index.json`.
pub fn index_case(rng: &mut Rng, seed: &Value, dir: &Path) -> Result<()> {
    let mut v = seed.clone();
    if chance(rng, 0.5) {
        // Shard names: escapes, absolute paths, missing files.
        if let Some(map) = v.get_mut("weight_map").and_then(Value::as_object_mut) {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = &keys[below(rng, keys.len())];
            map[k] = json!(
                [
                    "../model-00001-of-00002.safetensors",
                    "/etc/hostname",
                    "",
                    ".",
                    "sub/../model-00001-of-00002.safetensors",
                    "missing.safetensors",
                    "config.json",
                    "model-00001-of-00002.safetensors/",
                    "\u{0}",
                ][below(rng, 9)]
            );
        }
    }
    mutate::json_many(rng, &mut v, 2);
    let mut bytes = serde_json::to_vec(&v).expect("JSON values serialise");
    if chance(rng, 0.1) {
        mutate::bytes(rng, &mut bytes);
    }
    write(&dir.join("model.safetensors.index.json"), &bytes)?;
    let model = Model::load(dir)?;
    tiny::exercise(&model, rng)
}

/// The seed directories of `config.json` cases: the tiny llama, then every directory of
/// `extra` that holds a `config.json` and `model.safetensors`, each copied into `scratch`.
pub fn config_seeds(scratch: &Path, extra: &[PathBuf]) -> Result<Vec<(PathBuf, Value)>> {
    let mut out = Vec::new();
    let own = scratch.join("config-llama");
    tiny_dir(&own)?;
    let mut dirs = vec![own];
    for (i, d) in extra.iter().enumerate() {
        if d.join("config.json").is_file() && d.join("model.safetensors").is_file() {
            let to = scratch.join(format!("config-{i}"));
            std::fs::create_dir_all(&to).map_err(|e| Error::io(&to, e))?;
            for f in ["config.json", "model.safetensors"] {
                std::fs::copy(d.join(f), to.join(f)).map_err(|e| Error::io(d.join(f), e))?;
            }
            dirs.push(to);
        }
    }
    for d in dirs {
        let path = d.join("config.json");
        let v: Value = serde_json::from_slice(&read(&path)?)
            .map_err(|e| Error::model(&path, e.to_string()))?;
        out.push((d, v));
    }
    Ok(out)
}

/// The bytes of the tiny model's `model.safetensors` (written into `dir`).
pub fn safetensors_seed(dir: &Path) -> Result<Vec<u8>> {
    tiny_dir(dir)?;
    read(&dir.join("model.safetensors"))
}
