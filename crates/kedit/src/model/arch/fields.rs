//! Typed access to the fields of a Hugging Face `config.json`: every error names the file
//! and the field.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::config::Activation;

pub struct Fields<'a> {
    pub path: &'a Path,
    pub v: &'a Value,
}

impl Fields<'_> {
    pub fn opt(&self, key: &str) -> Option<&Value> {
        self.v.get(key).filter(|v| !v.is_null())
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.opt(key).ok_or_else(|| self.err(key, "is missing"))?;
        v.as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| self.err(key, &format!("must be a non-negative integer, got {v}")))
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.opt(key).is_some() {
            self.usize(key)
        } else {
            Ok(default)
        }
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.opt(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(key, &format!("must be a number, got {v}"))),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.opt(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key, &format!("must be true or false, got {v}"))),
        }
    }

    pub fn str_or<'b>(&'b self, key: &str, default: &'b str) -> Result<&'b str> {
        match self.opt(key) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.err(key, &format!("must be a string, got {v}"))),
        }
    }

    pub fn token_id(&self, key: &str) -> Option<u32> {
        match self.opt(key)? {
            Value::Number(n) => n.as_u64().map(|x| x as u32),
            Value::Array(a) => a.first()?.as_u64().map(|x| x as u32),
            _ => None,
        }
    }

    pub fn err(&self, key: &str, what: &str) -> Error {
        Error::model(self.path, format!("field `{key}` {what}"))
    }

    /// RoPE base: transformers 5 nests it in `rope_parameters`; older files have `rope_theta`.
    pub fn rope_theta(&self, legacy_key: &str) -> Result<f64> {
        if let Some(t) = self
            .opt("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
        {
            return Ok(t);
        }
        self.f64_or(legacy_key, 10_000.0)
    }

    pub fn reject_rope_scaling(&self) -> Result<()> {
        let scaling = self
            .opt("rope_scaling")
            .or_else(|| self.opt("rope_parameters"))
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(Value::as_str);
        match scaling {
            None | Some("default") => Ok(()),
            Some(other) => Err(self.err(
                "rope_scaling",
                &format!("uses rope type `{other}`, which kedit does not support yet"),
            )),
        }
    }

    /// Heads must split the model width evenly when the head size is not given explicitly;
    /// otherwise the fused and per-head tensors cannot be cut apart.
    pub fn even_head_dim(&self, d: usize, heads: usize, heads_key: &str) -> Result<usize> {
        if heads == 0 {
            return Err(self.err(heads_key, "must be positive"));
        }
        if d % heads != 0 {
            return Err(self.err(
                heads_key,
                &format!("({heads}) does not divide the hidden size ({d})"),
            ));
        }
        Ok(d / heads)
    }

    pub fn activation(&self, key: &str, default: &str) -> Result<Activation> {
        let name = self.str_or(key, default)?;
        Ok(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::GeluErf,
            "relu" => Activation::Relu,
            other => return Err(self.err(key, &format!("activation `{other}` is not supported"))),
        })
    }
}

/// The `hidden_act` / `activation_function` name of an activation.
pub fn activation_name(act: Activation) -> &'static str {
    match act {
        Activation::Silu => "silu",
        Activation::GeluTanh => "gelu_new",
        Activation::GeluErf => "gelu",
        Activation::Relu => "relu",
    }
}
