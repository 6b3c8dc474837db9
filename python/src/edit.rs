//! `Edit`: one computed edit (any kind), saved and loaded in kedit's one file format.

use std::path::PathBuf;

use pyo3::prelude::*;

use crate::errors::{to_json, IntoPy};

#[pyclass(module = "kedit._native", frozen)]
pub struct Edit {
    pub inner: kedit::edit::Edit,
}

#[pymethods]
impl Edit {
    /// `weights`, `adaptor`, `side_memory`, `memory` or `context`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    /// The edit's metadata (method, hyper-parameters, requests) as JSON.
    fn meta_json(&self) -> String {
        to_json(self.inner.meta())
    }

    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.save(&path)).py()
    }

    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Edit> {
        let inner = py.detach(|| kedit::edit::Edit::load(&path)).py()?;
        Ok(Edit { inner })
    }

    fn fingerprint(&self) -> PyResult<String> {
        Ok(format!("{:016x}", self.inner.fingerprint().py()?))
    }
}
