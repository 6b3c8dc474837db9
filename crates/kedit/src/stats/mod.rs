//! Key statistics: the uncentred second moment C = E[k kᵀ] of `blocks.{l}.mlp.key` over a
//! text corpus — ROME's `mom2` (`u = C⁻¹ k*`), MEMIT's and AlphaEdit's C.
//!
//! What users of ROME/EasyEdit wait hours for, made cheap:
//! - any set of layers in **one pass** over the corpus; the forward stops after the
//!   highest requested layer;
//! - only the symmetric half of Σ k kᵀ is accumulated;
//! - results are **cached** per layer, keyed by the weights that determine the keys (so an
//!   edited model does not reuse stale statistics), the corpus, the document count, the
//!   truncation length and the precision;
//! - a run **resumes** from its last checkpoint of partial sums after an interruption.
//!
//! As in ROME's `layer_stats` (with EasyEdit's/ROME's `batch_tokens`-style truncation),
//! each document contributes its first `max_len` tokens (no BOS/EOS added), pads are
//! excluded, and `n_docs` counts documents (ROME's `mom2_n_samples`). Unlike ROME, which
//! samples documents at random, the first `n_docs` documents of the file are used, in order.

pub mod collect;
pub mod corpus;
pub mod mix;
pub mod moment;
pub mod store;

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::Serialize;

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::progress::Progress;
pub use corpus::{Corpus, CorpusFormat, Document, RecordSelection};
pub use moment::{MomentSum, Precision};
pub use store::StatsKey;

/// What to compute.
#[derive(Clone, Debug)]
pub struct StatsRequest {
    pub layers: Vec<usize>,
    /// JSONL with a `text` field, or plain text (see [`corpus`]).
    pub corpus: PathBuf,
    /// When set, `corpus` is a dataset file and these of its records are the documents.
    pub selection: Option<RecordSelection>,
    /// Documents to use (ROME's `mom2_n_samples`); fewer if the corpus has fewer.
    pub n_docs: usize,
    /// Tokens kept from the start of each document.
    pub max_len: usize,
    pub precision: Precision,
    /// Documents per forward pass.
    pub batch_size: usize,
    /// Seconds between checkpoints of the partial sums.
    pub checkpoint_seconds: f64,
    /// Further corpora whose keys join C, each with a weight (see [`mix`]).
    pub mix: Vec<MixedSource>,
}

/// A further corpus for C: all its documents (or the selected records), their keys
/// counted `weight` times, as if the corpus were repeated that often.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MixedSource {
    pub corpus: PathBuf,
    pub selection: Option<RecordSelection>,
    pub weight: f64,
}

impl StatsRequest {
    pub fn new(layers: Vec<usize>, corpus: impl Into<PathBuf>) -> Self {
        StatsRequest {
            layers,
            corpus: corpus.into(),
            selection: None,
            n_docs: 100_000,
            max_len: 128,
            precision: Precision::F32,
            batch_size: 16,
            checkpoint_seconds: 60.0,
            mix: Vec::new(),
        }
    }

    /// The corpus this request reads (not its mixed sources).
    pub fn open_corpus(&self) -> Result<Corpus> {
        match &self.selection {
            Some(sel) => Corpus::open_records(&self.corpus, sel.clone()),
            None => Corpus::open(&self.corpus),
        }
    }
}

/// How long the pass that computed a result took.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PassTiming {
    pub seconds: f64,
    /// Tokens run in this pass (fewer than the total when it resumed a checkpoint).
    pub tokens: u64,
    pub tokens_per_second: f64,
}

/// C = E[k kᵀ] of one layer's MLP keys.
#[derive(Clone, Debug)]
pub struct KeyStats {
    pub layer: usize,
    pub n_tokens: u64,
    pub n_docs: usize,
    /// `[d_ff, d_ff]`, f32 or f64 as requested.
    pub moment: Tensor,
    /// The cache file holding it.
    pub path: PathBuf,
    /// `None` when read from the cache.
    pub computed: Option<PassTiming>,
}

impl KeyStats {
    /// tr(C) = E[‖k‖²].
    pub fn trace(&self) -> Result<f64> {
        let d = self.moment.dim(0)?;
        let flat = self
            .moment
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        Ok((0..d).map(|i| flat[i * d + i]).sum())
    }
}

/// C for every requested layer: read from the cache where present, the rest computed in
/// one pass over the corpus (resuming a checkpoint if one exists). In the order asked.
pub fn key_stats(
    model: &Model,
    request: &StatsRequest,
    cache: &Cache,
    progress: &mut dyn Progress,
) -> Result<Vec<KeyStats>> {
    mix::run(model, request, cache, progress)
}

/// C for `layer` if it is in the cache. With a request, exactly the statistics it
/// describes (corpus, documents, length, precision); without one, the cached statistics of
/// this layer of this model with the most tokens, whatever corpus they came from.
pub fn cached_key_stats(
    model: &Model,
    layer: usize,
    request: Option<&StatsRequest>,
    cache: &Cache,
) -> Result<Option<KeyStats>> {
    match request {
        Some(req) => mix::cached(model, layer, req, cache),
        None => collect::any_cached(model, layer, cache),
    }
}

/// C for `layer`, for a method that needs it: from the cache, or computed from the corpus of
/// `request`; with neither, an error that says how to provide one.
pub fn require_key_stats(
    model: &Model,
    layer: usize,
    request: Option<&StatsRequest>,
    cache: &Cache,
    progress: &mut dyn Progress,
) -> Result<KeyStats> {
    if let Some(req) = request {
        let mut one = req.clone();
        one.layers = vec![layer];
        let mut stats = key_stats(model, &one, cache, progress)?;
        return Ok(stats.remove(0));
    }
    cached_key_stats(model, layer, None, cache)?
        .ok_or_else(|| missing_stats_error(&[layer], cache.dir()))
}

/// The error for a method that needs C with no corpus given and no statistics cached.
pub fn missing_stats_error(layers: &[usize], cache_dir: &Path) -> Error {
    let list = layers
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    Error::config(format!(
        "no key statistics (C = E[k kᵀ] of blocks.{{l}}.mlp.key) for layer(s) {list} of this model \
         are cached in {} and no corpus was given to compute them: pass --corpus FILE (JSONL with \
         a `text` field, or plain text, e.g. ../shared/data/corpus/wikipedia_en_2015_sample.jsonl), \
         or compute them once with `kedit stats --layers {list} --corpus FILE`",
        cache_dir.display()
    ))
}
