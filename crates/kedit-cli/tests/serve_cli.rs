//! `kedit serve` from the command line: where it may listen is decided before the model
//! loads (the model named does not exist, so an error about it shows the address passed).

use std::path::Path;
use std::process::{Command, Output};

fn kedit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kedit"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .output()
        .expect("the kedit binary runs")
}

#[test]
fn a_non_loopback_address_needs_allow_remote_and_then_warns() {
    let refused = kedit(&[
        "serve",
        "--addr",
        "0.0.0.0:0",
        "--model",
        "/nonexistent.gguf",
    ]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(err.contains("refusing to listen on 0.0.0.0:0"), "{err}");
    assert!(err.contains("--allow-remote"), "{err}");
    assert!(
        !err.contains("nonexistent"),
        "refused before loading: {err}"
    );

    let allowed = kedit(&[
        "serve",
        "--addr",
        "0.0.0.0:0",
        "--allow-remote",
        "--model",
        "/nonexistent.gguf",
    ]);
    let err = String::from_utf8_lossy(&allowed.stderr);
    assert!(!allowed.status.success());
    assert!(err.contains("warning: listening on 0.0.0.0:0"), "{err}");
    assert!(
        err.contains("nonexistent"),
        "then the model is loaded: {err}"
    );
}
