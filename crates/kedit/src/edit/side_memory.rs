//! A side-memory edit (WISE's): copies of one MLP output projection kept beside the main
//! weight, each written in a random subspace and answering only the inputs that activate
//! it. Like a codebook it is the whole state at its layer: applying it sets the side
//! memories there, and a method that adds an edit returns the grown state.

use std::collections::BTreeMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::config::Activation;
use crate::runtime::side_memory::SideWeight;
use crate::runtime::{Intervention, Site};

/// One side memory (a knowledge shard, or several merged).
#[derive(Clone, Debug)]
pub struct SideMemory {
    /// `W_side − W_main`, `[out, in]` like the projection's weight.
    pub delta: Tensor,
    pub info: SideMemoryInfo,
}

/// What is known of a side memory besides its weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SideMemoryInfo {
    /// The smallest activation distance an edit written here reached on its own prompts;
    /// the routing threshold is this times the edit's `act_ratio`.
    pub min_act: f64,
    /// Edits written into this memory.
    pub edits: usize,
    /// Seed of the random subspace (gradient mask) the memory is written in.
    pub mask_seed: u64,
    /// Still taking edits (the newest shard); closed shards and merges take no more.
    pub open: bool,
    /// The facts written here, kept when the method replays them (WISE's `replay`): each
    /// later edit of the shard is trained on some of them again, so that it does not
    /// overwrite them. Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub written: Vec<WrittenFact>,
}

/// A fact a side memory was trained on: the bare prompt and its target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WrittenFact {
    pub prompt: String,
    pub target: String,
}

#[derive(Clone, Debug)]
pub struct SideMemoryEdit {
    /// The MLP whose output projection the memories copy.
    pub layer: usize,
    /// The model's MLP activation, which the routing distance is measured through.
    pub activation: Activation,
    /// A row is answered by a memory when its distance exceeds `min_act · act_ratio`.
    pub act_ratio: f64,
    pub memories: Vec<SideMemory>,
    /// Edits written so far, over all memories (shards close and merge by this count).
    pub total_edits: usize,
    pub meta: BTreeMap<String, String>,
}

impl SideMemoryEdit {
    pub fn site(&self) -> Site {
        Site::MlpOut(self.layer)
    }

    pub fn len(&self) -> usize {
        self.memories.len()
    }

    pub fn is_empty(&self) -> bool {
        self.memories.is_empty()
    }

    /// Checks the memories against the projection's `[out, in]` shape.
    pub fn check(&self, shape: (usize, usize)) -> Result<()> {
        let refuse = |why: String| Err(Error::EditRefused(format!("side memory: {why}")));
        if self.memories.is_empty() {
            return refuse(format!("layer {} holds no memory", self.layer));
        }
        if !(self.act_ratio.is_finite() && self.act_ratio > 0.0) {
            return refuse(format!(
                "act_ratio {} is not a positive number",
                self.act_ratio
            ));
        }
        for (i, m) in self.memories.iter().enumerate() {
            if m.delta.dims() != [shape.0, shape.1] {
                return refuse(format!(
                    "memory {i} has shape {:?}; the projection is {shape:?}",
                    m.delta.dims()
                ));
            }
            if !(m.info.min_act.is_finite() && m.info.min_act >= 0.0) {
                return refuse(format!("memory {i} has threshold {}", m.info.min_act));
            }
            if !crate::edit::weights::all_finite(&m.delta)? {
                return refuse(format!("memory {i} holds NaN or Inf"));
            }
        }
        Ok(())
    }

    /// The memories as the intervention that routes each row (memories without an edit
    /// answer nothing and are left out).
    pub fn intervention(&self) -> Intervention {
        let memories = self
            .memories
            .iter()
            .filter(|m| m.info.edits > 0)
            .map(|m| SideWeight {
                delta: m.delta.clone(),
                threshold: m.info.min_act * self.act_ratio,
            })
            .collect();
        Intervention::side_memory(self.layer, memories, self.activation)
    }
}
