//! Edits as values. An edit is one of five kinds — weight deltas, a site adaptor (a
//! codebook), side memories of one projection, a memory, a context — and every kind is saved, loaded, applied, reverted and
//! fingerprinted the same way. Methods return edits; the [`crate::editor::Editor`] applies
//! them; nothing else changes the edited system.

pub mod adaptor;
pub mod context;
pub mod counterfactual;
mod file;
pub mod memory;
pub mod peft;
pub mod scope;
pub mod side_memory;
pub mod weights;

use std::collections::BTreeMap;

pub use adaptor::{AdaptorEdit, AdaptorPositions};
pub use context::ContextEdit;
pub use memory::{CounterfactualModel, MemoryEdit, MemoryRecord, Route, Router};
pub use scope::{ScopeClassifier, ScopeKeys, ScopeKind};
pub use side_memory::{SideMemory, SideMemoryEdit, SideMemoryInfo, WrittenFact};
pub use weights::{Delta, WeightEdit};

/// One edit (of one request, or one batch of requests).
#[derive(Clone, Debug)]
pub enum Edit {
    /// Changes to weight matrices (fine-tuning, ROME).
    Weights(WeightEdit),
    /// A codebook at a site (GRACE).
    Adaptor(AdaptorEdit),
    /// Side memories of one MLP output projection, routed by activation (WISE).
    SideMemory(SideMemoryEdit),
    /// Edit records and their router (SERAC).
    Memory(MemoryEdit),
    /// A prompt prefix (IKE).
    Context(ContextEdit),
}

impl Edit {
    /// The kind's name, as saved in files and shown in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Edit::Weights(_) => "weights",
            Edit::Adaptor(_) => "adaptor",
            Edit::SideMemory(_) => "side_memory",
            Edit::Memory(_) => "memory",
            Edit::Context(_) => "context",
        }
    }

    /// Free-form provenance (method, hyper-parameters, requests) saved with the edit.
    pub fn meta(&self) -> &BTreeMap<String, String> {
        match self {
            Edit::Weights(e) => &e.meta,
            Edit::Adaptor(e) => &e.meta,
            Edit::SideMemory(e) => &e.meta,
            Edit::Memory(e) => &e.meta,
            Edit::Context(e) => &e.meta,
        }
    }

    pub fn meta_mut(&mut self) -> &mut BTreeMap<String, String> {
        match self {
            Edit::Weights(e) => &mut e.meta,
            Edit::Adaptor(e) => &mut e.meta,
            Edit::SideMemory(e) => &mut e.meta,
            Edit::Memory(e) => &mut e.meta,
            Edit::Context(e) => &mut e.meta,
        }
    }

    /// Where this edit holds the whole state, when it does: applying a codebook or side
    /// memories sets everything at their place, and a method adding to them returns the
    /// grown state, so a later edit of the same kind and place holds this one.
    pub fn whole_state_place(&self) -> Option<(&'static str, String)> {
        match self {
            Edit::Adaptor(a) => Some((self.kind(), a.site.to_string())),
            Edit::SideMemory(e) => Some((self.kind(), e.site().to_string())),
            Edit::Weights(_) | Edit::Memory(_) | Edit::Context(_) => None,
        }
    }

    /// The weight deltas, when this is a weight edit.
    pub fn weights(&self) -> Option<&WeightEdit> {
        match self {
            Edit::Weights(w) => Some(w),
            _ => None,
        }
    }
}

impl From<WeightEdit> for Edit {
    fn from(e: WeightEdit) -> Self {
        Edit::Weights(e)
    }
}

impl From<AdaptorEdit> for Edit {
    fn from(e: AdaptorEdit) -> Self {
        Edit::Adaptor(e)
    }
}

impl From<SideMemoryEdit> for Edit {
    fn from(e: SideMemoryEdit) -> Self {
        Edit::SideMemory(e)
    }
}

impl From<MemoryEdit> for Edit {
    fn from(e: MemoryEdit) -> Self {
        Edit::Memory(e)
    }
}

impl From<ContextEdit> for Edit {
    fn from(e: ContextEdit) -> Self {
        Edit::Context(e)
    }
}
