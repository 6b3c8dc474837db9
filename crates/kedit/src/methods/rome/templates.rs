//! ROME's context templates: `"{}"` plus short texts sampled from the model itself, each
//! followed by `". {}"`, so that the key and value are averaged over varied contexts.
//!
//! EasyEdit samples them once per process with unseeded top-k; ours are seeded and cached
//! on disk, so two runs edit with the same templates.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::error::Result;
use crate::fsio::write_atomic;
use crate::lm::generate::{generate, GenerateOptions, Sampling};
use crate::model::Model;

/// The prompts generation starts from (ROME's).
const STARTS: [&str; 5] = ["The", "Therefore", "Because", "I", "You"];

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TemplateSpec {
    /// `(length in tokens, how many)` pairs; `how many` is split over the five starts.
    pub length_params: Vec<(usize, usize)>,
    pub seed: u64,
}

/// The longest context template, in tokens.
pub const MAX_TEMPLATE_TOKENS: usize = 64;
/// The most context templates, over all `(length, count)` pairs (each is a prompt of every
/// v* step).
pub const MAX_TEMPLATES: usize = 100;

/// Refuses `(length, count)` pairs beyond [`MAX_TEMPLATE_TOKENS`] and [`MAX_TEMPLATES`]
/// (a length of 100 000 would generate for minutes and hold gigabytes).
pub fn check_length_params(length_params: &[(usize, usize)]) -> std::result::Result<(), String> {
    let mut total = 0usize;
    for (i, &(len, n)) in length_params.iter().enumerate() {
        if !(1..=MAX_TEMPLATE_TOKENS).contains(&len) {
            return Err(format!(
                "[{len}, {n}] (entry {i}): a template length must be between 1 and \
                 {MAX_TEMPLATE_TOKENS} tokens"
            ));
        }
        if n > MAX_TEMPLATES {
            return Err(format!(
                "[{len}, {n}] (entry {i}): at most {MAX_TEMPLATES} templates in all"
            ));
        }
        total += n;
    }
    if total > MAX_TEMPLATES {
        return Err(format!("{total} templates in all; at most {MAX_TEMPLATES}"));
    }
    Ok(())
}

/// What the counts of `length_params` sample in fact, where that is not what they say: each
/// count is split over the five starts with integer division (as ROME and EasyEdit do), so
/// a count that is not a multiple of five samples fewer templates, and one below five none.
pub fn count_warnings(length_params: &[(usize, usize)]) -> impl Iterator<Item = String> + '_ {
    length_params.iter().filter_map(|&(len, n)| {
        let sampled = n / STARTS.len() * STARTS.len();
        (sampled != n).then(|| {
            format!(
                "[{len}, {n}] samples {sampled} templates of length {len}, not {n} \
                 ({n} split over {} start words is {} each)",
                STARTS.len(),
                n / STARTS.len()
            )
        })
    })
}

fn cache_path(cache: &Cache, model: &Model, spec: &TemplateSpec) -> Result<PathBuf> {
    let mut key = format!("{:016x}", model.fingerprint()?);
    for (len, n) in &spec.length_params {
        key.push_str(&format!("-{len}x{n}"));
    }
    key.push_str(&format!("-s{}", spec.seed));
    cache.file("context_templates", &format!("{key}.json"))
}

/// The templates for `model`, from the cache or generated (and then cached).
/// Context templates per spec, kept for the life of a method: the ones given by the
/// unedited model, whatever edits a run makes later (a sequential run's later calls would
/// otherwise see other templates, and a resumed run others than an uninterrupted one).
#[derive(Debug, Default)]
pub struct TemplateCache(Mutex<HashMap<TemplateSpec, Vec<String>>>);

impl TemplateCache {
    /// The templates of `spec`: from memory, else [`context_templates`].
    pub fn get(&self, model: &Model, spec: TemplateSpec, cache: &Cache) -> Result<Vec<String>> {
        let mut held = self.0.lock().expect("template cache lock");
        if let Some(t) = held.get(&spec) {
            return Ok(t.clone());
        }
        let t = context_templates(model, &spec, cache)?;
        held.insert(spec, t.clone());
        Ok(t)
    }

    /// Takes the templates of `spec` from `model` (the unedited one), over any held.
    pub fn take_from(&self, model: &Model, spec: TemplateSpec, cache: &Cache) -> Result<()> {
        let t = context_templates(model, &spec, cache)?;
        self.0.lock().expect("template cache lock").insert(spec, t);
        Ok(())
    }
}

pub fn context_templates(model: &Model, spec: &TemplateSpec, cache: &Cache) -> Result<Vec<String>> {
    let path = cache_path(cache, model, spec)?;
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(t) = serde_json::from_str::<Vec<String>>(&text) {
            return Ok(t);
        }
    }
    let templates = generate_templates(model, spec)?;
    let json = serde_json::to_string_pretty(&templates).expect("strings serialise");
    write_atomic(&path, json.as_bytes())?;
    Ok(templates)
}

fn generate_templates(model: &Model, spec: &TemplateSpec) -> Result<Vec<String>> {
    let tok = model.tokenizer()?;
    let mut templates = vec!["{}".to_string()];
    for (group, &(length, n)) in spec.length_params.iter().enumerate() {
        let per_start = n / STARTS.len();
        let mut prompts = Vec::new();
        for s in STARTS {
            let ids = tok.encode_input(s)?;
            prompts.extend(std::iter::repeat_n(ids, per_start));
        }
        if prompts.is_empty() {
            continue;
        }
        // `length` counts the whole text, start included (as ROME's generate_fast).
        let new_tokens = length.saturating_sub(prompts[0].len()).max(1);
        let opts = GenerateOptions {
            max_new_tokens: new_tokens,
            sampling: Sampling::TopK {
                k: 5,
                temperature: 1.0,
                seed: spec.seed.wrapping_add(group as u64),
            },
            stop_at_eos: false,
        };
        let outs = generate(model, &prompts, &opts)?;
        for (p, o) in prompts.iter().zip(outs) {
            let ids: Vec<u32> = p.iter().copied().chain(o).collect();
            let text = tok
                .decode(&ids, true)?
                .replace("\n\n", " ")
                .replace(['{', '}'], "");
            templates.push(format!("{text}. {{}}"));
        }
    }
    Ok(templates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_that_are_not_multiples_of_five_are_reported() {
        assert_eq!(count_warnings(&[(5, 5), (10, 10)]).count(), 0);
        let w: Vec<String> = count_warnings(&[(5, 3), (10, 7)]).collect();
        assert_eq!(w.len(), 2);
        assert!(w[0].contains("samples 0 templates of length 5"), "{}", w[0]);
        assert!(
            w[1].contains("samples 5 templates of length 10"),
            "{}",
            w[1]
        );
    }

    #[test]
    fn template_lengths_and_counts_are_bounded() {
        assert!(check_length_params(&[]).is_ok());
        assert!(check_length_params(&[(5, 10), (10, 10)]).is_ok());
        assert!(check_length_params(&[(64, 100)]).is_ok());
        for bad in [
            vec![(0, 5)],
            vec![(65, 5)],
            vec![(10, 101)],
            vec![(5, 60), (10, 60)],
        ] {
            let err = check_length_params(&bad).unwrap_err();
            assert!(err.contains("64") || err.contains("100"), "{err}");
        }
    }
}
