//! The interface every metric runs through: a system that tokenises, scores teacher-forced
//! rows, gives next-token logits and generates. [`Model`] implements it here with plain
//! forwards; the edited system ([`crate::editor::Editor`]) implements it with its
//! adaptors, memories and contexts in the loop. Metrics never know which one they score.

pub mod generate;
pub mod score;

use candle_core::Tensor;

use crate::error::Result;
use crate::model::Model;
use crate::runtime::{Intervention, LogitsAt, Padding, TokenBatch};
use crate::tokenizer::Tokenizer;
pub use generate::{GenerateOptions, NextToken, Sampling};
pub use score::{ChunkLimits, ScoreRow, Scored};

/// A language model as the metrics see it.
pub trait LanguageModel {
    fn tokenizer(&self) -> Result<&Tokenizer>;

    /// For each row, the argmax (and, when asked, the log-probability of the label) at
    /// every position that predicts one of the row's answer tokens; results in input order.
    fn score(&self, rows: &[ScoreRow], with_log_probs: bool) -> Result<Vec<Scored>>;

    /// Next-token logits after each prompt, `[prompts, vocab]`.
    fn next_logits(&self, prompts: &[Vec<u32>]) -> Result<Tensor>;

    /// Continuations of every prompt; prompt `i` samples from a generator seeded with
    /// `seeds[i]`, so its text does not depend on the batch it is in.
    fn generate(
        &self,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        opts: &GenerateOptions,
    ) -> Result<Vec<Vec<u32>>>;
}

/// Where the prompts end inside one forward chunk: `(row, index)` entries of each row's
/// last prompt token, and of every position after it (answer tokens, generated tokens).
/// Edits that act at the prompt's end (a site adaptor) turn these into interventions.
#[derive(Clone, Debug, Default)]
pub struct PromptEnds {
    pub last: Vec<(usize, usize)>,
    pub after: Vec<(usize, usize)>,
}

impl PromptEnds {
    /// Left-padded prompts: every row's prompt ends in the last column.
    pub fn last_column(batch: &TokenBatch) -> Self {
        PromptEnds {
            last: (0..batch.rows).map(|r| (r, batch.len - 1)).collect(),
            after: Vec::new(),
        }
    }
}

/// Interventions to add to a forward chunk, given where its prompts end.
pub type Hooks<'a> = &'a dyn Fn(&PromptEnds) -> Result<Vec<Intervention>>;

/// No interventions: the plain model.
pub fn no_hooks(_: &PromptEnds) -> Result<Vec<Intervention>> {
    Ok(Vec::new())
}

impl LanguageModel for Model {
    fn tokenizer(&self) -> Result<&Tokenizer> {
        Model::tokenizer(self)
    }

    fn score(&self, rows: &[ScoreRow], with_log_probs: bool) -> Result<Vec<Scored>> {
        score::score_rows(
            self,
            rows,
            with_log_probs,
            ChunkLimits::default(),
            &no_hooks,
        )
    }

    fn next_logits(&self, prompts: &[Vec<u32>]) -> Result<Tensor> {
        next_logits_with(self, prompts, &no_hooks)
    }

    fn generate(
        &self,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        opts: &GenerateOptions,
    ) -> Result<Vec<Vec<u32>>> {
        generate::generate_with(self, prompts, seeds, opts, &no_hooks)
    }
}

/// Next-token logits after each prompt (left-padded, so every prompt ends in the last
/// column), with `hooks` acting at the prompts' ends.
pub fn next_logits_with(model: &Model, prompts: &[Vec<u32>], hooks: Hooks) -> Result<Tensor> {
    let pad = model.tokenizer()?.pad_id();
    let batch = TokenBatch::new(prompts, Padding::Left, pad)?;
    let ends = PromptEnds::last_column(&batch);
    let out = model
        .forward(&batch)
        .interventions(hooks(&ends)?)
        .logits(LogitsAt::Last)
        .run()?;
    Ok(out.logits()?.clone())
}
