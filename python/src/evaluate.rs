//! Module functions: the method registry, hyper-parameter files, and `evaluate` — a
//! dataset edited and evaluated into a run directory by the same library call as
//! `kedit eval` (the same `run.json`, so either can resume a run the other started) —
//! and the merge of a sharded run.

use std::path::PathBuf;

use kedit::experiment::dataset::{run_dataset, DatasetRun};
use kedit::methods::{HparamsSource, Registry};
use pyo3::prelude::*;
use serde_json::json;

use crate::errors::{to_json, value_err, IntoPy};
use crate::model::Model;
use crate::progress::Bars;

/// The registry's rows: name, EasyEdit `alg_name`, family, summary, needs (JSON list).
#[pyfunction]
pub fn methods_json() -> String {
    let rows: Vec<_> = Registry::builtin()
        .methods()
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "alg_name": m.alg_name,
                "family": m.family.to_string(),
                "summary": m.summary,
                "needs": m.needs.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "trains": m.trainer.is_some(),
            })
        })
        .collect();
    to_json(&rows)
}

/// A hyper-parameter file (YAML or JSON) as a JSON mapping, with the library's checks
/// (size, duplicate keys, non-finite numbers).
#[pyfunction]
pub fn read_hparams(path: PathBuf) -> PyResult<String> {
    Ok(to_json(&HparamsSource::read(&path).py()?.value))
}

/// `kedit eval` from Python (the library's `run_dataset`, which the command line runs
/// too); returns `summary.json`'s contents. `method=None`: pre-edit metrics only; `shard`:
/// `"K/N"`, every N-th case (single mode) or batch (batch mode) from K; `pre_from`: a run
/// directory whose pre-edit metrics are taken instead of computed.
#[pyfunction]
#[pyo3(signature = (model, method, data, out, limit=None, mode="single", batch_size=1,
    hparams=None, format="auto", corpus=None, seed=0, fluency=true, free_generation=true,
    skip_invalid=false, chat=false, shard=None, pre_from=None))]
#[allow(clippy::too_many_arguments)]
pub fn evaluate_run(
    py: Python<'_>,
    model: PyRef<'_, Model>,
    method: Option<String>,
    data: Vec<PathBuf>,
    out: PathBuf,
    limit: Option<usize>,
    mode: &str,
    batch_size: usize,
    hparams: Option<PathBuf>,
    format: &str,
    corpus: Option<PathBuf>,
    seed: u64,
    fluency: bool,
    free_generation: bool,
    skip_invalid: bool,
    chat: bool,
    shard: Option<&str>,
    pre_from: Option<PathBuf>,
) -> PyResult<String> {
    if data.is_empty() {
        return Err(value_err("data: at least one dataset file is required"));
    }
    if batch_size == 0 || limit == Some(0) {
        return Err(value_err("batch_size and limit must be at least 1"));
    }
    let spec = DatasetRun {
        method,
        hparams,
        data,
        format: format.parse().map_err(value_err)?,
        limit,
        skip_invalid,
        mode: mode.parse().map_err(value_err)?,
        batch_size,
        corpus,
        seed,
        fluency,
        free_generation,
        chat,
        shard: shard.map(str::parse).transpose().map_err(value_err)?,
        pre_from,
        out,
    };
    let model = model.inner.clone();
    let outcome = py
        .detach(|| {
            let mut bars = Bars::default();
            run_dataset(model, &spec, &mut bars)
        })
        .py()?;
    Ok(to_json(&outcome.summary))
}

/// Joins the run directories of a sharded run into `out` (`kedit merge-runs`); returns
/// the summary, identical to the unsharded run's.
#[pyfunction]
pub fn merge_runs(py: Python<'_>, dirs: Vec<PathBuf>, out: PathBuf) -> PyResult<String> {
    let summary = py
        .detach(|| kedit::experiment::merge_runs(&dirs, &out))
        .py()?;
    Ok(to_json(&summary))
}
