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
use crate::methods::meta::trainer::{self, Constraint, Settings};
use crate::methods::meta::{self, hypernet, MetaMethod};
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
        source
            .check("edit_lr", self.edit_lr)
            .positive()?
            .at_most(MAX_LR)?;
        source.check("lr", self.lr).positive()?.at_most(MAX_LR)?;
        source.check("lr_lr", self.lr_lr).in_range(0.0, MAX_LR)?;
        source
            .check("hidden_dim", self.hidden_dim as f64)
            .in_range(1.0, 8192.0)?;
        source.check("cedit", self.cedit).positive()?.at_most(1e6)?;
        source.check("cloc", self.cloc).in_range(0.0, 1e6)?;
        source
            .check("kl_margin", self.kl_margin)
            .in_range(0.0, 1e3)?;
        source
            .check("constraint_lr", self.constraint_lr)
            .in_range(0.0, 1e6)?;
        source.check("grad_clip", self.grad_clip).positive()?;
        source
            .check("accumulate_bs", self.accumulate_bs as f64)
            .in_range(1.0, 1024.0)?;
        source
            .check("max_iters", self.max_iters as f64)
            .in_range(1.0, 1e7)?;
        source
            .check("val_interval", self.val_interval as f64)
            .in_range(1.0, 1e7)?;
        source
            .check("val_steps", self.val_steps as f64)
            .in_range(1.0, 1e6)?;
        source
            .check("early_stop_patience", self.early_stop_patience as f64)
            .in_range(1.0, 1e9)?;
        source
            .check("val_min_locality", self.val_min_locality)
            .in_range(0.0, 1.0)?;
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

    fn settings(&self) -> Settings {
        Settings {
            lr: self.lr,
            lr_lr: self.lr_lr,
            c_edit: self.cedit,
            c_loc: self.cloc,
            grad_clip: self.grad_clip,
            accumulate: self.accumulate_bs,
            max_iters: self.max_iters,
            val_every: self.val_interval,
            val_records: self.val_steps,
            patience: self.early_stop_patience,
            min_locality: self.val_min_locality,
            constraint: Some(Constraint {
                margin: self.kl_margin,
                lr: self.constraint_lr,
            }),
        }
    }
}

pub struct Ke;

impl Ke {
    pub fn load(_name: &str, source: HparamsSource, model: &Model) -> Result<LoadedMethod> {
        let (hp, unknown): (KeHparams, _) = source.deserialize()?;
        let layers = hp.check(&source, model)?;
        let path = meta::archive(&source, "ke")?;
        let mut net = hp.net(model, &layers, 0)?;
        let files = hypernet::open(&path, &net, model.fingerprint()?)?;
        hypernet::load_into(&files, &path, &mut net)?;
        Ok(LoadedMethod {
            warnings: meta::unknown_warnings(&source.origin, unknown),
            hparams_origin: source.origin.clone(),
            method: Box::new(MetaMethod {
                name: "KE".into(),
                net: Box::new(net),
                hparams: serde_json::to_value(&hp).expect("hyper-parameters serialise"),
                max_batch: Some(1),
            }),
        })
    }
}

/// `kedit train --method ke`.
pub fn train(inputs: TrainInputs) -> Result<Trained> {
    let (hp, _): (KeHparams, _) = inputs.hparams.deserialize()?;
    let layers = hp.check(inputs.hparams, inputs.model)?;
    let mut net = hp.net(inputs.model, &layers, inputs.seed)?;
    let outcome = trainer::train(
        inputs.model,
        &mut net,
        &hp.settings(),
        inputs.train,
        inputs.val,
        inputs.out_dir,
        inputs.seed,
        inputs.progress,
    )?;
    Ok(Trained {
        checkpoint: outcome.checkpoint,
        hparams: serde_json::Map::new(),
        summary: outcome.summary,
    })
}
