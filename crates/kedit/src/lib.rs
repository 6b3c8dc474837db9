//! kedit: knowledge editing for large language models.
//!
//! - [`model`]: load real models (GGUF, Hugging Face directories), weights under
//!   canonical names, save edited models.
//! - [`runtime`]: the forward pass with named intervention sites, gradients, KV caches.
//! - [`tokenizer`]: tokenizers and chat templates.
//! - [`editor`]: the Editor — applies weight edits, refuses degenerate ones, reverts
//!   bit-identically.
//! - [`methods`]: editing methods behind one trait (FT-L, FT-M, ROME, R-ROME).
//! - [`evaluate`]: edit requests, datasets, metrics.
//! - [`stats`]: second-moment statistics of MLP keys (ROME's C), cached and resumable.
//! - [`trace`]: causal tracing and locating the layer to edit.
//!
//! ```no_run
//! use kedit::editor::Editor;
//! use kedit::request::EditRequest;
//! use kedit::methods::{self, EditContext};
//! use kedit::{Intervention, Model, Site, TokenBatch};
//!
//! # fn main() -> kedit::Result<()> {
//! let model = Model::load("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//!
//! // Read and steer the model at named sites.
//! let ids = model.tokenizer()?.encode("The Eiffel Tower is located in the city of")?;
//! let batch = TokenBatch::single(&ids);
//! let out = model
//!     .forward(&batch)
//!     .capture([Site::MlpKey(5), Site::ResidPost(5)])
//!     .intervene(Intervention::noise(Site::Embed, vec![(0, 1), (0, 2), (0, 3)], 0.1, 7))
//!     .run()?;
//! let keys = out.capture(Site::MlpKey(5))?; // [1, 10, 1536]
//! # let _ = keys;
//!
//! // Edit a fact, then undo it.
//! let rome = methods::load("rome", None, &model)?;
//! let mut editor = Editor::new(model);
//! let request = EditRequest {
//!     prompt: "The Eiffel Tower is located in the city of".into(),
//!     subject: "The Eiffel Tower".into(),
//!     target_new: "Rome".into(),
//!     ..Default::default()
//! };
//! let edit = rome.method.compute(editor.model(), &[request], &mut EditContext::default())?;
//! editor.apply(&edit)?;
//! editor.revert_all();
//! # Ok(())
//! # }
//! ```

pub mod bench;
pub mod cache;
pub mod data;
pub mod editor;
pub mod error;
pub mod evaluate;
pub mod experiment;
pub mod fsio;
pub mod generate;
pub mod hash;
pub mod methods;
pub mod model;
pub mod plot;
pub mod prompts;
pub mod request;
pub mod rng;
pub mod runtime;
pub mod stats;
pub mod tokenizer;
pub mod trace;

pub use error::{Error, Result};
pub use model::{Model, ParamId};
pub use runtime::{Intervention, LogitsAt, Padding, Site, TokenBatch};
