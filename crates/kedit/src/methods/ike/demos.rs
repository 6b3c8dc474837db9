//! IKE's demonstration store: from each training record, the three demonstrations the paper
//! builds — copy (the new fact asked back), update (a paraphrase answered with the new
//! target), retain (an unrelated prompt answered as before) — embedded once with the
//! sentence encoder and cached, keyed by the demonstrations and the encoder.

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::cache::Cache;
use crate::encoder::SentenceEncoder;
use crate::error::{Error, Result};
use crate::hash::Fast64;
use crate::progress::Progress;
use crate::request::EditRequest;

/// Sentences embedded per progress step.
const EMBED_STEP: usize = 256;

/// "New Fact: {prompt} {target}" — how IKE states a fact.
pub fn new_fact(r: &EditRequest) -> String {
    format!("New Fact: {} {}\n", r.prompt, r.target_new)
}

/// The copy, update and retain demonstrations of one training record (update and retain
/// only when the record has a paraphrase and a locality probe).
pub fn demonstrations(r: &EditRequest) -> Vec<String> {
    let fact = new_fact(r);
    let mut out = vec![format!("{fact}Prompt: {} {}\n\n", r.prompt, r.target_new)];
    if let Some(p) = r.rephrase.first() {
        out.push(format!("{fact}Prompt: {p} {}\n\n", r.target_new));
    }
    if let Some(probe) = r.locality.values().flatten().next() {
        out.push(format!(
            "{fact}Prompt: {} {}\n\n",
            probe.prompt, probe.answer
        ));
    }
    out
}

/// The text a request is retrieved with (the copy demonstration without its answer).
pub fn query(r: &EditRequest) -> String {
    format!("{}Prompt: {}\n\n", new_fact(r), r.prompt)
}

/// Every demonstration of a training pool and its unit-norm embedding.
pub struct DemoStore {
    pub sentences: Vec<String>,
    /// `[sentences, dim]`.
    pub embeddings: Tensor,
}

impl DemoStore {
    /// Builds the store from `records` (read from `source`), from the cache when it holds
    /// it.
    pub fn build(
        source: &Path,
        records: &[EditRequest],
        encoder: &SentenceEncoder,
        cache: &Cache,
        progress: &mut dyn Progress,
    ) -> Result<Self> {
        let sentences: Vec<String> = records.iter().flat_map(demonstrations).collect();
        if sentences.is_empty() {
            return Err(Error::invalid(format!(
                "{}: the retrieval pool holds no record to build demonstrations from",
                source.display()
            )));
        }
        let mut h = Fast64::new();
        h.u64(encoder.fingerprint());
        for s in &sentences {
            h.str(s);
        }
        let path = cache.file("ike", &format!("demos-{:016x}.safetensors", h.finish()))?;
        if let Ok(mut t) = candle_core::safetensors::load(&path, &Device::Cpu) {
            if let Some(e) = t.remove("embeddings") {
                if e.dims() == [sentences.len(), encoder.dim()] {
                    return Ok(DemoStore {
                        sentences,
                        embeddings: e,
                    });
                }
            }
        }
        progress.phase("IKE demonstrations", sentences.len(), 0);
        let mut parts = Vec::new();
        for chunk in sentences.chunks(EMBED_STEP) {
            parts.push(encoder.embed(chunk)?);
            progress.advance(chunk.len());
        }
        let embeddings = Tensor::cat(&parts, 0)?;
        let mut map = std::collections::BTreeMap::new();
        map.insert("embeddings".to_string(), embeddings.clone());
        crate::model::safetensors_io::save_atomic(&map, &path)?;
        Ok(DemoStore {
            sentences,
            embeddings,
        })
    }

    /// The `k` demonstrations most similar to any of `queries` (`[n, dim]`, unit norm),
    /// most similar first; each demonstration's score is its best similarity to a query.
    pub fn nearest(&self, queries: &Tensor, k: usize) -> Result<Vec<(usize, f32)>> {
        let sims = queries
            .matmul(&self.embeddings.t()?)?
            .max(0)?
            .to_vec1::<f32>()?;
        let mut order: Vec<usize> = (0..sims.len()).collect();
        order.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]).then(a.cmp(&b)));
        Ok(order.into_iter().take(k).map(|i| (i, sims[i])).collect())
    }
}
