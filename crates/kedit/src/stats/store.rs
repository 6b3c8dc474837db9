//! Key statistics on disk: finished moments and resumable partial sums, one file per layer.
//!
//! A finished file is named by everything that determines its numbers: layer, the
//! fingerprint of the weights below the key, the corpus fingerprint, the truncation length,
//! the accumulation precision and the number of documents. A partial file (the running sum
//! after the first `n_docs` documents) leaves out the document count: the state after N
//! documents is the same whatever the target, so an interrupted run resumes from it and a
//! finished one can later be extended to more documents.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::stats::moment::Precision;

/// What determines a layer's statistics, apart from the number of documents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsKey {
    pub layer: usize,
    pub model_fingerprint: u64,
    pub corpus_fingerprint: u64,
    pub max_len: usize,
    pub precision: Precision,
}

const SECTION: &str = "stats";

impl StatsKey {
    fn stem(&self) -> String {
        format!(
            "layer{}-m{:016x}-c{:016x}-len{}-{}",
            self.layer,
            self.model_fingerprint,
            self.corpus_fingerprint,
            self.max_len,
            self.precision
        )
    }

    pub fn final_path(&self, cache: &Cache, n_docs: usize) -> Result<PathBuf> {
        cache.file(SECTION, &format!("{}-n{n_docs}.safetensors", self.stem()))
    }

    pub fn partial_path(&self, cache: &Cache) -> Result<PathBuf> {
        cache.file(SECTION, &format!("{}.partial.safetensors", self.stem()))
    }

    fn metadata(&self, n_docs: usize, n_tokens: u64, corpus: &Path) -> HashMap<String, String> {
        HashMap::from([
            ("format".into(), "kedit-key-stats-1".into()),
            ("layer".into(), self.layer.to_string()),
            ("n_docs".into(), n_docs.to_string()),
            ("n_tokens".into(), n_tokens.to_string()),
            ("max_len".into(), self.max_len.to_string()),
            ("precision".into(), self.precision.to_string()),
            (
                "model_fingerprint".into(),
                format!("{:016x}", self.model_fingerprint),
            ),
            (
                "corpus_fingerprint".into(),
                format!("{:016x}", self.corpus_fingerprint),
            ),
            ("corpus".into(), corpus.display().to_string()),
        ])
    }
}

/// A stored tensor with the document and token counts it was computed from.
pub struct Stored {
    pub tensor: Tensor,
    pub n_docs: usize,
    pub n_tokens: u64,
}

/// Writes `tensor` (named `name`) with its counts, atomically.
pub fn save(
    path: &Path,
    key: &StatsKey,
    name: &str,
    tensor: &Tensor,
    n_docs: usize,
    n_tokens: u64,
    corpus: &Path,
) -> Result<()> {
    // Sorted metadata: the same statistics make the same bytes, run after run.
    let meta: BTreeMap<String, String> =
        key.metadata(n_docs, n_tokens, corpus).into_iter().collect();
    let tensors = BTreeMap::from([(name.to_string(), tensor.clone())]);
    crate::model::safetensors_write::write(path, &tensors, &meta)
}

/// Reads a file written by `save`; `None` when it does not exist. A corrupt file is an
/// error that names it (delete it to recompute).
pub fn load(path: &Path, name: &str) -> Result<Option<Stored>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let corrupt = |what: String| {
        Error::model(
            path,
            format!("corrupt statistics file ({what}); delete it to recompute"),
        )
    };
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let count = |field: &str| -> Result<u64> {
        meta.get(field)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| corrupt(format!("metadata `{field}` missing")))
    };
    let n_docs = count("n_docs")? as usize;
    let n_tokens = count("n_tokens")?;
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| corrupt(e.to_string()))?;
    let tensor = tensors
        .remove(name)
        .ok_or_else(|| corrupt(format!("no tensor `{name}`")))?;
    Ok(Some(Stored {
        tensor,
        n_docs,
        n_tokens,
    }))
}
