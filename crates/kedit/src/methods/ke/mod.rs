//! KE (De Cao et al. 2021): a hypernetwork, trained here by `kedit train --method ke`,
//! conditioned on the edit, turns the edit's gradient at chosen MLP output projections
//! into a gated update ([`net`]); it is trained under the paper's constraint on the change
//! of the model's other predictions (a Lagrange multiplier keeps the locality KL under
//! `kl_margin`). EasyEdit deleted its KE code in 2023; its YAML keys are read where they
//! apply.

pub mod net;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::methods::hparams::{lenient_f64, HparamsSource, MAX_LR};
use crate::methods::meta;
use crate::methods::meta::trainer::{Constraint, Settings};
use crate::methods::train::{TrainInputs, Trained};
use crate::methods::LoadedMethod;
use crate::model::Model;
pub use net::KeNet;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeHparams {
    pub inner_params: Vec<String>,
    /// Initial per-layer step size of the (normalised) update.
    #[serde(deserialize_with = "lenient_f64")]
    pub edit_lr: f64,
    #[serde(deserialize_with = "lenient_f64")]
    pub lr: f64,
    #[serde(deserialize_with = "lenient_f64")]
    pub lr_lr: f64,
    /// Width of the condition's encoding.
    pub hidden_dim: usize,
    #[serde(deserialize_with = "lenient_f64")]
    pub cedit: f64,
    /// The initial Lagrange multiplier of the locality KL.
    #[serde(deserialize_with = "lenient_f64")]
    pub cloc: f64,
    /// The bound the constraint keeps the locality KL under.
    #[serde(deserialize_with = "lenient_f64")]
    pub kl_margin: f64,
    /// How fast the multiplier follows the constraint.
    #[serde(deserialize_with = "lenient_f64")]
    pub constraint_lr: f64,
    #[serde(default = "default_clip", deserialize_with = "lenient_f64")]
    pub grad_clip: f64,
    #[serde(default = "default_accumulate")]
    pub accumulate_bs: usize,
    pub max_iters: usize,
    pub val_interval: usize,
    pub val_steps: usize,
    pub early_stop_patience: usize,
    /// The least validation locality a checkpoint must keep to be the best one.
    #[serde(default, deserialize_with = "lenient_f64")]
    pub val_min_locality: f64,
    /// Build the update from standardised keys (running statistics, as MEND's inputs)
    /// instead of the raw ones; docs/meta-learning.md says which measured better.
    #[serde(default)]
    pub standardise_keys: bool,
    #[serde(default)]
    pub archive: Option<String>,
}

fn default_clip() -> f64 {
    100.0
}
fn default_accumulate() -> usize {
    10
}

impl KeHparams {
    pub fn check(&self, source: &HparamsSource, model: &Model) -> Result<Vec<usize>> {
        let layers = meta::inner_layers(source, &self.inner_params, model)?;
        self.settings(source)?;
        source
            .check("edit_lr", self.edit_lr)
            .positive()?
            .at_most(MAX_LR)?;
        source
            .check("hidden_dim", self.hidden_dim as f64)
            .in_range(1.0, 8192.0)?;
        source
            .check("kl_margin", self.kl_margin)
            .in_range(0.0, 1e3)?;
        source
            .check("constraint_lr", self.constraint_lr)
            .in_range(0.0, 1e6)?;
        Ok(layers)
    }

    fn net(&self, model: &Model, layers: &[usize], seed: u64) -> Result<KeNet> {
        KeNet::new(
            layers,
            model.config.d_model,
            model.config.d_ff,
            self.hidden_dim,
            self.edit_lr,
            self.standardise_keys,
            seed,
        )
    }

    /// The trainer's settings, every shared key checked.
    pub fn settings(&self, source: &HparamsSource) -> Result<Settings> {
        meta::TrainingKeys {
            lr: self.lr,
            lr_lr: self.lr_lr,
            cedit: self.cedit,
            cloc: self.cloc,
            grad_clip: self.grad_clip,
            accumulate_bs: self.accumulate_bs,
            max_iters: self.max_iters,
            val_interval: self.val_interval,
            val_steps: self.val_steps,
            early_stop_patience: self.early_stop_patience,
            val_min_locality: self.val_min_locality,
        }
        .settings(
            source,
            Some(Constraint {
                margin: self.kl_margin,
                lr: self.constraint_lr,
            }),
        )
    }
}

pub struct Ke;

impl Ke {
    pub fn load(_name: &str, source: HparamsSource, model: &Model) -> Result<LoadedMethod> {
        let (hp, unknown): (KeHparams, _) = source.deserialize()?;
        let layers = hp.check(&source, model)?;
        let net = Box::new(hp.net(model, &layers, 0)?);
        let json = serde_json::to_value(&hp).expect("hyper-parameters serialise");
        meta::load_trained(&source, model, net, json, unknown, Some(1))
    }
}

/// `kedit train --method ke`.
pub fn train(inputs: TrainInputs) -> Result<Trained> {
    let (hp, _): (KeHparams, _) = inputs.hparams.deserialize()?;
    let layers = hp.check(inputs.hparams, inputs.model)?;
    let settings = hp.settings(inputs.hparams)?;
    let mut net = hp.net(inputs.model, &layers, inputs.seed)?;
    meta::train_net(inputs, &mut net, &settings)
}
