//! Typed access to GGUF metadata: every error names the file and the key.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;

pub struct GgufMeta<'a> {
    pub path: &'a Path,
    pub content: &'a Content,
    /// `general.architecture`: the prefix of the architecture's own keys.
    pub arch: &'a str,
}

impl GgufMeta<'_> {
    fn md(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// `{arch}.{key}`
    pub fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.arch)
    }

    /// An integer under the full key `key`.
    pub fn u32(&self, key: &str) -> Result<Option<u32>> {
        match self.md().get(key) {
            None => Ok(None),
            Some(v) => {
                let wide: i128 = match v {
                    Value::U8(x) => (*x).into(),
                    Value::I8(x) => (*x).into(),
                    Value::U16(x) => (*x).into(),
                    Value::I16(x) => (*x).into(),
                    Value::U32(x) => (*x).into(),
                    Value::I32(x) => (*x).into(),
                    Value::U64(x) => (*x).into(),
                    Value::I64(x) => (*x).into(),
                    _ => {
                        return Err(Error::model(
                            self.path,
                            format!("metadata `{key}` is not an integer"),
                        ))
                    }
                };
                u32::try_from(wide).map(Some).map_err(|_| {
                    Error::model(
                        self.path,
                        format!("metadata `{key}` is {wide}; it must be in 0..=4294967295"),
                    )
                })
            }
        }
    }

    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.md().get(key) {
            None => Ok(None),
            Some(v) => v
                .to_f32()
                .map(f64::from)
                .or_else(|_| v.to_f64())
                .map_err(|_| Error::model(self.path, format!("metadata `{key}` is not a number")))
                .and_then(|x| {
                    if x.is_finite() {
                        Ok(Some(x))
                    } else {
                        Err(Error::model(
                            self.path,
                            format!("metadata `{key}` is {x}; it must be a finite number"),
                        ))
                    }
                }),
        }
    }

    /// `{arch}.{key}`, which must be there.
    pub fn arch_usize(&self, key: &str) -> Result<usize> {
        let full = self.key(key);
        let v = self
            .u32(&full)?
            .ok_or_else(|| Error::model(self.path, format!("metadata `{full}` is missing")))?;
        if v == 0 {
            return Err(Error::model(
                self.path,
                format!("metadata `{full}` is zero"),
            ));
        }
        Ok(v as usize)
    }

    pub fn arch_usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.u32(&self.key(key))?.map_or(default, |x| x as usize))
    }

    pub fn arch_f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.f64(&self.key(key))?.unwrap_or(default))
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The vocabulary size, read off the token embedding `[vocab, d_model]`.
    pub fn vocab_size(&self) -> Result<usize> {
        let name = "token_embd.weight";
        match self.content.tensor_infos.get(name) {
            Some(info) => match info.shape.dims() {
                [vocab, _] => Ok(*vocab),
                other => Err(Error::tensor(
                    self.path,
                    name,
                    format!("has shape {other:?}; expected [vocab, embedding_length]"),
                )),
            },
            None => Err(Error::tensor(self.path, name, "is missing")),
        }
    }

    pub fn token_id(&self, which: &str) -> Result<Option<u32>> {
        self.u32(&format!("tokenizer.ggml.{which}_token_id"))
    }
}

/// The `{arch}.*` keys llama.cpp reads for a transformer of the llama lineage (llama,
/// gemma3), from a configuration: the inverse of the readers' `arch_usize` calls.
pub fn common_metadata(arch: &str, cfg: &ModelConfig) -> Vec<(String, Value)> {
    let u = |x: usize| Value::U32(x as u32);
    let mut out = vec![
        ("context_length", u(cfg.max_positions)),
        ("embedding_length", u(cfg.d_model)),
        ("block_count", u(cfg.n_layers)),
        ("feed_forward_length", u(cfg.d_ff)),
        ("attention.head_count", u(cfg.n_heads)),
        ("attention.head_count_kv", u(cfg.n_kv_heads)),
        ("attention.key_length", u(cfg.head_dim)),
        ("attention.value_length", u(cfg.head_dim)),
        (
            "attention.layer_norm_rms_epsilon",
            Value::F32(cfg.norm_eps as f32),
        ),
        ("vocab_size", u(cfg.vocab_size)),
    ];
    if let Some(rope) = cfg.rope {
        out.push(("rope.freq_base", Value::F32(rope.theta as f32)));
        out.push(("rope.dimension_count", u(rope.rotary_dim)));
    }
    if let Some(w) = cfg.sliding_window {
        out.push(("attention.sliding_window", u(w)));
    }
    out.into_iter()
        .map(|(k, v)| (format!("{arch}.{k}"), v))
        .collect()
}
