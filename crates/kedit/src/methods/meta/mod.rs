//! What the meta-learning methods (MEND, KE) share: the examples they train on, the
//! factors of an edit's gradient, the hypernetwork interface and its checkpoint, the
//! trainer, and the edit a trained network makes.

pub mod example;
pub mod factors;
pub mod hypernet;
pub mod method;
pub mod moments;
pub mod trainer;

pub use example::{MetaExample, Scored};
pub use factors::{gradient_factors, Factors};
pub use hypernet::Hypernet;
pub use method::MetaMethod;

use std::path::Path;

use crate::error::Result;
use crate::methods::hparams::{resolve_param, HparamsSource};
use crate::model::{BlockParam, Model, ParamId};

/// The layers EasyEdit's `inner_params` names (`model.layers.27.mlp.down_proj.weight`, in
/// any of the spellings [`resolve_param`] reads). Meta-learned editors here edit MLP
/// output projections, where the runtime's sites give the gradient's factors; any other
/// parameter is refused by name.
pub fn inner_layers(source: &HparamsSource, names: &[String], model: &Model) -> Result<Vec<usize>> {
    if names.is_empty() {
        return Err(source.error("inner_params", " is empty: name the weights to edit"));
    }
    let mut layers = Vec::new();
    for name in names {
        match resolve_param(model, name) {
            Some(ParamId::Block(l, BlockParam::OutWeight)) if l < model.config.n_layers => {
                if layers.contains(&l) {
                    return Err(source.error("inner_params", &format!(" lists `{name}` twice")));
                }
                layers.push(l);
            }
            Some(other) => {
                return Err(source.error(
                    "inner_params",
                    &format!(
                        ": `{name}` is `{other}`; kedit's meta-learned editors edit MLP output \
                         projections (down_proj / c_proj / dense_4h_to_h) only"
                    ),
                ))
            }
            None => {
                return Err(source.error(
                    "inner_params",
                    &format!(
                        ": `{name}` is not a parameter of this {} model",
                        model.config.family.hf_class()
                    ),
                ))
            }
        }
    }
    Ok(layers)
}

/// The checkpoint `archive:` names, or the error that says how to train one.
pub fn archive(source: &HparamsSource, method: &str) -> Result<std::path::PathBuf> {
    match source.path_key("archive")? {
        Some(p) => Ok(p),
        None => Err(source.error(
            "archive",
            &format!(
                " is missing: {} edits with a trained hypernetwork — run `kedit train \
                 --method {} --data TRAIN.json --val VAL.json --out DIR`, then pass \
                 `--hparams DIR/hparams.yaml`",
                method.to_ascii_uppercase(),
                method
            ),
        )),
    }
}

/// Keys of EasyEdit's trainer files that concern its own plumbing (logging, devices,
/// saving): accepted without a warning.
pub const TRAINER_PLUMBING_KEYS: [&str; 26] = [
    "model_class",
    "tokenizer_class",
    "tokenizer_name",
    "results_dir",
    "model_save_pt",
    "silent",
    "log_interval",
    "eval_log_interval",
    "final_eval",
    "eval_only",
    "half",
    "debug",
    "save",
    "verbose",
    "max_epochs",
    "val_batch_size",
    "opt",
    "seed",
    "train_base",
    "no_grad_layers",
    "batch_size",
    "alg",
    "hidden_dim",
    "lr_scale",
    "cbase",
    "early_stop_key",
];

/// Unknown keys worth a warning.
pub fn unknown_warnings(origin: &Path, unknown: Vec<String>) -> Vec<String> {
    crate::methods::filter_warnings(
        origin,
        unknown
            .into_iter()
            .filter(|k| !TRAINER_PLUMBING_KEYS.contains(&k.as_str()))
            .collect(),
    )
}

/// The training keys of EasyEdit's trainer files that MEND and KE share.
pub struct TrainingKeys {
    pub lr: f64,
    pub lr_lr: f64,
    pub cedit: f64,
    pub cloc: f64,
    pub grad_clip: f64,
    pub accumulate_bs: usize,
    pub max_iters: usize,
    pub val_interval: usize,
    pub val_steps: usize,
    pub early_stop_patience: usize,
    pub val_min_locality: f64,
}

impl TrainingKeys {
    /// Each key against its range (the error names the file and the key), then the
    /// trainer's settings.
    pub fn settings(
        &self,
        source: &HparamsSource,
        constraint: Option<trainer::Constraint>,
    ) -> Result<trainer::Settings> {
        use crate::methods::hparams::MAX_LR;
        source.check("lr", self.lr).positive()?.at_most(MAX_LR)?;
        source.check("lr_lr", self.lr_lr).in_range(0.0, MAX_LR)?;
        source.check("cedit", self.cedit).positive()?.at_most(1e6)?;
        source.check("cloc", self.cloc).in_range(0.0, 1e6)?;
        source.check("grad_clip", self.grad_clip).positive()?;
        for (key, value, max) in [
            ("accumulate_bs", self.accumulate_bs, 1024.0),
            ("max_iters", self.max_iters, 1e7),
            ("val_interval", self.val_interval, 1e7),
            ("val_steps", self.val_steps, 1e6),
            ("early_stop_patience", self.early_stop_patience, 1e9),
        ] {
            source.check(key, value as f64).in_range(1.0, max)?;
        }
        source
            .check("val_min_locality", self.val_min_locality)
            .in_range(0.0, 1.0)?;
        Ok(trainer::Settings {
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
            constraint,
        })
    }
}

/// A trained hypernetwork as a method: `net` (built for the hparams' layers) with the
/// checkpoint `archive:` names loaded into it.
pub fn load_trained(
    source: &HparamsSource,
    model: &Model,
    mut net: Box<dyn Hypernet>,
    hparams: serde_json::Value,
    unknown: Vec<String>,
    max_batch: Option<usize>,
) -> Result<crate::methods::LoadedMethod> {
    let kind = net.kind();
    let path = archive(source, &kind.to_ascii_lowercase())?;
    let files = hypernet::open(&path, &*net, model.fingerprint()?)?;
    hypernet::load_into(&files, &path, &mut *net)?;
    Ok(crate::methods::LoadedMethod {
        warnings: unknown_warnings(&source.origin, unknown),
        hparams_origin: source.origin.clone(),
        method: Box::new(MetaMethod {
            name: kind.into(),
            net,
            hparams,
            max_batch,
        }),
    })
}

/// Runs the shared trainer for `net` and reports what `kedit train` writes.
pub fn train_net(
    inputs: crate::methods::train::TrainInputs,
    net: &mut dyn Hypernet,
    settings: &trainer::Settings,
) -> Result<crate::methods::train::Trained> {
    let outcome = trainer::train(
        inputs.model,
        net,
        settings,
        inputs.train,
        inputs.val,
        inputs.out_dir,
        inputs.seed,
        inputs.progress,
    )?;
    Ok(crate::methods::train::Trained {
        checkpoint: outcome.checkpoint,
        hparams: serde_json::Map::new(),
        summary: outcome.summary,
    })
}
