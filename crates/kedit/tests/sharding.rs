//! Sharded runs: `--shard K/N` runs split a dataset run over processes, and merging their
//! directories gives the run one process would have written.

use crate::common;

use std::path::{Path, PathBuf};

use common::{data, smollm2, Scratch};
use kedit::experiment::{merge_runs, run_dataset, DatasetRun, Mode, Shard};
use serde_json::Value;

fn zsre() -> PathBuf {
    data("zsre/zsre_mend_eval_portability_gpt4.dev.json")
}

/// FT-M cut to 3 steps: a real edit that changes the answers, quick enough for a test.
fn quick_ft(dir: &Path) -> PathBuf {
    let shipped = common::workspace().join("hparams/FT/smollm2-135m.yaml");
    let text = std::fs::read_to_string(shipped)
        .unwrap()
        .replace("num_steps: 25", "num_steps: 3");
    assert!(text.contains("num_steps: 3"));
    let path = dir.join("ft.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spec(hparams: &Path, out: PathBuf, mode: Mode, shard: Option<&str>) -> DatasetRun {
    DatasetRun {
        hparams: Some(hparams.to_path_buf()),
        // Three: a last call of one in batch mode, and shards of unequal size.
        limit: Some(3),
        mode,
        batch_size: 2,
        fluency: false,
        // Free generation is merged like every other score; one mode shows it (it was
        // 45 s of this test's 100 in both).
        free_generation: mode == Mode::Single,
        shard: shard.map(|s| s.parse().unwrap()),
        ..DatasetRun::new(Some("ft-m"), &[zsre()], &out)
    }
}

/// A summary without what wall clocks decide.
fn scores(summary: &kedit::experiment::report::RunSummary) -> Value {
    let mut v = serde_json::to_value(summary).unwrap();
    for k in [
        "seconds_per_edit",
        "peak_rss_bytes",
        "eval_seconds_per_case",
    ] {
        v.as_object_mut().unwrap().remove(k);
    }
    v
}

fn post_of(dir: &Path) -> Vec<(u64, Value)> {
    std::fs::read_to_string(dir.join("cases.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["index"].as_u64().unwrap(), v["post"].clone())
        })
        .collect()
}

#[test]
fn two_shards_merge_into_the_unsharded_run_in_single_and_batch_mode() {
    let scratch = Scratch::new("shards");
    let hp = quick_ft(scratch.path());
    for mode in [Mode::Single, Mode::Batch] {
        let name = format!("{mode:?}");
        let full = scratch.join(&format!("{name}-full"));
        let whole = run_dataset(
            smollm2().clone(),
            &spec(&hp, full.clone(), mode, None),
            &mut (),
        )
        .unwrap();
        assert_eq!(whole.summary.n, 3);
        assert!(whole.summary.reliability.unwrap() > whole.summary.pre.reliability.unwrap());
        let mut shard_dirs = Vec::new();
        for k in ["1/2", "0/2"] {
            let dir = scratch.join(&format!("{name}-{}", k.replace('/', "of")));
            let part = run_dataset(
                smollm2().clone(),
                &spec(&hp, dir.clone(), mode, Some(k)),
                &mut (),
            )
            .unwrap();
            // Single mode: every other case (0, 2 | 1); batch mode: every other call
            // (cases 0-1 | 2).
            let want: &[u64] = match (mode, k) {
                (Mode::Single, "0/2") => &[0, 2],
                (Mode::Single, _) => &[1],
                (_, "0/2") => &[0, 1],
                _ => &[2],
            };
            let mut got: Vec<u64> = post_of(&dir).iter().map(|(i, _)| *i).collect();
            got.sort();
            assert_eq!(got, want, "{name} {k}");
            assert_eq!(part.summary.n, want.len(), "{name} {k}");
            shard_dirs.push(dir);
        }
        let merged_dir = scratch.join(&format!("{name}-merged"));
        let merged = merge_runs(&shard_dirs, &merged_dir).unwrap();
        assert_eq!(scores(&merged), scores(&whole.summary), "{name}");
        let mut a = post_of(&full);
        a.sort_by_key(|(i, _)| *i);
        assert_eq!(post_of(&merged_dir), a, "{name}: per-case records");
        assert_eq!(
            std::fs::read_to_string(merged_dir.join("run.json")).unwrap(),
            std::fs::read_to_string(full.join("run.json")).unwrap()
        );
        // Merging again into the same directory is refused rather than appended to.
        let again = merge_runs(&shard_dirs, &merged_dir)
            .unwrap_err()
            .to_string();
        assert!(again.contains("already holds a run"), "{again}");
    }
}

#[test]
fn bad_shard_sets_are_refused_naming_what_is_wrong() {
    let scratch = Scratch::new("bad-shards");
    let hp = quick_ft(scratch.path());
    let pre_only = |dir: &str, shard: Option<&str>, limit: usize| {
        let out = scratch.join(dir);
        let spec = DatasetRun {
            limit: Some(limit),
            fluency: false,
            free_generation: false,
            shard: shard.map(|s| s.parse().unwrap()),
            ..DatasetRun::new(None, &[zsre()], &out)
        };
        run_dataset(smollm2().clone(), &spec, &mut ()).unwrap();
        out
    };
    let s0 = pre_only("s0", Some("0/2"), 4);
    let s1 = pre_only("s1", Some("1/2"), 4);
    let other = pre_only("other", Some("1/2"), 3);
    let whole = pre_only("whole", None, 4);
    let err = |dirs: &[&PathBuf], out: &str| {
        let dirs: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
        merge_runs(&dirs, &scratch.join(out))
            .unwrap_err()
            .to_string()
    };
    let e = err(&[&s0], "m1");
    assert!(e.contains("shard 1/2 is missing"), "{e}");
    let e = err(&[&s0, &s0], "m2");
    assert!(e.contains("are both shard 0/2"), "{e}");
    let e = err(&[&s0, &other], "m3");
    assert!(e.contains("differ in `limit`"), "{e}");
    let e = err(&[&s0, &whole], "m4");
    assert!(e.contains("is not a shard"), "{e}");
    std::fs::remove_file(s1.join("summary.json")).unwrap();
    let e = err(&[&s0, &s1], "m5");
    assert!(e.contains("has not finished"), "{e}");
    // A stream cannot be split; the refusal comes before any work or file.
    let out = scratch.join("seq");
    let spec = DatasetRun {
        mode: Mode::Sequential,
        shard: Some(Shard { index: 0, count: 2 }),
        ..DatasetRun::new(Some("ft-m"), &[zsre()], &out)
    };
    let spec = DatasetRun {
        hparams: Some(hp),
        ..spec
    };
    let e = run_dataset(smollm2().clone(), &spec, &mut ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be split"), "{e}");
    assert!(!out.exists());
}
