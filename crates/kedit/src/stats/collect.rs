//! The one pass: documents → tokens → batched forward (stopped after the highest layer
//! needed) → Σ k kᵀ per layer, with checkpoints, a progress bar and the cache.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{CpuStorage, DType, Storage, Tensor};

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::progress::Progress;
use crate::runtime::{Padding, Site, TokenBatch};
use crate::stats::corpus::{prefix, Corpus};
use crate::stats::moment::MomentSum;
use crate::stats::store::{self, StatsKey};
use crate::stats::{KeyStats, PassTiming, StatsRequest};

const MOMENT: &str = "moment";
const SUM: &str = "sum";

/// A layer still to compute in this pass.
struct Pending {
    key: StatsKey,
    sum: MomentSum,
    /// Documents already in `sum`.
    docs_done: usize,
    /// False when the partial file on disk is further along than this run needs: keep it.
    write_partial: bool,
}

fn check_request(model: &Model, req: &StatsRequest) -> Result<()> {
    let n = model.config.n_layers;
    if req.layers.is_empty() {
        return Err(Error::config("no layers requested for key statistics"));
    }
    if let Some(&bad) = req.layers.iter().find(|&&l| l >= n) {
        return Err(Error::config(format!(
            "layer {bad} does not exist: the model has layers 0..{}",
            n - 1
        )));
    }
    if req.max_len == 0 || req.batch_size == 0 || req.n_docs == 0 {
        return Err(Error::config(
            "max_len, batch_size and n_docs must be at least 1",
        ));
    }
    Ok(())
}

fn keys(model: &Model, req: &StatsRequest, corpus_fingerprint: u64) -> Result<Vec<StatsKey>> {
    let fingerprints = model.key_fingerprints(&req.layers)?;
    Ok(req
        .layers
        .iter()
        .zip(fingerprints)
        .map(|(&layer, model_fingerprint)| StatsKey {
            layer,
            model_fingerprint,
            corpus_fingerprint,
            max_len: req.max_len,
            precision: req.precision,
        })
        .collect())
}

fn from_store(layer: usize, stored: store::Stored, path: &Path) -> KeyStats {
    KeyStats {
        layer,
        n_tokens: stored.n_tokens,
        n_docs: stored.n_docs,
        moment: stored.tensor,
        path: path.to_path_buf(),
        computed: None,
    }
}

/// The documents a request will use: `n_docs`, or all the corpus has if fewer.
fn effective_docs(corpus: &Corpus, req: &StatsRequest) -> Result<usize> {
    let n = corpus.count_documents(req.n_docs)?;
    if n == 0 {
        return Err(Error::config(format!(
            "{}: the corpus has no documents with text",
            corpus.path.display()
        )));
    }
    Ok(n)
}

pub(crate) fn cached(
    model: &Model,
    layer: usize,
    req: &StatsRequest,
    cache: &Cache,
) -> Result<Option<KeyStats>> {
    let mut one = req.clone();
    one.layers = vec![layer];
    check_request(model, &one)?;
    let corpus = req.open_corpus()?;
    let n_docs = effective_docs(&corpus, req)?;
    let key = keys(model, &one, corpus.fingerprint()?)?.remove(0);
    let path = key.final_path(cache, n_docs)?;
    Ok(store::load(&path, MOMENT)?.map(|s| from_store(layer, s, &path)))
}

pub(crate) fn any_cached(model: &Model, layer: usize, cache: &Cache) -> Result<Option<KeyStats>> {
    if layer >= model.config.n_layers {
        return Err(Error::config(format!(
            "layer {layer} does not exist: the model has layers 0..{}",
            model.config.n_layers - 1
        )));
    }
    let dir = cache.dir().join("stats");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let stem = format!("layer{layer}-m{:016x}-", model.key_fingerprint(layer)?);
    let mut best: Option<KeyStats> = None;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(&dir, e))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.starts_with(&stem) || name.ends_with(".partial.safetensors") {
            continue;
        }
        if let Some(stored) = store::load(&path, MOMENT)? {
            if best.as_ref().is_none_or(|b| stored.n_tokens > b.n_tokens) {
                best = Some(from_store(layer, stored, &path));
            }
        }
    }
    Ok(best)
}

pub(crate) fn run(
    model: &Model,
    req: &StatsRequest,
    cache: &Cache,
    progress: &mut dyn Progress,
) -> Result<Vec<KeyStats>> {
    check_request(model, req)?;
    let corpus = req.open_corpus()?;
    let n_docs = effective_docs(&corpus, req)?;
    // A layer asked for twice is computed once.
    let mut unique = req.clone();
    unique.layers.sort_unstable();
    unique.layers.dedup();
    let mut done: BTreeMap<usize, KeyStats> = BTreeMap::new();
    let mut pending = Vec::new();
    for key in keys(model, &unique, corpus.fingerprint()?)? {
        let path = key.final_path(cache, n_docs)?;
        match store::load(&path, MOMENT)? {
            Some(stored) => {
                done.insert(key.layer, from_store(key.layer, stored, &path));
            }
            None => pending.push(resume_or_start(model, key, n_docs, cache)?),
        }
    }
    if !pending.is_empty() {
        let timing = accumulate(model, req, &corpus, n_docs, &mut pending, cache, progress)?;
        for p in pending {
            let path = p.key.final_path(cache, n_docs)?;
            let moment = p.sum.moment()?;
            let n_tokens = p.sum.n_tokens;
            store::save(
                &path,
                &p.key,
                MOMENT,
                &moment,
                n_docs,
                n_tokens,
                &corpus.path,
            )?;
            if p.write_partial {
                checkpoint(&p, cache, &corpus.path)?;
            }
            let layer = p.key.layer;
            done.insert(
                layer,
                KeyStats {
                    layer,
                    n_tokens,
                    n_docs,
                    moment,
                    path,
                    computed: Some(timing),
                },
            );
        }
    }
    req.layers
        .iter()
        .map(|l| {
            done.get(l)
                .cloned()
                .ok_or_else(|| Error::invalid(format!("no statistics were made for layer {l}")))
        })
        .collect()
}

fn resume_or_start(model: &Model, key: StatsKey, n_docs: usize, cache: &Cache) -> Result<Pending> {
    let width = model.config.d_ff;
    let fresh = |write_partial| Pending {
        sum: MomentSum::zeros(width, key.precision),
        key: key.clone(),
        docs_done: 0,
        write_partial,
    };
    let Some(partial) = store::load(&key.partial_path(cache)?, SUM)? else {
        return Ok(fresh(true));
    };
    if partial.n_docs > n_docs {
        return Ok(fresh(false));
    }
    let sum = MomentSum::from_sum_tensor(&partial.tensor, partial.n_tokens, key.precision)?;
    if sum.width() != width {
        return Ok(fresh(true));
    }
    Ok(Pending {
        key,
        sum,
        docs_done: partial.n_docs,
        write_partial: true,
    })
}

fn checkpoint(p: &Pending, cache: &Cache, corpus: &Path) -> Result<()> {
    let path = p.key.partial_path(cache)?;
    let sum = p.sum.sum_tensor()?;
    store::save(
        &path,
        &p.key,
        SUM,
        &sum,
        p.docs_done,
        p.sum.n_tokens,
        corpus,
    )
}

/// Token ids of a document's first `max_len` tokens. Only a prefix of the text is
/// tokenized (16 bytes a token is ample for natural text); when it yields too few tokens to
/// be sure the cut did not change them, the whole text is.
fn first_tokens(model: &Model, text: &str, max_len: usize) -> Result<Vec<u32>> {
    let tok = model.tokenizer()?;
    let margin = 16;
    let cut = prefix(text, (max_len + margin) * 16);
    let mut ids = tok.encode_input(cut)?;
    if cut.len() < text.len() && ids.len() < max_len + margin {
        ids = tok.encode_input(text)?;
    }
    ids.truncate(max_len);
    Ok(ids)
}

fn accumulate(
    model: &Model,
    req: &StatsRequest,
    corpus: &Corpus,
    n_docs: usize,
    pending: &mut [Pending],
    cache: &Cache,
    progress: &mut dyn Progress,
) -> Result<PassTiming> {
    let start_doc = pending.iter().map(|p| p.docs_done).min().unwrap_or(0);
    let top = pending.iter().map(|p| p.key.layer).max().unwrap_or(0);
    let sites: Vec<Site> = pending.iter().map(|p| Site::MlpKey(p.key.layer)).collect();
    let pad = model.tokenizer()?.pad_id();
    let width = model.config.d_ff;
    progress.phase("key statistics (documents)", n_docs, start_doc);
    let started = Instant::now();
    let mut last_checkpoint = Instant::now();
    let mut tokens_run = 0u64;
    let mut docs = corpus.documents()?.skip(start_doc).take(n_docs - start_doc);
    let mut doc_index = start_doc;
    loop {
        let texts: Vec<String> = docs
            .by_ref()
            .take(req.batch_size)
            .map(|d| d.map(|d| d.text))
            .collect::<Result<_>>()?;
        if texts.is_empty() {
            break;
        }
        let seqs: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| first_tokens(model, t, req.max_len))
            .collect::<Result<_>>()?;
        let batch = TokenBatch::new(&seqs, Padding::Right, pad)?;
        let out = model
            .forward(&batch)
            .capture(sites.iter().copied())
            .stop_after(top)
            .run()?;
        for (p, site) in pending.iter_mut().zip(&sites) {
            // Right padding: row b's real tokens are its first `lengths[b]` positions.
            let first_new = p.docs_done.saturating_sub(doc_index).min(batch.rows);
            let all_real = first_new == 0 && batch.lengths.iter().all(|&n| n == batch.len);
            with_f32_values(out.capture(*site)?, |keys| {
                if all_real {
                    return p.sum.add_rows(keys);
                }
                let mut picked = Vec::with_capacity(batch.rows * batch.len * width);
                for b in first_new..batch.rows {
                    let at = b * batch.len * width;
                    picked.extend_from_slice(&keys[at..at + batch.lengths[b] * width]);
                }
                p.sum.add_rows(&picked)
            })?;
            p.docs_done = p.docs_done.max(doc_index + batch.rows);
        }
        tokens_run += batch.num_tokens() as u64;
        doc_index += batch.rows;
        let seconds = started.elapsed().as_secs_f64();
        progress.advance(batch.rows);
        progress.status(&format!("{:.0} tokens/s", tokens_run as f64 / seconds));
        if last_checkpoint.elapsed().as_secs_f64() >= req.checkpoint_seconds {
            for p in pending.iter().filter(|p| p.write_partial) {
                checkpoint(p, cache, &corpus.path)?;
            }
            last_checkpoint = Instant::now();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(PassTiming {
        seconds,
        tokens: tokens_run,
        tokens_per_second: tokens_run as f64 / seconds.max(1e-9),
    })
}

/// Runs `f` on the f32 values of `t`, borrowed when `t` is contiguous f32 on the CPU (keys
/// of five layers are 60 MB a batch: no need to copy them).
fn with_f32_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    if t.dtype() == DType::F32 {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return f(&v[a..b]);
        }
    }
    let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    f(&values)
}
