//! Editing methods. Every method implements [`EditMethod`]: given the system as currently
//! edited and a batch of requests, it returns an [`Edit`] of any kind together with its
//! [`MethodReport`]. The Editor applies, saves, loads and reverts the edit. No method
//! changes the system it is given, does I/O of its own, or reaches into evaluation; what it
//! needs (key statistics, a corpus, a checkpoint) it declares in the [`registry`].

pub mod adam;
pub mod ft;
pub mod grace;
pub mod hparams;
pub mod ike;
pub mod ke;
pub mod loss;
pub mod memit;
pub mod mend;
pub mod meta;
pub mod registry;
pub mod rome;
pub mod serac;
pub mod train;
pub(crate) mod validated_loop;
pub mod wise;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::cache::Cache;
use crate::edit::Edit;
use crate::editor::Editor;
use crate::error::Result;
use crate::model::Model;
use crate::progress::Progress;
use crate::prompts::subject_template;
use crate::request::EditRequest;
pub use hparams::HparamsSource;
pub use registry::{MethodFamily, MethodSpec, Need, Registry};

/// What a method may use besides the system and the requests.
#[derive(Clone, Debug)]
pub struct EditContext {
    /// Where cached results live (context templates, key statistics).
    pub cache: Cache,
    /// Text corpus for second-moment statistics when none are cached.
    pub corpus: Option<PathBuf>,
    /// Seed for everything random a method does.
    pub seed: u64,
}

impl Default for EditContext {
    fn default() -> Self {
        EditContext {
            cache: Cache::default_location(),
            corpus: None,
            seed: 0,
        }
    }
}

/// What one `compute` call reports besides its edit.
#[derive(Clone, Debug, Default)]
pub struct MethodReport {
    /// Seconds per phase, in order.
    pub timings: Vec<(String, f64)>,
    /// Short facts (losses, norms, steps taken).
    pub notes: Vec<(String, String)>,
    /// Step-by-step lines (a loss per epoch, a v* step) for a verbose log.
    pub log: Vec<String>,
}

impl MethodReport {
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
}

/// An edit with the report of the call that computed it.
#[derive(Clone, Debug)]
pub struct Computed {
    pub edit: Edit,
    pub report: MethodReport,
}

/// An editing method.
pub trait EditMethod: Send + Sync {
    /// The display name (FT-L, FT-M, ROME, R-ROME, …).
    fn name(&self) -> &str;

    /// How many requests one call can take (`None`: any number).
    fn max_batch(&self) -> Option<usize>;

    /// Computes the edit for `requests` on the system as it is now (with every edit
    /// applied so far). The system is not changed.
    fn compute(
        &self,
        system: &Editor,
        requests: &[EditRequest],
        ctx: &EditContext,
    ) -> Result<Computed>;

    /// The hyper-parameters in effect, for reports.
    fn hparams_json(&self) -> serde_json::Value;

    /// Refuses, before any work, a request this method cannot edit; `compute` makes the
    /// same check first. The default refuses what no method should spend time on
    /// ([`EditRequest::check_size`]: empty, too long, beyond the model's context).
    fn check_request(&self, model: &Model, request: &EditRequest) -> Result<()> {
        request.check_size(model, 0)
    }

    /// Called once per run, before any edit, with the unedited model. What a method must
    /// derive from the model it starts from (ROME's context templates) it derives here — a
    /// resumed sequential run hands `compute` a system that already carries the earlier
    /// edits — and what it needs and can make itself (key statistics of its layers) it
    /// computes here, reporting progress; `compute` then finds both cached.
    fn prepare(
        &self,
        _original: &Model,
        _ctx: &EditContext,
        _progress: &mut dyn Progress,
    ) -> Result<()> {
        Ok(())
    }

    /// Why this method cannot get the key statistics it reads for `model` (none cached, no
    /// corpus to compute them from); `None` when it can, or reads none.
    fn missing_statistics(&self, _model: &Model, _ctx: &EditContext) -> Result<Option<String>> {
        Ok(None)
    }
}

/// The request check of methods that edit at the subject's tokens (ROME, FT): the sizes
/// ([`EditRequest::check_size`], with `extra` tokens the method puts in front), and a
/// subject that occurs in the prompt ([`subject_template`]).
pub fn check_subject_request(model: &Model, request: &EditRequest, extra: usize) -> Result<()> {
    request.check_size(model, extra)?;
    subject_template(&request.prompt, &request.subject)?;
    Ok(())
}

/// Randomness for one request: seeded by the run's seed and the request, so that a
/// resumed or reordered run draws the same for it.
pub fn request_rng(seed: u64, r: &EditRequest) -> crate::rng::Rng {
    let mut h = crate::hash::Fast64::new();
    h.u64(seed);
    h.str(&r.prompt);
    h.str(&r.target_new);
    crate::rng::Rng::new(h.finish())
}

/// What every `compute` checks first: at least one request, and each accepted by the
/// method's `check_request` (its refusal as it is: the harness names the case).
pub fn check_requests(
    method: &dyn EditMethod,
    model: &Model,
    requests: &[EditRequest],
) -> Result<()> {
    if requests.is_empty() {
        return Err(crate::error::Error::invalid("no request to edit"));
    }
    for r in requests {
        method.check_request(model, r)?;
    }
    Ok(())
}

/// A method ready to run, with the warnings its hyper-parameters raised.
pub struct LoadedMethod {
    pub method: Box<dyn EditMethod>,
    pub warnings: Vec<String>,
    pub hparams_origin: PathBuf,
}

/// Keys EasyEdit files carry for its own plumbing (devices, module paths kedit derives
/// from the architecture): accepted without a warning.
pub const EASYEDIT_PLUMBING_KEYS: [&str; 14] = [
    // Read by the harness, which renders the requests (HparamsSource::chat_template).
    "chat_template",
    "use_chat_template",
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

/// Builds a built-in method by name from a hyper-parameter file, or from the shipped
/// default for the model when `hparams` is `None` (see [`Registry::load`]).
pub fn load(name: &str, hparams: Option<&Path>, model: &Model) -> Result<LoadedMethod> {
    Registry::builtin().load(name, hparams, model)
}

/// [`load`] from hyper-parameters already read (and perhaps changed by the caller).
pub fn load_source(
    name: &str,
    source: Option<HparamsSource>,
    model: &Model,
) -> Result<LoadedMethod> {
    Registry::builtin().load_source(name, source, model)
}
