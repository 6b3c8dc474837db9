//! What edits kept outside the weights cost as they pile up (`kedit bench-memory`): the
//! time to add one edit to a system already holding many (the method's compute and the
//! Editor's apply, separately), and the time to score prompts through a system holding
//! `stored` edits against the plain model on the same prompts.

use std::time::Instant;

use serde::Serialize;

use crate::bench::{eval::teacher_forced_pairs, median};
use crate::editor::Editor;
use crate::error::Result;
use crate::evaluate::metrics::teacher_forced::score;
use crate::lm::LanguageModel;
use crate::methods::{EditContext, EditMethod};
use crate::model::Model;
use crate::progress::Progress;
use crate::request::EditRequest;

#[derive(Clone, Debug, Serialize)]
pub struct MemoryBench {
    pub method: String,
    pub stored: usize,
    /// Median milliseconds of one edit's compute, and of its apply, over all the adds.
    pub compute_ms: f64,
    pub apply_ms: f64,
    /// The same for the last tenth of the adds (the memory nearly full).
    pub compute_ms_full: f64,
    pub apply_ms_full: f64,
    /// Teacher-forced prompts scored.
    pub prompts: usize,
    /// Scoring rounds: each scores the prompts with the plain model and through the
    /// memory, the order alternating, so that a machine whose speed drifts during the
    /// benchmark (another job starting, a CPU clocking down) weighs on both sides alike.
    pub rounds: usize,
    /// Median seconds over the rounds.
    pub plain_seconds: f64,
    pub edited_seconds: f64,
    /// Each round's seconds, in round order.
    pub plain_round_seconds: Vec<f64>,
    pub edited_round_seconds: Vec<f64>,
    /// The median of the rounds' edited / plain ratios.
    pub ratio: f64,
    /// Prompts the memory routes (answered with a stored edit's context in front), and the
    /// median seconds of routing all the prompts alone — what the scope decision costs,
    /// apart from the longer inputs of the routed ones.
    pub routed: usize,
    pub routing_seconds: f64,
}

/// Adds `stored` one by one (each its own edit, as a sequential stream does), then scores
/// the teacher-forced prompts of `probes` through the edited system and the plain model,
/// `rounds` times each.
pub fn memory_bench(
    method: &dyn EditMethod,
    model: &Model,
    stored: &[EditRequest],
    probes: &[EditRequest],
    rounds: usize,
    ctx: &EditContext,
    progress: &mut dyn Progress,
) -> Result<MemoryBench> {
    let mut editor = Editor::new(model.clone());
    method.prepare(model, ctx, progress)?;
    progress.phase("adding edits", stored.len(), 0);
    let (mut compute, mut apply) = (Vec::new(), Vec::new());
    for r in stored {
        let t = Instant::now();
        let computed = method.compute(&editor, std::slice::from_ref(r), ctx)?;
        compute.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        editor.apply(&computed.edit)?;
        apply.push(t.elapsed().as_secs_f64() * 1e3);
        progress.advance(1);
    }
    let tail = stored.len() - stored.len() / 10;
    let pairs = teacher_forced_pairs(probes);
    let rounds = rounds.max(1);
    progress.phase("scoring, plain and through the memory", rounds, 0);
    let prompts: Vec<String> = pairs.iter().map(|p| p.prompt.clone()).collect();
    let (mut plain, mut edited, mut routing) = (Vec::new(), Vec::new(), Vec::new());
    let mut routed = 0;
    let time = |lm: &dyn LanguageModel| -> Result<f64> {
        let t = Instant::now();
        score(lm, &pairs, false)?;
        Ok(t.elapsed().as_secs_f64())
    };
    for round in 0..rounds {
        let t = Instant::now();
        routed = editor.routed(&prompts)?.iter().filter(|&&r| r).count();
        routing.push(t.elapsed().as_secs_f64());
        if round % 2 == 0 {
            plain.push(time(model)?);
            edited.push(time(&editor)?);
        } else {
            edited.push(time(&editor)?);
            plain.push(time(model)?);
        }
        progress.advance(1);
    }
    let ratios: Vec<f64> = edited.iter().zip(&plain).map(|(e, p)| e / p).collect();
    let med = |v: &[f64]| median(v.to_vec()).unwrap_or(f64::NAN);
    Ok(MemoryBench {
        method: method.name().to_string(),
        stored: stored.len(),
        compute_ms: med(&compute),
        apply_ms: med(&apply),
        compute_ms_full: med(&compute[tail.min(compute.len())..]),
        apply_ms_full: med(&apply[tail.min(apply.len())..]),
        prompts: pairs.len(),
        rounds,
        plain_seconds: med(&plain),
        edited_seconds: med(&edited),
        ratio: med(&ratios),
        plain_round_seconds: plain,
        edited_round_seconds: edited,
        routed,
        routing_seconds: med(&routing),
    })
}
