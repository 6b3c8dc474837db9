//! Typed access to GGUF metadata: every error names the file and the key.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use crate::error::{Error, Result};

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
