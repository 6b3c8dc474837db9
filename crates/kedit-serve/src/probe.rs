//! What the model says to a prompt: its greedy continuation and its most likely next tokens.

use kedit::generate::{generate, top_next_tokens, GenerateOptions, NextToken};
use kedit::lm::LanguageModel;
use serde::{Deserialize, Serialize};

/// Tokens of each greedy continuation: enough for a short answer, cheap on the CPU.
pub const ANSWER_TOKENS: usize = 12;
/// Next tokens shown with their probabilities.
pub const TOP_K: usize = 5;

/// Why a prompt is probed: the edited prompt, a paraphrase (should follow the edit), or
/// a neighbour (should not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Prompt,
    Paraphrase,
    Neighbour,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Probed {
    pub role: Role,
    pub prompt: String,
    /// The greedy continuation.
    pub answer: String,
    pub top: Vec<NextToken>,
}

/// Probes every `(role, prompt)` on `lm` (the plain model or the edited system).
pub fn probe(lm: &dyn LanguageModel, prompts: &[(Role, String)]) -> kedit::Result<Vec<Probed>> {
    let tok = lm.tokenizer()?;
    let ids = prompts
        .iter()
        .map(|(_, p)| tok.encode_input(p))
        .collect::<kedit::Result<Vec<_>>>()?;
    let opts = GenerateOptions {
        max_new_tokens: ANSWER_TOKENS,
        ..Default::default()
    };
    let generated = generate(lm, &ids, &opts)?;
    prompts
        .iter()
        .zip(ids.iter().zip(&generated))
        .map(|((role, prompt), (ids, new))| {
            Ok(Probed {
                role: *role,
                prompt: prompt.clone(),
                answer: tok.decode(new, true)?,
                top: top_next_tokens(lm, ids, TOP_K)?,
            })
        })
        .collect()
}
