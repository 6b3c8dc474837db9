//! `Editor`: a model plus reversible edits of every kind — edit with any method, apply
//! and revert, evaluate, generate, save the edited model, and run cases as the experiment
//! layer does (EasyEdit's `edit`/`batch_edit` are built on that in Python).

use std::path::PathBuf;

use kedit::evaluate::{evaluate, MetricOptions, Metrics};
use kedit::experiment::{run, Mode, RunOptions, RunStore};
use kedit::methods::EditContext;
use kedit::request::EditRequest;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde_json::json;

use crate::convert::{generate_texts, tensor_bytes, GenerateArgs, NamedArrays};
use crate::edit::Edit;
use crate::errors::{parse_json, to_json, value_err, IntoPy};
use crate::method::{load_method, render, HparamsArg};
use crate::model::Model;
use crate::progress::Bars;

#[pyclass(module = "kedit._native")]
pub struct Editor {
    inner: kedit::editor::Editor,
}

fn context(corpus: Option<PathBuf>, seed: u64) -> EditContext {
    EditContext {
        corpus,
        seed,
        ..Default::default()
    }
}

fn metric_options(fluency: bool, free_generation: bool, seed: u64) -> MetricOptions {
    MetricOptions {
        fluency,
        free_generation,
        seed,
    }
}

#[pymethods]
impl Editor {
    #[new]
    fn new(model: PyRef<'_, Model>) -> Self {
        Editor {
            inner: kedit::editor::Editor::new(model.inner.clone()),
        }
    }

    /// The model with the weight edits applied (a snapshot: weights are shared, not copied).
    fn model(&self) -> Model {
        Model {
            inner: self.inner.model().clone(),
        }
    }

    /// The model before any edit.
    fn original_model(&self) -> Model {
        Model {
            inner: self.inner.original_model(),
        }
    }

    /// Computes the edit of `requests` (JSON list of kedit requests) with `method` on the
    /// system as it is now, and applies it. Returns the edit and a JSON report.
    #[pyo3(signature = (method, requests, hparams_path=None, hparams_json=None, corpus=None, seed=0, chat=false))]
    #[allow(clippy::too_many_arguments)]
    fn edit(
        &mut self,
        py: Python<'_>,
        method: &str,
        requests: &str,
        hparams_path: Option<PathBuf>,
        hparams_json: Option<String>,
        corpus: Option<PathBuf>,
        seed: u64,
        chat: bool,
    ) -> PyResult<(Edit, String)> {
        let requests: Vec<EditRequest> = parse_json("requests", requests)?;
        if requests.is_empty() {
            return Err(value_err("no request to edit"));
        }
        let hparams = HparamsArg {
            path: hparams_path,
            json: hparams_json,
        };
        let method = load_method(self.inner.model(), method, &hparams)?;
        let ctx = context(corpus, seed);
        let editor = &mut self.inner;
        let (edit, report) = py
            .detach(|| -> kedit::Result<_> {
                let requests = render(editor.model(), requests, chat || method.chat)?;
                let m = method.loaded.method.as_ref();
                let mut bars = Bars::default();
                // What a method derives from the model it starts from (ROME's context
                // templates) comes from the unedited one, as in a run of the experiment layer.
                m.prepare(&editor.original_model(), &ctx, &mut bars)?;
                bars.finish();
                let start = std::time::Instant::now();
                let computed = m.compute(editor, &requests, &ctx)?;
                let applied = editor.apply(&computed.edit)?.clone();
                let report = json!({
                    "method": m.name(),
                    "seconds": start.elapsed().as_secs_f64(),
                    "timings": computed.report.timings,
                    "notes": computed.report.notes,
                    "applied": applied,
                    "warnings": method.loaded.warnings,
                });
                Ok((computed.edit, report))
            })
            .py()?;
        Ok((Edit { inner: edit }, report.to_string()))
    }

    /// Applies a computed or loaded edit (whole or not at all).
    fn apply(&mut self, py: Python<'_>, edit: PyRef<'_, Edit>) -> PyResult<String> {
        let editor = &mut self.inner;
        let e = &edit.inner;
        let applied = py.detach(|| editor.apply(e).cloned()).py()?;
        Ok(to_json(&applied))
    }

    /// Undoes every edit: the weights are bit-identical to the original ones again.
    fn revert_all(&mut self) {
        self.inner.revert_all();
    }

    /// The applied edits, in order, as JSON.
    fn applied_json(&self) -> String {
        to_json(&self.inner.applied())
    }

    fn is_pristine(&self, py: Python<'_>) -> PyResult<bool> {
        let editor = &self.inner;
        py.detach(|| editor.is_pristine()).py()
    }

    /// Saves the edited model as a Hugging Face directory.
    #[pyo3(signature = (dir, overwrite=false))]
    fn save_model(&self, py: Python<'_>, dir: PathBuf, overwrite: bool) -> PyResult<()> {
        let editor = &self.inner;
        py.detach(|| editor.save_model(&dir, overwrite)).py()
    }

    /// Original values of weights by canonical name, as `(name, bytes, shape)`.
    fn original_weights<'py>(
        &self,
        py: Python<'py>,
        names: Vec<String>,
    ) -> PyResult<NamedArrays<'py>> {
        let original = self.inner.original_model();
        names
            .into_iter()
            .map(|name| {
                let id: kedit::ParamId = name.parse().map_err(value_err)?;
                let (bytes, shape) = tensor_bytes(original.params.require(id).py()?).py()?;
                Ok((name, PyBytes::new(py, &bytes), shape))
            })
            .collect()
    }

    #[pyo3(signature = (prompts, max_new_tokens=32, top_k=None, temperature=1.0, seed=0, chat=false))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompts: Vec<String>,
        max_new_tokens: usize,
        top_k: Option<usize>,
        temperature: f64,
        seed: u64,
        chat: bool,
    ) -> PyResult<Vec<String>> {
        let args = GenerateArgs {
            max_new_tokens,
            top_k,
            temperature,
            seed,
            chat,
        };
        let editor = &self.inner;
        py.detach(|| generate_texts(editor, &prompts, &args)).py()
    }

    /// The metrics of `requests` on the system as it is now (JSON list); with `pre` (the
    /// same requests' earlier metrics) locality is scored against it.
    #[pyo3(signature = (requests, pre=None, fluency=false, free_generation=false, seed=0))]
    fn evaluate(
        &self,
        py: Python<'_>,
        requests: &str,
        pre: Option<String>,
        fluency: bool,
        free_generation: bool,
        seed: u64,
    ) -> PyResult<String> {
        let requests: Vec<EditRequest> = parse_json("requests", requests)?;
        let pre: Option<Vec<Metrics>> = pre.map(|p| parse_json("pre", &p)).transpose()?;
        let opts = metric_options(fluency, free_generation, seed);
        let editor = &self.inner;
        let metrics = py
            .detach(|| {
                let reqs: Vec<&EditRequest> = requests.iter().collect();
                let pre_refs: Option<Vec<&Metrics>> = pre.as_ref().map(|p| p.iter().collect());
                evaluate(editor, &reqs, pre_refs.as_deref(), &opts)
            })
            .py()?;
        Ok(to_json(&metrics))
    }

    /// Edits and evaluates `requests` as `kedit eval` does (the experiment layer's modes,
    /// pre-edit metrics first), in memory. With `keep_dir` (sequential mode) each call's
    /// edit is kept there and the edits stay applied afterwards, as EasyEdit's
    /// `sequential_edit=True` leaves the model. Prompts go through the chat template when
    /// `chat` or the hyper-parameters say `chat_template: true`.
    /// Returns `{"cases": [...], "after_all": {...}}`.
    #[pyo3(signature = (method, requests, mode="single", batch_size=1, hparams_path=None,
        hparams_json=None, keep_dir=None, fluency=false, free_generation=false, corpus=None,
        seed=0, chat=false))]
    #[allow(clippy::too_many_arguments)]
    fn run_cases(
        &mut self,
        py: Python<'_>,
        method: &str,
        requests: &str,
        mode: &str,
        batch_size: usize,
        hparams_path: Option<PathBuf>,
        hparams_json: Option<String>,
        keep_dir: Option<PathBuf>,
        fluency: bool,
        free_generation: bool,
        corpus: Option<PathBuf>,
        seed: u64,
        chat: bool,
    ) -> PyResult<String> {
        let mode: Mode = mode.parse().map_err(value_err)?;
        if keep_dir.is_some() && mode != Mode::Sequential {
            return Err(value_err("keep_dir is for sequential mode"));
        }
        let requests: Vec<EditRequest> = parse_json("requests", requests)?;
        let hparams = HparamsArg {
            path: hparams_path,
            json: hparams_json,
        };
        let method = load_method(self.inner.model(), method, &hparams)?;
        let opts = RunOptions {
            mode,
            batch_size: if mode == Mode::Single { 1 } else { batch_size },
            metrics: metric_options(fluency, free_generation, seed),
            shard: None,
        };
        let ctx = context(corpus, seed);
        let editor = &mut self.inner;
        let store = py
            .detach(|| -> kedit::Result<RunStore> {
                let mut store = match &keep_dir {
                    Some(dir) => RunStore::open(dir, &json!({"python": "run_cases"}))?,
                    None => RunStore::in_memory(),
                };
                let requests = render(editor.model(), requests, chat || method.chat)?;
                let mut bars = Bars::default();
                let m = method.loaded.method.as_ref();
                run(editor, m, &ctx, &requests, &opts, &mut store, &mut bars)?;
                bars.finish();
                if keep_dir.is_some() {
                    // The run reverted the model; put its edits back, in order.
                    for i in 0..requests.len() {
                        if let Some(edit) = store.load_edit(i)? {
                            editor.apply(&edit)?;
                        }
                    }
                }
                Ok(store)
            })
            .py()?;
        let cases: Vec<_> = store.cases.values().collect();
        Ok(json!({"cases": cases, "after_all": store.after_all}).to_string())
    }
}
