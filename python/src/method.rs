//! Building a method from the registry with hyper-parameters given from Python: none (the
//! shipped file for the model), a file, or a dictionary (an EasyEdit `HyperParams` object,
//! perhaps changed by the user) that crosses as JSON.

use std::path::{Path, PathBuf};

use kedit::methods::{HparamsSource, LoadedMethod, Registry};
use kedit::request::EditRequest;
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

/// A method ready to run, and whether its hyper-parameters ask for the chat template
/// (`chat_template: true`).
pub struct Method {
    pub loaded: LoadedMethod,
    pub chat: bool,
}

/// The method `name` for `model`; the hyper-parameters' warnings go to stderr, as the
/// command line prints them.
pub fn load_method(model: &kedit::Model, name: &str, hparams: &HparamsArg) -> PyResult<Method> {
    let source = hparams.source()?;
    let chat = match &source {
        Some(s) => s.chat_template().py()?,
        None => false,
    };
    let loaded = Registry::builtin().load_source(name, source, model).py()?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(Method { loaded, chat })
}

/// `requests` as the model is asked them: through its chat template when `chat`.
pub fn render(
    model: &kedit::Model,
    requests: Vec<EditRequest>,
    chat: bool,
) -> kedit::Result<Vec<EditRequest>> {
    if chat {
        kedit::prompts::chat_requests(model.tokenizer()?, &requests)
    } else {
        Ok(requests)
    }
}
