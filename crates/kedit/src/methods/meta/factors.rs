//! The gradient of an edit's loss with respect to MLP output projections, kept in its
//! rank-one factors: for a linear map `y = W k`, `∇W L = Σₜ δₜ kₜᵀ` over the tokens `t`,
//! with `kₜ` the projection's input (the MLP key, site `blocks.{l}.mlp.key`) and `δₜ` the
//! loss's gradient at its output (site `blocks.{l}.mlp.out`). Meta-learned editors (MEND,
//! KE) read the factors, not the `d × d_ff` matrix.
//!
//! Only the blocks from the lowest edited layer up take part: the blocks below are frozen
//! and their output (the residual stream entering that layer) is computed once per text.

use candle_core::{DType, Tensor, Var};

use super::example::Scored;
use crate::error::{Error, Result};
use crate::methods::loss::mean_row_nll;
use crate::model::Model;
use crate::runtime::{Intervention, LogitsAt, Padding, Site, TokenBatch, WeightOverrides};

/// The factors of one text's gradient at each edited layer.
#[derive(Clone, Debug)]
pub struct Factors {
    /// Per layer (in the order asked for): the keys `[n, d_ff]`.
    pub keys: Vec<Tensor>,
    /// Per layer: the output gradients `[n, d_model]` of the mean target NLL.
    pub grads: Vec<Tensor>,
    /// The mean final-norm hidden state over the text's tokens `[d_model]`: the condition
    /// KE encodes.
    pub condition: Tensor,
    /// The NLL the gradient is of.
    pub loss: f64,
}

/// The residual stream entering `layer` for each text, `[1, len, d]` each (the frozen
/// part of every pass over the text), run in batches of `batch` rows.
pub fn frozen_resid(
    model: &Model,
    texts: &[&[u32]],
    layer: usize,
    batch: usize,
) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(batch.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|t| t.to_vec()).collect();
        let tokens = TokenBatch::new(&seqs, Padding::Right, 0)?;
        let resid = model.forward(&tokens).resid_pre(layer)?;
        for (row, s) in seqs.iter().enumerate() {
            out.push(
                resid
                    .narrow(0, row, 1)?
                    .narrow(1, 0, s.len())?
                    .contiguous()?,
            );
        }
    }
    Ok(out)
}

/// The tokens of `text` up to the last one the loss reads, and the residual stream
/// entering `first` for them (`resid`, when given, is for the whole text).
fn head(
    model: &Model,
    text: &Scored,
    resid: Option<&Tensor>,
    first: usize,
) -> Result<(TokenBatch, Tensor)> {
    let n = text.last_read() + 1;
    let tokens = TokenBatch::single(&text.ids[..n]);
    let resid = match resid {
        Some(r) => r.narrow(1, 0, n)?,
        None => model.forward(&tokens).resid_pre(first)?,
    };
    Ok((tokens, resid))
}

/// The factors of the gradient of `text`'s mean target NLL at the output projections of
/// `layers`, under the model as it is (`overrides` none: the base weights are read).
pub fn gradient_factors(
    model: &Model,
    text: &Scored,
    resid: Option<&Tensor>,
    layers: &[usize],
) -> Result<Factors> {
    let first = *layers
        .iter()
        .min()
        .ok_or_else(|| Error::invalid("no layer to edit"))?;
    let (tokens, resid) = head(model, text, resid, first)?;
    let n = tokens.len;
    let entries: Vec<(usize, usize)> = (0..n).map(|t| (0, t)).collect();
    let d = model.config.d_model;
    let vars: Vec<Var> = layers
        .iter()
        .map(|_| Var::zeros((n, d), resid.dtype(), resid.device()))
        .collect::<candle_core::Result<_>>()?;
    let interventions = layers
        .iter()
        .zip(&vars)
        .map(|(&l, v)| Intervention::add(Site::MlpOut(l), entries.clone(), v.as_tensor().clone()));
    let mut captures: Vec<Site> = layers.iter().map(|&l| Site::MlpKey(l)).collect();
    captures.push(Site::FinalNorm);
    let at: Vec<(usize, usize)> = text.positions.iter().map(|&p| (0, p)).collect();
    let out = model
        .forward(&tokens)
        .start_at(first, resid)
        .interventions(interventions)
        .capture(captures)
        .logits(LogitsAt::Entries(at))
        .run()?;
    let logits = out.logits()?;
    let rows = vec![0; text.targets.len()];
    let loss = mean_row_nll(logits, &text.targets, &rows, 1)?;
    let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if !value.is_finite() {
        return Err(Error::EditRefused(format!(
            "the edit's loss is {value}: no gradient to edit with"
        )));
    }
    let store = loss.backward()?;
    let mut keys = Vec::with_capacity(layers.len());
    let mut grads = Vec::with_capacity(layers.len());
    for (&l, v) in layers.iter().zip(&vars) {
        keys.push(out.capture(Site::MlpKey(l))?.squeeze(0)?.detach());
        let g = store
            .get(v.as_tensor())
            .cloned()
            .unwrap_or(v.as_tensor().zeros_like()?);
        grads.push(g.detach());
    }
    let condition = out.capture(Site::FinalNorm)?.squeeze(0)?.mean(0)?.detach();
    Ok(Factors {
        keys,
        grads,
        condition,
        loss: value,
    })
}

/// Logits of `text` under `overrides` at `at` (its target positions, or every token).
pub fn logits_under(
    model: &Model,
    text: &Scored,
    resid: Option<&Tensor>,
    first: usize,
    overrides: &WeightOverrides,
    every_token: bool,
) -> Result<Tensor> {
    let (tokens, resid) = head(model, text, resid, first)?;
    let at = if every_token {
        (0..tokens.len).map(|t| (0, t)).collect()
    } else {
        text.positions.iter().map(|&p| (0, p)).collect()
    };
    let out = model
        .forward(&tokens)
        .start_at(first, resid)
        .weights(overrides)
        .logits(LogitsAt::Entries(at))
        .run()?;
    Ok(out.logits.expect("asked for logits"))
}
