//! Keys: inputs of the MLP output projection at the token where a fact is looked up.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::model::Model;
use crate::runtime::{Padding, Site, TokenBatch};

/// A tokenised prompt and the index of its looked-up token.
#[derive(Clone, Debug)]
pub struct Lookup {
    pub ids: Vec<u32>,
    pub index: usize,
}

/// The keys `[n, d_ff]` of `blocks.{layer}.mlp.key` at each prompt's looked-up token, in one
/// batched forward pass that stops after `layer`.
pub fn keys_at(model: &Model, layer: usize, prompts: &[Lookup]) -> Result<Tensor> {
    at_lookups(model, Site::MlpKey(layer), prompts)
}

/// The activations `[n, width]` at `site` at each prompt's looked-up token, in one batched
/// forward pass that stops after the site's layer.
pub fn at_lookups(model: &Model, site: Site, prompts: &[Lookup]) -> Result<Tensor> {
    let seqs: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    let pad = model.tokenizer()?.pad_id();
    let batch = TokenBatch::new(&seqs, Padding::Right, pad)?;
    let mut forward = model.forward(&batch).capture([site]);
    if let Some(layer) = site.layer() {
        forward = forward.stop_after(layer);
    }
    let out = forward.run()?;
    let acts = out.capture(site)?;
    let (rows, len, width) = acts.dims3()?;
    let idx: Vec<u32> = prompts
        .iter()
        .enumerate()
        .map(|(b, p)| (b * len + batch.index(b, p.index)) as u32)
        .collect();
    let idx = Tensor::new(idx.as_slice(), model.device())?;
    Ok(acts.reshape((rows * len, width))?.index_select(&idx, 0)?)
}

/// k* = the mean over context templates of the key at the subject's looked-up token.
pub fn key_star(model: &Model, layer: usize, prompts: &[Lookup]) -> Result<Tensor> {
    Ok(keys_at(model, layer, prompts)?
        .to_dtype(DType::F64)?
        .mean(0)?)
}
