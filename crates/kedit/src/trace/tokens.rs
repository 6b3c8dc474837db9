//! Token texts of a prompt and the token range a substring (the subject) covers.

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// The text of each token of `ids`, such that their concatenation is the decoded prompt:
/// token `i` is the text `ids[..=i]` adds to `ids[..i]` (so multi-byte characters split
/// across tokens land on the token that completes them).
pub fn token_texts(tok: &Tokenizer, ids: &[u32]) -> Result<Vec<String>> {
    let mut texts = Vec::with_capacity(ids.len());
    let mut previous = String::new();
    for i in 0..ids.len() {
        let decoded = tok.decode(&ids[..=i], false)?;
        let piece = match decoded.strip_prefix(previous.as_str()) {
            Some(rest) => rest.to_string(),
            // Decoding is not always prefix-stable (replacement characters); fall back to
            // the token alone.
            None => tok.decode(&ids[i..=i], false)?,
        };
        texts.push(piece);
        previous = decoded;
    }
    Ok(texts)
}

/// `[start, end)`: the tokens overlapping the first occurrence of `subject` in the text the
/// tokens spell (as ROME's `find_token_range`).
pub fn subject_range(texts: &[String], subject: &str) -> Result<(usize, usize)> {
    let whole: String = texts.concat();
    let subject_trimmed = subject.trim();
    if subject_trimmed.is_empty() {
        return Err(Error::invalid("the subject is empty"));
    }
    let at = whole.find(subject_trimmed).ok_or_else(|| {
        Error::invalid(format!(
            "the subject {subject_trimmed:?} does not occur in the prompt {whole:?}"
        ))
    })?;
    let end_char = at + subject_trimmed.len();
    let mut pos = 0;
    let (mut start, mut end) = (None, None);
    for (i, t) in texts.iter().enumerate() {
        pos += t.len();
        if start.is_none() && pos > at {
            start = Some(i);
        }
        if end.is_none() && pos >= end_char {
            end = Some(i + 1);
            break;
        }
    }
    match (start, end) {
        (Some(s), Some(e)) => Ok((s, e)),
        _ => Err(Error::invalid(format!(
            "cannot map the subject {subject_trimmed:?} onto the prompt's tokens"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_the_tokens_covering_the_subject() {
        let t = texts(&["The", " E", "iff", "el", " Tower", " is", " in"]);
        assert_eq!(subject_range(&t, "The Eiffel Tower").unwrap(), (0, 5));
        assert_eq!(subject_range(&t, "Eiffel").unwrap(), (1, 4));
        // A partial token counts as covered.
        assert_eq!(subject_range(&t, "Tow").unwrap(), (4, 5));
        assert!(subject_range(&t, "Paris").is_err());
        assert!(subject_range(&t, "  ").is_err());
    }
}
