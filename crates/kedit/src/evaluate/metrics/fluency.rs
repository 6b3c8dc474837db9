//! Fluency: the n-gram entropy of a sampled continuation, as EasyEdit computes it
//! (`test_generation_quality` → `n_gram_entropy` / `compute_n_gram_entropy` in
//! easyeditor/evaluate/evaluate_utils.py, `generate_fast` in easyeditor/util/generate.py).
//!
//! - Text: the prompt continued by top-k (k = 5, temperature 1) sampling until the whole
//!   sequence, prompt included, is 100 tokens long; no stop at EOS. It is decoded with
//!   special tokens skipped, NFKD-normalised, `"\n\n"` → `" "`, `<|endoftext|>` removed.
//! - Entropy: H_n = −Σ p log₂ p over the frequency distribution of word n-grams (NLTK word
//!   tokens), for n = 2, 3; weighted by (2/3, 4/3) and averaged: H = (⅔H₂ + ⁴⁄₃H₃) / 2.
//! - Per case, the arithmetic mean over its prompts (EasyEdit's `agg="arith"`).
//!
//! EasyEdit samples with torch's global generator, so its fluency changes run to run.
//! Ours draws from a generator seeded by the run seed and the case id: the same case gets
//! the same text on every run and in every batch.

use std::collections::BTreeMap;

use tokenizers::NormalizedString;

use crate::error::Result;
use crate::evaluate::metrics::word_tokenize::word_tokenize;
use crate::lm::generate::{generate_seeded, GenerateOptions, Sampling};
use crate::lm::LanguageModel;

/// EasyEdit's `max_out_len`: total tokens, prompt included.
pub const MAX_LEN: usize = 100;
pub const TOP_K: usize = 5;
const CHUNK: usize = 32;

/// `compute_n_gram_entropy(text)` with EasyEdit's defaults.
pub fn n_gram_entropy(text: &str) -> f64 {
    let words = word_tokenize(text);
    let weighted =
        [(2usize, 2.0 / 3.0), (3, 4.0 / 3.0)].map(|(n, w)| w * entropy_of_ngrams(&words, n));
    weighted.iter().sum::<f64>() / weighted.len() as f64
}

/// Base-2 entropy of the n-gram frequency distribution. With no n-gram at all NumPy
/// computes 0/0 and EasyEdit gets NaN; so do we.
fn entropy_of_ngrams(words: &[String], n: usize) -> f64 {
    if words.len() < n {
        return f64::NAN;
    }
    // Ordered, so the sum (and its last bit) does not depend on hashing.
    let mut counts: BTreeMap<&[String], usize> = BTreeMap::new();
    for gram in words.windows(n) {
        *counts.entry(gram).or_default() += 1;
    }
    let total = (words.len() + 1 - n) as f64;
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / total;
            -p * p.log2()
        })
        .sum()
}

/// EasyEdit's clean-up of a generated text before tokenising it into words.
pub fn clean_generated(text: &str) -> String {
    let mut n = NormalizedString::from(text);
    n.nfkd();
    n.get().replace("\n\n", " ").replace("<|endoftext|>", "")
}

/// One sampled text per `(prompt, seed)`: the prompt and its continuation, cleaned.
pub fn sample_texts(lm: &dyn LanguageModel, prompts: &[(String, u64)]) -> Result<Vec<String>> {
    let tok = lm.tokenizer()?;
    let ids = prompts
        .iter()
        .map(|(p, _)| tok.encode_input(p))
        .collect::<Result<Vec<_>>>()?;
    let mut order: Vec<usize> = (0..prompts.len()).filter(|&i| !ids[i].is_empty()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut texts = vec![String::new(); prompts.len()];
    for chunk in order.chunks(CHUNK) {
        let budget = |i: usize| MAX_LEN.saturating_sub(ids[i].len());
        let opts = GenerateOptions {
            max_new_tokens: chunk.iter().map(|&i| budget(i)).max().unwrap_or(0),
            sampling: Sampling::TopK {
                k: TOP_K,
                temperature: 1.0,
                seed: 0,
            },
            stop_at_eos: false,
        };
        let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
        let seeds: Vec<u64> = chunk.iter().map(|&i| prompts[i].1).collect();
        let outs = generate_seeded(lm, &rows, &seeds, &opts)?;
        for (&i, out) in chunk.iter().zip(outs) {
            // Each row samples from its own generator: cutting it to its own budget
            // gives what a call with that budget alone would give.
            let mut all = ids[i].clone();
            all.extend_from_slice(&out[..out.len().min(budget(i))]);
            texts[i] = clean_generated(&tok.decode(&all, true)?);
        }
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_a_fixed_string_by_hand() {
        // Words: a b a b a (5) → bigrams ab ba ab ba: p = ½, ½ → H₂ = 1;
        // trigrams aba bab aba: p = ⅔, ⅓ → H₃ = 0.9182958340544896.
        let h3 = -(2.0f64 / 3.0) * (2.0f64 / 3.0).log2() - (1.0 / 3.0) * (1.0f64 / 3.0).log2();
        let want = (2.0 / 3.0 * 1.0 + 4.0 / 3.0 * h3) / 2.0;
        assert!((n_gram_entropy("a b a b a") - want).abs() < 1e-12);
        // All-distinct n-grams: H₂ = log₂ 4, H₃ = log₂ 3.
        let want = (2.0 / 3.0 * 4f64.log2() + 4.0 / 3.0 * 3f64.log2()) / 2.0;
        assert!((n_gram_entropy("one two three four five") - want).abs() < 1e-12);
        assert!(n_gram_entropy("one").is_nan());
    }

    #[test]
    fn clean_up_matches_easyedit() {
        assert_eq!(clean_generated("a\n\nb<|endoftext|>ﬁ"), "a bfi");
    }
}
