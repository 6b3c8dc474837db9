//! The command line against a hostile user: outputs are checked before the work, nothing
//! the user owns is overwritten, no run directory is left by a refused configuration, a
//! changed data file is not "resumed", absurd ranges are refused while parsing.
//!
//! Each runs the real binary on the real default model; each refusal comes before any
//! edit is computed, so the tests take seconds. Where an output check must come before the
//! work, the model named is one that does not exist: the output's error, not the model's,
//! shows which check ran first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn zsre() -> PathBuf {
    root().join("../shared/data/zsre/zsre_mend_eval_portability_gpt4.dev.json")
}

fn kedit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kedit"))
        .args(args)
        .current_dir(root())
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the kedit binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("kedit-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    fn s(&self, rel: &str) -> String {
        self.join(rel).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

const NO_MODEL: &str = "/nonexistent/model.gguf";

const EDIT: &[&str] = &[
    "edit",
    "--method",
    "ft-m",
    "--prompt",
    "The Eiffel Tower is located in",
    "--subject",
    "The Eiffel Tower",
    "--target",
    "Rome",
];

#[test]
fn save_model_refuses_a_directory_it_did_not_write_and_keeps_every_file() {
    let s = Scratch::new("save-foreign");
    std::fs::create_dir_all(s.join("p/sub")).unwrap();
    std::fs::write(s.join("p/notes.txt"), b"x").unwrap();
    let out = kedit(&[EDIT, &["--save-model", &s.s("p")]].concat());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not written by kedit"),
        "{}",
        stderr(&out)
    );
    assert_eq!(names(&s.join("p")), ["notes.txt", "sub"]);
    assert_eq!(std::fs::read(s.join("p/notes.txt")).unwrap(), b"x");
    // Not even --overwrite lets it write into somebody's directory.
    let out = kedit(&[EDIT, &["--save-model", &s.s("p"), "--overwrite"]].concat());
    assert!(!out.status.success());
    assert_eq!(names(&s.join("p")), ["notes.txt", "sub"]);
}

#[test]
fn save_model_onto_a_file_is_refused_and_the_file_left_where_it_was() {
    let s = Scratch::new("save-file");
    std::fs::write(s.join("m"), b"mine").unwrap();
    let out = kedit(&[EDIT, &["--save-model", &s.s("m")]].concat());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a directory"), "{}", stderr(&out));
    assert_eq!(names(&s.0), ["m"], "nothing renamed or added beside it");
    assert_eq!(std::fs::read(s.join("m")).unwrap(), b"mine");
}

#[test]
fn save_edit_to_an_impossible_place_fails_before_the_edit() {
    let s = Scratch::new("save-edit");
    std::fs::write(s.join("file"), b"").unwrap();
    for bad in [s.s("file/e.safetensors"), s.0.display().to_string()] {
        let out = kedit(&[EDIT, &["--save-edit", &bad, "--model", NO_MODEL]].concat());
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("is a file") || err.contains("is a directory"),
            "{err}"
        );
        assert!(
            out.stdout.is_empty(),
            "refused before the edit ran: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn trace_out_under_a_file_fails_before_tracing() {
    let s = Scratch::new("trace-out");
    std::fs::write(s.join("file"), b"").unwrap();
    let out = kedit(&[
        "trace",
        "--prompt",
        "The Eiffel Tower is located in the city of",
        "--subject",
        "The Eiffel Tower",
        "--sigma",
        "0.1",
        "--model",
        NO_MODEL,
        "--out",
        &s.s("file/trace"),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is a file"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn a_refused_eval_configuration_leaves_no_run_directory_and_the_fixed_rerun_runs() {
    let s = Scratch::new("eval-refused");
    let data = zsre().display().to_string();
    let run = s.s("run");
    let base = [
        "eval",
        "--pre-only",
        "--data",
        &data,
        "--limit",
        "1",
        "--no-fluency",
        "--no-free-generation",
        "--mode",
        "batch",
        "--out",
        &run,
    ];
    let out = kedit(&[&base[..], &["--batch-size", "0"]].concat());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("batch-size"), "{}", stderr(&out));
    assert!(
        !s.join("run").exists(),
        "no run directory for a refused configuration"
    );
    let out = kedit(&[&base[..], &["--batch-size", "1"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(s.join("run/summary.json").is_file());
}

#[test]
fn a_changed_data_file_is_not_resumed() {
    let s = Scratch::new("eval-changed");
    let records: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(zsre()).unwrap()).unwrap();
    let data = s.join("d.json");
    std::fs::write(&data, serde_json::to_vec(&records[..2]).unwrap()).unwrap();
    let args = [
        "eval",
        "--pre-only",
        "--data",
        &s.s("d.json"),
        "--no-fluency",
        "--no-free-generation",
        "--out",
        &s.s("run"),
    ];
    let out = kedit(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = std::fs::read(s.join("run/pre.jsonl")).unwrap();
    std::fs::write(&data, serde_json::to_vec(&records[1..3]).unwrap()).unwrap();
    let out = kedit(&args);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the data file's contents changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(s.join("run/pre.jsonl")).unwrap(), before);
}

#[test]
fn an_os_error_is_printed_once() {
    let out = kedit(&[
        "eval",
        "--pre-only",
        "--data",
        "/nonexistent/data.json",
        "--out",
        "/tmp/kedit-never-written",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(!Path::new("/tmp/kedit-never-written").exists());
}

#[test]
fn absurd_ranges_are_refused_while_parsing() {
    for args in [
        &["trace", "--prompt", "a", "--subject", "a", "--samples", "0"][..],
        &[
            "trace",
            "--prompt",
            "a",
            "--subject",
            "a",
            "--samples",
            "1000000000",
        ],
        &["trace", "--prompt", "a", "--subject", "a", "--noise", "nan"],
        &["stats", "--layers", "0-4000000000", "--corpus", "x"],
        &[
            "stats",
            "--layers",
            "3",
            "--corpus",
            "x",
            "--max-len",
            "100000000",
        ],
        &["generate", "--prompt", "a", "--max-new-tokens", "100000000"],
        &[
            "eval",
            "--pre-only",
            "--data",
            "x",
            "--out",
            "y",
            "--limit",
            "0",
        ],
    ] {
        let out = kedit(&[args, &["--model", NO_MODEL]].concat());
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: refused before any work");
        let err = stderr(&out);
        assert!(
            err.contains("out of range") || err.contains("layers"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn locate_with_nothing_to_trace_writes_nothing() {
    let s = Scratch::new("locate-none");
    let facts = serde_json::json!([{
        "known_id": 0, "subject": "Zqxv Blorf", "attribute": "Quuxland",
        "template": "{} is located in", "prediction": "", "prompt": "Zqxv Blorf is located in",
        "relation_id": "P0"
    }]);
    std::fs::write(s.join("facts.json"), facts.to_string()).unwrap();
    let out = kedit(&[
        "locate",
        "--data",
        &s.s("facts.json"),
        "--limit",
        "1",
        "--sigma",
        "0.1",
        "--out",
        &s.s("out"),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("nothing was written"),
        "{}",
        stderr(&out)
    );
    assert!(!s.join("out").exists());
}

/// An edit that lives outside the weights (GRACE's codebook) is shown and saved; only a
/// model file, which cannot carry it, is refused — and the edit file is still written.
#[test]
fn an_edit_outside_the_weights_succeeds_and_only_a_model_file_is_refused() {
    let s = Scratch::new("grace-edit");
    let grace = [
        "edit",
        "--method",
        "grace",
        "--prompt",
        "The Eiffel Tower is located in the city of",
        "--subject",
        "The Eiffel Tower",
        "--target",
        "Rome",
    ];
    let out = kedit(&grace);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("after:  \" Rome"), "{shown}");

    let out = kedit(
        &[
            &grace[..],
            &[
                "--save-edit",
                &s.s("grace.safetensors"),
                "--save-gguf",
                &s.s("m.gguf"),
            ],
        ]
        .concat(),
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot carry"), "{}", stderr(&out));
    assert_eq!(
        names(&s.0),
        ["grace.safetensors"],
        "the edit saved, no model file"
    );
}
