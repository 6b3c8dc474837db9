//! Free-generation exact match: does the model, decoding greedily with no teacher forcing,
//! say the answer? Teacher-forced token accuracy credits a model that would never produce
//! the answer on its own (arXiv 2502.11177); this is the measure beside it.
//!
//! For each `(prompt, accepted answers)`: greedy decoding from `prompt` (no space
//! appended) for `tokens(" " + longest answer) + SLACK` new tokens, stopping at EOS; the
//! decoded continuation and each answer are normalised as EasyEdit's `normalize_answer`
//! (lower-case, ASCII punctuation removed, the articles a/an/the removed, whitespace
//! collapsed); a hit is a normalised continuation equal to a normalised answer or
//! starting with it followed by a space.

use crate::error::Result;
use crate::lm::generate::{generate, GenerateOptions, Sampling};
use crate::lm::LanguageModel;

/// Extra tokens beyond the answer's own count, for a leading newline or colon.
const SLACK: usize = 2;
/// Prompts decoded together (sorted by length to keep left padding short).
const CHUNK: usize = 64;

/// One greedy probe: a prompt and its accepted answers (the first is the main one).
#[derive(Clone, Debug)]
pub struct Probe {
    pub prompt: String,
    pub answers: Vec<String>,
}

/// 1.0 or 0.0 per probe, in input order.
pub fn exact_match(lm: &dyn LanguageModel, probes: &[Probe]) -> Result<Vec<f64>> {
    let tok = lm.tokenizer()?;
    let mut jobs = Vec::with_capacity(probes.len());
    for p in probes {
        let ids = tok.encode_input(&p.prompt)?;
        let mut budget = 0;
        for a in &p.answers {
            budget = budget.max(tok.encode(&format!(" {}", a.trim_start()))?.len());
        }
        jobs.push((ids, budget + SLACK));
    }
    let mut order: Vec<usize> = (0..probes.len())
        .filter(|&i| !jobs[i].0.is_empty())
        .collect();
    order.sort_by_key(|&i| jobs[i].0.len());
    let mut hits = vec![0.0; probes.len()];
    for chunk in order.chunks(CHUNK) {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|&i| jobs[i].0.clone()).collect();
        let opts = GenerateOptions {
            max_new_tokens: chunk.iter().map(|&i| jobs[i].1).max().unwrap_or(0),
            sampling: Sampling::Greedy,
            stop_at_eos: true,
        };
        let outs = generate(lm, &prompts, &opts)?;
        for (&i, out) in chunk.iter().zip(outs) {
            // Greedy rows do not depend on each other: cut each to its own budget.
            let own = &out[..out.len().min(jobs[i].1)];
            let text = tok.decode(own, true)?;
            hits[i] = if matches_any(&text, &probes[i].answers) {
                1.0
            } else {
                0.0
            };
        }
    }
    Ok(hits)
}

/// True when the normalised continuation starts with a normalised answer (whole words).
pub fn matches_any(continuation: &str, answers: &[String]) -> bool {
    let got = normalize_answer(continuation);
    answers.iter().any(|a| {
        let want = normalize_answer(a);
        !want.is_empty()
            && (got == want
                || got
                    .strip_prefix(&want)
                    .is_some_and(|rest| rest.starts_with(' ')))
    })
}

/// EasyEdit's `normalize_answer` (evaluate_utils.py): lower-case, drop ASCII
/// punctuation, drop the words a/an/the, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_and_prefix_match() {
        assert_eq!(
            normalize_answer("  The Eiffel-Tower, in PARIS! "),
            "eiffeltower in paris"
        );
        let answers = vec!["Paris".to_string(), "City of Light".to_string()];
        assert!(matches_any(" Paris, France.", &answers));
        assert!(matches_any("\nthe city of light", &answers));
        assert!(!matches_any(" Parisian food", &answers));
        assert!(!matches_any(" Lyon", &answers));
        assert!(!matches_any("anything", &[String::from("the")]));
    }
}
