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
