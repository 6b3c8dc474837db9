//! The one request type every dataset loads into and every method consumes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A prompt with the answer the metrics score, plus other accepted spellings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub prompt: String,
    pub answer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl Probe {
    pub fn new(prompt: impl Into<String>, answer: impl Into<String>) -> Self {
        Probe {
            prompt: prompt.into(),
            answer: answer.into(),
            aliases: Vec::new(),
        }
    }

    /// The answer followed by its aliases.
    pub fn accepted(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.answer.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// One knowledge edit ("`prompt` → `target_new`", about `subject`) and the probes that
/// evaluate it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EditRequest {
    /// A stable identifier (dataset case id, or the record index).
    pub case_id: String,
    pub prompt: String,
    pub subject: String,
    pub target_new: String,
    /// The fact being replaced: the main answer first, then aliases. May be empty.
    #[serde(default)]
    pub ground_truth: Vec<String>,
    /// Paraphrases of `prompt` (generalization).
    #[serde(default)]
    pub rephrase: Vec<String>,
    /// Named groups of unrelated probes whose answers must not change (locality).
    #[serde(default)]
    pub locality: BTreeMap<String, Vec<Probe>>,
    /// Named groups of probes whose answers should follow from the edit (portability).
    #[serde(default)]
    pub portability: BTreeMap<String, Vec<Probe>>,
    /// Prompts for free generation (fluency, consistency).
    #[serde(default)]
    pub generation_prompts: Vec<String>,
}
