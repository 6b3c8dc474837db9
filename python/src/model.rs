//! `Model`: a loaded model — generation, and the hidden states at any intervention site.

use std::path::PathBuf;

use kedit::{LogitsAt, Site, TokenBatch};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::convert::{generate_texts, tensor_bytes, GenerateArgs, NamedArrays};
use crate::errors::{to_json, value_err, IntoPy};

#[pyclass(module = "kedit._native", frozen)]
pub struct Model {
    pub inner: kedit::Model,
}

/// The default model: `$KEDIT_MODEL`, else `models/SmolLM2-135M-Instruct.Q4_1.gguf` in the
/// current directory or the nearest one above it that has it (as the command line finds it).
#[pyfunction]
pub fn default_model_path() -> String {
    kedit::model::default_model_path().display().to_string()
}

#[pymethods]
impl Model {
    /// Loads a `.gguf` file or a Hugging Face directory (the default model when `None`).
    #[staticmethod]
    #[pyo3(signature = (path=None))]
    fn load(py: Python<'_>, path: Option<PathBuf>) -> PyResult<Model> {
        let path = path.unwrap_or_else(kedit::model::default_model_path);
        let inner = py.detach(|| kedit::Model::load(&path)).map_err(|e| {
            crate::errors::KeditError::new_err(format!("loading model {}: {e}", path.display()))
        })?;
        Ok(Model { inner })
    }

    #[getter]
    fn path(&self) -> String {
        self.inner.source.path.display().to_string()
    }

    /// The architecture and sizes (`ModelConfig`) as JSON.
    fn config_json(&self) -> String {
        to_json(&self.inner.config)
    }

    /// A hash of the weights (what run directories and caches are keyed by).
    fn fingerprint(&self, py: Python<'_>) -> PyResult<String> {
        let f = py.detach(|| self.inner.fingerprint()).py()?;
        Ok(format!("{f:016x}"))
    }

    fn encode(&self, text: &str) -> PyResult<Vec<u32>> {
        self.inner.tokenizer().py()?.encode(text).py()
    }

    fn decode(&self, ids: Vec<u32>) -> PyResult<String> {
        self.inner.tokenizer().py()?.decode(&ids, false).py()
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
        py.detach(|| generate_texts(&self.inner, &prompts, &args))
            .py()
    }

    /// One forward pass over `text`; the captured sites as `(name, bytes, shape)`.
    fn capture<'py>(
        &self,
        py: Python<'py>,
        text: &str,
        sites: Vec<String>,
    ) -> PyResult<NamedArrays<'py>> {
        let parsed = sites
            .iter()
            .map(|s| s.parse::<Site>().map_err(value_err))
            .collect::<PyResult<Vec<Site>>>()?;
        let captured = py
            .detach(|| -> kedit::Result<Vec<(Vec<u8>, Vec<usize>)>> {
                let ids = self.inner.tokenizer()?.encode_input(text)?;
                let batch = TokenBatch::single(&ids);
                let out = self
                    .inner
                    .forward(&batch)
                    // The `logits` site exists only when logits are computed everywhere.
                    .logits(LogitsAt::All)
                    .capture(parsed.iter().copied())
                    .run()?;
                parsed
                    .iter()
                    .map(|&s| tensor_bytes(out.capture(s)?))
                    .collect()
            })
            .py()?;
        Ok(sites
            .into_iter()
            .zip(captured)
            .map(|(name, (bytes, shape))| (name, PyBytes::new(py, &bytes), shape))
            .collect())
    }
}
