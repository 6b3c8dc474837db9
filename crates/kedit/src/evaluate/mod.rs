//! Evaluate: edit requests, dataset loaders, metrics, editing modes, reports.

pub mod data;
pub mod request;

pub use request::{EditRequest, Probe};
