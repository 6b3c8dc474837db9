//! `trace`: causal tracing of one prompt (ROME's), optionally writing `trace.json` and
//! the heatmaps; the result (grids included) returns as JSON.

use std::path::{Path, PathBuf};

use kedit::cache::Cache;
use kedit::trace::pictures::write_trace_pictures;
use kedit::trace::{cached_subject_embedding_std, trace_prompt, TraceOptions};
use pyo3::prelude::*;

use crate::errors::{to_json, value_err, IntoPy};
use crate::model::Model;

/// ROME's known facts, whose subjects give σ (as `kedit trace` reads them by default).
const DEFAULT_FACTS: &str = "../shared/data/known_1000/known_1000.json";

/// Returns `(result JSON, written files)`.
#[pyfunction]
#[pyo3(signature = (model, prompt, subject, answer=None, out=None, samples=10, noise=3.0,
    sigma=None, window=10, seed=1, tokens_per_pass=3, facts=None))]
#[allow(clippy::too_many_arguments)]
pub fn trace(
    py: Python<'_>,
    model: PyRef<'_, Model>,
    prompt: &str,
    subject: &str,
    answer: Option<String>,
    out: Option<PathBuf>,
    samples: usize,
    noise: f64,
    sigma: Option<f64>,
    window: usize,
    seed: u64,
    tokens_per_pass: usize,
    facts: Option<PathBuf>,
) -> PyResult<(String, Vec<String>)> {
    if samples == 0 || window == 0 || tokens_per_pass == 0 {
        return Err(value_err(
            "samples, window and tokens_per_pass must be at least 1",
        ));
    }
    if !(noise.is_finite() && noise >= 0.0) || sigma.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
        return Err(value_err(
            "noise must be finite and ≥ 0, sigma finite and > 0",
        ));
    }
    if let Some(dir) = &out {
        kedit::fsio::check_writable_dir(dir).py()?;
    }
    let model = &model.inner;
    py.detach(|| -> kedit::Result<_> {
        let sigma = match sigma {
            Some(s) => s,
            None => {
                let facts = facts
                    .or_else(|| Cache::resolve_relative(Path::new(DEFAULT_FACTS)))
                    .ok_or_else(|| {
                        kedit::Error::invalid(format!(
                            "{DEFAULT_FACTS}: not found; σ is computed from the subjects of \
                             ROME's known facts — pass facts=FILE or sigma=VALUE"
                        ))
                    })?;
                cached_subject_embedding_std(model, &facts, &Cache::default_location())?.sigma
            }
        };
        let options = TraceOptions {
            samples,
            noise,
            sigma,
            window,
            seed,
            tokens_per_pass,
            workers: 1,
        };
        let result = trace_prompt(model, prompt, subject, answer.as_deref(), &options)?;
        let mut files = Vec::new();
        if let Some(dir) = &out {
            std::fs::create_dir_all(dir).map_err(|e| kedit::Error::io(dir, e))?;
            let json = dir.join("trace.json");
            let text = serde_json::to_string_pretty(&result).expect("the result serialises");
            kedit::fsio::write_atomic(&json, text.as_bytes())?;
            files.push(json);
            for w in write_trace_pictures(&result, dir)? {
                files.extend([w.png, w.svg]);
            }
        }
        let files = files.iter().map(|f| f.display().to_string()).collect();
        Ok((to_json(&result), files))
    })
    .py()
}
