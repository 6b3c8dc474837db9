//! What locate-then-edit costs, behind `kedit bench-stats` and `kedit bench-trace`: key
//! statistics of one layer vs several in one pass, and causal tracing per fact.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::bench::{median_run, median_seconds};
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::rng::Rng;
use crate::stats::{key_stats, MomentSum, Precision, StatsRequest};
use crate::trace::{trace_prompt, KnownFact, TraceOptions};

#[derive(Clone, Debug, Serialize)]
pub struct StatsPassFigure {
    pub layers: Vec<usize>,
    pub docs: usize,
    pub tokens: u64,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct StatsFigure {
    pub one: StatsPassFigure,
    pub many: StatsPassFigure,
    /// Time of the many-layer pass over the one-layer pass (target: < 1.5).
    pub ratio: f64,
    /// Seconds to add one batch of `accumulate_rows` keys to Σ k kᵀ (f32, lower half).
    pub accumulate_rows: usize,
    pub accumulate_seconds: f64,
}

/// One uncached key-statistics pass over the first `docs` documents (median of `reps`, each
/// in a fresh temporary cache).
pub fn stats_pass(
    model: &Model,
    corpus: &Path,
    layers: &[usize],
    docs: usize,
    reps: usize,
) -> Result<StatsPassFigure> {
    let mut runs = Vec::new();
    for rep in 0..reps.max(1) {
        let dir = std::env::temp_dir().join(format!("kedit-bench-{}-{rep}", std::process::id()));
        let cache = Cache::new(&dir);
        let request = StatsRequest {
            n_docs: docs,
            checkpoint_seconds: f64::INFINITY,
            ..StatsRequest::new(layers.to_vec(), corpus)
        };
        let result = key_stats(model, &request, &cache, &mut crate::progress::Silent);
        let _ = std::fs::remove_dir_all(&dir);
        let stats = result?;
        let timing = stats
            .first()
            .and_then(|s| s.computed)
            .ok_or_else(|| Error::invalid("the benchmark pass was read from a cache"))?;
        runs.push((timing, stats[0].n_docs));
    }
    let (timing, docs) = median_run(runs, |r| r.0.seconds);
    Ok(StatsPassFigure {
        layers: layers.to_vec(),
        docs,
        tokens: timing.tokens,
        seconds: timing.seconds,
        tokens_per_second: timing.tokens_per_second,
    })
}

/// Key statistics for one layer vs several in one pass, same documents, no cache.
pub fn stats_layers(
    model: &Model,
    corpus: &Path,
    one: &[usize],
    many: &[usize],
    docs: usize,
    reps: usize,
) -> Result<StatsFigure> {
    let one = stats_pass(model, corpus, one, docs, reps)?;
    let many = stats_pass(model, corpus, many, docs, reps)?;
    let rows = 16 * 128;
    let width = model.config.d_ff;
    let keys = Rng::new(3).normal_vec(rows * width);
    let mut sum = MomentSum::zeros(width, Precision::F32);
    let accumulate_seconds = median_seconds(reps, || sum.add_rows(&keys))?;
    Ok(StatsFigure {
        ratio: many.seconds / one.seconds,
        one,
        many,
        accumulate_rows: rows,
        accumulate_seconds,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct TraceFigure {
    pub facts: usize,
    pub samples: usize,
    pub tokens_per_pass: usize,
    pub workers: usize,
    /// Mean prompt length in tokens.
    pub mean_tokens: f64,
    pub seconds_per_fact: f64,
}

/// Seconds per fact of a full trace (hidden, MLP and attention grids) of `facts`.
pub fn trace_facts(
    model: &Model,
    facts: &[KnownFact],
    options: &TraceOptions,
) -> Result<TraceFigure> {
    let started = Instant::now();
    let mut tokens = 0;
    for f in facts {
        let r = trace_prompt(model, &f.prompt, &f.subject, None, options)?;
        tokens += r.tokens.len();
    }
    let n = facts.len().max(1);
    Ok(TraceFigure {
        facts: facts.len(),
        samples: options.samples,
        tokens_per_pass: options.tokens_per_pass,
        workers: options.workers,
        mean_tokens: tokens as f64 / n as f64,
        seconds_per_fact: started.elapsed().as_secs_f64() / n as f64,
    })
}
