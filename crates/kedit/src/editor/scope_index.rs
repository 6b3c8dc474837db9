//! A memory routed by SERAC's scope classifier, ready to route: the classifier and the
//! embeddings of its records' prompts, made once when the memory is applied.

use std::sync::Arc;

use candle_core::Tensor;

use crate::edit::{MemoryEdit, ScopeClassifier};
use crate::error::Result;

#[derive(Clone, Debug)]
pub(crate) struct ScopeIndex {
    pub classifier: Arc<ScopeClassifier>,
    /// `[records, dim]`, unit rows.
    keys: Tensor,
    threshold: f64,
}

impl ScopeIndex {
    pub fn build(
        classifier: Arc<ScopeClassifier>,
        memory: &MemoryEdit,
        threshold: f64,
    ) -> Result<Self> {
        let prompts: Vec<&str> = memory.records.iter().map(|r| r.prompt.as_str()).collect();
        let keys = classifier.embed(&prompts)?;
        Ok(ScopeIndex {
            classifier,
            keys,
            threshold,
        })
    }

    /// The record an input with unit embedding `x` (`[1, dim]`) is in the scope of, with
    /// its probability, when that reaches the threshold.
    pub fn best(&self, x: &Tensor) -> Result<Option<(usize, f64)>> {
        let logits = self
            .classifier
            .logits(x, &self.keys)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let Some((i, &logit)) = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) else {
            return Ok(None);
        };
        let p = 1.0 / (1.0 + (-f64::from(logit)).exp());
        Ok((p >= self.threshold).then_some((i, p)))
    }
}
