//! A byte-level BPE tokenizer as GGUF `tokenizer.*` metadata: the inverse of
//! `gguf.rs`'s `byte_level`, for exporting a model that came from a Hugging Face directory.
//!
//! Read from the tokenizer's own JSON form (what `tokenizer.json` holds), so that every
//! part llama.cpp cannot express — a normaliser, another model type, a pre-tokenizer other
//! than GPT-2's byte level (optionally after SmolLM2's single digits) — is refused by name
//! rather than dropped.

use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::Value;

use super::gguf::CONTROL;
use super::{tok_err, Tokenizer};
use crate::error::{Error, Result};

/// GGUF token types.
const NORMAL: i32 = 1;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

fn refuse(what: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!(
        "cannot write this tokenizer as GGUF metadata: {what}; kedit exports byte-level BPE \
         tokenizers (GPT-2's pre-tokenizer, optionally after single digits as SmolLM2's)"
    ))
}

/// `tokenizer.ggml.pre` for a pre-tokenizer, as kedit's reader and llama.cpp name it.
fn pre_name(pre: &Value) -> Result<&'static str> {
    let ty = pre.get("type").and_then(Value::as_str).unwrap_or("");
    let byte_level_ok = |p: &Value| {
        p.get("type").and_then(Value::as_str) == Some("ByteLevel")
            && !p
                .get("add_prefix_space")
                .and_then(Value::as_bool)
                .unwrap_or(false)
    };
    match ty {
        "ByteLevel" if byte_level_ok(pre) => Ok("gpt2"),
        "Sequence" => {
            let parts = pre
                .get("pretokenizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match parts.as_slice() {
                [d, b]
                    if d.get("type").and_then(Value::as_str) == Some("Digits")
                        && d.get("individual_digits").and_then(Value::as_bool) == Some(true)
                        && byte_level_ok(b) =>
                {
                    Ok("smollm")
                }
                [b] if byte_level_ok(b) => Ok("gpt2"),
                _ => Err(refuse(format!("its pre-tokenizer is the sequence {pre}"))),
            }
        }
        _ => Err(refuse(format!("its pre-tokenizer is {pre}"))),
    }
}

/// One merge, `"a b"` or `["a", "b"]` in `tokenizer.json`.
fn merge(m: &Value) -> Result<String> {
    match m {
        Value::String(s) => Ok(s.clone()),
        Value::Array(pair) => match pair.as_slice() {
            [Value::String(a), Value::String(b)] => Ok(format!("{a} {b}")),
            _ => Err(refuse(format!("a merge is {m}"))),
        },
        _ => Err(refuse(format!("a merge is {m}"))),
    }
}

impl Tokenizer {
    /// The `tokenizer.*` GGUF metadata of this tokenizer, with `n_vocab` tokens (the
    /// model's embedding rows; ids the tokenizer does not use become unused `[PAD{id}]`).
    pub fn gguf_metadata(&self, n_vocab: usize) -> Result<Vec<(String, GgufValue)>> {
        let json: Value = serde_json::from_str(&self.inner.to_string(false).map_err(tok_err)?)
            .map_err(tok_err)?;
        if !json.get("normalizer").is_none_or(Value::is_null) {
            return Err(refuse(format!(
                "it has a normalizer ({})",
                json["normalizer"]
            )));
        }
        let model = &json["model"];
        let kind = model.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "BPE" {
            return Err(refuse(format!("its model is `{kind}`, not BPE")));
        }
        if model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
            return Err(refuse("it falls back to byte tokens (a SentencePiece BPE)"));
        }
        let pre = pre_name(&json["pre_tokenizer"])?;
        let mut tokens: Vec<Option<(String, i32)>> = vec![None; n_vocab];
        let mut put = |token: &str, id: u64, ty: i32| -> Result<()> {
            let slot = tokens.get_mut(id as usize).ok_or_else(|| {
                refuse(format!(
                    "token `{token}` has id {id}, beyond the model's {n_vocab} embeddings"
                ))
            })?;
            *slot = Some((token.to_string(), ty));
            Ok(())
        };
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| refuse("its BPE model has no vocabulary"))?;
        for (token, id) in vocab {
            put(token, id.as_u64().unwrap_or(u64::MAX), NORMAL)?;
        }
        for added in json["added_tokens"].as_array().into_iter().flatten() {
            let content = added["content"].as_str().unwrap_or_default();
            let special = added["special"].as_bool().unwrap_or(false);
            let ty = if special { CONTROL } else { USER_DEFINED };
            put(content, added["id"].as_u64().unwrap_or(u64::MAX), ty)?;
        }
        let (names, types): (Vec<GgufValue>, Vec<GgufValue>) = tokens
            .into_iter()
            .enumerate()
            .map(|(id, t)| {
                let (name, ty) = t.unwrap_or_else(|| (format!("[PAD{id}]"), UNUSED));
                (GgufValue::String(name), GgufValue::I32(ty))
            })
            .unzip();
        let merges = model["merges"]
            .as_array()
            .ok_or_else(|| refuse("its BPE model has no merges"))?
            .iter()
            .map(|m| merge(m).map(GgufValue::String))
            .collect::<Result<Vec<_>>>()?;
        let key = |k: &str| format!("tokenizer.ggml.{k}");
        let mut out = vec![
            (key("model"), GgufValue::String("gpt2".into())),
            (key("pre"), GgufValue::String(pre.into())),
            (key("tokens"), GgufValue::Array(names)),
            (key("token_type"), GgufValue::Array(types)),
            (key("merges"), GgufValue::Array(merges)),
            (key("add_bos_token"), GgufValue::Bool(self.add_bos)),
        ];
        for (which, token) in [
            ("bos", &self.bos),
            ("eos", &self.eos),
            ("padding", &self.pad),
        ] {
            if let Some(id) = token.as_deref().and_then(|t| self.token_id(t)) {
                out.push((key(&format!("{which}_token_id")), GgufValue::U32(id)));
            }
        }
        if let Some(t) = &self.chat_template {
            out.push((
                "tokenizer.chat_template".into(),
                GgufValue::String(t.clone()),
            ));
        }
        Ok(out)
    }
}
