//! The model runtime: batches, named sites, interventions, the forward pass, KV caches.

pub mod batch;
pub mod forward;
pub mod intervention;
pub mod kernels;
pub mod kv_cache;
pub mod nll;
pub mod ops;
pub mod process;
pub mod side_memory;
pub mod sites;
pub mod summary;
pub mod threads;

pub use batch::{Padding, TokenBatch};
pub use forward::{Forward, ForwardOutput, LogitsAt, WeightOverrides};
pub use intervention::{Action, Intervention};
pub use kv_cache::KvCache;
pub use sites::Site;
