//! Evaluate: edit requests, dataset loaders, metrics, editing modes, reports.

pub mod bench;
pub mod data;
pub mod efficiency;
pub mod harness;
pub mod metrics;
pub mod report;
pub mod request;
pub mod store;
pub mod summary;

pub use harness::{run, Mode, Observer, RunOptions};
pub use metrics::{evaluate, MetricOptions, Metrics};
pub use request::{EditRequest, Probe};
pub use store::{CaseRecord, EditOutcome, RunStore};
