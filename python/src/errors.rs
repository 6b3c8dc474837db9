//! kedit's errors as Python exceptions: `kedit.KeditError` (a `RuntimeError`) with the
//! library's message; arguments the bindings cannot read are `ValueError`s.

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::PyErr;

create_exception!(
    kedit,
    KeditError,
    PyRuntimeError,
    "An error of the kedit library (its message says what and where)."
);

/// The library's error as a `KeditError`.
pub fn kedit_err(e: kedit::Error) -> PyErr {
    KeditError::new_err(e.to_string())
}

/// A bad argument: a `ValueError` with `message`.
pub fn value_err(message: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(message.to_string())
}

/// `.py()` turns a library result into a Python one.
pub trait IntoPy<T> {
    fn py(self) -> pyo3::PyResult<T>;
}

impl<T> IntoPy<T> for kedit::Result<T> {
    fn py(self) -> pyo3::PyResult<T> {
        self.map_err(kedit_err)
    }
}

/// JSON from Python that does not parse is a bad argument.
pub fn parse_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> pyo3::PyResult<T> {
    serde_json::from_str(text).map_err(|e| value_err(format!("{what}: {e}")))
}

/// JSON for Python (the library's values always serialise).
pub fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("kedit's values serialise to JSON")
}
