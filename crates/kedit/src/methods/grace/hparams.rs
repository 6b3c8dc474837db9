//! GRACE's hyper-parameters, read from EasyEdit's `hparams/GRACE/*.yaml` keys. Settings
//! EasyEdit lists but kedit does not implement (other distances, perturbed values, other
//! replacements) are errors that say so, not silently different behaviour.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::methods::hparams::{
    lenient_f64, resolve_param, HparamsSource, MAX_LR, MAX_STEPS, MAX_STOP_LOSS,
};
use crate::model::{BlockLayout, BlockParam, Model, ParamId};
use crate::runtime::Site;

/// The largest initial deferral radius a file may give: hidden states of the models kedit
/// runs have norms in the tens to hundreds; a radius of 10⁴ would cover every input.
pub const MAX_EPS: f64 = 1e4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistFn {
    /// Euclidean distance (the codebook intervention measures this one).
    Euc,
    Mmd,
    Cos,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValInit {
    /// A uniform random vector in [0, 1)^d (EasyEdit's `torch.rand`), seeded.
    #[default]
    Cold,
    /// The hidden state being replaced (the key itself: keys and values live at one site).
    Warm,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValTrain {
    /// Adam on the NLL of the target (EasyEdit's `sgd` setting uses Adam too).
    #[default]
    Sgd,
    Pert,
    Adv,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reg {
    /// Stop training a value once its target NLL is below `early_stop_loss`.
    #[default]
    EarlyStop,
    /// Always run `n_iter` steps.
    None,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Replacement {
    /// Replace the hidden state at the prompt's last token.
    #[default]
    ReplaceLast,
    ReplaceAll,
    ReplacePrompt,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpsExpand {
    /// The nearest radius grows to the new key's distance.
    #[default]
    Coverage,
    /// The nearest key moves halfway to the new one and its radius becomes the distance.
    #[serde(alias = "moving_avg")]
    MovingAverage,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GraceHparams {
    /// One module: the MLP output projection whose output the codebook replaces
    /// (`model.layers[L].mlp.down_proj.weight`).
    pub inner_params: Vec<String>,
    #[serde(deserialize_with = "lenient_f64")]
    pub edit_lr: f64,
    pub n_iter: usize,
    /// The deferral radius of a new entry.
    #[serde(deserialize_with = "lenient_f64")]
    pub eps: f64,
    #[serde(default = "default_dist_fn")]
    pub dist_fn: DistFn,
    #[serde(default)]
    pub val_init: ValInit,
    #[serde(default)]
    pub val_train: ValTrain,
    /// EasyEdit reads it and never uses it (`None` or `early`); accepted for its files.
    #[serde(default)]
    pub val_reg: Option<String>,
    #[serde(default)]
    pub reg: Reg,
    #[serde(default)]
    pub replacement: Replacement,
    #[serde(default)]
    pub eps_expand: EpsExpand,
    /// Perturbed copies per step with `val_train: adv` (not implemented): accepted.
    #[serde(default)]
    pub num_pert: Option<usize>,
    /// EasyEdit's files carry 0.0 and its GRACE applies no dropout; only 0 is accepted.
    #[serde(default, deserialize_with = "lenient_f64")]
    pub dropout: f64,
    /// With `reg: early_stop`, the target NLL (nats per token) below which a value stops
    /// training (kedit's; EasyEdit always runs `n_iter` steps).
    #[serde(default = "default_early_stop", deserialize_with = "lenient_f64")]
    pub early_stop_loss: f64,
    /// EasyEdit's; GRACE edits one request per step of its loop, kedit takes any number.
    #[serde(default)]
    pub batch_size: Option<usize>,
}

fn default_dist_fn() -> DistFn {
    DistFn::Euc
}

fn default_early_stop() -> f64 {
    1e-2
}

impl GraceHparams {
    /// Every key against its range and what kedit implements; the codebook's site.
    pub fn check(&self, source: &HparamsSource, model: &Model) -> Result<Site> {
        let site = self.site(source, model)?;
        source
            .check("edit_lr", self.edit_lr)
            .positive()?
            .at_most(MAX_LR)?;
        source
            .check("n_iter", self.n_iter as f64)
            .in_range(1.0, MAX_STEPS as f64)?;
        source.check("eps", self.eps).positive()?.at_most(MAX_EPS)?;
        source
            .check("early_stop_loss", self.early_stop_loss)
            .in_range(0.0, MAX_STOP_LOSS)?;
        if self.dist_fn != DistFn::Euc {
            return Err(source.error(
                "dist_fn",
                ": only `euc` is implemented (the codebook measures Euclidean distance)",
            ));
        }
        if self.val_train != ValTrain::Sgd {
            return Err(source.error(
                "val_train",
                ": only `sgd` is implemented (values trained on the target's NLL alone)",
            ));
        }
        if self.replacement != Replacement::ReplaceLast {
            return Err(source.error(
                "replacement",
                ": only `replace_last` is implemented (the hidden state at the prompt's \
                 last token is replaced)",
            ));
        }
        if let Some(v) = &self.val_reg {
            if !matches!(v.as_str(), "None" | "none" | "early") {
                return Err(source.error(
                    "val_reg",
                    &format!(" must be `None` or `early` (got `{v}`)"),
                ));
            }
        }
        if self.dropout != 0.0 {
            return Err(source.error(
                "dropout",
                &format!(
                    " must be 0: GRACE applies no dropout (got {})",
                    self.dropout
                ),
            ));
        }
        if let Some(b) = self.batch_size {
            source.check("batch_size", b as f64).at_most(1e6)?;
        }
        Ok(site)
    }

    /// `blocks.{L}.mlp.out` for `inner_params: [model.layers[L].mlp.down_proj.weight]`.
    fn site(&self, source: &HparamsSource, model: &Model) -> Result<Site> {
        let [name] = self.inner_params.as_slice() else {
            return Err(source.error(
                "inner_params",
                &format!(
                    " must name exactly one module (GRACE keeps one codebook); got {}",
                    self.inner_params.len()
                ),
            ));
        };
        let layer = match resolve_param(model, name) {
            Some(ParamId::Block(l, BlockParam::OutWeight | BlockParam::OutBias)) => l,
            Some(other) => {
                return Err(source.error(
                    "inner_params",
                    &format!(
                        ": `{name}` is `{other}`; GRACE wraps an MLP output projection \
                         (`model.layers[L].mlp.down_proj.weight`)"
                    ),
                ))
            }
            None => {
                return Err(source.error(
                    "inner_params",
                    &format!(
                        ": `{name}` is not a module of this {} model with {} layers",
                        model.config.family.hf_class(),
                        model.config.n_layers
                    ),
                ))
            }
        };
        // The value is trained as a change of the residual stream after the block; that is
        // a change of the MLP output only where the MLP output joins the stream as it is.
        if model.config.block == BlockLayout::Sandwich {
            return Err(source.error(
                "inner_params",
                &format!(
                    ": {} normalises the MLP output before it joins the residual stream; \
                     GRACE here needs an architecture that adds it directly",
                    model.config.family.hf_class()
                ),
            ));
        }
        Ok(Site::MlpOut(layer))
    }
}
