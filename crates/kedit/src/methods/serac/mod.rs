//! SERAC (Mitchell et al. 2022, "Memory-Based Model Editing at Scale"): edits are kept in a
//! memory outside the weights. A scope classifier — the sentence encoder fine-tuned by
//! `kedit train --method serac` ([`train`]) — decides whether an input falls within a stored
//! edit; if it does, the input is answered with that edit in front of it
//! (`New Fact: {prompt} {target}\nPrompt: {input}`), otherwise the model answers untouched.
//! The counterfactual model is the base model reading the edit in context, or, with
//! `cf_layers` > 0, that model with its top blocks fine-tuned to answer behind an edit
//! ([`counterfactual`]; docs/memory-based.md).

pub mod counterfactual;
mod pairs;
pub mod train;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::edit::{CounterfactualModel, Edit, MemoryEdit, MemoryRecord, Router, ScopeClassifier};
use crate::editor::Editor;
use crate::encoder::{SentenceEncoder, DEFAULT_ENCODER_DIR};
use crate::error::Result;
use crate::methods::hparams::lenient_f64;
use crate::methods::{
    check_requests, filter_warnings, Computed, EditContext, EditMethod, HparamsSource,
    LoadedMethod, MethodReport,
};
use crate::model::Model;
use crate::request::EditRequest;
pub use pairs::{scope_examples, ScopeExample};

/// EasyEdit's SERAC keys where they apply, and kedit's own.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeracHparams {
    /// The encoder the classifier is fine-tuned from: a directory, or `all-MiniLM-L6-v2`.
    #[serde(default = "default_encoder")]
    pub cls_name: String,
    /// The trained classifier (written by `kedit train`; relative to the hparams file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    /// Learning rate of the encoder's weights.
    #[serde(deserialize_with = "lenient_f64")]
    pub lr: f64,
    /// Learning rate of the logit's scale and offset (two numbers that must move much
    /// further than any one weight).
    #[serde(default = "default_scale_lr", deserialize_with = "lenient_f64")]
    pub scale_lr: f64,
    /// Examples per training step.
    pub batch_size: usize,
    /// Training steps at most.
    pub max_iters: usize,
    /// Steps between validations (and checkpoints).
    pub val_every: usize,
    /// Validations without improvement before training stops.
    pub early_stop_patience: usize,
    /// Encoder layers trained, counted from the top (the embeddings stay frozen).
    pub train_layers: usize,
    /// Initial scale and offset of the cosine logit.
    #[serde(deserialize_with = "lenient_f64")]
    pub scale_init: f64,
    #[serde(deserialize_with = "lenient_f64")]
    pub bias_init: f64,
    /// EasyEdit's key: the scope classifier is a cross-encoder (the edit and the input read
    /// together) instead of the embedding classifier.
    #[serde(default)]
    pub cross_attend: bool,
    /// A cross-encoder's candidates per input: the stored edits nearest to it under the
    /// base encoder.
    #[serde(default = "default_shortlist")]
    pub shortlist: usize,
    /// In-scope probability from which an input is routed to an edit.
    #[serde(deserialize_with = "lenient_f64")]
    pub threshold: f64,
    /// The text put in front of a routed input; `{prompt}` and `{target}` are the edit's.
    pub context_template: String,
    /// Validation records used at most (each a memory entry and its probes).
    pub val_records: usize,
    /// The counterfactual model: 0, the base model prompted with the edit; N > 0, the base
    /// model with the matrices of its top N blocks fine-tuned by `kedit train`, which names
    /// the trained file in `counterfactual:`.
    #[serde(default)]
    pub cf_layers: usize,
    /// Its training: Adam's learning rate, rows per step, steps at most, steps between
    /// validations (patience and validation records are the classifier's).
    #[serde(default = "default_cf_lr", deserialize_with = "lenient_f64")]
    pub cf_lr: f64,
    #[serde(default = "default_cf_batch_size")]
    pub cf_batch_size: usize,
    #[serde(default = "default_cf_max_iters")]
    pub cf_max_iters: usize,
    #[serde(default = "default_cf_val_every")]
    pub cf_val_every: usize,
    /// The trained counterfactual model (written by `kedit train` when `cf_layers` > 0;
    /// relative to the hparams file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterfactual: Option<String>,
}

fn default_cf_lr() -> f64 {
    1e-4
}

fn default_cf_batch_size() -> usize {
    16
}

fn default_cf_max_iters() -> usize {
    1000
}

fn default_cf_val_every() -> usize {
    100
}

fn default_shortlist() -> usize {
    8
}

fn default_scale_lr() -> f64 {
    1e-2
}

fn default_encoder() -> String {
    DEFAULT_ENCODER_DIR.into()
}

impl SeracHparams {
    fn check(&self, source: &HparamsSource) -> Result<()> {
        source.check("lr", self.lr).positive()?;
        source.check("scale_lr", self.scale_lr).positive()?;
        source.check("cf_lr", self.cf_lr).positive()?;
        source
            .check("threshold", self.threshold)
            .in_range(0.0, 1.0)?;
        source.check("scale_init", self.scale_init).positive()?;
        source.check("bias_init", self.bias_init).finite()?;
        for (key, v) in [
            ("batch_size", self.batch_size),
            ("max_iters", self.max_iters),
            ("val_every", self.val_every),
            ("early_stop_patience", self.early_stop_patience),
            ("train_layers", self.train_layers),
            ("val_records", self.val_records),
            ("cf_batch_size", self.cf_batch_size),
            ("cf_max_iters", self.cf_max_iters),
            ("cf_val_every", self.cf_val_every),
            ("shortlist", self.shortlist),
        ] {
            if v == 0 {
                return Err(source.error(key, " must be at least 1"));
            }
        }
        if self.batch_size < 2 {
            return Err(source.error(
                "batch_size",
                " must be at least 2 (the other examples of a batch are its negatives)",
            ));
        }
        if !self.context_template.contains("{prompt}")
            || !self.context_template.contains("{target}")
        {
            return Err(source.error(
                "context_template",
                " must contain {prompt} and {target} (the edit the routed input is answered with)",
            ));
        }
        Ok(())
    }

    /// The encoder directory `cls_name` names.
    pub fn encoder_dir(&self) -> PathBuf {
        SentenceEncoder::dir_named(&self.cls_name)
    }

    /// The context a routed input gets for `r`.
    pub fn context(&self, r: &EditRequest) -> String {
        self.context_template
            .replace("{prompt}", &r.prompt)
            .replace("{target}", &r.target_new)
    }
}

pub struct Serac {
    hp: SeracHparams,
    classifier_path: PathBuf,
    fingerprint: String,
    counterfactual: Option<CounterfactualModel>,
}

impl Serac {
    pub fn load(_name: &str, source: HparamsSource, model: &Model) -> Result<LoadedMethod> {
        let (hp, unknown): (SeracHparams, _) = source.deserialize()?;
        hp.check(&source)?;
        let Some(path) = source.path_key("archive")? else {
            return Err(source.error(
                "archive",
                " is missing: SERAC edits with a trained scope classifier — run `kedit train \
                 --method serac --data TRAIN.json --val VAL.json --out DIR`, then pass \
                 `--hparams DIR/hparams.yaml`",
            ));
        };
        let base = SentenceEncoder::load(&hp.encoder_dir())?;
        let classifier = Arc::new(ScopeClassifier::load(&path, &base)?);
        let counterfactual = match (source.path_key("counterfactual")?, hp.cf_layers) {
            (Some(cf), _) => {
                crate::edit::counterfactual::load(&cf, model, Some(&hp.context_template))?;
                Some(CounterfactualModel {
                    fingerprint: crate::hash::sha256_file(&cf)?,
                    path: cf,
                })
            }
            (None, 0) => None,
            (None, n) => {
                return Err(source.error(
                    "counterfactual",
                    &format!(
                        " is missing while cf_layers is {n}: the fine-tuned counterfactual \
                         model is written by `kedit train --method serac`, which names it \
                         in the hparams.yaml it leaves"
                    ),
                ))
            }
        };
        Ok(LoadedMethod {
            warnings: filter_warnings(&source.origin, unknown),
            hparams_origin: source.origin.clone(),
            method: Box::new(Serac {
                hp,
                fingerprint: format!("{:016x}", classifier.fingerprint()),
                classifier_path: path,
                counterfactual,
            }),
        })
    }
}

impl EditMethod for Serac {
    fn name(&self) -> &str {
        "SERAC"
    }

    fn max_batch(&self) -> Option<usize> {
        None
    }

    fn hparams_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.hp).expect("hyper-parameters serialise")
    }

    fn compute(
        &self,
        system: &Editor,
        requests: &[EditRequest],
        _ctx: &EditContext,
    ) -> Result<Computed> {
        check_requests(self, system.model(), requests)?;
        let records = requests
            .iter()
            .map(|r| MemoryRecord {
                prompt: r.prompt.clone(),
                target: r.target_new.clone(),
                context: self.hp.context(r),
            })
            .collect();
        let mut meta = BTreeMap::new();
        meta.insert("method".into(), "SERAC".into());
        Ok(Computed {
            edit: Edit::Memory(MemoryEdit {
                records,
                router: Router::Scope {
                    classifier: self.classifier_path.clone(),
                    fingerprint: self.fingerprint.clone(),
                    threshold: self.hp.threshold,
                    counterfactual: self.counterfactual.clone(),
                },
                meta,
            }),
            report: MethodReport::default(),
        })
    }
}
