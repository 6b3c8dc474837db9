//! Keys: inputs of the MLP output projection at the token where a fact is looked up.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::runtime::{Padding, Site, TokenBatch};

/// A tokenised prompt and the index of its looked-up token.
#[derive(Clone, Debug)]
pub struct Lookup {
    pub ids: Vec<u32>,
    pub index: usize,
}

/// Prompts batched for reading activations at their looked-up tokens. Each prompt is cut
/// after that token — the models are causal, so nothing after it changes what is read
/// there — and the prompts are sorted by length, so a batch pads little.
pub struct LookupBatches {
    pub batches: Vec<LookupBatch>,
    /// Row `i` of the batches' rows, taken in order, is prompt `order[i]`.
    order: Vec<usize>,
}

pub struct LookupBatch {
    pub tokens: TokenBatch,
    /// Flat index `row * len + token` of each row's looked-up token (its last).
    pub at: Tensor,
}

impl LookupBatch {
    /// The rows `[rows, width]` of `acts` (`[rows, len, width]`) at the looked-up tokens.
    pub fn select(&self, acts: &Tensor) -> Result<Tensor> {
        let (rows, len, width) = acts.dims3()?;
        Ok(acts
            .reshape((rows * len, width))?
            .index_select(&self.at, 0)?)
    }
}

impl LookupBatches {
    /// At most `per_batch` prompts to a batch.
    pub fn new(model: &Model, prompts: &[Lookup], per_batch: usize) -> Result<Self> {
        if prompts.is_empty() {
            return Err(Error::invalid("no prompt to read activations of"));
        }
        if let Some((i, p)) = prompts
            .iter()
            .enumerate()
            .find(|(_, p)| p.index >= p.ids.len())
        {
            return Err(Error::invalid(format!(
                "prompt {i}: its looked-up token {} is past its {} tokens",
                p.index,
                p.ids.len()
            )));
        }
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.sort_by_key(|&i| prompts[i].index);
        let pad = model.tokenizer()?.pad_id();
        let batches = order
            .chunks(per_batch.max(1))
            .map(|chunk| {
                let seqs: Vec<Vec<u32>> = chunk
                    .iter()
                    .map(|&i| prompts[i].ids[..=prompts[i].index].to_vec())
                    .collect();
                let tokens = TokenBatch::new(&seqs, Padding::Right, pad)?;
                let at: Vec<u32> = (0..tokens.rows)
                    .map(|b| (b * tokens.len + tokens.last(b)) as u32)
                    .collect();
                Ok(LookupBatch {
                    at: Tensor::new(at.as_slice(), model.device())?,
                    tokens,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LookupBatches { batches, order })
    }

    /// The batches' selected rows (one `[rows, width]` per batch, in batch order) as one
    /// `[prompts, width]` in the prompts' order.
    pub fn in_prompt_order(&self, parts: &[Tensor]) -> Result<Tensor> {
        let sorted = Tensor::cat(parts, 0)?;
        let mut position = vec![0u32; self.order.len()];
        for (row, &prompt) in self.order.iter().enumerate() {
            position[prompt] = row as u32;
        }
        let position = Tensor::new(position.as_slice(), sorted.device())?;
        Ok(sorted.index_select(&position, 0)?)
    }
}

/// The keys `[n, d_ff]` of `blocks.{layer}.mlp.key` at each prompt's looked-up token, in one
/// batched forward pass that stops after `layer`.
pub fn keys_at(model: &Model, layer: usize, prompts: &[Lookup]) -> Result<Tensor> {
    at_lookups(model, Site::MlpKey(layer), prompts)
}

/// The activations `[n, width]` at `site` at each prompt's looked-up token, in one batched
/// forward pass that stops after the site's layer.
pub fn at_lookups(model: &Model, site: Site, prompts: &[Lookup]) -> Result<Tensor> {
    let reads = LookupBatches::new(model, prompts, prompts.len())?;
    let parts = reads
        .batches
        .iter()
        .map(|batch| {
            let mut forward = model.forward(&batch.tokens).capture([site]);
            if let Some(layer) = site.layer() {
                forward = forward.stop_after(layer);
            }
            batch.select(forward.run()?.capture(site)?)
        })
        .collect::<Result<Vec<_>>>()?;
    reads.in_prompt_order(&parts)
}

/// k* = the mean over context templates of the key at the subject's looked-up token.
pub fn key_star(model: &Model, layer: usize, prompts: &[Lookup]) -> Result<Tensor> {
    Ok(keys_at(model, layer, prompts)?
        .to_dtype(DType::F64)?
        .mean(0)?)
}
