//! What SERAC's scope classifier learns from: for each training record, its prompt (the
//! edit as the memory stores it), an input in its scope (a paraphrase) and, when the record
//! has one, an input out of it (its locality prompt — in CounterFact the same relation about
//! another subject, the hardest negative there is). Every other record's inputs in a batch
//! are negatives too.

use crate::request::EditRequest;

#[derive(Clone, Debug, PartialEq)]
pub struct ScopeExample {
    /// The stored edit's prompt.
    pub anchor: String,
    /// Inputs in scope (paraphrases).
    pub positives: Vec<String>,
    /// Inputs out of scope (locality prompts).
    pub negatives: Vec<String>,
}

/// The examples of `records` that have at least one paraphrase.
pub fn scope_examples(records: &[EditRequest]) -> Vec<ScopeExample> {
    records
        .iter()
        .filter_map(|r| {
            let positives: Vec<String> = r
                .rephrase
                .iter()
                .filter(|p| !p.trim().is_empty() && **p != r.prompt)
                .cloned()
                .collect();
            if positives.is_empty() {
                return None;
            }
            let negatives = r
                .locality
                .values()
                .flatten()
                .map(|p| p.prompt.clone())
                .filter(|p| !p.trim().is_empty() && *p != r.prompt)
                .collect();
            Some(ScopeExample {
                anchor: r.prompt.clone(),
                positives,
                negatives,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Probe;

    #[test]
    fn records_without_a_paraphrase_give_no_example() {
        let mut r = EditRequest {
            prompt: "Who wrote Hamlet?".into(),
            target_new: "Marlowe".into(),
            rephrase: vec![
                "Hamlet was written by whom?".into(),
                "Who wrote Hamlet?".into(),
            ],
            ..Default::default()
        };
        r.locality.insert(
            "neighborhood".into(),
            vec![Probe::new("Who wrote Faust?", "Goethe")],
        );
        let ex = scope_examples(&[r.clone(), EditRequest::default()]);
        assert_eq!(ex.len(), 1);
        assert_eq!(
            ex[0].positives,
            vec!["Hamlet was written by whom?".to_string()]
        );
        assert_eq!(ex[0].negatives, vec!["Who wrote Faust?".to_string()]);
    }
}
