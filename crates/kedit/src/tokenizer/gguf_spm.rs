//! A SentencePiece (BPE) tokenizer rebuilt from GGUF metadata (`tokenizer.ggml.model =
//! llama`), as transformers rebuilds it from the same file.
//!
//! The file has tokens, scores and token types but no merges: the merges are derived from
//! the vocabulary, every token cut into two tokens that exist, ranked best-first. For
//! Gemma the rank is the token's position in the file (its scores do not follow its merge
//! order); elsewhere it is the score. Spaces become `▁` before BPE, characters outside the
//! vocabulary fall back to byte tokens (`<0xE2>`), control tokens are special and
//! user-defined tokens (`\n\n`, `<start_of_image>`…) are matched whole in the text.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::gguf::{with_metadata, CONTROL};
use super::Tokenizer;
use crate::error::{Error, Result};

/// The longest SentencePiece token read (bytes).
const MAX_TOKEN_BYTES: usize = 4096;

/// GGUF token type of user-defined tokens.
const USER_DEFINED: i32 = 4;
const SPACE: &str = "\u{2581}";

/// Derives BPE merges from a vocabulary: every split of a token into two tokens, ranked by
/// the whole token's score (higher first), then by longer left, then longer right piece;
/// ties keep vocabulary order (transformers' `generate_merges`).
fn merges(tokens: &[String], score: impl Fn(usize) -> f64) -> Vec<(String, String)> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut seen = HashSet::new();
    let mut all: Vec<(f64, usize, usize, usize, usize)> = Vec::new();
    for token in tokens {
        if !seen.insert(token.as_str()) {
            continue;
        }
        // A duplicated token keeps its last index, as a Python dict built from the list.
        let s = score(index[token.as_str()]);
        let mut local = Vec::new();
        let bounds: Vec<usize> = token.char_indices().map(|(i, _)| i).skip(1).collect();
        for b in bounds {
            let (l, r) = token.split_at(b);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                local.push((s, li, ri, l.chars().count(), r.chars().count()));
            }
        }
        local.sort_by_key(|&(_, li, ri, _, _)| (li, ri));
        all.extend(local);
    }
    // Stable, descending: equal keys keep their order, as Python's sorted(reverse=True).
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.3.cmp(&a.3)).then(b.4.cmp(&a.4)));
    all.into_iter()
        .map(|(_, l, r, _, _)| (tokens[l].clone(), tokens[r].clone()))
        .collect()
}

pub(super) fn build(
    path: &Path,
    md: &HashMap<String, Value>,
    tokens: Vec<String>,
    types: &[i32],
) -> Result<Tokenizer> {
    // Deriving merges costs the square of a token's length: a hostile file with one
    // megabyte-long token would hang the load. Real vocabularies stay far below this.
    if let Some((i, t)) = tokens
        .iter()
        .enumerate()
        .find(|(_, t)| t.len() > MAX_TOKEN_BYTES)
    {
        return Err(Error::model(
            path,
            format!(
                "metadata `tokenizer.ggml.tokens[{i}]` is {} bytes long; tokens over \
                 {MAX_TOKEN_BYTES} bytes are refused",
                t.len()
            ),
        ));
    }
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or("");
    let gemma = arch.starts_with("gemma");
    // Gemma stores a token of spaces as spaces; after the normaliser they are `▁`s.
    let original = tokens;
    let tokens: Vec<String> = if gemma {
        original
            .iter()
            .cloned()
            .map(|t| {
                if t.contains(' ') && t.trim().is_empty() {
                    SPACE.repeat(t.chars().count())
                } else {
                    t
                }
            })
            .collect()
    } else {
        original.clone()
    };
    let merges = if gemma {
        merges(&tokens, |i| -(i as f64))
    } else {
        let scores = md
            .get("tokenizer.ggml.scores")
            .and_then(|v| v.to_vec().ok())
            .ok_or_else(|| Error::model(path, "metadata `tokenizer.ggml.scores` is missing"))?;
        let scores: Vec<f64> = scores
            .iter()
            .map(|v| v.to_f32().map(f64::from).unwrap_or(0.0))
            .collect();
        merges(&tokens, |i| scores.get(i).copied().unwrap_or(0.0))
    };
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let unk = md
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.to_u32().ok())
        .and_then(|i| tokens.get(i as usize))
        .cloned()
        .unwrap_or_else(|| "<unk>".into());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| Error::model(path, format!("cannot build the BPE tokenizer: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let bad = |e: tokenizers::Error| Error::model(path, format!("cannot build the tokenizer: {e}"));
    inner
        .with_normalizer(Some(Replace::new(" ", SPACE).map_err(bad)?))
        .map_err(bad)?;
    inner.with_pre_tokenizer(Some(
        Split::new(
            SplitPattern::String(" ".into()),
            SplitDelimiterBehavior::MergedWithPrevious,
            false,
        )
        .map_err(bad)?,
    ));
    inner.with_decoder(Some(DecoderSequence::new(vec![
        Replace::new(SPACE, " ").map_err(bad)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ])));
    // Both are matched in the raw text, as spelled in the file; a user-defined token that
    // was respelled above is left to BPE (transformers adds only those still in the vocabulary).
    let of_type = |ty: i32| original.iter().zip(types).filter(move |(_, &t)| t == ty);
    let control: Vec<AddedToken> = of_type(CONTROL)
        .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    inner.add_special_tokens(control).map_err(bad)?;
    let in_vocab: HashSet<&str> = tokens.iter().map(String::as_str).collect();
    let user: Vec<AddedToken> = of_type(USER_DEFINED)
        .filter(|(t, _)| in_vocab.contains(t.as_str()))
        .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    inner.add_tokens(user).map_err(bad)?;
    Ok(with_metadata(inner, md, &tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_rank_by_score_then_longer_pieces() {
        let tokens: Vec<String> = ["a", "b", "ab", "abb", "bb"]
            .into_iter()
            .map(String::from)
            .collect();
        let m = merges(&tokens, |i| -(i as f64));
        let pairs: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        assert_eq!(pairs, [("a", "b"), ("ab", "b"), ("a", "bb"), ("b", "b")]);
    }
}
