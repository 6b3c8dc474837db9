//! Memories routed by SERAC's scope classifier, ready to route: per classifier, the keys of
//! every record's prompt over all the memories that use it, so an input is compared with a
//! thousand stored edits in one call (one product for an embedding classifier; a shortlist
//! and its pairs for a cross-encoder).

use std::sync::Arc;

use crate::edit::{MemoryEdit, ScopeClassifier, ScopeKeys};
use crate::error::Result;

/// The records of every memory routed by one classifier.
#[derive(Clone, Debug)]
pub(crate) struct ScopeIndex {
    pub classifier: Arc<ScopeClassifier>,
    /// One key per row, in the order the memories were applied.
    keys: ScopeKeys,
    /// For each row: its memory (index into the editor's memories), its record, and the
    /// probability from which that memory routes.
    rows: Vec<(usize, usize, f64)>,
}

impl ScopeIndex {
    pub fn new(classifier: Arc<ScopeClassifier>) -> Result<Self> {
        let keys = classifier.keys::<&str>(&[])?;
        Ok(ScopeIndex {
            classifier,
            keys,
            rows: Vec::new(),
        })
    }

    /// Adds the records of `memory`, the editor's memory number `at`.
    pub fn add(&mut self, at: usize, memory: &MemoryEdit, threshold: f64) -> Result<()> {
        let prompts: Vec<&str> = memory.records.iter().map(|r| r.prompt.as_str()).collect();
        self.keys.extend(self.classifier.keys(&prompts)?)?;
        self.rows
            .extend((0..prompts.len()).map(|i| (at, i, threshold)));
        Ok(())
    }

    /// For each input, the (memory, record, probability) it is routed to: its most
    /// probable record, when that reaches its memory's threshold.
    pub fn best<S: AsRef<str>>(&self, inputs: &[S]) -> Result<Vec<Option<(usize, usize, f64)>>> {
        Ok(self
            .classifier
            .best(inputs, &self.keys)?
            .into_iter()
            .map(|b| {
                let (i, logit) = b?;
                let p = 1.0 / (1.0 + (-f64::from(logit)).exp());
                let (memory, record, threshold) = self.rows[i];
                (p >= threshold).then_some((memory, record, p))
            })
            .collect())
    }
}
