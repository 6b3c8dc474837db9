//! Throughput measurements behind `kedit bench`. Figures are printed, never asserted.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

use crate::error::Result;
use crate::model::Model;
use crate::rng::Rng;
use crate::runtime::{Intervention, LogitsAt, Padding, Site, TokenBatch};

/// Median wall time of `reps` runs of `f` after one warm-up, in seconds.
pub fn median_seconds(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

#[derive(Clone, Debug, Serialize)]
pub struct MatmulFigure {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub seconds: f64,
    pub gflops: f64,
}

/// f32 GFLOP/s of an (m×k)·(k×n) product.
pub fn matmul(m: usize, k: usize, n: usize, reps: usize) -> Result<MatmulFigure> {
    let mut rng = Rng::new(0);
    let a = Tensor::from_vec(rng.normal_vec(m * k), (m, k), &Device::Cpu)?;
    let b = Tensor::from_vec(rng.normal_vec(k * n), (k, n), &Device::Cpu)?;
    let seconds = median_seconds(reps, || {
        a.matmul(&b)?;
        Ok(())
    })?;
    Ok(MatmulFigure {
        m,
        k,
        n,
        seconds,
        gflops: 2.0 * (m * k * n) as f64 / seconds / 1e9,
    })
}

/// Multiply-add FLOPs of one forward pass over `rows × len` tokens with logits at the last
/// position of each row only (as generation's prefill does).
pub fn forward_flops(model: &Model, rows: usize, len: usize) -> f64 {
    let c = &model.config;
    let (d, ff) = (c.d_model as f64, c.d_ff as f64);
    let q = (c.n_heads * c.head_dim) as f64;
    let kv = (c.n_kv_heads * c.head_dim) as f64;
    let mlp_mats = if c.gated_mlp() { 3.0 } else { 2.0 };
    let per_token_layer = 2.0 * (d * q + 2.0 * d * kv + q * d + mlp_mats * d * ff);
    // Causal attention: each query attends to (len+1)/2 keys on average, QKᵀ and PV.
    let attention = 2.0 * 2.0 * q * (len as f64 + 1.0) / 2.0;
    let tokens = (rows * len) as f64;
    let body = tokens * c.n_layers as f64 * (per_token_layer + attention);
    let head = rows as f64 * 2.0 * d * c.vocab_size as f64;
    body + head
}

#[derive(Clone, Debug, Serialize)]
pub struct PrefillFigure {
    pub rows: usize,
    pub len: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub gflops: f64,
}

fn random_batch(model: &Model, rows: usize, len: usize, seed: u64) -> Result<TokenBatch> {
    let mut rng = Rng::new(seed);
    let vocab = model.config.vocab_size as u64;
    let seqs: Vec<Vec<u32>> = (0..rows)
        .map(|_| (0..len).map(|_| (rng.next_u64() % vocab) as u32).collect())
        .collect();
    TokenBatch::new(&seqs, Padding::Left, 0)
}

pub fn prefill(model: &Model, rows: usize, len: usize, reps: usize) -> Result<PrefillFigure> {
    let batch = random_batch(model, rows, len, 1)?;
    let seconds = median_seconds(reps, || {
        model.forward(&batch).run()?;
        Ok(())
    })?;
    Ok(PrefillFigure {
        rows,
        len,
        seconds,
        tokens_per_second: (rows * len) as f64 / seconds,
        gflops: forward_flops(model, rows, len) / seconds / 1e9,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct BackwardFigure {
    pub rows: usize,
    pub len: usize,
    pub layer: usize,
    pub from_embeddings_seconds: f64,
    pub from_cached_residual_seconds: f64,
}

/// Forward + backward of a loss on the last-position logits with respect to a delta added
/// at `blocks.{layer}.mlp.out`, run from the embeddings vs from the cached residual.
pub fn forward_backward(
    model: &Model,
    rows: usize,
    len: usize,
    layer: usize,
    reps: usize,
) -> Result<BackwardFigure> {
    let batch = random_batch(model, rows, len, 2)?;
    let delta = Var::zeros(model.config.d_model, DType::F32, model.device())?;
    let at: Vec<(usize, usize)> = (0..rows).map(|b| (b, len / 2)).collect();
    let add = Intervention::add(Site::MlpOut(layer), at, delta.as_tensor().clone());
    let step = |start: Option<&Tensor>| -> Result<()> {
        let mut f = model
            .forward(&batch)
            .intervene(add.clone())
            .logits(LogitsAt::Last);
        if let Some(resid) = start {
            f = f.start_at(layer, resid.clone());
        }
        let logits = f.run()?.logits.expect("asked for logits");
        let loss = crate::runtime::ops::log_softmax_last(&logits)?
            .narrow(1, 0, 1)?
            .mean_all()?;
        let grads = loss.backward()?;
        grads
            .get(delta.as_tensor())
            .expect("delta takes part in the loss");
        Ok(())
    };
    let from_embeddings_seconds = median_seconds(reps, || step(None))?;
    let cached = model
        .forward(&batch)
        .capture([Site::ResidPre(layer)])
        .stop_after(layer)
        .run()?
        .captures
        .remove(&Site::ResidPre(layer))
        .expect("captured");
    let from_cached_residual_seconds = median_seconds(reps, || step(Some(&cached)))?;
    Ok(BackwardFigure {
        rows,
        len,
        layer,
        from_embeddings_seconds,
        from_cached_residual_seconds,
    })
}

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
    corpus: &std::path::Path,
    layers: &[usize],
    docs: usize,
    reps: usize,
) -> Result<StatsPassFigure> {
    let mut runs = Vec::new();
    for rep in 0..reps.max(1) {
        let dir = std::env::temp_dir().join(format!("kedit-bench-{}-{rep}", std::process::id()));
        let cache = crate::cache::Cache::new(&dir);
        let request = crate::stats::StatsRequest {
            n_docs: docs,
            checkpoint_seconds: f64::INFINITY,
            ..crate::stats::StatsRequest::new(layers.to_vec(), corpus)
        };
        let result = crate::stats::key_stats(model, &request, &cache, &mut crate::progress::Silent);
        let _ = std::fs::remove_dir_all(&dir);
        let stats = result?;
        let timing = stats
            .first()
            .and_then(|s| s.computed)
            .ok_or_else(|| crate::Error::invalid("the benchmark pass was read from a cache"))?;
        runs.push((timing, stats[0].n_docs));
    }
    runs.sort_by(|a, b| a.0.seconds.total_cmp(&b.0.seconds));
    let (timing, docs) = runs[runs.len() / 2];
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
    corpus: &std::path::Path,
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
    let mut sum = crate::stats::MomentSum::zeros(width, crate::stats::Precision::F32);
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
    facts: &[crate::trace::KnownFact],
    options: &crate::trace::TraceOptions,
) -> Result<TraceFigure> {
    let started = Instant::now();
    let mut tokens = 0;
    for f in facts {
        let r = crate::trace::trace_prompt(model, &f.prompt, &f.subject, None, options)?;
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
