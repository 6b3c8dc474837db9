//! Edits that are not weight deltas, end to end. Three toy methods — one per new kind of
//! edit (a site adaptor, a memory, a context) — are defined here and nowhere else; the
//! harness evaluates each in single, sequential and batch mode on the real SmolLM2 and real
//! ZsRE records with no change to the library. Saved edits of every kind reload and give
//! identical metrics, and `revert_all` leaves the system pristine. A toy trainer shows the
//! `kedit train` plumbing: a checkpoint, `hparams.yaml` with `archive:`, and a method
//! loaded from it through the registry.

use crate::common;

use std::path::Path;

use candle_core::{DType, Tensor};
use common::{data, smollm2, teacher_forced, zsre_dev};
use kedit::data::{load, Format, LoadOptions};
use kedit::edit::{
    AdaptorEdit, AdaptorPositions, ContextEdit, Edit, MemoryEdit, MemoryRecord, Router,
};
use kedit::editor::Editor;
use kedit::evaluate::{evaluate, MetricOptions, Metrics};
use kedit::experiment::summary::summarize;
use kedit::experiment::{run, Mode, RunOptions, RunStore};
use kedit::methods::registry::{MethodFamily, MethodSpec};
use kedit::methods::train::{train, TrainInputs, TrainJob, Trained};
use kedit::methods::{
    Computed, EditContext, EditMethod, HparamsSource, LoadedMethod, MethodReport, Registry,
};
use kedit::model::ParamId;
use kedit::progress::Silent;
use kedit::request::EditRequest;
use kedit::{Model, Result, Site, TokenBatch};

fn metric_options() -> MetricOptions {
    MetricOptions {
        fluency: false,
        free_generation: true,
        seed: 0,
    }
}

fn fact(r: &EditRequest) -> String {
    format!("New fact: {} {}.\n", r.prompt, r.target_new)
}

/// A codebook at the last block's output: the key is the hidden state at the prompt's last
/// token, the value points along the target's first token's (tied) embedding, so the next
/// token becomes the target. Entries already in the codebook are kept (GRACE grows it).
struct ToyCodebook;

impl ToyCodebook {
    fn site(model: &Model) -> Site {
        Site::ResidPost(model.config.n_layers - 1)
    }
}

impl EditMethod for ToyCodebook {
    fn name(&self) -> &str {
        "toy-codebook"
    }
    fn max_batch(&self) -> Option<usize> {
        None
    }
    fn compute(
        &self,
        system: &Editor,
        requests: &[EditRequest],
        _: &EditContext,
    ) -> Result<Computed> {
        let model = system.model();
        let tok = model.tokenizer()?;
        let site = Self::site(model);
        let table = model.params.require(ParamId::TokenEmbed)?;
        let mut keys = Vec::new();
        let mut values = Vec::new();
        let mut radii = Vec::new();
        if let Some(existing) = system.adaptor(site) {
            keys.push(existing.keys.clone());
            values.push(existing.values.clone());
            radii.extend(&existing.radii);
        }
        for r in requests {
            let ids = tok.encode(&r.prompt)?;
            let out = model
                .forward(&TokenBatch::single(&ids))
                .capture([site])
                .run()?;
            let h = out.capture(site)?.get(0)?.get(ids.len() - 1)?;
            let target = tok.encode(&format!(" {}", r.target_new))?[0];
            let e = table.get(target as usize)?;
            let scale = (h.sqr()?.sum_all()?.sqrt()? / e.sqr()?.sum_all()?.sqrt()?)?;
            let value = e.broadcast_mul(&(scale * 10.0)?)?;
            let norm = h.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
            keys.push(h.unsqueeze(0)?);
            values.push(value.unsqueeze(0)?);
            radii.push(0.01 * norm);
        }
        Ok(Computed {
            edit: Edit::Adaptor(AdaptorEdit {
                site,
                positions: AdaptorPositions::PromptEnd,
                keys: Tensor::cat(&keys, 0)?,
                values: Tensor::cat(&values, 0)?,
                radii,
                meta: Default::default(),
            }),
            report: MethodReport::default(),
        })
    }
    fn hparams_json(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// An edit memory routed by word overlap: a routed prompt is answered with its fact in
/// front of it.
struct ToyMemory {
    threshold: f64,
}

impl EditMethod for ToyMemory {
    fn name(&self) -> &str {
        "toy-memory"
    }
    fn max_batch(&self) -> Option<usize> {
        None
    }
    fn compute(&self, _: &Editor, requests: &[EditRequest], _: &EditContext) -> Result<Computed> {
        let records = requests
            .iter()
            .map(|r| MemoryRecord {
                prompt: r.prompt.clone(),
                target: r.target_new.clone(),
                context: fact(r),
            })
            .collect();
        Ok(Computed {
            edit: Edit::Memory(MemoryEdit {
                records,
                router: Router::WordOverlap {
                    threshold: self.threshold,
                },
                meta: Default::default(),
            }),
            report: MethodReport::default(),
        })
    }
    fn hparams_json(&self) -> serde_json::Value {
        serde_json::json!({ "threshold": self.threshold })
    }
}

/// The new facts in front of every input.
struct ToyContext;

impl EditMethod for ToyContext {
    fn name(&self) -> &str {
        "toy-context"
    }
    fn max_batch(&self) -> Option<usize> {
        None
    }
    fn compute(&self, _: &Editor, requests: &[EditRequest], _: &EditContext) -> Result<Computed> {
        Ok(Computed {
            edit: Edit::Context(ContextEdit {
                prefix: requests.iter().map(fact).collect(),
                lead: String::new(),
                meta: Default::default(),
            }),
            report: MethodReport::default(),
        })
    }
    fn hparams_json(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

fn run_mode(method: &dyn EditMethod, requests: &[EditRequest], mode: Mode) -> RunStore {
    common::run_mode(method, requests, mode, metric_options())
}

/// Reliability before and after, over the cases of a run (post-edit values).
fn reliability(store: &RunStore) -> (f64, f64) {
    let pre: Vec<&Metrics> = store.cases.values().map(|c| &c.pre).collect();
    (
        summarize(&pre).reliability.unwrap(),
        common::post_scores(store).reliability.unwrap(),
    )
}

/// `method` in single, sequential and batch mode over two ZsRE records: every case edited,
/// reliability up. Teacher-forced metrics only: free generation through every kind is the
/// saved-edits test's; here it would add a minute.
fn runs_in_every_mode_and_edits(method: &dyn EditMethod) {
    let requests = zsre_dev(2);
    for mode in [Mode::Single, Mode::Sequential, Mode::Batch] {
        let store = common::run_mode(method, &requests, mode, teacher_forced());
        assert_eq!(store.cases.len(), 2);
        assert!(store.cases.values().all(|c| c.edit.error.is_none()));
        let (before, after) = reliability(&store);
        println!(
            "{} {mode:?}: reliability {before:.3} -> {after:.3}",
            method.name()
        );
        assert!(
            after > before,
            "{} {mode:?}: reliability {before} -> {after}",
            method.name()
        );
        if mode == Mode::Sequential {
            assert_eq!(store.after_all.len(), 2);
        }
    }
}

#[test]
fn an_adaptor_edit_runs_in_every_mode_and_edits() {
    runs_in_every_mode_and_edits(&ToyCodebook);
}

#[test]
fn a_memory_edit_runs_in_every_mode_and_edits() {
    runs_in_every_mode_and_edits(&ToyMemory { threshold: 0.5 });
}

#[test]
fn a_context_edit_runs_in_every_mode_and_edits() {
    runs_in_every_mode_and_edits(&ToyContext);
}

/// A memory edit answers only the inputs routed to it: unrelated prompts score exactly as
/// on the plain model.
#[test]
fn a_memory_leaves_unrouted_inputs_exactly_as_they_were() {
    let requests = zsre_dev(2);
    let store = run_mode(&ToyMemory { threshold: 0.5 }, &requests, Mode::Single);
    for case in store.cases.values() {
        let post = case.post.as_ref().unwrap();
        for accs in post.locality_acc.values() {
            assert!(accs.iter().all(|&a| a == 1.0), "{:?}", post.locality_acc);
        }
    }
}

/// The codebook grows edit by edit: a sequential method sees the entries already there.
#[test]
fn an_adaptor_method_sees_the_system_as_currently_edited() {
    let requests = zsre_dev(2);
    let mut editor = Editor::new(smollm2().clone());
    let ctx = EditContext::default();
    for (i, r) in requests.iter().enumerate() {
        let c = ToyCodebook
            .compute(&editor, std::slice::from_ref(r), &ctx)
            .unwrap();
        editor.apply(&c.edit).unwrap();
        let site = ToyCodebook::site(editor.model());
        assert_eq!(editor.adaptor(site).unwrap().len(), i + 1);
    }
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
    assert!(editor.adaptor(ToyCodebook::site(editor.model())).is_none());
}

#[test]
fn saved_edits_of_every_kind_reload_and_give_identical_metrics() {
    let requests = zsre_dev(2);
    let refs: Vec<&EditRequest> = requests.iter().collect();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-kinds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let methods: Vec<Box<dyn EditMethod>> = vec![
        Box::new(ToyCodebook),
        Box::new(ToyMemory { threshold: 0.5 }),
        Box::new(ToyContext),
    ];
    let mut editor = Editor::new(smollm2().clone());
    let pre = evaluate(&editor, &refs, None, &metric_options()).unwrap();
    let pre_refs: Vec<&Metrics> = pre.iter().collect();
    for method in &methods {
        let computed = method
            .compute(&editor, &requests, &EditContext::default())
            .unwrap();
        editor.apply(&computed.edit).unwrap();
        assert!(!editor.is_pristine().unwrap());
        let first = evaluate(&editor, &refs, Some(&pre_refs), &metric_options()).unwrap();
        let path = dir.join(format!("{}.safetensors", method.name()));
        computed.edit.save(&path).unwrap();
        editor.revert_all();
        assert!(editor.is_pristine().unwrap(), "{}", method.name());
        let back = Edit::load(&path).unwrap();
        assert_eq!(back.kind(), computed.edit.kind());
        assert_eq!(
            back.fingerprint().unwrap(),
            computed.edit.fingerprint().unwrap(),
            "{}",
            method.name()
        );
        editor.apply(&back).unwrap();
        let again = evaluate(&editor, &refs, Some(&pre_refs), &metric_options()).unwrap();
        assert_eq!(first, again, "{}: metrics after reloading", method.name());
        assert_ne!(first, pre, "{}: the edit changed nothing", method.name());
        editor.revert_all();
        assert!(editor.is_pristine().unwrap());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A sequential run of memory edits, interrupted and resumed from the edits it saved, ends
/// where an uninterrupted one ends.
#[test]
fn a_sequential_run_of_memory_edits_resumes_from_saved_edits() {
    let requests = zsre_dev(2);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-kinds-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let header = serde_json::json!({"method": "toy-memory", "mode": "sequential"});
    // What is resumed is the edits, not generation: teacher-forced metrics suffice.
    let opts = RunOptions {
        mode: Mode::Sequential,
        batch_size: 1,
        metrics: MetricOptions {
            free_generation: false,
            ..metric_options()
        },
        shard: None,
    };
    let method = ToyMemory { threshold: 0.5 };
    let mut editor = Editor::new(smollm2().clone());
    let ctx = EditContext::default();
    let mut store = RunStore::open(&dir, &header).unwrap();
    run(
        &mut editor,
        &method,
        &ctx,
        &requests,
        &opts,
        &mut store,
        &mut Silent,
    )
    .unwrap();
    let complete = store.after_all.clone();
    let cases = std::fs::read_to_string(dir.join("cases.jsonl")).unwrap();
    let first_line = cases.lines().next().unwrap();
    std::fs::write(dir.join("cases.jsonl"), format!("{first_line}\n")).unwrap();
    std::fs::remove_file(dir.join("after_all.jsonl")).unwrap();
    let mut store = RunStore::open(&dir, &header).unwrap();
    assert_eq!(store.cases.len(), 1);
    run(
        &mut editor,
        &method,
        &ctx,
        &requests,
        &opts,
        &mut store,
        &mut Silent,
    )
    .unwrap();
    assert!(editor.is_pristine().unwrap());
    assert_eq!(store.after_all, complete);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Malformed edits of the new kinds are refused and leave the system as it was.
#[test]
fn malformed_adaptor_memory_and_context_edits_are_refused() {
    let mut editor = Editor::new(smollm2().clone());
    let d = editor.model().config.d_model;
    let device = candle_core::Device::Cpu;
    let bad = [
        Edit::Adaptor(AdaptorEdit {
            site: Site::ResidPost(3),
            positions: AdaptorPositions::PromptEnd,
            keys: Tensor::zeros((2, d), DType::F32, &device).unwrap(),
            values: Tensor::zeros((1, d), DType::F32, &device).unwrap(),
            radii: vec![1.0, 1.0],
            meta: Default::default(),
        }),
        Edit::Adaptor(AdaptorEdit {
            site: Site::ResidPost(3),
            positions: AdaptorPositions::PromptEnd,
            keys: Tensor::zeros((1, d), DType::F32, &device).unwrap(),
            values: Tensor::full(f32::NAN, (1, d), &device).unwrap(),
            radii: vec![1.0],
            meta: Default::default(),
        }),
        Edit::Adaptor(AdaptorEdit {
            site: Site::ResidPost(999),
            positions: AdaptorPositions::PromptEnd,
            keys: Tensor::zeros((1, d), DType::F32, &device).unwrap(),
            values: Tensor::zeros((1, d), DType::F32, &device).unwrap(),
            radii: vec![1.0],
            meta: Default::default(),
        }),
        Edit::Memory(MemoryEdit {
            records: vec![],
            router: Router::WordOverlap { threshold: 0.5 },
            meta: Default::default(),
        }),
        Edit::Context(ContextEdit {
            prefix: String::new(),
            lead: String::new(),
            meta: Default::default(),
        }),
    ];
    for edit in &bad {
        let err = editor.apply(edit).unwrap_err();
        assert!(!err.to_string().is_empty());
        assert!(editor.is_pristine().unwrap(), "{}: {err}", edit.kind());
        assert!(editor.applied().is_empty());
    }
}

// --- a method with a trainer, registered at run time ----------------------------------

/// "Training" the memory's router: the word-overlap threshold that best separates each
/// training edit's rephrase (in scope) from its locality prompt (out of scope), checked on
/// the validation records; the checkpoint is that threshold.
fn train_threshold(inputs: TrainInputs) -> Result<Trained> {
    let pairs = |reqs: &[EditRequest]| -> Vec<(f64, bool)> {
        let probe = |a: &str, b: &str| {
            MemoryEdit {
                records: vec![MemoryRecord {
                    prompt: a.into(),
                    target: String::new(),
                    context: String::new(),
                }],
                router: Router::WordOverlap { threshold: 0.0 },
                meta: Default::default(),
            }
            .route(b)
            .map_or(0.0, |r| r.score)
        };
        reqs.iter()
            .flat_map(|r| {
                let inside = r.rephrase.iter().map(|p| (probe(&r.prompt, p), true));
                let outside = r
                    .locality
                    .values()
                    .flatten()
                    .map(|p| (probe(&r.prompt, &p.prompt), false));
                inside.chain(outside).collect::<Vec<_>>()
            })
            .collect()
    };
    let accuracy = |t: f64, ps: &[(f64, bool)]| {
        ps.iter().filter(|(s, inside)| (*s >= t) == *inside).count() as f64 / ps.len() as f64
    };
    let train_pairs = pairs(inputs.train);
    inputs.progress.phase("thresholds", 20, 0);
    let mut best = (0.0, -1.0);
    for step in 1..=20 {
        let t = step as f64 / 20.0;
        let acc = accuracy(t, &train_pairs);
        if acc > best.1 {
            best = (t, acc);
        }
        inputs.progress.advance(1);
    }
    let val_acc = accuracy(best.0, &pairs(inputs.val));
    let checkpoint = inputs.out_dir.join("router.json");
    std::fs::write(
        &checkpoint,
        serde_json::json!({ "threshold": best.0 }).to_string(),
    )
    .map_err(|e| kedit::Error::io(&checkpoint, e))?;
    Ok(Trained {
        checkpoint,
        hparams: Default::default(),
        summary: serde_json::json!({ "threshold": best.0, "train_acc": best.1, "val_acc": val_acc }),
    })
}

fn load_trained_memory(_: &str, source: HparamsSource, _: &Model) -> Result<LoadedMethod> {
    let archive = source.path_key("archive")?.ok_or_else(|| {
        kedit::Error::config(format!("{}: `archive` is missing", source.origin.display()))
    })?;
    let text = std::fs::read_to_string(&archive).map_err(|e| kedit::Error::io(&archive, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| kedit::Error::config(format!("{}: {e}", archive.display())))?;
    Ok(LoadedMethod {
        method: Box::new(ToyMemory {
            threshold: v["threshold"].as_f64().unwrap_or(0.5),
        }),
        warnings: Vec::new(),
        hparams_origin: source.origin.clone(),
    })
}

fn registry_with_trained_memory() -> Registry {
    let mut registry = Registry::builtin();
    registry.register(MethodSpec {
        name: "toy-memory",
        alg_name: "TOY",
        family: MethodFamily::MemoryBased,
        summary: "a word-overlap edit memory with a trained threshold",
        needs: &[kedit::methods::Need::TrainedCheckpoint],
        shipped: &[],
        load: load_trained_memory,
        trainer: Some(train_threshold),
        without_statistics: None,
    });
    registry
}

#[test]
fn a_trained_method_writes_a_checkpoint_and_hparams_that_load_it() {
    let registry = registry_with_trained_memory();
    let model = smollm2();
    let train_set = load(
        &data("zsre/zsre_mend_train-1k.json"),
        Format::Zsre,
        &LoadOptions {
            limit: Some(50),
            ..Default::default()
        },
    )
    .unwrap()
    .requests;
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let trained = train(
        &registry,
        model,
        TrainJob {
            method: "toy-memory",
            train: train_set,
            val: zsre_dev(20),
            hparams: None,
            out_dir: &out,
            seed: 0,
        },
        &mut Silent,
    )
    .unwrap();
    println!("{}", trained.summary);
    let threshold = trained.summary["threshold"].as_f64().unwrap();
    assert!(threshold > 0.0 && threshold < 1.0);
    assert!(trained.summary["val_acc"].as_f64().unwrap() > 0.8);
    let yaml = out.join("hparams.yaml");
    let hp = HparamsSource::read(&yaml).unwrap();
    assert_eq!(hp.value["archive"], "router.json");
    assert_eq!(hp.alg_name(), Some("TOY"));
    let loaded = registry.load("toy-memory", Some(&yaml), model).unwrap();
    assert_eq!(loaded.method.hparams_json()["threshold"], threshold);

    // Without `archive`, loading says what is missing and where.
    let bare = out.join("bare.yaml");
    std::fs::write(&bare, "alg_name: TOY\n").unwrap();
    let err = registry
        .load("toy-memory", Some(&bare), model)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("archive") && err.contains("bare.yaml"),
        "{err}"
    );

    // Methods with nothing to train say which methods do.
    let err = train(
        &registry,
        model,
        TrainJob {
            method: "rome",
            train: zsre_dev(2),
            val: zsre_dev(2),
            hparams: None,
            out_dir: Path::new(&out),
            seed: 0,
        },
        &mut Silent,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("toy-memory"), "{err}");
    std::fs::remove_dir_all(&out).unwrap();
}
