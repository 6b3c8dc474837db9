//! The experiment layer: editing modes (how edits and evaluations interleave), the run
//! store that makes runs resumable, summaries and reports. It sits above both the methods
//! and the metrics and is the only place that combines them.

pub mod dataset;
pub mod efficiency;
pub mod lifelong;
pub mod merge;
pub mod modes;
pub mod report;
pub mod shard;
pub mod store;
pub mod stream;
pub mod summary;

pub use dataset::{run_dataset, DatasetOutcome, DatasetRun};
pub use merge::merge_runs;
pub use modes::{run, Mode, RunOptions};
pub use shard::Shard;
pub use store::{CaseRecord, EditOutcome, RunStore};
