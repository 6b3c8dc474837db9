//! Saving a model never destroys what the user owns: a directory kedit did not write is
//! refused, one it wrote is replaced only when asked and only file by file, a killed save's
//! temporary files are swept, and saved files get the user's umask.

use crate::common;

use common::*;
use kedit::model::SAVED_MODEL_MARKER;
use kedit::Model;

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_saved_model_directory_is_replaced_file_by_file_only_with_overwrite() {
    let scratch = Scratch::new("saved-overwrite");
    let model = Model::load(tiny_dir("llama")).unwrap();
    let out = scratch.join("m");
    model.save_hf(&out, false).unwrap();
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(SAVED_MODEL_MARKER)).unwrap()).unwrap();
    let listed: Vec<&str> = marker["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for f in &listed {
        assert!(out.join(f).is_file(), "{f} is listed and written");
    }
    // The user's own notes beside our files survive any number of saves.
    std::fs::write(out.join("NOTES.md"), b"mine").unwrap();
    let e = model.save_hf(&out, false).unwrap_err().to_string();
    assert!(e.contains("--overwrite"), "{e}");
    // A killed earlier save left its temporary file behind.
    let stale = out.join(".model.safetensors.tmp-4000000000");
    std::fs::write(&stale, b"partial").unwrap();
    model.save_hf(&out, true).unwrap();
    assert!(!stale.exists(), "the killed save's temporary file is swept");
    assert_eq!(std::fs::read(out.join("NOTES.md")).unwrap(), b"mine");
    let mut expected: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    expected.extend(["NOTES.md".to_string(), SAVED_MODEL_MARKER.to_string()]);
    expected.sort();
    assert_eq!(names(&out), expected);
    let reloaded = Model::load(&out).unwrap();
    assert_eq!(
        reloaded.fingerprint().unwrap(),
        model.fingerprint().unwrap()
    );
}

#[test]
fn a_foreign_directory_or_a_file_is_never_written() {
    let scratch = Scratch::new("saved-foreign");
    let model = Model::load(tiny_dir("llama")).unwrap();
    let theirs = scratch.join("theirs");
    std::fs::create_dir_all(theirs.join("sub")).unwrap();
    std::fs::write(theirs.join("notes.txt"), b"x").unwrap();
    for overwrite in [false, true] {
        let e = model.save_hf(&theirs, overwrite).unwrap_err().to_string();
        assert!(e.contains("not written by kedit"), "{e}");
        assert_eq!(names(&theirs), ["notes.txt", "sub"]);
    }
    let file = scratch.join("file");
    std::fs::write(&file, b"mine").unwrap();
    assert!(model.save_hf(&file, true).is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    assert_eq!(names(scratch.path()), ["file", "theirs"]);
}

#[cfg(unix)]
#[test]
fn saved_model_files_get_the_users_umask() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("saved-mode");
    let model = Model::load(tiny_dir("llama")).unwrap();
    let out = scratch.join("m");
    model.save_hf(&out, false).unwrap();
    let probe = scratch.join("probe");
    std::fs::write(&probe, b"").unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for f in names(&out) {
        assert_eq!(mode(&out.join(&f)), mode(&probe), "{f}");
    }
}
