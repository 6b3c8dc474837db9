//! The `kedit bench*` commands: each prints the figures of one [`kedit::bench`] module.
//!
//! - `kedit bench`: [`runtime`];
//! - `kedit bench-stats`, `kedit bench-trace`: [`locate`];
//! - `kedit bench-edit`: [`edit`];
//! - `kedit bench-eval`: [`eval`];
//! - `kedit bench-memory`: [`memory`].

pub mod edit;
pub mod eval;
pub mod locate;
pub mod memory;
pub mod runtime;
