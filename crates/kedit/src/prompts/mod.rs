//! Prompt and token bookkeeping shared by methods and metrics: where the subject is, how a
//! target is spaced, which token a fact is looked up at.

mod chat;

pub use chat::{chat_prompt, chat_request, chat_requests};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// The target as it is appended to a prompt: with one leading space (EasyEdit prepends
/// `" "`; a target that already starts with whitespace is not given a second one).
pub fn spaced_target(target: &str) -> String {
    if target.starts_with(char::is_whitespace) {
        target.to_string()
    } else {
        format!(" {target}")
    }
}

/// Token ids of `" " + target`, refusing an empty target.
pub fn target_ids(tok: &Tokenizer, target: &str) -> Result<Vec<u32>> {
    if target.trim().is_empty() {
        return Err(Error::invalid("the target is empty"));
    }
    tok.encode(&spaced_target(target))
}

/// `prompt` with its first occurrence of `subject` replaced by `{}` (exact match first,
/// then case-insensitive). Refuses a prompt that does not contain the subject.
pub fn subject_template(prompt: &str, subject: &str) -> Result<String> {
    if subject.trim().is_empty() {
        return Err(Error::invalid("the subject is empty"));
    }
    if prompt.contains("{}") {
        if prompt.matches("{}").count() != 1 {
            return Err(Error::invalid(format!(
                "the prompt `{prompt}` has more than one `{{}}`"
            )));
        }
        return Ok(prompt.to_string());
    }
    let at = prompt.find(subject).or_else(|| {
        let lower = prompt.to_lowercase();
        // Lower-casing can change byte lengths outside ASCII; only trust equal lengths.
        (lower.len() == prompt.len())
            .then(|| lower.find(&subject.to_lowercase()))
            .flatten()
    });
    match at {
        Some(i) => Ok(format!(
            "{}{{}}{}",
            &prompt[..i],
            &prompt[i + subject.len()..]
        )),
        None => Err(Error::invalid(format!(
            "the subject `{subject}` does not occur in the prompt `{prompt}`"
        ))),
    }
}

/// Fills the single `{}` of `template`.
pub fn fill(template: &str, value: &str) -> String {
    template.replacen("{}", value, 1)
}

/// Which token of a prompt a fact is looked up at (EasyEdit's `fact_token`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactToken {
    SubjectLast,
    SubjectFirst,
    SubjectFirstAfterLast,
    Last,
}

impl std::str::FromStr for FactToken {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "subject_last" => FactToken::SubjectLast,
            "subject_first" => FactToken::SubjectFirst,
            "subject_first_after_last" => FactToken::SubjectFirstAfterLast,
            "last" => FactToken::Last,
            other => {
                return Err(Error::config(format!(
                    "fact_token `{other}` is not one of subject_last, subject_first, subject_first_after_last, last"
                )))
            }
        })
    }
}

/// The tokens of `template` filled with `subject`, and the index of the looked-up token.
///
/// Subject positions come from the lengths of the tokenised prefix and prefix+subject, as
/// ROME computes them (a BPE merge across the boundary can shift them by one; ROME lives
/// with that and so do we, for comparable numbers).
pub fn lookup(
    tok: &Tokenizer,
    template: &str,
    subject: &str,
    strategy: FactToken,
) -> Result<(Vec<u32>, usize)> {
    let (prefix, suffix) = template
        .split_once("{}")
        .ok_or_else(|| Error::invalid(format!("the template `{template}` has no `{{}}`")))?;
    let ids = tok.encode_input(&format!("{prefix}{subject}{suffix}"))?;
    if ids.is_empty() {
        return Err(Error::invalid("the prompt tokenises to nothing"));
    }
    let prefix_len = tok.encode_input(prefix)?.len();
    let with_subject = tok.encode_input(&format!("{prefix}{subject}"))?.len();
    let last = ids.len() - 1;
    let index = match strategy {
        FactToken::Last => last,
        FactToken::SubjectFirst => prefix_len,
        FactToken::SubjectLast => with_subject.saturating_sub(1),
        FactToken::SubjectFirstAfterLast => {
            if with_subject < ids.len() {
                with_subject
            } else {
                with_subject.saturating_sub(1)
            }
        }
    };
    Ok((ids, index.min(last)))
}

/// Characters that end an answer when a token starts with them: after "Paris" the model
/// may go on with " is", ".", ",", a newline — but not with "ian" or "'s".
const ANSWER_ENDS: &[char] = &['.', ',', ';', ':', '!', '?', ')', ']', '"'];

/// Per token id: whether the token ends the answer before it (it starts with whitespace or
/// with one of [`ANSWER_ENDS`], or it is the end-of-sequence token). Free generation stops a
/// word only where the next token does this; teacher forcing never asks.
pub fn answer_boundaries(tok: &Tokenizer) -> Result<Vec<bool>> {
    let n = tok.vocab_size();
    let eos = tok.eos_id();
    (0..n as u32)
        .map(|id| {
            if Some(id) == eos {
                return Ok(true);
            }
            let text = tok.decode(&[id], false)?;
            Ok(text
                .chars()
                .next()
                .is_some_and(|c| c.is_whitespace() || ANSWER_ENDS.contains(&c)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_spacing() {
        assert_eq!(spaced_target("Paris"), " Paris");
        assert_eq!(spaced_target(" Paris"), " Paris");
        assert_eq!(
            subject_template("Where is the Eiffel Tower?", "Eiffel Tower").unwrap(),
            "Where is the {}?"
        );
        assert_eq!(
            subject_template("danielle darrieux speaks", "Danielle Darrieux").unwrap(),
            "{} speaks"
        );
        assert!(subject_template("The capital of France", "Germany").is_err());
        assert_eq!(fill("{} is in", "Paris"), "Paris is in");
    }
}
