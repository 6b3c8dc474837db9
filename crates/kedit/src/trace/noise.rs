//! The noise level of causal tracing: σ, the standard deviation of the embeddings of
//! subject tokens (ROME's `collect_embedding_std` over the known facts' subjects, each
//! subject tokenized alone). Corrupted runs add N(0, (k·σ)²) with k = 3.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::hash::Fast64;
use crate::model::Model;
use crate::runtime::{Padding, Site, TokenBatch};
use crate::trace::known_facts::load_known_facts;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubjectEmbeddingStd {
    pub sigma: f64,
    pub n_values: u64,
    pub n_subjects: usize,
}

/// σ over every scalar of the `embed` site at every token of every subject (unbiased, as
/// torch's `std()`).
pub fn subject_embedding_std(model: &Model, subjects: &[String]) -> Result<SubjectEmbeddingStd> {
    let tok = model.tokenizer()?;
    let (mut n, mut sum, mut sum_sq) = (0u64, 0f64, 0f64);
    for chunk in subjects.chunks(64) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|s| tok.encode(s)).collect::<Result<_>>()?;
        let batch = TokenBatch::new(&seqs, Padding::Right, tok.pad_id())?;
        let out = model
            .forward(&batch)
            .capture([Site::Embed])
            .stop_after(0)
            .run()?;
        let emb = out
            .capture(Site::Embed)?
            .to_dtype(candle_core::DType::F64)?;
        let d = model.config.d_model;
        let flat = emb.flatten_all()?.to_vec1::<f64>()?;
        for (b, &len) in batch.lengths.iter().enumerate() {
            for x in &flat[b * batch.len * d..(b * batch.len + len) * d] {
                n += 1;
                sum += x;
                sum_sq += x * x;
            }
        }
    }
    if n < 2 {
        return Err(Error::invalid(
            "no subject tokens to estimate the embedding standard deviation from",
        ));
    }
    let mean = sum / n as f64;
    let var = (sum_sq - n as f64 * mean * mean) / (n - 1) as f64;
    Ok(SubjectEmbeddingStd {
        sigma: var.max(0.0).sqrt(),
        n_values: n,
        n_subjects: subjects.len(),
    })
}

/// σ over the subjects of a known-facts file, cached by the embedding weights' and the
/// file's fingerprints.
pub fn cached_subject_embedding_std(
    model: &Model,
    facts: &Path,
    cache: &Cache,
) -> Result<SubjectEmbeddingStd> {
    let bytes = std::fs::read(facts).map_err(|e| Error::io(facts, e))?;
    let mut h = Fast64::new();
    h.bytes(&bytes);
    let name = format!(
        "sigma-e{:016x}-f{:016x}.json",
        model.embedding_fingerprint()?,
        h.finish()
    );
    let path = cache.file("noise", &name)?;
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(cached) = serde_json::from_str::<SubjectEmbeddingStd>(&text) {
            return Ok(cached);
        }
    }
    let subjects: Vec<String> = load_known_facts(facts)?
        .into_iter()
        .map(|f| f.subject)
        .collect();
    let result = subject_embedding_std(model, &subjects)?;
    let text = serde_json::to_string_pretty(&result).expect("plain data serialises");
    write_atomic(&path, text.as_bytes())?;
    Ok(result)
}
