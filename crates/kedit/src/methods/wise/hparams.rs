//! WISE's hyper-parameters, read from EasyEdit's `hparams/WISE/*.yaml` keys. Settings
//! kedit does not implement (WISE-Merge, other merges, other objectives) are
//! errors that say so, not silently different behaviour.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::methods::hparams::{lenient_f64, resolve_param, HparamsSource, MAX_LR, MAX_STEPS};
use crate::methods::rome::templates::check_length_params;
use crate::model::{BlockParam, Model, ParamId};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WiseHparams {
    /// One MLP output projection (`model.layers[L].mlp.down_proj.weight`): the side memory
    /// is a copy of it.
    pub inner_params: Vec<String>,
    /// Plain SGD's step on the side memory.
    #[serde(deserialize_with = "lenient_f64")]
    pub edit_lr: f64,
    /// Optimisation steps per edit.
    pub n_iter: usize,
    /// ρ: the share of the side memory's entries one knowledge shard may change.
    #[serde(deserialize_with = "lenient_f64")]
    pub mask_ratio: f64,
    /// Each entry of a side memory stays within this of the main weight's.
    #[serde(deserialize_with = "lenient_f64")]
    pub norm_constraint: f64,
    /// `[α, β, γ]`: an irrelevant input's activation distance should stay below α, an
    /// edit's rise above β, and exceed the irrelevant one's by γ.
    pub act_margin: [f64; 3],
    /// The routing threshold: this times the smallest distance an edit of the memory
    /// reached.
    #[serde(deserialize_with = "lenient_f64")]
    pub act_ratio: f64,
    /// Edits per knowledge shard: after this many, the side memory is closed and a new
    /// one (a new random subspace) opened.
    pub save_freq: usize,
    /// After this many edits the last `merge_freq / save_freq` shards are merged into one
    /// memory.
    pub merge_freq: usize,
    #[serde(default = "default_merge_alg")]
    pub merge_alg: String,
    #[serde(default = "default_objective")]
    pub objective_optimization: String,
    /// TIES: the share of each shard's largest changes kept before merging.
    #[serde(default = "default_density", deserialize_with = "lenient_f64")]
    pub densities: f64,
    /// TIES: the total weight of the merged shards.
    #[serde(default = "default_weights", deserialize_with = "lenient_f64")]
    pub weights: f64,
    /// WISE-Retrieve (memories kept apart, routed): the only mode kedit implements.
    #[serde(default = "default_true")]
    pub retrieve: bool,
    /// Train each edit on some of its shard's earlier facts again (`replay_size` of them),
    /// so that the shard's later edits do not overwrite its earlier ones.
    #[serde(default)]
    pub replay: bool,
    /// kedit's: how many of the open shard's earlier facts each edit replays (drawn anew
    /// for each edit).
    #[serde(default = "default_replay_size")]
    pub replay_size: usize,
    /// EasyEdit's key; the harness renders the requests through the chat template
    /// (`HparamsSource::chat_template`), so WISE itself has nothing to do.
    #[serde(default)]
    pub use_chat_template: bool,
    /// Where the irrelevant inputs come from (kedit's; EasyEdit takes them from the
    /// training file in its example script): a dataset file whose records' locality
    /// prompts, with their answers, are the inputs a side memory must not react to.
    pub irrelevant_data: String,
    /// Only the records of `irrelevant_data` from this index on are used (to keep them
    /// apart from records a run edits or evaluates).
    #[serde(default)]
    pub irrelevant_from: usize,
    /// Irrelevant inputs trained against per edit (EasyEdit: 1).
    #[serde(default = "default_one")]
    pub irrelevant_per_edit: usize,
    /// ROME's context templates, prefixed to each edit's prompt (EasyEdit's WISE:
    /// `[[5, 5], [10, 5]]`).
    #[serde(default = "default_length_params")]
    pub context_template_length_params: Vec<(usize, usize)>,
    #[serde(default)]
    pub context_template_seed: u64,
}

fn default_merge_alg() -> String {
    "ties".into()
}

fn default_objective() -> String {
    "only_label".into()
}

fn default_density() -> f64 {
    0.53
}

fn default_weights() -> f64 {
    1.0
}

fn default_replay_size() -> usize {
    8
}

fn default_one() -> usize {
    1
}

fn default_true() -> bool {
    true
}

fn default_length_params() -> Vec<(usize, usize)> {
    vec![(5, 5), (10, 5)]
}

impl WiseHparams {
    /// Every key against its range and what kedit implements; the edited layer.
    pub fn check(&self, source: &HparamsSource, model: &Model) -> Result<usize> {
        let layer = self.layer(source, model)?;
        source
            .check("edit_lr", self.edit_lr)
            .positive()?
            .at_most(MAX_LR)?;
        source
            .check("n_iter", self.n_iter as f64)
            .in_range(1.0, MAX_STEPS as f64)?;
        source
            .check("mask_ratio", self.mask_ratio)
            .positive()?
            .at_most(1.0)?;
        source
            .check("norm_constraint", self.norm_constraint)
            .positive()?;
        source.check("act_ratio", self.act_ratio).positive()?;
        source
            .check("densities", self.densities)
            .positive()?
            .at_most(1.0)?;
        source.check("weights", self.weights).positive()?;
        let [alpha, beta, gamma] = self.act_margin;
        let finite = [alpha, beta, gamma].iter().all(|v| v.is_finite());
        if !(finite && alpha >= 0.0 && beta > alpha && gamma >= 0.0) {
            return Err(source.error(
                "act_margin",
                &format!(
                    ": [α, β, γ] must be finite with 0 ≤ α < β and γ ≥ 0 (got {:?})",
                    self.act_margin
                ),
            ));
        }
        source
            .check("irrelevant_per_edit", self.irrelevant_per_edit as f64)
            .in_range(1.0, 64.0)?;
        source
            .check("save_freq", self.save_freq as f64)
            .in_range(1.0, 1e9)?;
        if self.merge_freq == 0 || self.merge_freq % self.save_freq != 0 {
            return Err(source.error(
                "merge_freq",
                &format!(
                    " must be a positive multiple of save_freq ({}); got {}",
                    self.save_freq, self.merge_freq
                ),
            ));
        }
        if self.merge_alg != "ties" {
            return Err(source.error(
                "merge_alg",
                &format!(": only `ties` is implemented (got `{}`)", self.merge_alg),
            ));
        }
        if self.objective_optimization != "only_label" {
            return Err(source.error(
                "objective_optimization",
                &format!(
                    ": only `only_label` is implemented (the loss reads the target's tokens); \
                     got `{}`",
                    self.objective_optimization
                ),
            ));
        }
        if !self.retrieve {
            return Err(source.error(
                "retrieve",
                ": only WISE-Retrieve (`true`: shards kept apart and routed) is implemented",
            ));
        }
        if self.replay {
            source
                .check("replay_size", self.replay_size as f64)
                .in_range(1.0, 256.0)?;
        }
        check_length_params(&self.context_template_length_params)
            .map_err(|e| source.error("context_template_length_params", &format!(": {e}")))?;
        Ok(layer)
    }

    pub fn alpha(&self) -> f64 {
        self.act_margin[0]
    }

    pub fn beta(&self) -> f64 {
        self.act_margin[1]
    }

    pub fn gamma(&self) -> f64 {
        self.act_margin[2]
    }

    fn layer(&self, source: &HparamsSource, model: &Model) -> Result<usize> {
        let [name] = self.inner_params.as_slice() else {
            return Err(source.error(
                "inner_params",
                &format!(
                    " must name exactly one module (WISE copies one projection); got {}",
                    self.inner_params.len()
                ),
            ));
        };
        match resolve_param(model, name) {
            Some(ParamId::Block(l, BlockParam::OutWeight)) => Ok(l),
            Some(other) => Err(source.error(
                "inner_params",
                &format!(
                    ": `{name}` is `{other}`; WISE copies an MLP output projection \
                     (`model.layers[L].mlp.down_proj.weight`)"
                ),
            )),
            None => Err(source.error(
                "inner_params",
                &format!(
                    ": `{name}` is not a module of this {} model with {} layers",
                    model.config.family.hf_class(),
                    model.config.n_layers
                ),
            )),
        }
    }
}
