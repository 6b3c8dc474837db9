//! Training for methods that learn something before they edit (a hypernetwork, a scope
//! classifier). `kedit train` runs a method's trainer on training files, validates on a
//! disjoint file, and writes the checkpoint beside an EasyEdit-style `hparams.yaml` whose
//! `archive:` key names it, so `kedit eval --hparams DIR/hparams.yaml` edits with it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::methods::hparams::HparamsSource;
use crate::methods::registry::Registry;
use crate::model::Model;
use crate::progress::Progress;
use crate::request::EditRequest;

/// What a trainer is given.
pub struct TrainInputs<'a> {
    pub model: &'a Model,
    /// The method's hyper-parameters (the shipped default for the model, or a file).
    pub hparams: &'a HparamsSource,
    pub train: &'a [EditRequest],
    pub val: &'a [EditRequest],
    /// Where the trainer writes its checkpoint (and resumes from one it finds there).
    pub out_dir: &'a Path,
    pub seed: u64,
    pub progress: &'a mut dyn Progress,
}

/// What a trainer produced.
#[derive(Clone, Debug)]
pub struct Trained {
    /// The checkpoint file, inside the output directory.
    pub checkpoint: PathBuf,
    /// Keys to write into `hparams.yaml` besides the method's own (e.g. the settings the
    /// checkpoint was trained with); `archive` is added by [`train`].
    pub hparams: serde_json::Map<String, Value>,
    /// Figures for the report (best validation accuracy, steps, seconds).
    pub summary: Value,
}

/// A method's trainer.
pub type TrainFn = fn(TrainInputs) -> Result<Trained>;

/// A training job, as `kedit train` states it.
pub struct TrainJob<'a> {
    pub method: &'a str,
    pub train: Vec<EditRequest>,
    pub val: Vec<EditRequest>,
    pub hparams: Option<HparamsSource>,
    pub out_dir: &'a Path,
    pub seed: u64,
}

/// Runs the method's trainer and writes `out_dir/hparams.yaml` naming the checkpoint.
pub fn train(
    registry: &Registry,
    model: &Model,
    job: TrainJob,
    progress: &mut dyn Progress,
) -> Result<Trained> {
    let spec = registry.find(job.method)?;
    let Some(trainer) = spec.trainer else {
        let trainable: Vec<&str> = registry
            .methods()
            .iter()
            .filter(|m| m.trainer.is_some())
            .map(|m| m.name)
            .collect();
        return Err(Error::config(format!(
            "{} has nothing to train; methods that train: {}",
            spec.name,
            if trainable.is_empty() {
                "none yet".to_string()
            } else {
                trainable.join(", ")
            }
        )));
    };
    if job.train.is_empty() {
        return Err(Error::invalid("the training files hold no usable record"));
    }
    if job.val.is_empty() {
        return Err(Error::invalid("the validation file holds no usable record"));
    }
    let (hparams, _) = match job.hparams {
        Some(h) => (h, None),
        None => spec.default_hparams(model),
    };
    std::fs::create_dir_all(job.out_dir).map_err(|e| Error::io(job.out_dir, e))?;
    let trained = trainer(TrainInputs {
        model,
        hparams: &hparams,
        train: &job.train,
        val: &job.val,
        out_dir: job.out_dir,
        seed: job.seed,
        progress,
    })?;
    write_hparams(spec.alg_name, &hparams, &trained, job.out_dir)?;
    Ok(trained)
}

/// `hparams.yaml`: the method's hyper-parameters, the trainer's keys, and `archive:` — the
/// checkpoint's path relative to the file, so the directory can be moved whole.
fn write_hparams(
    alg_name: &str,
    hparams: &HparamsSource,
    trained: &Trained,
    dir: &Path,
) -> Result<()> {
    let mut map = hparams.value.as_object().cloned().unwrap_or_default();
    map.insert("alg_name".into(), Value::String(alg_name.into()));
    map.extend(trained.hparams.clone());
    let relative = trained
        .checkpoint
        .strip_prefix(dir)
        .unwrap_or(&trained.checkpoint);
    map.insert(
        "archive".into(),
        Value::String(relative.to_string_lossy().into_owned()),
    );
    let text = serde_yaml_ng::to_string(&Value::Object(map))
        .map_err(|e| Error::invalid(format!("cannot write hparams.yaml: {e}")))?;
    write_atomic(&dir.join("hparams.yaml"), text.as_bytes())
}

impl HparamsSource {
    /// The path a key names (`archive:`, `pool:`). A relative path is resolved against the
    /// file's directory when it exists there; shipped files are written relative to the
    /// repository root, so otherwise (and always for the built-in copies) against the first
    /// of the current directory and its parents where it exists (tests run in
    /// `crates/kedit`, the CLI anywhere in the checkout); when none has it, the error names
    /// the path beside the file.
    pub fn path_key(&self, key: &str) -> Result<Option<PathBuf>> {
        let Some(v) = self.value.get(key) else {
            return Ok(None);
        };
        let Some(s) = v.as_str() else {
            return Err(Error::config(format!(
                "{}: `{key}` must be a path",
                self.origin.display()
            )));
        };
        let p = PathBuf::from(s);
        if p.is_absolute() {
            return Ok(Some(p));
        }
        if self.origin.to_string_lossy().starts_with("built-in:") {
            return Ok(Some(from_workspace(&p)));
        }
        let beside = self.origin.parent().unwrap_or(Path::new(".")).join(&p);
        if beside.exists() {
            return Ok(Some(beside));
        }
        // A shipped file read from disk (or copied elsewhere) still names repository paths.
        let found = from_workspace(&p);
        Ok(Some(if found.exists() { found } else { beside }))
    }
}

/// `rel` under the current directory or the nearest parent where it exists; under the
/// current directory when none has it (the error then names that path).
fn from_workspace(rel: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    cwd.ancestors()
        .map(|d| d.join(rel))
        .find(|p| p.exists())
        .unwrap_or_else(|| cwd.join(rel))
}
