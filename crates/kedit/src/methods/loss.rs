//! Losses shared by methods.

use candle_core::Tensor;

use crate::error::Result;
use crate::runtime::nll::target_log_probs;

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
    let picked = target_log_probs(logits, targets)?;
    let w = Tensor::new(weights.as_slice(), device)?.to_dtype(logits.dtype())?;
    Ok((picked * w)?.sum_all()?.neg()?)
}
