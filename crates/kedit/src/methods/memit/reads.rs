//! Reading activations of the same prompts at ascending layers while the layers below are
//! edited one by one.
//!
//! MEMIT reads every request's key at a layer (and the residual at the last layer) on the
//! model as updated so far, then updates that layer, then moves up. An update at layer l
//! changes nothing below l, so the residual stream entering l can be kept and the next read
//! runs only the blocks from l up, not the whole model from the embeddings.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::methods::rome::key::Lookup;
use crate::model::Model;
use crate::runtime::{Padding, Site, TokenBatch};

/// Prompts read per forward pass.
const PROMPTS_PER_PASS: usize = 96;

struct Chunk {
    batch: TokenBatch,
    /// Flat index of each prompt's looked-up token in `[rows * len]`.
    at: Tensor,
    /// The residual entering block `layer`, `[rows, len, d]`, once a read has kept it.
    kept: Option<(usize, Tensor)>,
}

pub struct LayerReads {
    chunks: Vec<Chunk>,
}

impl LayerReads {
    pub fn new(model: &Model, prompts: &[Lookup]) -> Result<Self> {
        let pad = model.tokenizer()?.pad_id();
        let chunks = prompts
            .chunks(PROMPTS_PER_PASS)
            .map(|ps| {
                let seqs: Vec<Vec<u32>> = ps.iter().map(|p| p.ids.clone()).collect();
                let batch = TokenBatch::new(&seqs, Padding::Right, pad)?;
                let at: Vec<u32> = ps
                    .iter()
                    .enumerate()
                    .map(|(b, p)| (b * batch.len + batch.index(b, p.index)) as u32)
                    .collect();
                Ok(Chunk {
                    at: Tensor::new(at.as_slice(), model.device())?,
                    batch,
                    kept: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LayerReads { chunks })
    }

    /// The activations `[prompts, width]` at `site` at each prompt's looked-up token, on
    /// `model`; keeps the residual entering block `keep` for later reads. The caller promises
    /// that later reads are of models that differ from `model` only in blocks `keep` and up.
    pub fn read(&mut self, model: &Model, site: Site, keep: usize) -> Result<Tensor> {
        let top = site
            .layer()
            .ok_or_else(|| Error::invalid(format!("`{site}` is not inside a block")))?;
        if keep > top {
            return Err(Error::invalid(format!(
                "cannot keep the residual entering block {keep} while reading `{site}`"
            )));
        }
        let keep_site = Site::ResidPre(keep);
        let mut parts = Vec::with_capacity(self.chunks.len());
        for chunk in &mut self.chunks {
            let mut forward = model
                .forward(&chunk.batch)
                .capture([site, keep_site])
                .stop_after(top);
            if let Some((layer, resid)) = &chunk.kept {
                if *layer > keep {
                    return Err(Error::invalid(format!(
                        "the residual entering block {layer} is kept; block {keep} is below it"
                    )));
                }
                forward = forward.start_at(*layer, resid.clone());
            }
            let out = forward.run()?;
            let acts = out.capture(site)?;
            let (rows, len, width) = acts.dims3()?;
            parts.push(
                acts.reshape((rows * len, width))?
                    .index_select(&chunk.at, 0)?,
            );
            chunk.kept = Some((keep, out.capture(keep_site)?.clone()));
        }
        Ok(Tensor::cat(&parts, 0)?)
    }
}
