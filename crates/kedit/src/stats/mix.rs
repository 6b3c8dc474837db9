//! C over several corpora: the main corpus and further sources, each weighted.
//!
//! A source of weight w counts as if its documents were repeated w times:
//! C = (S₀ + Σ wᵢ Sᵢ) / (n₀ + Σ wᵢ nᵢ), where Sᵢ = Σ k kᵀ and nᵢ the tokens of corpus i.
//! Every corpus is computed (and cached) on its own, so changing a weight costs nothing
//! and a source shared by several requests is computed once. MEMIT's C stands for the keys
//! an edit must leave alone; a small corpus of the kind of text the model is asked about
//! (questions, say) can be given the weight its importance deserves without repeating it
//! on disk (docs/mass-editing.md, "Unrelated questions in the preserved statistics").

use candle_core::DType;

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::progress::Progress;
use crate::stats::{collect, KeyStats, MixedSource, StatsRequest};

/// The request that computes one source: every document it has, the rest as `base`.
fn source_request(base: &StatsRequest, source: &MixedSource) -> StatsRequest {
    StatsRequest {
        corpus: source.corpus.clone(),
        selection: source.selection.clone(),
        n_docs: usize::MAX,
        mix: Vec::new(),
        ..base.clone()
    }
}

/// Every source's weight, file and selection, checked before any pass.
fn check_sources(req: &StatsRequest) -> Result<()> {
    for s in &req.mix {
        source_request(req, s).open_corpus()?;
        if !(s.weight.is_finite() && s.weight > 0.0) {
            return Err(Error::config(format!(
                "{}: the weight of a statistics source must be a positive number, not {}",
                s.corpus.display(),
                s.weight
            )));
        }
    }
    Ok(())
}

/// C for every requested layer, mixed over the request's sources; computed where not cached.
pub(crate) fn run(
    model: &Model,
    req: &StatsRequest,
    cache: &Cache,
    progress: &mut dyn Progress,
) -> Result<Vec<KeyStats>> {
    check_sources(req)?;
    let base = collect::run(model, req, cache, progress)?;
    if req.mix.is_empty() {
        return Ok(base);
    }
    let mut sources = Vec::with_capacity(req.mix.len());
    for source in &req.mix {
        let stats = collect::run(model, &source_request(req, source), cache, progress)?;
        sources.push((stats, source.weight));
    }
    base.into_iter()
        .enumerate()
        .map(|(i, b)| {
            let parts: Vec<(&KeyStats, f64)> = sources.iter().map(|(s, w)| (&s[i], *w)).collect();
            combine(b, &parts)
        })
        .collect()
}

/// The mixed C of `layer` when the main corpus and every source are cached.
pub(crate) fn cached(
    model: &Model,
    layer: usize,
    req: &StatsRequest,
    cache: &Cache,
) -> Result<Option<KeyStats>> {
    check_sources(req)?;
    let Some(base) = collect::cached(model, layer, req, cache)? else {
        return Ok(None);
    };
    let mut sources = Vec::with_capacity(req.mix.len());
    for source in &req.mix {
        match collect::cached(model, layer, &source_request(req, source), cache)? {
            Some(s) => sources.push((s, source.weight)),
            None => return Ok(None),
        }
    }
    let parts: Vec<(&KeyStats, f64)> = sources.iter().map(|(s, w)| (s, *w)).collect();
    combine(base, &parts).map(Some)
}

/// (n₀C₀ + Σ wᵢnᵢCᵢ) / (n₀ + Σ wᵢnᵢ), in f64, returned in `base`'s precision. The counts
/// are the weighted ones; the file named is the main corpus's.
pub fn combine(base: KeyStats, sources: &[(&KeyStats, f64)]) -> Result<KeyStats> {
    if sources.is_empty() {
        return Ok(base);
    }
    let dtype = base.moment.dtype();
    let n0 = base.n_tokens as f64;
    let mut total = n0;
    let mut sum = (base.moment.to_dtype(DType::F64)? * n0)?;
    let mut docs = base.n_docs as f64;
    for (s, w) in sources {
        if s.layer != base.layer || s.moment.dims() != base.moment.dims() {
            return Err(Error::invalid(format!(
                "cannot mix the statistics of layer {} ({:?}) with those of layer {} ({:?})",
                base.layer,
                base.moment.dims(),
                s.layer,
                s.moment.dims()
            )));
        }
        let n = s.n_tokens as f64 * w;
        sum = (sum + (s.moment.to_dtype(DType::F64)? * n)?)?;
        total += n;
        docs += s.n_docs as f64 * w;
    }
    Ok(KeyStats {
        moment: (sum / total)?.to_dtype(dtype)?,
        n_tokens: total.round() as u64,
        n_docs: docs.round() as usize,
        ..base
    })
}
