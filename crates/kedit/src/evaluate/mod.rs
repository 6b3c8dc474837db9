//! Evaluate: the metrics of a system (a plain model or an edited one) on edit requests.

pub mod metrics;

pub use metrics::{evaluate, MetricOptions, Metrics};
