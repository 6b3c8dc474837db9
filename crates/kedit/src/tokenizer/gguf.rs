//! Tokenizers rebuilt from GGUF metadata: byte-level BPE here, SentencePiece in
//! `gguf_spm.rs`.
//!
//! candle's own GGUF tokenizer ignores the `tokenizer.ggml.pre` pre-tokenizer and gives
//! wrong ids for SmolLM2 (`pre = smollm`, which splits digits individually). This builds
//! what llama.cpp and transformers use.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use super::Tokenizer;
use crate::error::{Error, Result};

/// GGUF token type of control (special) tokens.
pub(super) const CONTROL: i32 = 3;

fn strings(path: &Path, md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>> {
    let v = md
        .get(key)
        .ok_or_else(|| Error::model(path, format!("metadata `{key}` is missing")))?;
    let list = v
        .to_vec()
        .map_err(|_| Error::model(path, format!("metadata `{key}` is not an array")))?;
    list.iter()
        .enumerate()
        .map(|(i, x)| {
            x.to_string()
                .cloned()
                .map_err(|_| Error::model(path, format!("metadata `{key}[{i}]` is not a string")))
        })
        .collect()
}

fn pre_tokenizer(path: &Path, pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = ByteLevel::new(false, true, true);
    Ok(match pre {
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "gpt2" | "default" => byte_level.into(),
        other => {
            return Err(Error::model(
                path,
                format!("metadata `tokenizer.ggml.pre` is `{other}`: this pre-tokenizer is not supported yet"),
            ))
        }
    })
}

pub(super) fn build(path: &Path, md: &HashMap<String, Value>) -> Result<Tokenizer> {
    let model = md
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("");
    let tokens = strings(path, md, "tokenizer.ggml.tokens")?;
    let types: Vec<i32> = match md.get("tokenizer.ggml.token_type").map(Value::to_vec) {
        Some(Ok(list)) => list.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    match model {
        "gpt2" => byte_level(path, md, tokens, &types),
        "llama" => super::gguf_spm::build(path, md, tokens, &types),
        other => Err(Error::model(
            path,
            format!(
                "metadata `tokenizer.ggml.model` is `{other}`; supported: byte-level BPE \
                 (`gpt2`) and SentencePiece BPE (`llama`)"
            ),
        )),
    }
}

fn byte_level(
    path: &Path,
    md: &HashMap<String, Value>,
    tokens: Vec<String>,
    types: &[i32],
) -> Result<Tokenizer> {
    let merges_raw = strings(path, md, "tokenizer.ggml.merges")?;
    let mut merges = Vec::with_capacity(merges_raw.len());
    for (i, m) in merges_raw.iter().enumerate() {
        let (a, b) = m.split_once(' ').ok_or_else(|| {
            Error::model(
                path,
                format!("metadata `tokenizer.ggml.merges[{i}]` is not `left right`"),
            )
        })?;
        merges.push((a.to_string(), b.to_string()));
    }
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::model(path, format!("cannot build the BPE tokenizer: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("gpt2");
    inner.with_pre_tokenizer(Some(pre_tokenizer(path, pre)?));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(types)
        .filter(|(_, &ty)| ty == CONTROL)
        .map(|(t, _)| AddedToken::from(t.clone(), true))
        .collect();
    inner
        .add_special_tokens(specials)
        .map_err(|e| Error::model(path, format!("cannot add special tokens: {e}")))?;
    Ok(with_metadata(inner, md, &tokens))
}

/// The tokenizer with what GGUF metadata says around the model: BOS/EOS/padding tokens,
/// whether a BOS goes first, the chat template.
pub(super) fn with_metadata(
    inner: tokenizers::Tokenizer,
    md: &HashMap<String, Value>,
    tokens: &[String],
) -> Tokenizer {
    let name = |key: &str| -> Option<String> {
        let id = md.get(key)?.to_u32().ok()? as usize;
        tokens.get(id).cloned()
    };
    Tokenizer {
        inner,
        add_bos: md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false),
        bos: name("tokenizer.ggml.bos_token_id"),
        eos: name("tokenizer.ggml.eos_token_id"),
        pad: name("tokenizer.ggml.padding_token_id"),
        chat_template: md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned(),
    }
}
