//! kedit: knowledge editing for large language models.
//!
//! - [`model`]: load real models (GGUF, Hugging Face directories), weights under
//!   canonical names, save edited models.
//! - [`runtime`]: the forward pass with named intervention sites, gradients, KV caches.
//! - [`tokenizer`]: tokenizers and chat templates.
//! - [`stats`]: second-moment statistics of MLP keys (ROME's C), cached and resumable.
//! - [`trace`]: causal tracing and locating the layer to edit.

pub mod bench;
pub mod cache;
pub mod editor;
pub mod error;
pub mod evaluate;
pub mod generate;
pub mod hash;
pub mod model;
pub mod plot;
pub mod rng;
pub mod runtime;
pub mod stats;
pub mod tokenizer;
pub mod trace;

pub use error::{Error, Result};
pub use model::{Model, ParamId};
pub use runtime::{Intervention, LogitsAt, Padding, Site, TokenBatch};
