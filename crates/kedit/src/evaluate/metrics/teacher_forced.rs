//! Teacher-forced scoring of `(prompt, answer)` pairs, tokenised exactly as EasyEdit's
//! `test_prediction_acc` (easyeditor/evaluate/evaluate_utils.py) does it:
//!
//! - the input is the one string `prompt + " " + answer`, tokenised as a whole (no BOS);
//! - the prompt's length is the token count of `prompt` tokenised alone;
//! - the labels are the tokens of the joint string after that many tokens, and the
//!   prediction for label `j` is the argmax of the logits one position earlier.
//!
//! The rows go to [`LanguageModel::score`], which batches them.

use crate::error::Result;
use crate::lm::{LanguageModel, ScoreRow, Scored};

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

/// Token ids of a pair: the joint sequence and the prompt's token count, as EasyEdit
/// computes them. The prompt count is capped at the joint length (BPE can only shorten the
/// joint string relative to the parts, never the other way, but be defensive).
pub fn tokenise(lm: &dyn LanguageModel, pair: &Pair) -> Result<ScoreRow> {
    let tok = lm.tokenizer()?;
    let ids = tok.encode_input(&format!("{} {}", pair.prompt, pair.answer))?;
    let prompt_len = tok.encode_input(&pair.prompt)?.len().min(ids.len());
    Ok(ScoreRow { ids, prompt_len })
}

/// Scores every pair; results in input order. `with_log_probs` also gathers the
/// log-probability of each label.
pub fn score(lm: &dyn LanguageModel, pairs: &[Pair], with_log_probs: bool) -> Result<Vec<Scored>> {
    let rows = pairs
        .iter()
        .map(|p| tokenise(lm, p))
        .collect::<Result<Vec<_>>>()?;
    lm.score(&rows, with_log_probs)
}
