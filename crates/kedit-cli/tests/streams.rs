//! `kedit eval --mode sequential --batch-size N`: a stream of calls on the real model and
//! real ZsRE records, drawn call by call.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn a_sequential_stream_writes_its_curve_call_by_call() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-cli-stream-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = root().join("../shared/data/zsre/zsre_mend_eval_portability_gpt4.dev.json");
    let out = Command::new(env!("CARGO_BIN_EXE_kedit"))
        .args(["eval", "--method", "ft-m", "--data"])
        .arg(&data)
        .args(["--limit", "4", "--mode", "sequential", "--batch-size", "2"])
        .args(["--no-fluency", "--no-free-generation", "--out"])
        .arg(&dir)
        .current_dir(root())
        .output()
        .expect("the kedit binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stream.png"), "{stdout}");
    let points: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.join("stream.json")).unwrap()).unwrap();
    let edits: Vec<u64> = points
        .iter()
        .map(|p| p["edits"].as_u64().unwrap())
        .collect();
    assert_eq!(edits, vec![2, 4], "one point per call of two edits");
    for p in &points {
        let rel = p["scores"]["reliability"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&rel));
    }
    let png = std::fs::read(dir.join("stream.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let _ = std::fs::remove_dir_all(&dir);
}
