//! Evaluate: edit requests, dataset loaders, metrics, editing modes, reports.

pub mod request;

pub use request::{EditRequest, Probe};
