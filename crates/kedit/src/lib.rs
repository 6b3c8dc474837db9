//! kedit: knowledge editing for large language models.
//!
//! - [`model`]: load real models (GGUF, Hugging Face directories), weights under
//!   canonical names, save edited models.
//! - [`runtime`]: the forward pass with named intervention sites, gradients, KV caches.
//! - [`tokenizer`]: tokenizers and chat templates.
//! - [`lm`]: the `LanguageModel` interface every metric runs through.
//! - [`request`], [`data`]: edit requests and the dataset readers.
//! - [`edit`]: edits as values — weights, site adaptor, memory, context.
//! - [`editor`]: the Editor — applies edits of every kind, refuses degenerate ones,
//!   reverts bit-identically; itself a `LanguageModel`.
//! - [`methods`]: editing methods behind one trait (FT-L, FT-M, ROME, R-ROME), their
//!   registry and trainers.
//! - [`evaluate`]: metrics. [`experiment`]: editing modes, run store, reports.
//! - [`stats`]: second-moment statistics of MLP keys (ROME's C), cached and resumable.
//! - [`trace`]: causal tracing and locating the layer to edit.
//! - [`encoder`]: the sentence encoder (all-MiniLM-L6-v2) for retrieval and scope classifiers.
//!
//! ```no_run
//! use kedit::editor::Editor;
//! use kedit::request::EditRequest;
//! use kedit::methods::{EditContext, Registry};
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
//! let rome = Registry::builtin().load("rome", None, &model)?;
//! let mut editor = Editor::new(model);
//! let request = EditRequest {
//!     prompt: "The Eiffel Tower is located in the city of".into(),
//!     subject: "The Eiffel Tower".into(),
//!     target_new: "Rome".into(),
//!     ..Default::default()
//! };
//! let computed = rome.method.compute(&editor, &[request], &EditContext::default())?;
//! editor.apply(&computed.edit)?;
//! editor.revert_all();
//! # Ok(())
//! # }
//! ```

pub mod bench;
pub mod cache;
pub mod data;
pub mod edit;
pub mod editor;
pub mod encoder;
pub mod error;
pub mod evaluate;
pub mod experiment;
pub mod fsio;
pub mod fuzz;
pub mod hash;
pub mod lm;
pub mod methods;
pub mod model;
pub mod plot;
pub mod progress;
pub mod prompts;
pub mod request;
pub mod rng;
pub mod runtime;
pub mod stats;
pub mod tokenizer;
pub mod trace;

pub use error::{Error, Result};
/// Text generation (part of the [`lm`] layer; kept at the root for `kedit::generate::…`).
pub use lm::generate;
pub use model::{Model, ParamId};
pub use runtime::{Intervention, LogitsAt, Padding, Site, TokenBatch};
