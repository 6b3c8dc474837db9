//! The Editor: a model plus the edits applied to it, every one reversible. It owns the
//! whole edited state — weights, site adaptors, memories, contexts — and is itself a
//! [`LanguageModel`](crate::lm::LanguageModel) (see [`system`]), so metrics score the
//! edited system whatever kinds of edit it holds.
//!
//! Weights are immutable reference-counted tensors, so a checkpoint is a cheap copy of the
//! parameter map and restoring it gives bit-identical weights — no arithmetic undo.

mod scope_index;
mod system;

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Tensor;
use serde::Serialize;

use crate::edit::{
    weights, AdaptorEdit, ContextEdit, CounterfactualModel, Edit, MemoryEdit, Router,
    ScopeClassifier, SideMemoryEdit, WeightEdit,
};
use crate::encoder::SentenceEncoder;
use crate::error::{Error, Result};
use crate::lm::LanguageModel;
use crate::model::{BlockParam, Model, ParamId, Params};
use crate::runtime::Site;
use scope_index::ScopeIndex;

/// When an edit is refused.
#[derive(Clone, Debug, Serialize)]
pub struct Guard {
    /// Refuse a delta with ‖ΔW‖ / ‖W‖ above this (ROME's "disabling edits" are far above).
    pub max_relative_norm: f64,
    /// Run a short forward pass after applying; refuse if any logit is not finite.
    pub check_forward: bool,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            max_relative_norm: 4.0,
            check_forward: true,
        }
    }
}

/// What the system holds besides its weights.
#[derive(Clone, Debug, Default)]
struct Extras {
    /// At most one codebook per site.
    adaptors: BTreeMap<Site, AdaptorEdit>,
    /// At most one set of side memories per layer.
    side_memories: BTreeMap<usize, SideMemoryEdit>,
    memories: Vec<MemoryEdit>,
    /// Per memory, the counterfactual model its routed inputs run with, when it is not the
    /// system's own.
    counterfactuals: Vec<Option<system::Answerer>>,
    /// The memories routed by scope classifiers, one index per classifier.
    scopes: Vec<ScopeIndex>,
    contexts: Vec<ContextEdit>,
}

impl Extras {
    fn is_empty(&self) -> bool {
        self.adaptors.is_empty()
            && self.side_memories.is_empty()
            && self.memories.is_empty()
            && self.contexts.is_empty()
    }
}

/// A saved state of the edited system.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    params: Params,
    extras: Extras,
    applied: usize,
}

/// What the editor records of each applied edit.
#[derive(Clone, Debug, Serialize)]
pub struct AppliedEdit {
    /// The edit's kind (`weights`, `adaptor`, `memory`, `context`).
    pub kind: &'static str,
    /// Weight edits: the weights changed, and each change's norm relative to the weight.
    pub params: Vec<String>,
    pub relative_norms: Vec<f64>,
    /// Adaptor edits: the site and its entries; memory edits: the records.
    pub entries: usize,
    pub site: Option<String>,
    /// Weight edits: the keys the edit wrote ([`WeightEdit::keys`]), kept while the edit is
    /// applied so that later edits can keep them in place (AlphaEdit).
    #[serde(skip)]
    pub keys: Vec<(ParamId, Tensor)>,
}

impl AppliedEdit {
    fn of_kind(kind: &'static str) -> Self {
        AppliedEdit {
            kind,
            params: Vec::new(),
            relative_norms: Vec::new(),
            entries: 0,
            site: None,
            keys: Vec::new(),
        }
    }
}

pub struct Editor {
    model: Model,
    original: Params,
    extras: Extras,
    applied: Vec<AppliedEdit>,
    /// Scope classifiers loaded for memories, by fingerprint: kept across reverts, so that
    /// re-applying a memory does not read its classifier again.
    classifiers: BTreeMap<String, Arc<ScopeClassifier>>,
    /// Counterfactual models loaded for memories, by fingerprint (likewise kept).
    counterfactual_files: BTreeMap<String, Arc<WeightEdit>>,
    pub guard: Guard,
}

impl Editor {
    pub fn new(model: Model) -> Self {
        Editor {
            original: model.params.clone(),
            model,
            extras: Extras::default(),
            applied: Vec::new(),
            classifiers: BTreeMap::new(),
            counterfactual_files: BTreeMap::new(),
            guard: Guard::default(),
        }
    }

    /// The model with the weight edits applied (adaptors, memories and contexts act only
    /// through the editor's [`LanguageModel`] implementation).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The codebook at `site`, if an adaptor edit put one there.
    pub fn adaptor(&self, site: Site) -> Option<&AdaptorEdit> {
        self.extras.adaptors.get(&site)
    }

    /// The side memories of `layer`'s MLP output projection, if an edit put them there.
    pub fn side_memory(&self, layer: usize) -> Option<&SideMemoryEdit> {
        self.extras.side_memories.get(&layer)
    }

    pub fn memories(&self) -> &[MemoryEdit] {
        &self.extras.memories
    }

    pub fn contexts(&self) -> &[ContextEdit] {
        &self.extras.contexts
    }

    /// Gives the (possibly edited) model back.
    pub fn into_model(self) -> Model {
        self.model
    }

    /// Edits applied since the original or the last restore.
    pub fn applied(&self) -> &[AppliedEdit] {
        &self.applied
    }

    /// The keys the applied weight edits wrote at `param` ([`WeightEdit::keys`]), oldest
    /// first: reverting or restoring drops them with their edits.
    pub fn applied_keys(&self, param: ParamId) -> Vec<&Tensor> {
        self.applied
            .iter()
            .flat_map(|a| &a.keys)
            .filter(|(p, _)| *p == param)
            .map(|(_, k)| k)
            .collect()
    }

    /// Applies `edit` whole, or not at all: a delta with NaN/Inf, a wrong shape or an
    /// exploding norm, a malformed codebook, memory or context, or a state whose logits
    /// are not finite is refused with the system left exactly as it was.
    pub fn apply(&mut self, edit: &Edit) -> Result<&AppliedEdit> {
        let before = self.checkpoint();
        match self.try_apply(edit) {
            Ok(record) => {
                self.applied.push(record);
                Ok(self.applied.last().expect("just pushed"))
            }
            Err(e) => {
                self.restore(&before);
                Err(e)
            }
        }
    }

    fn try_apply(&mut self, edit: &Edit) -> Result<AppliedEdit> {
        let record = match edit {
            Edit::Weights(w) => self.apply_weights(w)?,
            Edit::Adaptor(a) => {
                a.check(site_width(&self.model, a.site))?;
                a.site.check(self.model.config.n_layers)?;
                self.extras.adaptors.insert(a.site, a.clone());
                AppliedEdit {
                    entries: a.len(),
                    site: Some(a.site.to_string()),
                    ..AppliedEdit::of_kind("adaptor")
                }
            }
            Edit::SideMemory(e) => {
                e.site().check(self.model.config.n_layers)?;
                let w = self
                    .model
                    .params
                    .require(ParamId::Block(e.layer, BlockParam::OutWeight))?;
                e.check(w.dims2()?)?;
                self.extras.side_memories.insert(e.layer, e.clone());
                AppliedEdit {
                    entries: e.len(),
                    site: Some(e.site().to_string()),
                    ..AppliedEdit::of_kind("side_memory")
                }
            }
            Edit::Memory(m) => {
                m.check()?;
                let mut counterfactual = None;
                if let Router::Scope {
                    classifier,
                    fingerprint,
                    threshold,
                    counterfactual: cf,
                } = &m.router
                {
                    // Loaded (and checked) before anything is added, so that a refused
                    // counterfactual model leaves the system as it was.
                    counterfactual = cf
                        .as_ref()
                        .map(|cf| self.counterfactual_model(cf))
                        .transpose()?;
                    let c = self.scope_classifier(classifier, fingerprint)?;
                    let at = self.extras.memories.len();
                    let fp = c.fingerprint();
                    let index = match self
                        .extras
                        .scopes
                        .iter_mut()
                        .find(|s| s.classifier.fingerprint() == fp)
                    {
                        Some(index) => index,
                        None => {
                            self.extras.scopes.push(ScopeIndex::new(c)?);
                            self.extras.scopes.last_mut().expect("just pushed")
                        }
                    };
                    index.add(at, m, *threshold)?;
                }
                self.extras.memories.push(m.clone());
                self.extras
                    .counterfactuals
                    .push(counterfactual.map(system::Answerer::new));
                AppliedEdit {
                    entries: m.records.len(),
                    ..AppliedEdit::of_kind("memory")
                }
            }
            Edit::Context(c) => {
                c.check()?;
                self.extras.contexts.push(c.clone());
                AppliedEdit::of_kind("context")
            }
        };
        // Memories and contexts add text in front of inputs and change no number of the
        // model: they cannot make a logit non-finite, and a forward to prove it would be most
        // of the cost of adding an edit to a memory.
        let changes_numbers = matches!(
            edit,
            Edit::Weights(_) | Edit::Adaptor(_) | Edit::SideMemory(_)
        );
        if self.guard.check_forward && changes_numbers {
            self.check_logits_finite()?;
        }
        Ok(record)
    }

    fn apply_weights(&mut self, edit: &WeightEdit) -> Result<AppliedEdit> {
        // Counterfactual models are built on the system's weights: built again when used.
        for a in self.extras.counterfactuals.iter_mut().flatten() {
            a.forget_model();
        }
        if edit.deltas.is_empty() {
            return Err(Error::EditRefused("the edit changes no weight".into()));
        }
        let mut record = AppliedEdit::of_kind("weights");
        let mut changed = false;
        for (id, delta) in &edit.deltas {
            let w = self.model.params.require(*id)?.clone();
            if delta.shape()? != w.dims() {
                return Err(Error::EditRefused(format!(
                    "the delta for `{id}` has shape {:?}; the weight is {:?}",
                    delta.shape()?,
                    w.dims()
                )));
            }
            if !delta.is_finite()? {
                return Err(Error::EditRefused(format!(
                    "the delta for `{id}` has NaN or Inf entries"
                )));
            }
            let ratio = delta.norm()? / weights::frobenius(&w)?.max(f64::MIN_POSITIVE);
            if ratio.is_nan() || ratio > self.guard.max_relative_norm {
                return Err(Error::EditRefused(format!(
                    "the update of `{id}` has norm {ratio:.3e} × the weight's, above the limit {} \
                     (an exploding update)",
                    self.guard.max_relative_norm
                )));
            }
            let updated = delta.added_to(&w)?;
            if !weights::all_finite(&updated)? {
                return Err(Error::EditRefused(format!(
                    "`{id}` would have NaN or Inf entries"
                )));
            }
            changed = changed || !tensors_identical(&updated, &w)?;
            self.model.params.replace(*id, updated)?;
            record.params.push(id.to_string());
            record.relative_norms.push(ratio);
        }
        record.keys = edit.keys.clone();
        for (id, k) in &edit.keys {
            let Some((_, delta)) = edit.deltas.iter().find(|(p, _)| p == id) else {
                return Err(Error::EditRefused(format!(
                    "the edit carries keys for `{id}`, which it does not change"
                )));
            };
            let width = delta.shape()?[1];
            if k.rank() != 2 || k.dim(1)? != width || !weights::all_finite(k)? {
                return Err(Error::EditRefused(format!(
                    "the keys for `{id}` ({:?}) are not finite rows of width {width}",
                    k.dims()
                )));
            }
        }
        if !changed {
            // A success that changes nothing would be reported as an edit (FT at lr 0, a
            // clamp of 0): refuse it like any other edit that cannot be made.
            return Err(Error::EditRefused(
                "the edit changes no weight: every delta is zero, or too small to change a \
                 weight once added"
                    .into(),
            ));
        }
        Ok(record)
    }

    /// The scope classifier saved at `path`, which must be the one the memory was made
    /// with (`fingerprint`); loaded once per editor.
    fn scope_classifier(
        &mut self,
        path: &std::path::Path,
        fingerprint: &str,
    ) -> Result<Arc<ScopeClassifier>> {
        if let Some(c) = self.classifiers.get(fingerprint) {
            return Ok(c.clone());
        }
        let base_dir = ScopeClassifier::base_dir_of(path)?;
        let base_dir = if base_dir.is_dir() {
            base_dir
        } else {
            SentenceEncoder::default_dir()
        };
        let c = ScopeClassifier::load(path, &SentenceEncoder::load(&base_dir)?)?;
        let got = format!("{:016x}", c.fingerprint());
        if got != fingerprint {
            return Err(Error::EditRefused(format!(
                "{}: the scope classifier there has fingerprint {got}; the memory was made with \
                 {fingerprint} (the file was retrained or replaced since)",
                path.display()
            )));
        }
        let c = Arc::new(c);
        self.classifiers.insert(got, c.clone());
        Ok(c)
    }

    /// The counterfactual model `cf` names, which must be the file the memory was made
    /// with and trained on this editor's unedited model; loaded once per editor.
    fn counterfactual_model(&mut self, cf: &CounterfactualModel) -> Result<Arc<WeightEdit>> {
        if let Some(e) = self.counterfactual_files.get(&cf.fingerprint) {
            return Ok(e.clone());
        }
        let got = crate::hash::sha256_file(&cf.path)?;
        if got != cf.fingerprint {
            return Err(Error::EditRefused(format!(
                "{}: the counterfactual model there has sha256 {got}; the memory was made \
                 with {} (the file was retrained or replaced since)",
                cf.path.display(),
                cf.fingerprint
            )));
        }
        let edit = crate::edit::counterfactual::load(&cf.path, &self.original_model(), None)?;
        let edit = Arc::new(edit);
        self.counterfactual_files.insert(got, edit.clone());
        Ok(edit)
    }

    fn check_logits_finite(&self) -> Result<()> {
        let vocab = self.model.config.vocab_size as u32;
        let probe: Vec<u32> = (0..8u32).map(|i| (i * 7919 + 13) % vocab).collect();
        let logits = self.next_logits(&[probe])?;
        if weights::all_finite(&logits)? {
            Ok(())
        } else {
            Err(Error::EditRefused(
                "the edited model produces NaN or Inf logits".into(),
            ))
        }
    }

    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            params: self.model.params.clone(),
            extras: self.extras.clone(),
            applied: self.applied.len(),
        }
    }

    pub fn restore(&mut self, cp: &Checkpoint) {
        self.model.params = cp.params.clone();
        self.extras = cp.extras.clone();
        self.applied.truncate(cp.applied);
    }

    /// Undoes every edit: the weights are bit-identical to the original, and no adaptor,
    /// memory or context is left.
    pub fn revert_all(&mut self) {
        self.model.params = self.original.clone();
        self.extras = Extras::default();
        self.applied.clear();
    }

    /// The model as it was before any edit (the weights are shared, not copied).
    pub fn original_model(&self) -> Model {
        let mut model = self.model.clone();
        model.params = self.original.clone();
        model
    }

    /// A weight by canonical name.
    pub fn param(&self, id: ParamId) -> Result<&Tensor> {
        self.model.params.require(id)
    }

    /// Saves the edited model as a Hugging Face directory (see [`Model::save_hf`] for what
    /// `overwrite` allows). Refused while the system holds edits that live outside the
    /// weights: a model directory cannot carry them.
    pub fn save_model(&self, dir: &std::path::Path, overwrite: bool) -> Result<()> {
        self.weights_only()?.save_hf(dir, overwrite)
    }

    /// The edited model, for writing it to a model file (Hugging Face, GGUF); refused while
    /// the system holds edits that live outside the weights, which no model file carries.
    pub fn weights_only(&self) -> Result<&Model> {
        if !self.extras.is_empty() {
            return Err(Error::invalid(
                "the edited system holds adaptor, memory or context edits, which a model \
                 file cannot carry; save the edits themselves instead (--save-edit)",
            ));
        }
        Ok(&self.model)
    }

    /// True when the weights are bit-identical to the original ones and no adaptor,
    /// memory or context is held.
    pub fn is_pristine(&self) -> Result<bool> {
        Ok(self.extras.is_empty() && params_identical(&self.model.params, &self.original)?)
    }
}

/// The width of the tensor at `site`.
fn site_width(model: &Model, site: Site) -> usize {
    match site {
        Site::MlpKey(_) => model.config.d_ff,
        Site::Logits => model.config.vocab_size,
        _ => model.config.d_model,
    }
}

/// Bitwise equality of two parameter sets.
pub fn params_identical(a: &Params, b: &Params) -> Result<bool> {
    if a.len() != b.len() {
        return Ok(false);
    }
    for ((ia, ta), (ib, tb)) in a.iter().zip(b.iter()) {
        if ia != ib || ta.dims() != tb.dims() || ta.dtype() != tb.dtype() {
            return Ok(false);
        }
        if !tensors_identical(ta, tb)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Bitwise equality of two tensors (shape, type and every bit of every entry).
pub fn tensors_identical(a: &Tensor, b: &Tensor) -> Result<bool> {
    if a.dims() != b.dims() || a.dtype() != b.dtype() {
        return Ok(false);
    }
    if a.id() == b.id() {
        return Ok(true);
    }
    let bits = |t: &Tensor| -> Result<Vec<u64>> {
        let t = t.flatten_all()?;
        Ok(match t.dtype() {
            candle_core::DType::F64 => t.to_vec1::<f64>()?.iter().map(|x| x.to_bits()).collect(),
            _ => t
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .map(|x| u64::from(x.to_bits()))
                .collect(),
        })
    };
    Ok(bits(a)? == bits(b)?)
}
