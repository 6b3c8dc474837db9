//! Teacher-forced scoring of token rows. Many rows — every probe of a case, or of many
//! cases — go through one padded forward pass that computes logits only at the scored
//! positions (`LogitsAt::Entries`). Rows are sorted by length and cut into chunks so that
//! padding and the logits buffer stay small.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::lm::{Hooks, PromptEnds};
use crate::model::Model;
use crate::runtime::ops::log_softmax_last;
use crate::runtime::{LogitsAt, Padding, TokenBatch};

/// One row to score: token ids, of which the first `prompt_len` are the prompt and the
/// rest the answer whose tokens are predicted one position earlier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScoreRow {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

/// The scored positions of one row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scored {
    /// The answer's tokens.
    pub labels: Vec<u32>,
    /// The model's argmax at the position before each label.
    pub predicted: Vec<u32>,
    /// Natural-log probability of each label (filled when asked for).
    pub log_probs: Vec<f64>,
}

impl Scored {
    /// EasyEdit's token accuracy `mean(predicted == labels)`; `None` where EasyEdit gets
    /// NaN (no answer tokens) and drops the value.
    pub fn accuracy(&self) -> Option<f64> {
        if self.labels.is_empty() {
            return None;
        }
        let hits = self
            .labels
            .iter()
            .zip(&self.predicted)
            .filter(|(a, b)| a == b)
            .count();
        Some(hits as f64 / self.labels.len() as f64)
    }

    /// Mean negative log-likelihood per answer token (ROME's CounterFact comparison).
    pub fn mean_nll(&self) -> Option<f64> {
        if self.log_probs.is_empty() {
            return None;
        }
        Some(-self.log_probs.iter().sum::<f64>() / self.log_probs.len() as f64)
    }
}

/// Limits of one forward chunk.
#[derive(Clone, Copy, Debug)]
pub struct ChunkLimits {
    /// Padded tokens (rows × longest row) per forward.
    pub max_tokens: usize,
    /// Scored positions (rows of the logits buffer) per forward.
    pub max_entries: usize,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        // Measured on the 2-core CI machine (SmolLM2, 500 KnowEdit prompts): chunks of
        // ~1k tokens were the fastest; 8k-token chunks took 1.6x as long (the activations
        // fall out of cache). 256 scored positions × 49k vocabulary × 4 bytes = 50 MB.
        ChunkLimits {
            max_tokens: 1024,
            max_entries: 256,
        }
    }
}

/// Scores every row on `model` with `hooks` acting at the prompts' ends; results in
/// input order.
pub fn score_rows(
    model: &Model,
    rows: &[ScoreRow],
    with_log_probs: bool,
    limits: ChunkLimits,
    hooks: Hooks,
) -> Result<Vec<Scored>> {
    let mut out = vec![Scored::default(); rows.len()];
    // Rows with no prompt token have no position that predicts the first label; EasyEdit
    // slices `row[-1:-1]` there and drops the NaN. Leave them empty.
    let mut order: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].prompt_len > 0 && rows[i].ids.len() > rows[i].prompt_len)
        .collect();
    order.sort_by_key(|&i| rows[i].ids.len());
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        let mut entries = 0;
        while end < order.len() {
            let row = &rows[order[end]];
            let n = row.ids.len() - row.prompt_len;
            let count = end - start + 1;
            // Sorted by length: this row is the longest so far.
            let fits =
                count * row.ids.len() <= limits.max_tokens && entries + n <= limits.max_entries;
            if end > start && !fits {
                break;
            }
            entries += n;
            end += 1;
        }
        let chunk: Vec<&ScoreRow> = order[start..end].iter().map(|&i| &rows[i]).collect();
        let scored = score_chunk(model, &chunk, with_log_probs, hooks)?;
        for (&i, s) in order[start..end].iter().zip(scored) {
            out[i] = s;
        }
        start = end;
    }
    Ok(out)
}

/// One padded forward over `rows`, logits only at the positions that predict answer tokens.
fn score_chunk(
    model: &Model,
    rows: &[&ScoreRow],
    with_log_probs: bool,
    hooks: Hooks,
) -> Result<Vec<Scored>> {
    let seqs: Vec<Vec<u32>> = rows.iter().map(|r| r.ids.clone()).collect();
    let batch = TokenBatch::new(&seqs, Padding::Right, model.tokenizer()?.pad_id())?;
    let mut entries = Vec::new();
    let mut ends = PromptEnds::default();
    for (r, row) in rows.iter().enumerate() {
        ends.last.push((r, batch.index(r, row.prompt_len - 1)));
        for t in row.prompt_len - 1..row.ids.len() - 1 {
            entries.push((r, batch.index(r, t)));
        }
        for t in row.prompt_len..row.ids.len() {
            ends.after.push((r, batch.index(r, t)));
        }
    }
    let out = model
        .forward(&batch)
        .interventions(hooks(&ends)?)
        .logits(LogitsAt::Entries(entries))
        .run()?;
    let logits = out.logits()?;
    let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
    let labels: Vec<u32> = rows
        .iter()
        .flat_map(|r| r.ids[r.prompt_len..].iter().copied())
        .collect();
    let log_probs = if with_log_probs {
        gather_log_probs(logits, &labels)?
    } else {
        Vec::new()
    };
    let mut at = 0;
    Ok(rows
        .iter()
        .map(|row| {
            let n = row.ids.len() - row.prompt_len;
            let s = Scored {
                labels: row.ids[row.prompt_len..].to_vec(),
                predicted: predicted[at..at + n].to_vec(),
                log_probs: if with_log_probs {
                    log_probs[at..at + n].to_vec()
                } else {
                    Vec::new()
                },
            };
            at += n;
            s
        })
        .collect())
}

/// `log_softmax(logits)[i, labels[i]]` for every row, in f64.
fn gather_log_probs(logits: &Tensor, labels: &[u32]) -> Result<Vec<f64>> {
    let lp = log_softmax_last(&logits.to_dtype(DType::F32)?)?;
    let idx = Tensor::from_vec(labels.to_vec(), (labels.len(), 1), lp.device())?;
    Ok(lp
        .gather(&idx, 1)?
        .squeeze(1)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_counts_matching_positions_and_drops_empty_answers() {
        let s = Scored {
            labels: vec![5, 6, 7, 8],
            predicted: vec![5, 0, 7, 0],
            log_probs: vec![-1.0, -3.0],
        };
        assert_eq!(s.accuracy(), Some(0.5));
        assert_eq!(s.mean_nll(), Some(2.0));
        assert_eq!(Scored::default().accuracy(), None);
    }
}
