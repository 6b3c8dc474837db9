//! One error type for the library. Every variant says *where* (file, record, field, tensor)
//! as well as *what*, because a user fixing bad input needs both.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written. The OS error is part of the message and not
    /// a `source`, so that error chains (`{:#}`) print it once, not twice.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A model file or directory is malformed or unsupported.
    #[error("{}: {message}", path.display())]
    Model { path: PathBuf, message: String },
    /// One tensor of a model file is missing, malformed or of the wrong shape.
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    /// A data record is malformed: names the file, the record index and the field.
    #[error("{}: record {index}: field `{field}`: {message}", path.display())]
    Record {
        path: PathBuf,
        index: usize,
        field: String,
        message: String,
    },
    /// A data file as a whole cannot be read as records (not JSON, truncated, not an array,
    /// format not recognised).
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },
    /// A configuration (hyper-parameters, CLI options) is invalid.
    #[error("{0}")]
    Config(String),
    /// A request the library cannot honour (unknown site, bad positions, …).
    #[error("{0}")]
    Invalid(String),
    /// An edit was refused; the model is unchanged.
    #[error("edit refused: {0}")]
    EditRefused(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Tensor_(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }

    pub fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Model {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            message: message.into(),
        }
    }

    pub fn record(
        path: impl Into<PathBuf>,
        index: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Record {
            path: path.into(),
            index,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }

    pub fn config(message: impl Into<String>) -> Self {
        Error::Config(message.into())
    }
}
