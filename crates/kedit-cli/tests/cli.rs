//! The command line's integration tests, one binary (as `crates/kedit/tests/suite.rs`, so
//! the test threads stay busy across files). One file's tests:
//! `cargo test --release -p kedit-cli --test cli serve_cli::`.

mod hostile_cli;
mod serve_cli;
mod streams;
