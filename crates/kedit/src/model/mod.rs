//! Models: loading (GGUF, Hugging Face directories), weights under canonical names, saving.

pub mod arch;
pub mod config;
pub mod fingerprint;
pub mod gguf;
pub mod gguf_export;
pub mod gguf_header;
pub mod gguf_write;
pub mod hf;
pub mod params;
pub mod safetensors_io;
pub mod safetensors_write;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::fsio;
use crate::tokenizer::Tokenizer;
/// The Hugging Face names of canonical parameters, where they used to live.
pub use arch as hf_names;
pub use config::{BlockLayout, Family, ModelConfig};
pub use params::{BlockParam, ParamId, Params};

/// The default model: SmolLM2-135M-Instruct, as fetched by `scripts/fetch-model`.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    Gguf,
    HfDir,
    Memory,
}

#[derive(Clone, Debug)]
pub struct ModelSource {
    pub path: PathBuf,
    pub format: SourceFormat,
}

/// A loaded model: configuration, weights, tokenizer.
#[derive(Clone)]
pub struct Model {
    pub config: ModelConfig,
    pub params: Params,
    pub tokenizer: Option<Tokenizer>,
    pub source: ModelSource,
    /// The Hugging Face `config.json` to write when saving.
    pub hf_config: Value,
    device: Device,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads a `.gguf` file or a Hugging Face model directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        if path.is_dir() {
            let loaded = hf::load(path)?;
            let tokenizer = if path.join("tokenizer.json").exists() {
                Some(Tokenizer::from_hf_dir(path)?)
            } else {
                None
            };
            Ok(Model {
                config: loaded.config,
                params: loaded.params,
                tokenizer,
                source: ModelSource {
                    path: path.to_path_buf(),
                    format: SourceFormat::HfDir,
                },
                hf_config: loaded.hf_config,
                device: Device::Cpu,
            })
        } else if path.is_file() {
            let loaded = gguf::load(path)?;
            let tokenizer = Tokenizer::from_gguf(path, &loaded.metadata)?;
            Ok(Model {
                hf_config: arch::synthesize(&loaded.config),
                config: loaded.config,
                params: loaded.params,
                tokenizer: Some(tokenizer),
                source: ModelSource {
                    path: path.to_path_buf(),
                    format: SourceFormat::Gguf,
                },
                device: Device::Cpu,
            })
        } else {
            Err(Error::model(
                path,
                "no such file or directory (expected a .gguf file or a Hugging Face model directory; \
                 run scripts/fetch-model for the default model)",
            ))
        }
    }

    /// A model built in memory (tests, synthetic models).
    pub fn from_parts(
        config: ModelConfig,
        params: Params,
        tokenizer: Option<Tokenizer>,
    ) -> Result<Model> {
        config.validate().map_err(Error::config)?;
        for (id, shape) in config.param_shapes() {
            let t = params.require(id)?;
            if t.dims() != shape.as_slice() {
                return Err(Error::invalid(format!(
                    "parameter `{id}` has shape {:?}; expected {shape:?}",
                    t.dims()
                )));
            }
        }
        Ok(Model {
            hf_config: arch::synthesize(&config),
            config,
            params,
            tokenizer,
            source: ModelSource {
                path: PathBuf::new(),
                format: SourceFormat::Memory,
            },
            device: Device::Cpu,
        })
    }

    pub fn dtype(&self) -> DType {
        self.params
            .get(ParamId::TokenEmbed)
            .map(|t| t.dtype())
            .unwrap_or(DType::F32)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The same model in another float type (f64 for finite-difference checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Model> {
        let mut m = self.clone();
        m.params = self.params.to_dtype(dtype)?;
        Ok(m)
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::model(
                &self.source.path,
                "this model has no tokenizer (tokenizer.json)",
            )
        })
    }

    /// Saves the model as a Hugging Face directory (config.json, model.safetensors,
    /// tokenizer files, and [`SAVED_MODEL_MARKER`], which marks the directory as kedit's).
    ///
    /// A directory holding anything else is refused, whatever `overwrite` says: it is
    /// somebody's. A kedit model directory is replaced only with `overwrite`, file by file,
    /// each file atomically; files the new model does not need are then removed.
    pub fn save_hf(&self, dir: impl AsRef<Path>, overwrite: bool) -> Result<()> {
        self.save_hf_as(dir, overwrite, DType::F32)
    }

    /// [`Model::save_hf`] with the weights stored in `dtype` (bf16, f16 or f32).
    pub fn save_hf_as(&self, dir: impl AsRef<Path>, overwrite: bool, dtype: DType) -> Result<()> {
        let dir = dir.as_ref();
        hf::torch_dtype_name(dtype)?;
        fsio::check_owned_dir(dir, SAVED_MODEL_MARKER, overwrite)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let marker = dir.join(SAVED_MODEL_MARKER);
        let old_files = saved_files(&marker);
        // The marker goes first: a directory left by a killed save is still recognisably
        // ours, so that the rerun may replace it.
        write_marker(&marker, &old_files)?;
        let mut files = hf::save(dir, &self.config, &self.params, &self.hf_config, dtype)?;
        if let Some(tok) = &self.tokenizer {
            files.extend(tok.save_hf(dir)?);
        }
        for stale in old_files.iter().filter(|f| !files.contains(f)) {
            if is_plain_name(stale) {
                let _ = std::fs::remove_file(dir.join(stale));
            }
        }
        write_marker(&marker, &files)
    }
}

/// The file that marks a directory as a model saved by kedit, listing the files it wrote.
pub const SAVED_MODEL_MARKER: &str = "kedit-model.json";

fn write_marker(path: &Path, files: &[String]) -> Result<()> {
    let text = serde_json::json!({
        "written_by": format!("kedit {}", env!("CARGO_PKG_VERSION")),
        "files": files,
    });
    fsio::write_atomic(path, text.to_string().as_bytes())
}

/// The files a marker lists (none when it is missing or unreadable).
fn saved_files(marker: &Path) -> Vec<String> {
    std::fs::read(marker)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            v.get("files")?
                .as_array()?
                .iter()
                .map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A file name without directories: a marker edited by hand must not make us delete
/// anything outside the model directory.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name != SAVED_MODEL_MARKER
        && !name.contains(['/', '\\'])
}

/// Where the default model lives: `$KEDIT_MODEL`, else `models/` at the workspace root
/// (found from the current directory upwards).
pub fn default_model_path() -> PathBuf {
    if let Ok(p) = std::env::var("KEDIT_MODEL") {
        return PathBuf::from(p);
    }
    let mut dir = std::env::current_dir().unwrap_or_default();
    loop {
        let candidate = dir.join("models").join(DEFAULT_MODEL_FILE);
        if candidate.exists() {
            return candidate;
        }
        if !dir.pop() {
            return PathBuf::from("models").join(DEFAULT_MODEL_FILE);
        }
    }
}
