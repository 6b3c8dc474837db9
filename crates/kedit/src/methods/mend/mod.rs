//! MEND (Mitchell et al. 2022, "Fast Model Editing at Scale"): a hypernetwork, trained
//! here by `kedit train --method mend`, maps the rank-one factors of an edit's gradient at
//! chosen MLP output projections to a weight update (see [`net`]). Editing is one forward
//! and backward pass over the request and one pass through the editor. EasyEdit's MEND
//! keys are read where they apply; the variants MEND's code offers besides the one it
//! ships (unshared editors, one-sided or key-only updates, no normalisation) are refused.

pub mod net;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::methods::hparams::{lenient_f64, HparamsSource, MAX_LR};
use crate::methods::meta;
use crate::methods::meta::trainer::Settings;
use crate::methods::train::{TrainInputs, Trained};
use crate::methods::LoadedMethod;
use crate::model::Model;
pub use net::MendNet;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MendHparams {
    pub inner_params: Vec<String>,
    /// Initial per-layer step size of the update.
    #[serde(deserialize_with = "lenient_f64")]
    pub edit_lr: f64,
    /// The editor's learning rate.
    #[serde(deserialize_with = "lenient_f64")]
    pub lr: f64,
    /// The step sizes' learning rate.
    #[serde(deserialize_with = "lenient_f64")]
    pub lr_lr: f64,
    pub rank: usize,
    pub n_hidden: usize,
    #[serde(deserialize_with = "lenient_f64")]
    pub cedit: f64,
    #[serde(deserialize_with = "lenient_f64")]
    pub cloc: f64,
    #[serde(default = "default_clip", deserialize_with = "lenient_f64")]
    pub grad_clip: f64,
    #[serde(default = "default_accumulate")]
    pub accumulate_bs: usize,
    pub max_iters: usize,
    /// Steps between validations (EasyEdit's `val_interval`).
    pub val_interval: usize,
    /// Validation records (EasyEdit's `val_steps`).
    pub val_steps: usize,
    /// Steps without a better validation before training stops.
    pub early_stop_patience: usize,
    /// The least validation locality a checkpoint must keep to be the best one.
    #[serde(default, deserialize_with = "lenient_f64")]
    pub val_min_locality: f64,
    #[serde(default = "default_mlp_class")]
    pub mlp_class: String,
    #[serde(default = "yes")]
    pub shared: bool,
    #[serde(default = "default_init")]
    pub init: String,
    #[serde(default = "yes")]
    pub norm: bool,
    #[serde(default = "yes")]
    pub combine: bool,
    #[serde(default = "default_act")]
    pub act: String,
    #[serde(default)]
    pub one_sided: bool,
    #[serde(default)]
    pub x_only: bool,
    #[serde(default)]
    pub delta_only: bool,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub dropout: f64,
    #[serde(default)]
    pub archive: Option<String>,
}

fn default_clip() -> f64 {
    100.0
}
fn default_accumulate() -> usize {
    10
}
fn default_mlp_class() -> String {
    "IDMLP".into()
}
fn default_init() -> String {
    "id".into()
}
fn default_act() -> String {
    "relu".into()
}
fn yes() -> bool {
    true
}

/// The most hidden units (rank) of the editor.
const MAX_RANK: usize = 8192;

impl MendHparams {
    /// Every key against its range; the edited layers.
    pub fn check(&self, source: &HparamsSource, model: &Model) -> Result<Vec<usize>> {
        let layers = meta::inner_layers(source, &self.inner_params, model)?;
        self.settings(source)?;
        source
            .check("edit_lr", self.edit_lr)
            .positive()?
            .at_most(MAX_LR)?;
        source
            .check("rank", self.rank as f64)
            .in_range(1.0, MAX_RANK as f64)?;
        source
            .check("n_hidden", self.n_hidden as f64)
            .in_range(0.0, 8.0)?;
        let refuse = |key: &str, why: &str| Err(source.error(key, why));
        if !self.mlp_class.eq_ignore_ascii_case("IDMLP") {
            return refuse(
                "mlp_class",
                ": kedit's MEND has the identity-initialised IDMLP only",
            );
        }
        if !self.init.eq_ignore_ascii_case("id") {
            return refuse(
                "init",
                ": kedit's MEND initialises the editor to the identity only",
            );
        }
        if !self.act.eq_ignore_ascii_case("relu") {
            return refuse("act", ": kedit's MEND uses ReLU only");
        }
        for (key, on, want) in [
            ("shared", self.shared, true),
            ("norm", self.norm, true),
            ("combine", self.combine, true),
            ("one_sided", self.one_sided, false),
            ("x_only", self.x_only, false),
            ("delta_only", self.delta_only, false),
        ] {
            if on != want {
                return refuse(
                    key,
                    &format!(
                        " must be {want}: kedit's MEND is the shipped variant (one editor shared \
                         by the layers, normalised inputs, key and gradient edited together)"
                    ),
                );
            }
        }
        if self.dropout != 0.0 {
            return refuse("dropout", ": kedit's MEND trains without dropout (0)");
        }
        Ok(layers)
    }

    fn net(&self, model: &Model, layers: &[usize], seed: u64) -> Result<MendNet> {
        MendNet::new(
            layers,
            model.config.d_model,
            model.config.d_ff,
            self.rank,
            self.n_hidden,
            self.edit_lr,
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
        .settings(source, None)
    }
}

pub struct Mend;

impl Mend {
    pub fn load(_name: &str, source: HparamsSource, model: &Model) -> Result<LoadedMethod> {
        let (hp, unknown): (MendHparams, _) = source.deserialize()?;
        let layers = hp.check(&source, model)?;
        let net = Box::new(hp.net(model, &layers, 0)?);
        let json = serde_json::to_value(&hp).expect("hyper-parameters serialise");
        meta::load_trained(&source, model, net, json, unknown, None)
    }
}

/// `kedit train --method mend`.
pub fn train(inputs: TrainInputs) -> Result<Trained> {
    let (hp, _): (MendHparams, _) = inputs.hparams.deserialize()?;
    let layers = hp.check(inputs.hparams, inputs.model)?;
    let settings = hp.settings(inputs.hparams)?;
    let mut net = hp.net(inputs.model, &layers, inputs.seed)?;
    meta::train_net(inputs, &mut net, &settings)
}
