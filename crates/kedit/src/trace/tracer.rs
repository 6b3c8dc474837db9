//! The causal-tracing engine: one clean run, one corrupted batch, and restorations scored
//! without recomputing what they cannot change.
//!
//! Doing less, exactly:
//! - the noise samples are the rows of one batch; logits are computed at the last position
//!   only;
//! - a restoration at layer `a` starts from the corrupted residual entering `a` (layers
//!   below are unaffected by it), and at token `t0` from the corrupted keys/values of the
//!   positions before `t0` (causal attention: they cannot see the restored state);
//! - several restorations run as more rows of one forward.

use std::collections::BTreeMap;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::Model;
use crate::runtime::kv_cache::LayerKv;
use crate::runtime::ops::softmax_last;
use crate::runtime::{Intervention, KvCache, LogitsAt, Padding, Site, TokenBatch};

/// A set of (site, token) states restored to their clean values together.
pub type Restoration = Vec<(Site, usize)>;

/// The (row, index) entries of one site and the clean value each receives.
type Entries = (Vec<(usize, usize)>, Vec<Tensor>);

/// A prompt with its clean states and its corrupted runs, ready to score restorations.
pub struct Tracer<'m> {
    model: &'m Model,
    ids: Vec<u32>,
    subject: (usize, usize),
    answer: u32,
    samples: usize,
    /// Clean values `[len, width]` of every site a restoration may read.
    clean: BTreeMap<Site, Tensor>,
    /// The corrupted residual entering each layer, `[samples, len, d]`.
    corrupted_pre: Vec<Tensor>,
    corrupted_kv: KvCache,
    pub clean_prob: f64,
    pub corrupted_prob: f64,
    /// The clean run's most likely next token and its probability.
    pub clean_top: (u32, f64),
}

/// Every site a restoration can read the clean value of.
pub fn restorable_sites(n_layers: usize) -> Vec<Site> {
    (0..n_layers)
        .flat_map(|l| [Site::ResidPost(l), Site::MlpOut(l), Site::AttnOut(l)])
        .chain((0..n_layers).map(Site::ResidPre))
        .collect()
}

/// p(answer) for each row of last-position logits `[rows, vocab]`.
fn answer_probs(logits: &Tensor, answer: u32) -> Result<Vec<f64>> {
    let p = softmax_last(&logits.to_dtype(candle_core::DType::F32)?)?;
    Ok(p.narrow(1, answer as usize, 1)?
        .squeeze(1)?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1::<f64>()?)
}

impl<'m> Tracer<'m> {
    /// Runs the clean prompt and `samples` corrupted copies (Gaussian noise of standard
    /// deviation `noise_std` added to the `embed` site at the subject's tokens, drawn from
    /// `seed`). `answer` defaults to the clean run's most likely next token.
    pub fn new(
        model: &'m Model,
        ids: &[u32],
        subject: (usize, usize),
        answer: Option<u32>,
        samples: usize,
        noise_std: f64,
        seed: u64,
    ) -> Result<Self> {
        let n_layers = model.config.n_layers;
        let len = ids.len();
        if len == 0 {
            return Err(Error::invalid("the prompt has no tokens"));
        }
        if subject.0 >= subject.1 || subject.1 > len {
            return Err(Error::invalid(format!(
                "subject tokens [{}, {}) are outside the prompt's {len} tokens",
                subject.0, subject.1
            )));
        }
        if samples == 0 {
            return Err(Error::invalid(
                "causal tracing needs at least one noise sample",
            ));
        }
        let sites = restorable_sites(n_layers);
        let clean_batch = TokenBatch::single(ids);
        let clean_out = model
            .forward(&clean_batch)
            .capture(sites.iter().copied())
            .run()?;
        let clean_logits = clean_out.logits()?;
        let probs = softmax_last(&clean_logits.to_dtype(candle_core::DType::F32)?)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        let top = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, &p)| (i as u32, p as f64))
            .ok_or_else(|| Error::invalid("the model returned no logits"))?;
        let answer = answer.unwrap_or(top.0);
        let clean_prob = *probs.get(answer as usize).ok_or_else(|| {
            Error::invalid(format!("answer token {answer} is outside the vocabulary"))
        })? as f64;
        let clean = clean_out
            .captures
            .into_iter()
            .map(|(site, t)| Ok((site, t.squeeze(0)?)))
            .collect::<Result<_>>()?;

        let rows: Vec<Vec<u32>> = vec![ids.to_vec(); samples];
        let batch = TokenBatch::new(&rows, Padding::Right, 0)?;
        let noisy: Vec<(usize, usize)> = (0..samples)
            .flat_map(|r| (subject.0..subject.1).map(move |t| (r, t)))
            .collect();
        let out = model
            .forward(&batch)
            .intervene(Intervention::noise(Site::Embed, noisy, noise_std, seed))
            .capture((0..n_layers).map(Site::ResidPre))
            .keep_kv()
            .run()?;
        let corrupted = answer_probs(out.logits()?, answer)?;
        let corrupted_prob = corrupted.iter().sum::<f64>() / samples as f64;
        let corrupted_pre = (0..n_layers)
            .map(|l| out.capture(Site::ResidPre(l)).cloned())
            .collect::<Result<_>>()?;
        let corrupted_kv = out
            .kv
            .ok_or_else(|| Error::invalid("the corrupted run kept no KV cache"))?;
        Ok(Tracer {
            model,
            ids: ids.to_vec(),
            subject,
            answer,
            samples,
            clean,
            corrupted_pre,
            corrupted_kv,
            clean_prob,
            corrupted_prob,
            clean_top: top,
        })
    }

    pub fn answer(&self) -> u32 {
        self.answer
    }

    pub fn subject(&self) -> (usize, usize) {
        self.subject
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// p(answer), averaged over the noise samples, with `restore` restored to clean.
    pub fn score(&self, restore: &[(Site, usize)]) -> Result<f64> {
        if restore.is_empty() {
            return Ok(self.corrupted_prob);
        }
        let start = restore
            .iter()
            .map(|(s, _)| start_layer_of(*s))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .min()
            .expect("not empty");
        let first_token = restore.iter().map(|(_, t)| *t).min().expect("not empty");
        Ok(self.score_many(start, first_token, &[restore.to_vec()])?[0])
    }

    /// Scores several restorations in one forward pass (`samples` rows each). Every
    /// restoration must touch only layers ≥ `start` and tokens ≥ `first_token`: the pass
    /// starts from the corrupted residual entering `start`, and reuses the corrupted
    /// keys/values of the positions before `first_token`.
    pub fn score_many(
        &self,
        start: usize,
        first_token: usize,
        restorations: &[Restoration],
    ) -> Result<Vec<f64>> {
        let n_layers = self.model.config.n_layers;
        let len = self.ids.len();
        if start >= n_layers || first_token >= len {
            return Err(Error::invalid(format!(
                "cannot start at layer {start}, token {first_token} (the model has {n_layers} \
                 layers, the prompt {len} tokens)"
            )));
        }
        let cells = restorations.len();
        if cells == 0 {
            return Ok(Vec::new());
        }
        let rows = cells * self.samples;
        let chunk = len - first_token;

        // Interventions, one per site: the clean value at (row, index within the chunk).
        let mut per_site: BTreeMap<Site, Entries> = BTreeMap::new();
        for (c, restoration) in restorations.iter().enumerate() {
            for &(site, t) in restoration {
                if start_layer_of(site)? < start || t < first_token || t >= len {
                    return Err(Error::invalid(format!(
                        "restoring `{site}` at token {t} is outside a pass starting at layer \
                         {start}, token {first_token}"
                    )));
                }
                let value = self
                    .clean
                    .get(&site)
                    .ok_or_else(|| Error::invalid(format!("site `{site}` cannot be restored")))?
                    .get(t)?;
                let entry = per_site.entry(site).or_default();
                for s in 0..self.samples {
                    entry.0.push((c * self.samples + s, t - first_token));
                    entry.1.push(value.clone());
                }
            }
        }
        let interventions = per_site
            .into_iter()
            .map(|(site, (at, values))| {
                Ok(Intervention::replace(site, at, Tensor::stack(&values, 0)?))
            })
            .collect::<Result<Vec<_>>>()?;

        let seqs = vec![self.ids[first_token..].to_vec(); rows];
        let batch =
            TokenBatch::continuation(&seqs, &vec![first_token as u32; rows], Padding::Right, 0)?;
        let resid = self.corrupted_pre[start].narrow(1, first_token, chunk)?;
        let resid = Tensor::cat(&vec![&resid; cells], 0)?;
        let prefix = (first_token > 0)
            .then(|| self.prefix_cache(start, first_token, cells))
            .transpose()?;
        let mut forward = self
            .model
            .forward(&batch)
            .start_at(start, resid)
            .interventions(interventions)
            .logits(LogitsAt::Last);
        if let Some(p) = &prefix {
            forward = forward.prefix(p);
        }
        let probs = answer_probs(forward.run()?.logits()?, self.answer)?;
        Ok(probs
            .chunks(self.samples)
            .map(|c| c.iter().sum::<f64>() / self.samples as f64)
            .collect())
    }

    /// The corrupted keys/values of positions `[0, len)` at layers ≥ `start`, repeated for
    /// `copies` groups of sample rows.
    fn prefix_cache(&self, start: usize, len: usize, copies: usize) -> Result<KvCache> {
        let kv = &self.corrupted_kv;
        let repeat = |t: &Tensor| -> Result<Tensor> {
            let part = t.narrow(2, 0, len)?;
            Ok(Tensor::cat(&vec![&part; copies], 0)?)
        };
        let layers = kv
            .layers
            .iter()
            .enumerate()
            .map(|(l, layer)| match layer {
                Some(lkv) if l >= start => Ok(Some(LayerKv {
                    k: repeat(&lkv.k)?,
                    v: repeat(&lkv.v)?,
                })),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = copies * self.samples;
        let positions: Vec<u32> = (0..rows).flat_map(|_| 0..len as u32).collect();
        Ok(KvCache {
            rows,
            len,
            positions,
            valid: vec![true; rows * len],
            layers,
        })
    }
}

/// The first layer a pass must run to see a restoration at `site`.
fn start_layer_of(site: Site) -> Result<usize> {
    site.layer().ok_or_else(|| {
        Error::invalid(format!(
            "`{site}` cannot be restored (only residual, attention and MLP sites of a block)"
        ))
    })
}
