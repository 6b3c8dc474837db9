//! Writing a model as a GGUF file that llama.cpp (and kedit's reader) loads: f32 or f16
//! weights under llama.cpp's tensor names and layouts (the inverse of each architecture's
//! reader, llama's Q/K permutation included), the architecture's metadata, and the
//! tokenizer — copied from the source file when the model came from a GGUF file, else
//! built from `tokenizer.json` (byte-level BPE only).
//!
//! Before anything is written the metadata is read back with the architecture's own GGUF
//! reader: a configuration the file cannot describe (a layer pattern or RoPE base that the
//! reader assumes, a sliding window llama.cpp's llama has no key for) is refused, naming
//! the field, instead of producing a file that loads as a different model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;
use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::model::arch::{self, GgufArch, GgufMeta};
use crate::model::gguf_write::{self, GgufDtype, GgufTensor};
use crate::model::{Model, SourceFormat};

/// What was written.
#[derive(Debug)]
pub struct GgufSummary {
    pub architecture: &'static str,
    pub tensors: usize,
    /// Where the tokenizer came from: the source GGUF file, or `tokenizer.json`.
    pub tokenizer_from: String,
}

/// Writes `model` to `path` (atomically), its matrices in `dtype` and every vector
/// (norms, biases) in f32, as llama.cpp's converter does.
pub fn save_gguf(model: &Model, path: &Path, dtype: GgufDtype) -> Result<GgufSummary> {
    let cfg = &model.config;
    let g = arch::spec(cfg.family).gguf.ok_or_else(|| {
        Error::model(
            path,
            format!(
                "cannot write a {:?} model as GGUF: kedit writes the GGUF architectures {}",
                cfg.family,
                arch::REGISTRY
                    .iter()
                    .filter_map(|a| a.gguf.map(|g| g.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let mut tensors = Vec::new();
    for (id, _) in cfg.param_shapes() {
        let name = (g.tensor)(id).ok_or_else(|| {
            Error::model(path, format!("no GGUF tensor of `{}` holds `{id}`", g.name))
        })?;
        let t = (g.unconvert)(cfg, id, model.params.require(id)?.clone())?;
        let dtype = if t.rank() >= 2 { dtype } else { GgufDtype::F32 };
        tensors.push(GgufTensor {
            name,
            tensor: t,
            dtype,
        });
    }
    let (tokenizer, tokenizer_from) = tokenizer_metadata(model)?;
    let mut metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String(g.name.into()),
        ),
        ("general.name".to_string(), Value::String(model_name(model))),
        (
            "general.file_type".to_string(),
            Value::U32(match dtype {
                GgufDtype::F32 => 0,
                GgufDtype::F16 => 1,
            }),
        ),
    ];
    metadata.extend((g.metadata)(cfg));
    metadata.extend(tokenizer);
    // The configuration's special tokens, which the readers take from the tokenizer keys.
    for (which, id) in [
        ("bos", cfg.bos_token_id),
        ("eos", cfg.eos_token_id),
        ("padding", cfg.pad_token_id),
    ] {
        let key = format!("tokenizer.ggml.{which}_token_id");
        metadata.retain(|(k, _)| *k != key);
        if let Some(id) = id {
            metadata.push((key, Value::U32(id)));
        }
    }
    check_reads_back(path, g, model, &metadata, &tensors)?;
    gguf_write::write(path, &metadata, &tensors)?;
    Ok(GgufSummary {
        architecture: g.name,
        tensors: tensors.len(),
        tokenizer_from,
    })
}

/// `general.name`: the source file's or directory's name.
fn model_name(model: &Model) -> String {
    model
        .source
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "kedit model".into())
}

/// The `tokenizer.*` keys, and where they came from.
fn tokenizer_metadata(model: &Model) -> Result<(Vec<(String, Value)>, String)> {
    let src = &model.source.path;
    if model.source.format == SourceFormat::Gguf {
        let mut f = std::fs::File::open(src).map_err(|e| Error::io(src, e))?;
        let content = Content::read(&mut f)
            .map_err(|e| Error::model(src, format!("cannot re-read the source's metadata: {e}")))?;
        let mut keys: Vec<(String, Value)> = content
            .metadata
            .into_iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .collect();
        // Sorted, so that the file does not depend on hash order.
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        return Ok((keys, format!("copied from {}", src.display())));
    }
    let tok = model.tokenizer()?;
    Ok((
        tok.gguf_metadata(model.config.vocab_size)?,
        "built from tokenizer.json".into(),
    ))
}

/// Reads `metadata` back with the architecture's GGUF reader and compares the
/// configuration it describes with the model's.
fn check_reads_back(
    path: &Path,
    g: &GgufArch,
    model: &Model,
    metadata: &[(String, Value)],
    tensors: &[GgufTensor],
) -> Result<()> {
    let content = Content {
        magic: VersionedMagic::GgufV3,
        metadata: metadata.iter().cloned().collect::<HashMap<_, _>>(),
        tensor_infos: tensors
            .iter()
            .map(|t| {
                let info = TensorInfo {
                    ggml_dtype: match t.dtype {
                        GgufDtype::F32 => GgmlDType::F32,
                        GgufDtype::F16 => GgmlDType::F16,
                    },
                    shape: t.tensor.shape().clone(),
                    offset: 0,
                };
                (t.name.clone(), info)
            })
            .collect(),
        tensor_data_offset: 0,
    };
    let meta = GgufMeta {
        path,
        content: &content,
        arch: g.name,
    };
    let read = (g.parse)(&meta)?;
    let want = serde_json::to_value(&model.config).expect("configurations serialise");
    let got = serde_json::to_value(&read).expect("configurations serialise");
    let mut diffs = Vec::new();
    differences("", &want, &got, &mut diffs);
    if let Some((field, w, r)) = diffs.first() {
        return Err(Error::model(
            path,
            format!(
                "a GGUF file of architecture `{}` cannot describe this model: its field \
                 `{field}` would read back as {r}, not {w}{}",
                g.name,
                if diffs.len() > 1 {
                    format!(" ({} fields differ)", diffs.len())
                } else {
                    String::new()
                }
            ),
        ));
    }
    if let Some(Value::Array(tokens)) = content.metadata.get("tokenizer.ggml.tokens") {
        if tokens.len() != model.config.vocab_size {
            return Err(Error::model(
                path,
                format!(
                    "the tokenizer has {} tokens but the model {} embeddings",
                    tokens.len(),
                    model.config.vocab_size
                ),
            ));
        }
    }
    Ok(())
}

/// The fields where `a` and `b` differ; numbers equal to f32 precision are equal (the
/// metadata stores f32).
fn differences(at: &str, a: &Json, b: &Json, out: &mut Vec<(String, String, String)>) {
    let field = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let null = Json::Null;
                differences(
                    &field(k),
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        (Json::Number(x), Json::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            if (x - y).abs() > 1e-6 * x.abs().max(y.abs()) {
                out.push((at.to_string(), x.to_string(), y.to_string()));
            }
        }
        _ if a != b => out.push((at.to_string(), a.to_string(), b.to_string())),
        _ => {}
    }
}
