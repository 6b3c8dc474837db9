//! The one request type every dataset loads into and every method consumes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Model;

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

/// The longest prompt a request may have, in tokens (dataset prompts are under 200; a
/// WikiBio passage is the longest).
pub const MAX_PROMPT_TOKENS: usize = 512;
/// The longest target, in tokens (dataset targets are under 100: a WikiBio sentence is the
/// longest; a thousand-word target would be optimised for minutes).
pub const MAX_TARGET_TOKENS: usize = 128;
/// The longest subject, in tokens.
pub const MAX_SUBJECT_TOKENS: usize = 128;

impl EditRequest {
    /// Refuses, before any work, a request no method should spend time on: an empty prompt
    /// or target; a prompt, target or subject longer than [`MAX_PROMPT_TOKENS`],
    /// [`MAX_TARGET_TOKENS`] or [`MAX_SUBJECT_TOKENS`]; a prompt and target that, with the
    /// `extra` tokens a method puts in front of them (ROME's context templates), do not fit
    /// the model's context.
    pub fn check_size(&self, model: &Model, extra: usize) -> Result<()> {
        if self.prompt.trim().is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        if self.target_new.trim().is_empty() {
            return Err(Error::invalid("the target is empty"));
        }
        let tok = model.tokenizer()?;
        let count = |what: &str, text: &str, max: usize| -> Result<usize> {
            let n = tok.encode(text)?.len();
            if n > max {
                return Err(Error::invalid(format!(
                    "the {what} is {n} tokens long; at most {max} are accepted"
                )));
            }
            Ok(n)
        };
        let prompt = count("prompt", &self.prompt, MAX_PROMPT_TOKENS)?;
        let target = count("target", &self.target_new, MAX_TARGET_TOKENS)?;
        if !self.subject.is_empty() {
            count("subject", &self.subject, MAX_SUBJECT_TOKENS)?;
        }
        let context = model.config.max_positions;
        // +1: a BOS token the model may put first.
        let needed = prompt + target + extra + 1;
        if needed > context {
            return Err(Error::invalid(format!(
                "the prompt and target ({prompt} + {target} tokens{}) do not fit the model's \
                 context of {context} tokens",
                if extra > 0 {
                    format!(", + {extra} of context templates")
                } else {
                    String::new()
                }
            )));
        }
        Ok(())
    }
}

/// For each request, the positions of the others about the same subject (compared
/// trimmed, ignoring case) with a different target. Locate-then-edit methods key a fact on
/// its subject's last token, so in one call such requests compete for one key; when they
/// ask the same question with different answers (ZsRE holds such pairs: "NGC 6604" in
/// Andromeda and in Pegasus), no edit can satisfy both.
pub fn same_subject_other_target(requests: &[&EditRequest]) -> Vec<Vec<usize>> {
    let key = |s: &str| s.trim().to_lowercase();
    let mut by_subject: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in requests.iter().enumerate() {
        if !r.subject.trim().is_empty() {
            by_subject.entry(key(&r.subject)).or_default().push(i);
        }
    }
    let mut others = vec![Vec::new(); requests.len()];
    for group in by_subject.values().filter(|g| g.len() > 1) {
        for &i in group {
            others[i] = group
                .iter()
                .copied()
                .filter(|&j| key(&requests[j].target_new) != key(&requests[i].target_new))
                .collect();
        }
    }
    others
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(subject: &str, target: &str) -> EditRequest {
        EditRequest {
            case_id: format!("{subject}->{target}"),
            prompt: format!("Where is {subject}?"),
            subject: subject.into(),
            target_new: target.into(),
            ..Default::default()
        }
    }

    #[test]
    fn requests_about_one_subject_with_different_targets_are_paired() {
        let reqs = [
            request("NGC 6604", "Andromeda"),
            request("Andrew Toney", "Ottawa Senators"),
            request("ngc 6604 ", "Pegasus"),
            request("NGC 6604", " andromeda"),
            request("Paris", "France"),
            request("", "Rome"),
            request("", "Lyon"),
        ];
        let refs: Vec<&EditRequest> = reqs.iter().collect();
        let others = same_subject_other_target(&refs);
        assert_eq!(others[0], vec![2]);
        assert_eq!(others[2], vec![0, 3]);
        assert_eq!(others[3], vec![2]);
        for i in [1, 4, 5, 6] {
            assert!(others[i].is_empty(), "request {i}: {:?}", others[i]);
        }
    }
}
