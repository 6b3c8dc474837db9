//! Editing methods. Every method implements [`EditMethod`]: given the model and a batch of
//! requests, it returns a [`WeightEdit`] that the Editor applies, saves, loads and reverts.
//! No method changes the model it is given or reaches into evaluation.

pub mod adam;
pub mod ft;
pub mod hparams;
pub mod loss;
pub mod rome;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::cache::Cache;
use crate::editor::WeightEdit;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::request::EditRequest;
pub use hparams::HparamsSource;

/// What a method may use besides the model and the requests: caches, a corpus, a seed,
/// and where it reports how long each phase took.
#[derive(Clone, Debug)]
pub struct EditContext {
    /// Where cached results live (context templates, key statistics).
    pub cache: Cache,
    /// Text corpus for second-moment statistics when none are cached.
    pub corpus: Option<PathBuf>,
    /// Seed for everything random a method does.
    pub seed: u64,
    /// Show progress bars and per-step losses on stderr.
    pub verbose: bool,
    /// Seconds per phase of the last `compute` call, in order.
    pub timings: Vec<(String, f64)>,
    /// Short facts about the last `compute` call (losses, norms, steps taken).
    pub notes: Vec<(String, String)>,
}

impl Default for EditContext {
    fn default() -> Self {
        EditContext {
            cache: Cache::default_location(),
            corpus: None,
            seed: 0,
            verbose: false,
            timings: Vec::new(),
            notes: Vec::new(),
        }
    }
}

impl EditContext {
    /// Runs `f`, adding its duration to phase `name`.
    pub fn timed<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let out = f(self);
        let dt = t.elapsed().as_secs_f64();
        match self.timings.iter_mut().find(|(n, _)| n == name) {
            Some((_, s)) => *s += dt,
            None => self.timings.push((name.to_string(), dt)),
        }
        out
    }

    pub fn note(&mut self, key: &str, value: impl ToString) {
        self.notes.push((key.to_string(), value.to_string()));
    }

    /// Clears the per-call records.
    pub fn start_call(&mut self) {
        self.timings.clear();
        self.notes.clear();
    }
}

/// An editing method.
pub trait EditMethod: Send + Sync {
    /// EasyEdit's `alg_name` (plus our variants: FT-L, FT-M, R-ROME).
    fn name(&self) -> &str;

    /// How many requests one call can take (`None`: any number).
    fn max_batch(&self) -> Option<usize>;

    /// Computes the edit for `requests`. The model is not changed.
    fn compute(
        &self,
        model: &Model,
        requests: &[EditRequest],
        ctx: &mut EditContext,
    ) -> Result<WeightEdit>;

    /// The hyper-parameters in effect, for reports.
    fn hparams_json(&self) -> serde_json::Value;

    /// Called once per run, before any edit, with the unedited model. What a method must
    /// derive from the model it starts from (ROME's context templates) it derives here: a
    /// resumed sequential run hands `compute` a model that already carries the earlier edits.
    fn prepare(&self, _original: &Model, _ctx: &EditContext) -> Result<()> {
        Ok(())
    }
}

/// A method ready to run, with the warnings its hyper-parameters raised.
pub struct LoadedMethod {
    pub method: Box<dyn EditMethod>,
    pub warnings: Vec<String>,
    pub hparams_origin: PathBuf,
}

/// Keys EasyEdit files carry for its own plumbing (devices, module paths kedit derives
/// from the architecture): accepted without a warning.
pub const EASYEDIT_PLUMBING_KEYS: [&str; 12] = [
    "alg_name",
    "model_name",
    "device",
    "model_parallel",
    "fp16",
    "stats_dir",
    "layer_module_tmp",
    "mlp_module_tmp",
    "attn_module_tmp",
    "ln_f_module",
    "lm_head_module",
    "max_length",
];

pub(crate) fn filter_warnings(origin: &Path, unknown: Vec<String>) -> Vec<String> {
    unknown
        .into_iter()
        .filter(|k| !EASYEDIT_PLUMBING_KEYS.contains(&k.as_str()))
        .map(|k| format!("{}: unknown key `{k}` ignored", origin.display()))
        .collect()
}

/// The method names kedit knows (case-insensitive), EasyEdit's `alg_name`s among them.
pub const METHOD_NAMES: [&str; 5] = ["ft", "ft-l", "ft-m", "rome", "r-rome"];

/// Builds a method by name from a hyper-parameter file, or from the shipped default for the
/// model's architecture when `hparams` is `None`.
pub fn load(name: &str, hparams: Option<&Path>, model: &Model) -> Result<LoadedMethod> {
    let source = match hparams {
        Some(p) => Some(HparamsSource::read(p)?),
        None => None,
    };
    load_source(name, source, model)
}

/// [`load`] from hyper-parameters already read (and perhaps changed by the caller).
pub fn load_source(
    name: &str,
    source: Option<HparamsSource>,
    model: &Model,
) -> Result<LoadedMethod> {
    let lower = name.to_ascii_lowercase();
    if let (Some(src), Some(alg)) = (&source, source.as_ref().and_then(|s| s.alg_name())) {
        let family = match lower.as_str() {
            "ft" | "ft-l" | "ft-m" => "ft",
            "rome" | "r-rome" => "rome",
            other => other,
        };
        if !alg.eq_ignore_ascii_case(family) && !alg.eq_ignore_ascii_case(&lower) {
            return Err(Error::config(format!(
                "{}: alg_name is `{alg}`, but the method asked for is `{name}`",
                src.origin.display()
            )));
        }
    }
    match lower.as_str() {
        "ft" | "ft-l" | "ft-m" => ft::Ft::load(&lower, source, model),
        "rome" | "r-rome" => rome::Rome::load(&lower, source, model),
        _ => Err(Error::config(format!(
            "unknown method `{name}`; known: {}",
            METHOD_NAMES.join(", ")
        ))),
    }
}
