//! How much batching the teacher-forced metrics saves: the pre-edit values of many cases
//! computed with padded multi-row forwards (what [`crate::evaluate::evaluate`] does)
//! against one forward per prompt (EasyEdit's pattern of one call per metric and prompt).

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::evaluate::metrics::teacher_forced::{score, Pair};
use crate::model::Model;
use crate::request::EditRequest;

#[derive(Clone, Debug, Serialize)]
pub struct EvalBench {
    pub cases: usize,
    /// Teacher-forced prompts scored (rewrite, rephrase, portability, locality).
    pub prompts: usize,
    pub batched_seconds: f64,
    pub per_prompt_seconds: f64,
    /// batched / per-prompt.
    pub ratio: f64,
    /// Prompts whose argmax ids differ between the two (float noise can flip a near tie).
    pub differing_prompts: usize,
}

/// Times the teacher-forced pre-edit metrics of `requests` both ways.
pub fn pre_edit_metrics(model: &Model, requests: &[EditRequest]) -> Result<EvalBench> {
    let pairs = teacher_forced_pairs(requests);
    let start = Instant::now();
    let together = score(model, &pairs, false)?;
    let batched_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut single = Vec::with_capacity(pairs.len());
    for p in &pairs {
        single.extend(score(model, std::slice::from_ref(p), false)?);
    }
    let per_prompt_seconds = start.elapsed().as_secs_f64();
    let differing_prompts = together
        .iter()
        .zip(&single)
        .filter(|(a, b)| a.predicted != b.predicted)
        .count();
    Ok(EvalBench {
        cases: requests.len(),
        prompts: pairs.len(),
        batched_seconds,
        per_prompt_seconds,
        ratio: batched_seconds / per_prompt_seconds,
        differing_prompts,
    })
}

/// The teacher-forced pairs the metrics score without a ground truth (EasyEdit's set:
/// rewrite, rephrases, portability, locality).
pub(crate) fn teacher_forced_pairs(requests: &[EditRequest]) -> Vec<Pair> {
    let mut out = Vec::new();
    for r in requests {
        out.push(Pair::new(&r.prompt, &r.target_new));
        out.extend(r.rephrase.iter().map(|p| Pair::new(p, &r.target_new)));
        for probes in r.portability.values().chain(r.locality.values()) {
            out.extend(probes.iter().map(|p| Pair::new(&p.prompt, &p.answer)));
        }
    }
    out
}
