//! Teacher-forced scoring of `(prompt, answer)` pairs, tokenised exactly as EasyEdit's
//! `test_prediction_acc` (easyeditor/evaluate/evaluate_utils.py) does it:
//!
//! - the input is the one string `prompt + " " + answer`, tokenised as a whole (no BOS);
//! - the prompt's length is the token count of `prompt` tokenised alone;
//! - the labels are the tokens of the joint string after that many tokens, and the
//!   prediction for label `j` is the argmax of the logits one position earlier.
//!
//! Many pairs — every probe of a case, or of many cases — go through one padded forward
//! pass that computes logits only at the scored positions (`LogitsAt::Entries`). Pairs are
//! sorted by length and cut into chunks so that padding and the logits buffer stay small.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::model::Model;
use crate::runtime::ops::log_softmax_last;
use crate::runtime::{LogitsAt, Padding, TokenBatch};

/// One pair to score.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub prompt: String,
    pub answer: String,
}

impl Pair {
    pub fn new(prompt: impl Into<String>, answer: impl Into<String>) -> Self {
        Pair {
            prompt: prompt.into(),
            answer: answer.into(),
        }
    }
}

/// The scored positions of one pair.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scored {
    /// The answer's tokens as they appear in the joint string.
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

/// Token ids of a pair: the joint sequence and the prompt's token count, as EasyEdit
/// computes them. The prompt count is capped at the joint length (BPE can only shorten the
/// joint string relative to the parts, never the other way, but be defensive).
pub fn tokenise(model: &Model, pair: &Pair) -> Result<(Vec<u32>, usize)> {
    let tok = model.tokenizer()?;
    let joint = tok.encode(&format!("{} {}", pair.prompt, pair.answer))?;
    let prompt_len = tok.encode(&pair.prompt)?.len().min(joint.len());
    Ok((joint, prompt_len))
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

/// Scores every pair; results in input order. `with_log_probs` also gathers the
/// log-probability of each label (one log-softmax over the scored rows).
pub fn score(model: &Model, pairs: &[Pair], with_log_probs: bool) -> Result<Vec<Scored>> {
    score_with(model, pairs, with_log_probs, ChunkLimits::default())
}

pub fn score_with(
    model: &Model,
    pairs: &[Pair],
    with_log_probs: bool,
    limits: ChunkLimits,
) -> Result<Vec<Scored>> {
    let tokenised = pairs
        .iter()
        .map(|p| tokenise(model, p))
        .collect::<Result<Vec<_>>>()?;
    let mut out = vec![Scored::default(); pairs.len()];
    // Pairs with no prompt token have no position that predicts the first label; EasyEdit
    // slices `row[-1:-1]` there and drops the NaN. Leave them empty.
    let mut order: Vec<usize> = (0..pairs.len())
        .filter(|&i| tokenised[i].1 > 0 && tokenised[i].0.len() > tokenised[i].1)
        .collect();
    order.sort_by_key(|&i| tokenised[i].0.len());
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        let mut entries = 0;
        while end < order.len() {
            let (ids, plen) = &tokenised[order[end]];
            let n = ids.len() - plen;
            let rows = end - start + 1;
            // Sorted by length: this row is the longest so far.
            let fits = rows * ids.len() <= limits.max_tokens && entries + n <= limits.max_entries;
            if end > start && !fits {
                break;
            }
            entries += n;
            end += 1;
        }
        let chunk = &order[start..end];
        let scored = score_chunk(model, chunk.iter().map(|&i| &tokenised[i]), with_log_probs)?;
        for (&i, s) in chunk.iter().zip(scored) {
            out[i] = s;
        }
        start = end;
    }
    Ok(out)
}

/// One padded forward over `rows` (joint ids, prompt length), logits only at the
/// positions that predict answer tokens.
fn score_chunk<'a>(
    model: &Model,
    rows: impl Iterator<Item = &'a (Vec<u32>, usize)>,
    with_log_probs: bool,
) -> Result<Vec<Scored>> {
    let rows: Vec<&(Vec<u32>, usize)> = rows.collect();
    let seqs: Vec<Vec<u32>> = rows.iter().map(|(ids, _)| ids.clone()).collect();
    let batch = TokenBatch::new(&seqs, Padding::Right, model.tokenizer()?.pad_id())?;
    let mut entries = Vec::new();
    for (r, (ids, plen)) in rows.iter().enumerate() {
        for t in plen - 1..ids.len() - 1 {
            entries.push((r, batch.index(r, t)));
        }
    }
    let out = model
        .forward(&batch)
        .logits(LogitsAt::Entries(entries))
        .run()?;
    let logits = out.logits()?;
    let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
    let labels: Vec<u32> = rows
        .iter()
        .flat_map(|(ids, plen)| ids[*plen..].iter().copied())
        .collect();
    let log_probs = if with_log_probs {
        gather_log_probs(logits, &labels)?
    } else {
        Vec::new()
    };
    let mut at = 0;
    Ok(rows
        .iter()
        .map(|(ids, plen)| {
            let n = ids.len() - plen;
            let s = Scored {
                labels: ids[*plen..].to_vec(),
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
