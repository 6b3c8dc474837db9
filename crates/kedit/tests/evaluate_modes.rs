//! Editing modes on the real SmolLM2 and real ZsRE records: FT-M edits, reverts that give
//! back bit-identical weights, refused edits recorded per case, resumed runs.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::Tensor;
use common::{smollm2, zsre_dev};
use kedit::edit::{Delta, WeightEdit};
use kedit::editor::Editor;
use kedit::evaluate::MetricOptions;
use kedit::experiment::report::{build_summary, RunConfig};
use kedit::experiment::summary::summarize;
use kedit::experiment::{run, Mode, RunOptions, RunStore};
use kedit::methods::{self, Computed, EditContext, EditMethod, HparamsSource};
use kedit::request::EditRequest;
use kedit::{Error, ParamId};

/// Teacher-forced metrics: fluency sampling is covered by the metric tests, and free
/// generation by the single and sequential tests ([`with_free_generation`]); elsewhere they
/// would only add minutes.
fn options(mode: Mode, batch_size: usize) -> RunOptions {
    RunOptions {
        mode,
        batch_size,
        metrics: MetricOptions {
            fluency: false,
            free_generation: false,
            seed: 0,
        },
        shard: None,
    }
}

fn with_free_generation(mut opts: RunOptions) -> RunOptions {
    opts.metrics.free_generation = true;
    opts
}

fn run_mode(
    method: &dyn EditMethod,
    requests: &[EditRequest],
    opts: RunOptions,
) -> (RunStore, Editor) {
    let model = smollm2().clone();
    let before = model.fingerprint().unwrap();
    let mut editor = Editor::new(model);
    let mut store = RunStore::in_memory();
    let ctx = EditContext::default();
    run(
        &mut editor,
        method,
        &ctx,
        requests,
        &opts,
        &mut store,
        &mut (),
    )
    .unwrap();
    assert!(editor.is_pristine().unwrap());
    assert_eq!(
        editor.model().fingerprint().unwrap(),
        before,
        "weights bit-identical after the run"
    );
    (store, editor)
}

fn ft_m() -> Box<dyn EditMethod> {
    methods::load("ft-m", None, smollm2()).unwrap().method
}

/// FT-M with 8 steps, not the shipped 25: a real edit, for the tests about a run's
/// bookkeeping (calls, resumes, records) rather than how well an edit takes.
fn quick_ft_m() -> Box<dyn EditMethod> {
    let mut src =
        HparamsSource::read(&common::workspace().join("hparams/FT/smollm2-135m.yaml")).unwrap();
    src.set("num_steps", serde_json::json!(8));
    let loaded = methods::load_source("ft-m", Some(src), smollm2()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    loaded.method
}

#[test]
fn single_mode_ft_m_edits_reliably_and_reverts_exactly() {
    let requests = zsre_dev(3);
    let (store, _) = run_mode(
        ft_m().as_ref(),
        &requests,
        with_free_generation(options(Mode::Single, 1)),
    );
    assert_eq!(store.cases.len(), 3);
    let post: Vec<_> = store
        .cases
        .values()
        .map(|r| r.post.as_ref().unwrap())
        .collect();
    let pre: Vec<_> = store.cases.values().map(|r| &r.pre).collect();
    let (s0, s1) = (summarize(&pre), summarize(&post));
    let reliability = s1.reliability.unwrap();
    assert!(reliability >= 0.8, "FT-M reliability {reliability}");
    assert!(reliability > s0.reliability.unwrap());
    let locality = s1.locality.unwrap();
    assert!((0.0..=1.0).contains(&locality));
    // Free generation was measured before and after each edit.
    let (fg0, fg1) = (s0.free_generation, s1.free_generation);
    assert!(fg0.reliability.is_some() && fg1.reliability.is_some());
    assert!(fg1.reliability >= fg0.reliability, "{fg0:?} -> {fg1:?}");
    for r in store.cases.values() {
        assert!(r.edit.error.is_none());
        assert!(r.edit.seconds > 0.0);
        assert_eq!(r.edit.batch_size, 1);
    }
}

#[test]
fn sequential_mode_reports_after_own_edit_and_after_all_edits() {
    let requests = zsre_dev(3);
    let (store, _) = run_mode(
        quick_ft_m().as_ref(),
        &requests,
        with_free_generation(options(Mode::Sequential, 1)),
    );
    assert_eq!(store.cases.len(), 3);
    assert_eq!(store.after_all.len(), 3);
    // The last case's two evaluations see the same model.
    let last = &store.cases[&2];
    assert_eq!(
        last.post.as_ref().unwrap().rewrite_acc,
        store.after_all[&2].rewrite_acc
    );
    // The first case's post-all evaluation sees two more edits than its own.
    assert!(store.after_all[&0]
        .locality_acc
        .contains_key("neighborhood"));
}

#[test]
fn batch_mode_edits_all_requests_in_one_call() {
    let requests = zsre_dev(3);
    let counting = Counting::new(quick_ft_m());
    let (store, _) = run_mode(&counting, &requests, options(Mode::Batch, 3));
    assert_eq!(counting.calls.load(Ordering::SeqCst), 1);
    assert!(store
        .cases
        .values()
        .all(|r| r.edit.batch_size == 3 && r.post.is_some()));
    let too_big = methods::load("rome", None, smollm2()).unwrap().method;
    let mut editor = Editor::new(smollm2().clone());
    let err = run(
        &mut editor,
        too_big.as_ref(),
        &EditContext::default(),
        &requests,
        &options(Mode::Batch, 3),
        &mut RunStore::in_memory(),
        &mut (),
    )
    .unwrap_err();
    assert!(err.to_string().contains("at most 1"), "{err}");
}

/// ZsRE dev records 36 and 37 ask where Andrew Toney plays with two different teams; edited
/// in one call they compete for one key. Record 38 (NGC 6604) has its pair, 39, elsewhere.
#[test]
fn requests_of_one_call_about_one_subject_with_other_targets_are_named() {
    let requests: Vec<EditRequest> = zsre_dev(39).split_off(36);
    assert_eq!(requests[0].subject, requests[1].subject);
    assert_ne!(requests[0].target_new, requests[1].target_new);
    let (store, _) = run_mode(quick_ft_m().as_ref(), &requests, options(Mode::Batch, 3));
    let named: Vec<&Vec<String>> = store.cases.values().map(|r| &r.same_subject).collect();
    assert_eq!(named[0], &vec![requests[1].case_id.clone()]);
    assert_eq!(named[1], &vec![requests[0].case_id.clone()]);
    assert!(named[2].is_empty());
    let config: RunConfig = serde_json::from_value(serde_json::json!({
        "kedit_version": "0", "method": "ft-m", "hparams_origin": "", "hparams": null,
        "model": "m", "model_fingerprint": "f", "data": "d", "format": "zsre", "limit": null,
        "skip_invalid": false, "mode": "batch", "batch_size": 3, "seed": 0
    }))
    .unwrap();
    let summary = build_summary(&store, &config, true);
    assert_eq!(summary.same_subject_cases, 2);
    let apart = summary.post_without_same_subject.unwrap();
    assert_eq!(apart.n, 1);
    let last = store.cases[&2].post.as_ref().unwrap();
    assert_eq!(apart.reliability, summarize(&[last]).reliability);
    // One request per call (single mode) never competes.
    let (single, _) = run_mode(
        quick_ft_m().as_ref(),
        &requests[..2],
        options(Mode::Single, 1),
    );
    assert!(single.cases.values().all(|r| r.same_subject.is_empty()));
}

#[test]
fn refused_edits_are_recorded_and_leave_the_model_pristine() {
    let requests = zsre_dev(2);
    for (method, why) in [
        (Refusing::Compute, "compute failed"),
        (Refusing::NanDelta, "NaN"),
        (Refusing::ZeroDelta, "changes no weight"),
    ] {
        let (store, _) = run_mode(&method, &requests, options(Mode::Single, 1));
        for r in store.cases.values() {
            assert!(r.post.is_none());
            let err = r.edit.error.as_deref().unwrap();
            assert!(err.contains(why), "{err}");
        }
    }
}

#[test]
fn a_rerun_resumes_and_a_different_config_is_refused() {
    let requests = zsre_dev(2);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let header = serde_json::json!({"method": "ft-m", "data": "zsre", "mode": "single"});
    let counting = Counting::new(quick_ft_m());
    let opts = options(Mode::Single, 1);
    let mut editor = Editor::new(smollm2().clone());
    let mut store = RunStore::open(&dir, &header).unwrap();
    run(
        &mut editor,
        &counting,
        &EditContext::default(),
        &requests[..1],
        &opts,
        &mut store,
        &mut (),
    )
    .unwrap();
    let mut store = RunStore::open(&dir, &header).unwrap();
    assert_eq!(store.cases.len(), 1);
    run(
        &mut editor,
        &counting,
        &EditContext::default(),
        &requests,
        &opts,
        &mut store,
        &mut (),
    )
    .unwrap();
    assert_eq!(
        counting.calls.load(Ordering::SeqCst),
        2,
        "the first case is not edited again"
    );
    let lines = std::fs::read_to_string(dir.join("cases.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
    let other = serde_json::json!({"method": "ft-l", "data": "zsre", "mode": "single"});
    assert!(RunStore::open(&dir, &other).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Counts the calls a method gets.
struct Counting {
    inner: Box<dyn EditMethod>,
    calls: AtomicUsize,
}

impl Counting {
    fn new(inner: Box<dyn EditMethod>) -> Self {
        Counting {
            inner,
            calls: AtomicUsize::new(0),
        }
    }
}

impl EditMethod for Counting {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn max_batch(&self) -> Option<usize> {
        self.inner.max_batch()
    }
    fn compute(
        &self,
        system: &Editor,
        requests: &[EditRequest],
        ctx: &EditContext,
    ) -> kedit::Result<Computed> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.compute(system, requests, ctx)
    }
    fn hparams_json(&self) -> serde_json::Value {
        self.inner.hparams_json()
    }
}

/// A method that fails: in `compute`, or with an edit the editor must refuse.
enum Refusing {
    Compute,
    NanDelta,
    /// An edit whose every delta is zero: it would change nothing.
    ZeroDelta,
}

impl EditMethod for Refusing {
    fn name(&self) -> &str {
        "refusing"
    }
    fn max_batch(&self) -> Option<usize> {
        None
    }
    fn compute(
        &self,
        system: &Editor,
        _: &[EditRequest],
        _: &EditContext,
    ) -> kedit::Result<Computed> {
        match self {
            Refusing::Compute => Err(Error::invalid("compute failed on purpose")),
            Refusing::NanDelta | Refusing::ZeroDelta => {
                let id = ParamId::mlp_out(3);
                let w = system.model().params.require(id)?;
                let value = match self {
                    Refusing::NanDelta => f32::NAN,
                    _ => 0.0,
                };
                let delta = Tensor::full(value, w.dims(), w.device())?;
                let mut edit = WeightEdit::new();
                edit.push(id, Delta::Dense(delta));
                Ok(Computed {
                    edit: edit.into(),
                    report: Default::default(),
                })
            }
        }
    }
    fn hparams_json(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// An interrupted sequential run resumes by re-applying the saved edits of the cases it
/// finished, and ends where an uninterrupted run ends.
#[test]
fn an_interrupted_sequential_run_resumes_from_saved_edits() {
    let requests = zsre_dev(2);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-seq-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let header = serde_json::json!({"method": "ft-m", "mode": "sequential"});
    let method = quick_ft_m();
    let opts = options(Mode::Sequential, 1);
    let mut editor = Editor::new(smollm2().clone());
    let mut store = RunStore::open(&dir, &header).unwrap();
    let ctx = EditContext::default();
    run(
        &mut editor,
        method.as_ref(),
        &ctx,
        &requests,
        &opts,
        &mut store,
        &mut (),
    )
    .unwrap();
    let complete = store.after_all.clone();
    // Interrupt it after the first case: drop the second case's line and the final pass.
    let cases = std::fs::read_to_string(dir.join("cases.jsonl")).unwrap();
    let first_line = cases.lines().next().unwrap();
    std::fs::write(dir.join("cases.jsonl"), format!("{first_line}\n")).unwrap();
    std::fs::remove_file(dir.join("after_all.jsonl")).unwrap();
    let mut store = RunStore::open(&dir, &header).unwrap();
    assert_eq!(store.cases.len(), 1);
    run(
        &mut editor,
        method.as_ref(),
        &ctx,
        &requests,
        &opts,
        &mut store,
        &mut (),
    )
    .unwrap();
    assert!(editor.is_pristine().unwrap());
    assert_eq!(store.after_all, complete);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A stream of calls of two requests each: one edit per call, each case evaluated after its
/// own call, all after the last; interrupted in the middle of the second call's records, the
/// run redoes that call only and ends where the uninterrupted run ends.
#[test]
fn a_sequential_stream_of_batches_edits_per_call_and_resumes_mid_call() {
    let requests = zsre_dev(4);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-seq-batches-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let header = serde_json::json!({"method": "ft-m", "mode": "sequential", "batch_size": 2});
    let counting = Counting::new(quick_ft_m());
    let opts = options(Mode::Sequential, 2);
    let mut editor = Editor::new(smollm2().clone());
    let mut store = RunStore::open(&dir, &header).unwrap();
    let ctx = EditContext::default();
    run(
        &mut editor,
        &counting,
        &ctx,
        &requests,
        &opts,
        &mut store,
        &mut (),
    )
    .unwrap();
    assert_eq!(counting.calls.load(Ordering::SeqCst), 2);
    assert!(store
        .cases
        .values()
        .all(|r| r.edit.batch_size == 2 && r.post.is_some()));
    assert_eq!(store.after_all.len(), 4);
    assert!(dir.join("edits/0.safetensors").exists() && dir.join("edits/2.safetensors").exists());
    let complete = store.after_all.clone();

    let cases = std::fs::read_to_string(dir.join("cases.jsonl")).unwrap();
    let kept: Vec<&str> = cases.lines().take(3).collect();
    std::fs::write(dir.join("cases.jsonl"), kept.join("\n") + "\n").unwrap();
    std::fs::remove_file(dir.join("after_all.jsonl")).unwrap();
    let mut store = RunStore::open(&dir, &header).unwrap();
    assert_eq!(store.cases.len(), 3);
    let counting = Counting::new(quick_ft_m());
    run(
        &mut editor,
        &counting,
        &ctx,
        &requests,
        &opts,
        &mut store,
        &mut (),
    )
    .unwrap();
    assert_eq!(
        counting.calls.load(Ordering::SeqCst),
        1,
        "only the interrupted call is redone"
    );
    assert!(editor.is_pristine().unwrap());
    assert_eq!(store.after_all, complete);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// GRACE's codebook is the whole state at its site, so a sequential run keeps only the
/// newest call's edit and resumes from that one file; a run killed between saving a call's
/// edit and writing its records resumes from the call before. Either way it ends where the
/// uninterrupted run ends.
#[test]
fn a_stream_of_whole_state_edits_keeps_the_newest_and_resumes_from_it() {
    let requests = zsre_dev(3);
    let method = methods::load("grace", None, smollm2()).unwrap().method;
    let opts = options(Mode::Sequential, 1);
    let (uninterrupted, _) = run_mode(method.as_ref(), &requests, opts);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-seq-whole-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let header = serde_json::json!({"method": "grace", "mode": "sequential"});
    let ctx = EditContext::default();
    let mut editor = Editor::new(smollm2().clone());
    let saved = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("edits"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let mut resume = |n: usize| {
        let mut store = RunStore::open(&dir, &header).unwrap();
        run(
            &mut editor,
            method.as_ref(),
            &ctx,
            &requests[..n],
            &opts,
            &mut store,
            &mut (),
        )
        .unwrap();
        assert!(editor.is_pristine().unwrap());
        store
    };
    // Two calls, then the third resumed from the second's edit alone.
    resume(2);
    assert_eq!(saved(), ["1.safetensors"]);
    let second = std::fs::read(dir.join("edits/1.safetensors")).unwrap();
    let store = resume(3);
    assert_eq!(saved(), ["2.safetensors"]);
    assert_eq!(store.after_all, uninterrupted.after_all);
    // Killed after the third call's edit was saved, before its record was written.
    let cases = std::fs::read_to_string(dir.join("cases.jsonl")).unwrap();
    let kept: Vec<&str> = cases.lines().take(2).collect();
    std::fs::write(dir.join("cases.jsonl"), kept.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("edits/1.safetensors"), second).unwrap();
    std::fs::remove_file(dir.join("after_all.jsonl")).unwrap();
    let store = resume(3);
    assert_eq!(saved(), ["2.safetensors"]);
    assert_eq!(store.after_all, uninterrupted.after_all);
    assert!(store
        .after_all
        .values()
        .all(|m| m.rewrite_acc.iter().all(|&a| a > 0.99)));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A run takes its pre-edit metrics from another run of the same model, data and metric
/// settings (here a pre-only run) instead of computing them again; a run whose metric
/// settings differ, or whose cases are not the same, is refused, naming what differs.
#[test]
fn pre_edit_metrics_are_taken_from_another_run_of_the_same_data() {
    use kedit::experiment::{run_dataset, DatasetRun};
    use serde_json::Value;

    let scratch = common::Scratch::new("pre-from");
    let data = common::data("zsre/zsre_mend_eval_portability_gpt4.dev.json");
    let spec = |method: Option<&str>, out: &str, limit: usize| DatasetRun {
        limit: Some(limit),
        fluency: false,
        free_generation: false,
        ..DatasetRun::new(method, std::slice::from_ref(&data), &scratch.join(out))
    };
    run_dataset(smollm2().clone(), &spec(None, "pre", 2), &mut ()).unwrap();
    // Mark what the pre-only run stored: a value computed again would not carry the mark.
    let pre_path = scratch.join("pre").join("pre.jsonl");
    let marked: Vec<Value> = std::fs::read_to_string(&pre_path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v["metrics"]["rewrite_acc"] = serde_json::json!([0.125]);
            v
        })
        .collect();
    let lines: Vec<String> = marked.iter().map(Value::to_string).collect();
    std::fs::write(&pre_path, lines.join("\n") + "\n").unwrap();

    // Three cases: two are taken, the third is computed.
    let edited = DatasetRun {
        hparams: Some(common::workspace().join("hparams/FT/smollm2-135m.yaml")),
        pre_from: Some(scratch.join("pre")),
        ..spec(Some("ft-m"), "ft", 3)
    };
    let outcome = run_dataset(smollm2().clone(), &edited, &mut ()).unwrap();
    assert_eq!(outcome.cases, 3);
    let taken: Vec<Value> = std::fs::read_to_string(scratch.join("ft").join("pre.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(taken.len(), 3);
    for v in &taken[..2] {
        assert_eq!(
            v["metrics"]["rewrite_acc"],
            serde_json::json!([0.125]),
            "{v}"
        );
    }
    assert_ne!(
        taken[2]["metrics"]["rewrite_acc"],
        serde_json::json!([0.125])
    );

    // Another metric setting: refused, naming it, before any work.
    let fluent = DatasetRun {
        fluency: true,
        pre_from: Some(scratch.join("pre")),
        ..spec(Some("ft-m"), "fluent", 2)
    };
    let e = run_dataset(smollm2().clone(), &fluent, &mut ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("`fluency` changed") && e.contains("pre"), "{e}");
    assert!(!scratch.join("fluent").join("cases.jsonl").exists());

    // Cases that are not the same ones: the record and field are named.
    let mut wrong = marked.clone();
    wrong[1]["case_id"] = Value::String("not-a-case".into());
    let lines: Vec<String> = wrong.iter().map(Value::to_string).collect();
    std::fs::write(&pre_path, lines.join("\n") + "\n").unwrap();
    let e = run_dataset(
        smollm2().clone(),
        &DatasetRun {
            pre_from: Some(scratch.join("pre")),
            ..spec(Some("ft-m"), "wrong", 2)
        },
        &mut (),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("pre.jsonl") && e.contains("case_id") && e.contains("not-a-case"),
        "{e}"
    );
    assert!(
        !scratch.join("wrong").join("pre.jsonl").exists(),
        "a refused import takes nothing"
    );
}
