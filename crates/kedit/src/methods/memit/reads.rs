//! Reading activations of the same prompts at ascending layers while the layers below are
//! edited one by one.
//!
//! MEMIT reads every request's key at a layer (and the residual at the last layer) on the
//! model as updated so far, then updates that layer, then moves up. An update at layer l
//! changes nothing below l, so the residual stream entering l can be kept and the next read
//! runs only the blocks from l up, not the whole model from the embeddings.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::methods::rome::key::{Lookup, LookupBatches};
use crate::model::Model;
use crate::runtime::Site;

/// Prompts read per forward pass.
const PROMPTS_PER_PASS: usize = 96;

pub struct LayerReads {
    prompts: LookupBatches,
    /// Per batch, the residual entering block `layer`, `[rows, len, d]`, once a read has
    /// kept it.
    kept: Vec<Option<(usize, Tensor)>>,
}

impl LayerReads {
    pub fn new(model: &Model, prompts: &[Lookup]) -> Result<Self> {
        Self::with_batch_size(model, prompts, PROMPTS_PER_PASS)
    }

    /// At most `per_pass` prompts to a forward pass.
    pub fn with_batch_size(model: &Model, prompts: &[Lookup], per_pass: usize) -> Result<Self> {
        let prompts = LookupBatches::new(model, prompts, per_pass)?;
        let kept = prompts.batches.iter().map(|_| None).collect();
        Ok(LayerReads { prompts, kept })
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
        let mut parts = Vec::with_capacity(self.kept.len());
        for (batch, kept) in self.prompts.batches.iter().zip(&mut self.kept) {
            let mut forward = model
                .forward(&batch.tokens)
                .capture([site, keep_site])
                .stop_after(top);
            if let Some((layer, resid)) = kept {
                if *layer > keep {
                    return Err(Error::invalid(format!(
                        "the residual entering block {layer} is kept; block {keep} is below it"
                    )));
                }
                forward = forward.start_at(*layer, resid.clone());
            }
            let out = forward.run()?;
            parts.push(batch.select(out.capture(site)?)?);
            *kept = Some((keep, out.capture(keep_site)?.clone()));
        }
        self.prompts.in_prompt_order(&parts)
    }
}
