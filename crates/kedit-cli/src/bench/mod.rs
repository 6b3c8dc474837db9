//! The `kedit bench*` commands: each prints the figures of one [`kedit::bench`] module.
//!
//! - `kedit bench`: [`runtime`];
//! - `kedit bench-stats`, `kedit bench-trace`: [`locate`];
//! - `kedit bench-edit`: [`edit`];
//! - `kedit bench-eval`: [`eval`].

pub mod edit;
pub mod eval;
pub mod locate;
pub mod runtime;
