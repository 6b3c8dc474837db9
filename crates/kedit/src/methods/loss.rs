//! Losses shared by methods.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::runtime::ops::log_softmax_last;

/// Mean over rows of the mean negative log-likelihood of each row's target tokens.
///
/// `logits: [n, vocab]` holds one entry per scored token; `targets[i]` is the token entry
/// `i` should predict and `rows[i]` the row it belongs to (0..n_rows).
pub fn mean_row_nll(
    logits: &Tensor,
    targets: &[u32],
    rows: &[usize],
    n_rows: usize,
) -> Result<Tensor> {
    let mut per_row = vec![0usize; n_rows];
    for &r in rows {
        per_row[r] += 1;
    }
    let weights: Vec<f32> = rows
        .iter()
        .map(|&r| 1.0 / (per_row[r] * n_rows) as f32)
        .collect();
    let device = logits.device();
    let lp = log_softmax_last(logits)?;
    let idx = Tensor::new(targets, device)?.unsqueeze(1)?;
    let picked = lp.gather(&idx, 1)?.squeeze(1)?;
    let w = Tensor::new(weights.as_slice(), device)?.to_dtype(logits.dtype())?;
    Ok((picked * w)?.sum_all()?.neg()?)
}

/// exp(−NLL) of each scored token, for reporting.
pub fn token_probs(logits: &Tensor, targets: &[u32]) -> Result<Vec<f64>> {
    let lp = log_softmax_last(&logits.to_dtype(DType::F64)?)?;
    let idx = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
    Ok(lp.gather(&idx, 1)?.squeeze(1)?.exp()?.to_vec1::<f64>()?)
}
