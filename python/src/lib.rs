//! `kedit._native`: the Python bindings of the kedit library. A thin layer, like the
//! command line: it converts arguments, calls the library with the GIL released, and
//! converts results. Structured values cross as JSON text (the library's own serde
//! shapes) and tensors as little-endian f32 bytes with a shape, so that the Python side
//! (`python/kedit/`) builds dictionaries and numpy arrays without a numpy crate here.

mod convert;
mod edit;
mod editor;
mod errors;
mod evaluate;
mod method;
mod model;
mod progress;
mod trace;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Before any tensor work starts threads (as the command line does first).
    kedit::runtime::process::configure_process();
    m.add("KeditError", m.py().get_type::<errors::KeditError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<model::Model>()?;
    m.add_class::<editor::Editor>()?;
    m.add_class::<edit::Edit>()?;
    m.add_function(wrap_pyfunction!(model::default_model_path, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate::methods_json, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate::read_hparams, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate::evaluate_run, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate::merge_runs, m)?)?;
    m.add_function(wrap_pyfunction!(trace::trace, m)?)?;
    Ok(())
}
