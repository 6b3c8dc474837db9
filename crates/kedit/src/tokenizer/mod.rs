//! Tokenizers: byte-level BPE built from GGUF metadata, or Hugging Face `tokenizer.json`;
//! chat templates rendered with a Jinja engine.

mod chat;
mod gguf;
mod gguf_spm;
mod to_gguf;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value as GgufValue;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::fsio::write_atomic;
pub use chat::ChatMessage;

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<String>,
    eos: Option<String>,
    pad: Option<String>,
    /// The model was trained with a BOS token first (Gemma); see [`Tokenizer::adds_bos`].
    add_bos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(path: &Path, metadata: &HashMap<String, GgufValue>) -> Result<Self> {
        gguf::build(path, metadata)
    }

    /// Loads `tokenizer.json` (and `tokenizer_config.json`, when present, for the chat
    /// template and special tokens) from a Hugging Face directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::model(&path, format!("cannot load tokenizer: {e}")))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            serde_json::from_str(&text)
                .map_err(|e| Error::model(&cfg_path, format!("invalid JSON: {e}")))?
        } else {
            Value::Null
        };
        let special = |key: &str| -> Option<String> {
            match cfg.get(key)? {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let chat_template = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take the default one.
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => {
                let jinja = dir.join("chat_template.jinja");
                std::fs::read_to_string(jinja).ok()
            }
        };
        Ok(Tokenizer {
            inner,
            add_bos: cfg
                .get("add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos: special("bos_token"),
            eos: special("eos_token"),
            pad: special("pad_token"),
            chat_template,
        })
    }

    /// Token ids of `text`, with no BOS/EOS added. Special tokens written in the text
    /// (`<|im_start|>`) are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a text that starts a model input: with the BOS token first when the
    /// model expects one (Gemma; as its own tokenizer adds it), else as [`Tokenizer::encode`].
    /// Fragments that continue a sequence (a target, an answer) use `encode`.
    pub fn encode_input(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        if let (true, Some(bos)) = (self.add_bos, self.bos_id()) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Token ids of many texts (parallel inside the tokenizers library).
    pub fn encode_batch(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        let encs = self
            .inner
            .encode_batch(texts.to_vec(), false)
            .map_err(tok_err)?;
        Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The vocabulary string of one token (byte-level form, e.g. `Ġcapital`).
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_deref().and_then(|t| self.token_id(t))
    }

    /// Whether the model expects its BOS token before every text, as its own tokenizer
    /// would add it (`tokenizer.ggml.add_bos_token`, `add_bos_token`). [`Tokenizer::encode`]
    /// never adds it, so that encodings concatenate; callers that start a sequence prepend
    /// [`Tokenizer::bos_id`] when this is true.
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos_id().is_some()
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_deref().and_then(|t| self.token_id(t))
    }

    /// The id used to pad batches: the pad token, else EOS, else 0.
    pub fn pad_id(&self) -> u32 {
        self.pad
            .as_deref()
            .and_then(|t| self.token_id(t))
            .or_else(|| self.eos_id())
            .unwrap_or(0)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders `messages` with the model's chat template (as `apply_chat_template(...,
    /// tokenize=False)` does).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::Tokenizer("this model has no chat template".into()))?;
        chat::render(
            template,
            messages,
            add_generation_prompt,
            self.bos.as_deref().unwrap_or(""),
            self.eos.as_deref().unwrap_or(""),
        )
    }

    /// Writes `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` (which
    /// older transformers releases read the special tokens from) into `dir`; returns
    /// their names.
    pub fn save_hf(&self, dir: &Path) -> Result<Vec<String>> {
        let text = self.inner.to_string(true).map_err(tok_err)?;
        write_atomic(&dir.join("tokenizer.json"), text.as_bytes())?;
        let config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos,
            "eos_token": self.eos,
            "pad_token": self.pad,
            "add_bos_token": self.add_bos,
            "clean_up_tokenization_spaces": false,
            "chat_template": self.chat_template,
        });
        let text = serde_json::to_string_pretty(&config).expect("JSON values always serialise");
        write_atomic(&dir.join("tokenizer_config.json"), text.as_bytes())?;
        let mut map = serde_json::Map::new();
        for (key, token) in [
            ("bos_token", &self.bos),
            ("eos_token", &self.eos),
            ("pad_token", &self.pad),
        ] {
            if let Some(t) = token {
                map.insert(key.into(), Value::String(t.clone()));
            }
        }
        let text = serde_json::to_string_pretty(&Value::Object(map)).expect("JSON serialises");
        write_atomic(&dir.join("special_tokens_map.json"), text.as_bytes())?;
        Ok(vec![
            "tokenizer.json".into(),
            "tokenizer_config.json".into(),
            "special_tokens_map.json".into(),
        ])
    }
}
