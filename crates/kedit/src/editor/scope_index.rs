//! Memories routed by SERAC's scope classifier, ready to route: per classifier, one matrix
//! of every record's prompt embedding over all the memories that use it, so an input is
//! embedded once and compared with a thousand stored edits in one product.

use std::sync::Arc;

use candle_core::Tensor;

use crate::edit::{MemoryEdit, ScopeClassifier};
use crate::error::Result;

/// The records of every memory routed by one classifier.
#[derive(Clone, Debug)]
pub(crate) struct ScopeIndex {
    pub classifier: Arc<ScopeClassifier>,
    /// `[records, dim]`, unit rows, in the order the memories were applied.
    keys: Tensor,
    /// For each row: its memory (index into the editor's memories), its record, and the
    /// probability from which that memory routes.
    rows: Vec<(usize, usize, f64)>,
}

impl ScopeIndex {
    pub fn new(classifier: Arc<ScopeClassifier>) -> Result<Self> {
        let dim = classifier.encoder.dim();
        Ok(ScopeIndex {
            classifier,
            keys: Tensor::zeros((0, dim), candle_core::DType::F32, &candle_core::Device::Cpu)?,
            rows: Vec::new(),
        })
    }

    /// Adds the records of `memory`, the editor's memory number `at`.
    pub fn add(&mut self, at: usize, memory: &MemoryEdit, threshold: f64) -> Result<()> {
        let prompts: Vec<&str> = memory.records.iter().map(|r| r.prompt.as_str()).collect();
        let keys = self.classifier.embed(&prompts)?;
        self.keys = Tensor::cat(&[&self.keys, &keys], 0)?;
        self.rows
            .extend((0..prompts.len()).map(|i| (at, i, threshold)));
        Ok(())
    }

    /// For each input (unit embeddings `[inputs, dim]`), the (memory, record,
    /// probability) it is routed to: its most probable record, when that reaches its
    /// memory's threshold.
    pub fn best(&self, xs: &Tensor) -> Result<Vec<Option<(usize, usize, f64)>>> {
        let n = xs.dim(0)?;
        if self.rows.is_empty() {
            return Ok(vec![None; n]);
        }
        let logits = self.classifier.logits(xs, &self.keys)?.to_vec2::<f32>()?;
        Ok(logits
            .iter()
            .map(|row| {
                let (i, &logit) = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
                let p = 1.0 / (1.0 + (-f64::from(logit)).exp());
                let (memory, record, threshold) = self.rows[i];
                (p >= threshold).then_some((memory, record, p))
            })
            .collect())
    }
}
