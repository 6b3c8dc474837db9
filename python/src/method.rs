//! Building a method from the registry with hyper-parameters given from Python: none (the
//! shipped file for the model), a file, or a dictionary (an EasyEdit `HyperParams` object,
//! perhaps changed by the user) that crosses as JSON.

use std::path::{Path, PathBuf};

use kedit::methods::{HparamsSource, LoadedMethod, Registry};
use pyo3::PyResult;

use crate::errors::IntoPy;

pub struct HparamsArg {
    pub path: Option<PathBuf>,
    pub json: Option<String>,
}

impl HparamsArg {
    fn source(&self) -> PyResult<Option<HparamsSource>> {
        match (&self.json, &self.path) {
            (Some(text), path) => {
                // Parsed as JSON (by the extension), then named after the file it came from.
                let mut source = HparamsSource::parse(Path::new("hparams.json"), text).py()?;
                if let Some(p) = path {
                    source.origin = p.clone();
                }
                Ok(Some(source))
            }
            (None, Some(path)) => Ok(Some(HparamsSource::read(path).py()?)),
            (None, None) => Ok(None),
        }
    }
}

/// The method `name` for `model`; the hyper-parameters' warnings go to stderr, as the
/// command line prints them.
pub fn load_method(
    model: &kedit::Model,
    name: &str,
    hparams: &HparamsArg,
) -> PyResult<LoadedMethod> {
    let loaded = Registry::builtin()
        .load_source(name, hparams.source()?, model)
        .py()?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded)
}
