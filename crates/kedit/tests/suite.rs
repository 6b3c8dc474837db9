//! The integration tests, one binary: each file below was a binary of its own. As one, the
//! library is compiled into and linked with one test binary instead of 32, and the locks in
//! `common` hold across all files. (The tests' own time did not change: they keep both
//! cores busy either way.)
//! Run one file's tests with `cargo test --release -p kedit --test suite rome::`.

#[macro_use]
mod common;

mod alphaedit;
mod architectures;
mod chat_editing;
mod datasets;
mod edit_kinds;
mod editor;
mod encoder;
mod evaluate_metrics;
mod evaluate_modes;
mod export;
mod fuzz;
mod gemma3;
mod generation;
mod grace;
mod gradient_checks;
mod hostile_models;
mod hparams_and_requests;
mod ike;
mod layers;
mod mass_editing_runs;
mod memit;
mod meta_learning;
mod model_files;
mod rome;
mod rome_refusals;
mod saved_models;
mod serac;
mod sharding;
mod smollm2_reference;
mod stats;
mod trace;
mod wise;
