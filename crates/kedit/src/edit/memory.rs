//! A memory: edit records kept outside the weights, and the rule that routes an input to
//! one of them (SERAC's edit memory and scope classifier). A routed input is answered with
//! its record's context in front of it; any other input reaches the model untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One stored edit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// The edit's prompt, which the router compares inputs with.
    pub prompt: String,
    pub target: String,
    /// The text put in front of a routed input (e.g. "New fact: {prompt} {target}\n").
    pub context: String,
}

/// How an input is matched against the records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Router {
    /// Jaccard similarity of the lower-cased word sets of the input and a record's prompt;
    /// the most similar record at or above `threshold` is chosen.
    WordOverlap { threshold: f64 },
    /// SERAC's scope classifier ([`super::ScopeClassifier`], a file written by `kedit train
    /// --method serac`, identified by its fingerprint): the record with the highest
    /// in-scope probability is chosen when that is at or above `threshold`. The Editor
    /// loads the classifier when the memory is applied.
    Scope {
        classifier: PathBuf,
        fingerprint: String,
        threshold: f64,
        /// The model that answers routed inputs, when it is not the system's own
        /// (SERAC's fine-tuned counterfactual model).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        counterfactual: Option<CounterfactualModel>,
    },
}

/// A fine-tuned counterfactual model: a weight edit file (written by `kedit train --method
/// serac` with `cf_layers` > 0) that routed inputs run with, identified by its sha256.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CounterfactualModel {
    pub path: PathBuf,
    pub fingerprint: String,
}

/// Records and their router. Applying a memory edit adds a memory to the system; inputs
/// are routed over every memory, and the best match over all of them wins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryEdit {
    pub records: Vec<MemoryRecord>,
    pub router: Router,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

/// A routed input: the record and how similar it is.
#[derive(Clone, Copy, Debug)]
pub struct Route<'a> {
    pub record: &'a MemoryRecord,
    pub score: f64,
}

impl MemoryEdit {
    pub fn check(&self) -> Result<()> {
        if self.records.is_empty() {
            return Err(Error::EditRefused("the memory edit has no record".into()));
        }
        if let Some(i) = self.records.iter().position(|r| r.context.is_empty()) {
            return Err(Error::EditRefused(format!(
                "record {i} of the memory edit has an empty context: it would change nothing"
            )));
        }
        match self.router {
            Router::WordOverlap { threshold } | Router::Scope { threshold, .. }
                if !(0.0..=1.0).contains(&threshold) =>
            {
                Err(Error::EditRefused(format!(
                    "the routing threshold {threshold} is outside [0, 1]"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The record `input` is routed to by a rule that needs no model (word overlap);
    /// `None` for a scope-classifier memory, which the Editor routes.
    pub fn route(&self, input: &str) -> Option<Route<'_>> {
        match self.router {
            Router::Scope { .. } => None,
            Router::WordOverlap { threshold } => {
                let words = word_set(input);
                self.records
                    .iter()
                    .map(|r| Route {
                        record: r,
                        score: jaccard(&words, &word_set(&r.prompt)),
                    })
                    .filter(|r| r.score >= threshold)
                    .max_by(|a, b| a.score.total_cmp(&b.score))
            }
        }
    }
}

fn word_set(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn jaccard(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 0.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_to_the_most_similar_record_above_the_threshold() {
        let m = MemoryEdit {
            records: vec![
                MemoryRecord {
                    prompt: "The Eiffel Tower is located in".into(),
                    target: "Rome".into(),
                    context: "c1".into(),
                },
                MemoryRecord {
                    prompt: "The Louvre is located in".into(),
                    target: "Oslo".into(),
                    context: "c2".into(),
                },
            ],
            router: Router::WordOverlap { threshold: 0.5 },
            meta: BTreeMap::new(),
        };
        let r = m.route("Where is the Eiffel Tower located?").unwrap();
        assert_eq!(r.record.target, "Rome");
        assert!(m.route("The capital of France is").is_none());
    }
}
