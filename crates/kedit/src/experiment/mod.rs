//! The experiment layer: editing modes (how edits and evaluations interleave), the run
//! store that makes runs resumable, summaries and reports. It sits above both the methods
//! and the metrics and is the only place that combines them.

pub mod efficiency;
pub mod lifelong;
pub mod modes;
pub mod report;
pub mod store;
pub mod stream;
pub mod summary;

pub use modes::{run, Mode, RunOptions};
pub use store::{CaseRecord, EditOutcome, RunStore};
