//! Module functions: the method registry, hyper-parameter files, and `evaluate` — a
//! dataset edited and evaluated into a run directory exactly as `kedit eval` does (the
//! same `run.json`, so either can resume a run the other started).

use std::path::PathBuf;

use kedit::data::{load_all, Format, LoadOptions};
use kedit::editor::Editor;
use kedit::evaluate::MetricOptions;
use kedit::experiment::modes::pre_edit;
use kedit::experiment::report::{build_summary, RunConfig};
use kedit::experiment::stream::{stream_points, write_stream};
use kedit::experiment::{run, Mode, RunOptions, RunStore};
use kedit::methods::{EditContext, HparamsSource, Registry};
use pyo3::prelude::*;
use serde_json::json;

use crate::errors::{kedit_err, to_json, value_err, IntoPy, KeditError};
use crate::method::{load_method, HparamsArg};
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

/// `kedit eval` from Python; returns `summary.json`'s contents. `method=None`: pre-edit
/// metrics only.
#[pyfunction]
#[pyo3(signature = (model, method, data, out, limit=None, mode="single", batch_size=1,
    hparams=None, format="auto", corpus=None, seed=0, fluency=true, free_generation=true,
    skip_invalid=false))]
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
) -> PyResult<String> {
    let mode: Mode = mode.parse().map_err(value_err)?;
    let format: Format = format.parse().map_err(value_err)?;
    if data.is_empty() {
        return Err(value_err("data: at least one dataset file is required"));
    }
    if batch_size == 0 || limit == Some(0) {
        return Err(value_err("batch_size and limit must be at least 1"));
    }
    let model = model.inner.clone();
    let names = data
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    let loaded_data = py
        .detach(|| {
            load_all(
                &data,
                format,
                &LoadOptions {
                    skip_invalid,
                    limit,
                },
            )
        })
        .map_err(|e| KeditError::new_err(format!("loading {names}: {e}")))?;
    for (i, why) in &loaded_data.skipped {
        eprintln!("skipped record {i}: {why}");
    }
    if loaded_data.requests.is_empty() {
        return Err(KeditError::new_err(format!("{names}: no usable record")));
    }
    let batch_size = if mode == Mode::Single { 1 } else { batch_size };
    let loaded = method
        .as_deref()
        .map(|name| {
            let arg = HparamsArg {
                path: hparams.clone(),
                json: None,
            };
            load_method(&model, name, &arg)
        })
        .transpose()?;
    let opts = RunOptions {
        mode,
        batch_size,
        metrics: MetricOptions {
            seed,
            fluency,
            free_generation,
        },
    };
    opts.check(loaded.as_ref().map(|l| l.method.as_ref()))
        .py()?;
    let summary = py
        .detach(|| -> kedit::Result<_> {
            let config = RunConfig {
                kedit_version: env!("CARGO_PKG_VERSION").to_string(),
                method: match (&loaded, &method) {
                    (Some(_), Some(name)) => name.to_ascii_lowercase(),
                    _ => "none (pre-edit metrics only)".into(),
                },
                hparams_origin: loaded
                    .as_ref()
                    .map(|l| l.hparams_origin.display().to_string())
                    .unwrap_or_default(),
                hparams: loaded
                    .as_ref()
                    .map_or(serde_json::Value::Null, |l| l.method.hparams_json()),
                model: model.source.path.display().to_string(),
                model_fingerprint: format!("{:016x}", model.fingerprint()?),
                data: names.clone(),
                data_sha256: data
                    .iter()
                    .map(|p| kedit::hash::sha256_file(p))
                    .collect::<kedit::Result<Vec<_>>>()?
                    .join(" + "),
                format: format!("{:?}", loaded_data.format).to_ascii_lowercase(),
                limit,
                skip_invalid,
                mode,
                batch_size,
                seed,
                fluency,
                free_generation,
            };
            let header = serde_json::to_value(&config).expect("the configuration serialises");
            let mut store = RunStore::open(&out, &header)?;
            let mut editor = Editor::new(model);
            let ctx = EditContext {
                corpus,
                seed,
                ..Default::default()
            };
            let mut bars = Bars::default();
            let requests = &loaded_data.requests;
            match &loaded {
                Some(l) => run(
                    &mut editor,
                    l.method.as_ref(),
                    &ctx,
                    requests,
                    &opts,
                    &mut store,
                    &mut bars,
                )?,
                None => pre_edit(&editor, requests, &opts, &mut store, &mut bars)?,
            }
            bars.finish();
            let after = format!("{:016x}", editor.model().fingerprint()?);
            let identical = after == config.model_fingerprint;
            let summary = build_summary(&store, &config, identical);
            let text = serde_json::to_string_pretty(&summary).expect("the summary serialises");
            kedit::fsio::write_atomic(&out.join("summary.json"), text.as_bytes())?;
            if !identical {
                return Err(kedit::Error::invalid(format!(
                    "the weights after the run differ from the original ones (fingerprint {after})"
                )));
            }
            if mode == Mode::Sequential && loaded.is_some() {
                let points = stream_points(&store, requests.len(), batch_size);
                write_stream(&out, &format!("{} stream", config.method), &points)?;
            }
            Ok(text)
        })
        .map_err(kedit_err)?;
    Ok(summary)
}
