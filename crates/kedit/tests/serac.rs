//! SERAC on real data: its scope classifier (all-MiniLM-L6-v2, fine-tuned here for a few
//! score of steps on CounterFact training records) routes better than the untrained encoder,
//! training resumes exactly after an interruption, a SERAC edit answers its own prompt with
//! the new fact and leaves inputs out of its scope bit-identical, saved edits reload with
//! identical metrics, and broken checkpoints and training files are clear errors. The same
//! for the cross-encoder (`cross_attend`).

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use common::{data, smollm2, zsre_dev};
use kedit::data::{load, Format, LoadOptions};
use kedit::edit::{Edit, ScopeClassifier, ScopeKind};
use kedit::editor::Editor;
use kedit::encoder::SentenceEncoder;
use kedit::evaluate::{evaluate, MetricOptions, Metrics};
use kedit::lm::LanguageModel;
use kedit::methods::serac::scope_examples;
use kedit::methods::serac::train::routing_accuracy;
use kedit::methods::train::{train, TrainJob};
use kedit::methods::{EditContext, HparamsSource, Registry};
use kedit::progress::Silent;
use kedit::request::EditRequest;

fn records(file: &str, n: usize) -> Vec<EditRequest> {
    let opts = LoadOptions {
        limit: Some(n),
        skip_invalid: true,
    };
    load(&data(file), Format::Auto, &opts).unwrap().requests
}

fn hparams(max_iters: usize) -> HparamsSource {
    let mut src = kedit::methods::hparams::builtin(
        "SERAC/smollm2-135m.yaml",
        include_str!("../../../hparams/SERAC/smollm2-135m.yaml"),
    );
    for (k, v) in [
        ("max_iters", serde_json::json!(max_iters)),
        ("val_every", serde_json::json!(10)),
        ("train_layers", serde_json::json!(2)),
        ("lr", serde_json::json!(1e-4)),
        // Strict at first (in scope from a cosine of 0.85), so that learning shows.
        ("bias_init", serde_json::json!(-17.0)),
    ] {
        src.set(k, v);
    }
    src
}

fn train_into(dir: &Path, max_iters: usize) -> serde_json::Value {
    train_with(dir, hparams(max_iters))
}

fn train_with(dir: &Path, hparams: HparamsSource) -> serde_json::Value {
    let job = TrainJob {
        method: "serac",
        train: records("counterfact/counterfact-train.json", 96),
        val: records("counterfact/counterfact-val.json", 32),
        hparams: Some(hparams),
        out_dir: dir,
        seed: 3,
    };
    train(&Registry::builtin(), smollm2(), job, &mut Silent)
        .unwrap()
        .summary
}

/// The cross-encoder's settings: EasyEdit's `cross_attend`, a shortlist of 4, and an
/// offset that starts it undecided (its head starts at zero).
fn cross_hparams(max_iters: usize) -> HparamsSource {
    let mut src = hparams(max_iters);
    src.set("cross_attend", serde_json::json!(true));
    src.set("shortlist", serde_json::json!(4));
    src.set("bias_init", serde_json::json!(-2.0));
    // Twenty steps from an undecided head leave the edit's own prompt below the
    // shipped file's 0.9 (set for a fully trained classifier): decide at EasyEdit's 0.5.
    src.set("threshold", serde_json::json!(0.5));
    src
}

/// A cross-encoder trained once per test binary: 20 steps.
fn cross_trained() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempdir("cross");
        train_with(&dir, cross_hparams(20));
        dir
    })
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-serac-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A classifier trained once per test binary: 20 steps.
fn trained() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempdir("trained");
        train_into(&dir, 20);
        dir
    })
}

fn encoder() -> SentenceEncoder {
    SentenceEncoder::load(&common::workspace().join("models/all-MiniLM-L6-v2")).unwrap()
}

#[test]
fn training_raises_in_scope_accuracy_over_the_untrained_encoder() {
    let dir = trained();
    let val = scope_examples(&records("counterfact/counterfact-val.json", 32));
    let base = encoder();
    let untrained = ScopeClassifier::new(base.clone(), 20.0, -17.0);
    let classifier = ScopeClassifier::load(&dir.join("classifier.safetensors"), &base).unwrap();
    let (in0, out0) = routing_accuracy(&untrained, &val, 0.5).unwrap();
    let (in1, out1) = routing_accuracy(&classifier, &val, 0.5).unwrap();
    eprintln!("in scope {in0:.3} → {in1:.3}, out of scope {out0:.3} → {out1:.3}");
    assert!(in1 >= in0 + 0.1, "in scope {in0} → {in1}");
    assert!(in1 + out1 > in0 + out0, "balanced accuracy did not rise");
    assert!(dir.join("curve.png").exists() && dir.join("hparams.yaml").exists());
}

#[test]
fn an_interrupted_training_resumes_where_it_stopped() {
    let dir = tempdir("resume");
    train_into(&dir, 10);
    // Rerun with a longer budget: it continues from step 10, not from the start.
    let summary = train_into(&dir, 20);
    assert_eq!(summary["steps"], 20);
    let straight =
        ScopeClassifier::load(&trained().join("classifier.safetensors"), &encoder()).unwrap();
    let resumed = ScopeClassifier::load(&dir.join("classifier.safetensors"), &encoder()).unwrap();
    let probe = [
        "The mother tongue of Danielle Darrieux is",
        "Paris is the capital of",
    ];
    let a = straight.embed(&probe).unwrap();
    let b = resumed.embed(&probe).unwrap();
    let diff = common::max_abs_diff(&a, &b);
    assert!(
        diff < 1e-5,
        "resumed and uninterrupted classifiers differ by {diff}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_cross_encoder_learns_to_route_and_resumes_exactly() {
    let dir = cross_trained();
    let val = scope_examples(&records("counterfact/counterfact-val.json", 32));
    let base = encoder();
    let path = dir.join("classifier.safetensors");
    let classifier = ScopeClassifier::load(&path, &base).unwrap();
    assert_eq!(classifier.kind, ScopeKind::Cross { shortlist: 4 });
    // Untrained, its head is zero: every pair gets the offset, nothing is told apart.
    let head = Tensor::zeros(base.dim(), DType::F32, &Device::Cpu).unwrap();
    let untrained = ScopeClassifier::cross(base.clone(), 4, 20.0, -2.0, head).unwrap();
    let (in0, out0) = routing_accuracy(&untrained, &val, 0.5).unwrap();
    let (in1, out1) = routing_accuracy(&classifier, &val, 0.5).unwrap();
    eprintln!("cross-encoder: in scope {in0:.3} → {in1:.3}, out of scope {out0:.3} → {out1:.3}");
    assert!(in1 >= 0.5, "in scope {in0} → {in1}");
    assert!(
        in1 + out1 > in0 + out0 + 0.2,
        "balanced accuracy {} → {}",
        (in0 + out0) / 2.0,
        (in1 + out1) / 2.0
    );

    // Ten steps, then ten more from the checkpoint: the classifier of twenty straight.
    let resumed_dir = tempdir("cross-resume");
    train_with(&resumed_dir, cross_hparams(10));
    assert_eq!(train_with(&resumed_dir, cross_hparams(20))["steps"], 20);
    let resumed =
        ScopeClassifier::load(&resumed_dir.join("classifier.safetensors"), &base).unwrap();
    let prompts = [
        "The mother tongue of Danielle Darrieux is",
        "Paris is the capital of",
    ];
    let inputs = [
        "Danielle Darrieux's mother tongue is",
        "The capital city of France is",
    ];
    let logits = |c: &ScopeClassifier| {
        let keys = c.keys(&prompts).unwrap();
        c.best(&inputs, &keys).unwrap()
    };
    let (a, b) = (logits(&classifier), logits(&resumed));
    for (x, y) in a.iter().zip(&b) {
        let ((i, lx), (j, ly)) = (x.unwrap(), y.unwrap());
        assert_eq!(i, j);
        assert!((lx - ly).abs() < 1e-3, "resumed {ly} against straight {lx}");
    }
    // Each input's own prompt is its best candidate.
    assert_eq!(
        a.iter().map(|r| r.unwrap().0).collect::<Vec<_>>(),
        vec![0, 1]
    );
    std::fs::remove_dir_all(&resumed_dir).unwrap();
}

fn options() -> MetricOptions {
    MetricOptions {
        fluency: false,
        free_generation: false,
        seed: 0,
    }
}

/// A SERAC edit of the first two ZsRE dev records, made with the classifier (and
/// counterfactual model) trained into `dir`, with the metrics before and after it.
struct Edited {
    requests: Vec<EditRequest>,
    editor: Editor,
    pre: Vec<Metrics>,
    post: Vec<Metrics>,
    edit: Edit,
}

fn edit_two_dev_records(dir: &Path) -> Edited {
    let source = HparamsSource::read(&dir.join("hparams.yaml")).unwrap();
    let model = smollm2();
    let serac = Registry::builtin()
        .load_source("serac", Some(source), model)
        .unwrap();
    // The hparams.yaml that `kedit train` writes holds only keys SERAC reads.
    assert!(serac.warnings.is_empty(), "{:?}", serac.warnings);
    let requests = zsre_dev(2);
    let refs: Vec<&EditRequest> = requests.iter().collect();
    let mut editor = Editor::new(model.clone());
    let pre = evaluate(&editor, &refs, None, &options()).unwrap();
    let pre_refs: Vec<&Metrics> = pre.iter().collect();
    let edit = serac
        .method
        .compute(&editor, &requests, &EditContext::default())
        .unwrap()
        .edit;
    editor.apply(&edit).unwrap();
    let post = evaluate(&editor, &refs, Some(&pre_refs), &options()).unwrap();
    Edited {
        requests,
        editor,
        pre,
        post,
        edit,
    }
}

/// Saved to `path`, reverted and reloaded, the edit gives the metrics it gave; reverted
/// again, the editor is pristine.
fn assert_reloads_identically(
    editor: &mut Editor,
    edit: &Edit,
    path: &Path,
    refs: &[&EditRequest],
    pre_refs: &[&Metrics],
    post: &[Metrics],
) {
    edit.save(path).unwrap();
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
    editor.apply(&Edit::load(path).unwrap()).unwrap();
    let again = evaluate(editor, refs, Some(pre_refs), &options()).unwrap();
    assert_eq!(
        post,
        again.as_slice(),
        "metrics after reloading the saved memory"
    );
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
}

#[test]
fn a_serac_edit_answers_in_scope_and_leaves_the_rest_bit_identical() {
    answers_in_scope_leaves_the_rest_and_reloads(trained(), "edit");
}

#[test]
fn a_serac_edit_routed_by_a_cross_encoder_does_the_same() {
    answers_in_scope_leaves_the_rest_and_reloads(cross_trained(), "cross-edit");
}

fn answers_in_scope_leaves_the_rest_and_reloads(classifier_dir: &Path, name: &str) {
    let Edited {
        requests,
        mut editor,
        pre,
        post,
        edit,
    } = edit_two_dev_records(classifier_dir);
    let model = smollm2();
    let refs: Vec<&EditRequest> = requests.iter().collect();
    let pre_refs: Vec<&Metrics> = pre.iter().collect();
    assert_eq!(edit.kind(), "memory");
    for (b, a) in pre.iter().zip(&post) {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(
            mean(&a.rewrite_acc) > mean(&b.rewrite_acc),
            "reliability {:?} → {:?}",
            b.rewrite_acc,
            a.rewrite_acc
        );
    }
    // An unrelated input is not routed: the plain model answers it, bit for bit.
    let tok = model.tokenizer().unwrap();
    let far = tok
        .encode("The recipe for a classic French omelette calls for")
        .unwrap();
    let plain = model.next_logits(std::slice::from_ref(&far)).unwrap();
    let edited = editor.next_logits(std::slice::from_ref(&far)).unwrap();
    assert_eq!(common::max_abs_diff(&plain, &edited), 0.0);

    let path = tempdir(name).join("serac.safetensors");
    assert_reloads_identically(&mut editor, &edit, &path, &refs, &pre_refs, &post);
}

#[test]
fn broken_checkpoints_and_training_files_are_clear_errors() {
    let dir = tempdir("broken");
    // A truncated checkpoint.
    let bytes = std::fs::read(trained().join("classifier.safetensors")).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = ScopeClassifier::load(&cut, &encoder())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cut.safetensors") && err.contains("truncated"),
        "{err}"
    );
    // A classifier fine-tuned from another encoder.
    let base = encoder();
    let mut other = base.weights.clone();
    other.layers[0].query.b = (other.layers[0].query.b.clone() + 0.01).unwrap();
    let foreign = ScopeClassifier::new(base.with_weights(other).unwrap(), 20.0, -12.0);
    let path = dir.join("foreign.safetensors");
    foreign.save(&path, Default::default()).unwrap();
    let err = ScopeClassifier::load(&path, &base).unwrap_err().to_string();
    assert!(
        err.contains("foreign.safetensors") && err.contains("encoder"),
        "{err}"
    );
    // A training file with no record that has a paraphrase.
    let mut bare = records("counterfact/counterfact-train.json", 8);
    for r in &mut bare {
        r.rephrase.clear();
    }
    let job = TrainJob {
        method: "serac",
        train: bare,
        val: records("counterfact/counterfact-val.json", 4),
        hparams: Some(hparams(10)),
        out_dir: &dir.join("bare"),
        seed: 0,
    };
    let err = train(&Registry::builtin(), smollm2(), job, &mut Silent)
        .expect_err("no usable pairs")
        .to_string();
    assert!(err.contains("paraphrase"), "{err}");
    // An embedding classifier's run resumed as a cross-encoder's.
    let switched = dir.join("switched");
    std::fs::create_dir_all(&switched).unwrap();
    for f in ["last.safetensors", "train-state.json"] {
        std::fs::copy(trained().join(f), switched.join(f)).unwrap();
    }
    let job = TrainJob {
        method: "serac",
        train: records("counterfact/counterfact-train.json", 8),
        val: records("counterfact/counterfact-val.json", 4),
        hparams: Some(cross_hparams(30)),
        out_dir: &switched,
        seed: 3,
    };
    let err = train(&Registry::builtin(), smollm2(), job, &mut Silent)
        .expect_err("a run of another kind")
        .to_string();
    assert!(
        err.contains("last.safetensors") && err.contains("cross_attend"),
        "{err}"
    );
    // SERAC without a trained classifier names the key and how to get one.
    let err = load_error(hparams(10), "no archive");
    assert!(
        err.contains("archive") && err.contains("kedit train"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Why SERAC refuses to load from `source` (which must be refused: `why_refused`).
fn load_error(source: HparamsSource, why_refused: &str) -> String {
    Registry::builtin()
        .load_source("serac", Some(source), smollm2())
        .err()
        .expect(why_refused)
        .to_string()
}

/// A classifier (10 steps) and a counterfactual model (the top two blocks, 12 steps),
/// trained once per test binary.
fn trained_with_counterfactual() -> &'static (PathBuf, serde_json::Value) {
    static DIR: OnceLock<(PathBuf, serde_json::Value)> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempdir("counterfactual");
        let mut hp = hparams(10);
        for (k, v) in [
            ("cf_layers", serde_json::json!(2)),
            ("cf_max_iters", serde_json::json!(12)),
            ("cf_val_every", serde_json::json!(4)),
            ("cf_batch_size", serde_json::json!(8)),
            ("val_records", serde_json::json!(16)),
        ] {
            hp.set(k, v);
        }
        let job = TrainJob {
            method: "serac",
            train: records("counterfact/counterfact-train.json", 96),
            val: records("counterfact/counterfact-val.json", 16),
            hparams: Some(hp),
            out_dir: &dir,
            seed: 3,
        };
        let summary = train(&Registry::builtin(), smollm2(), job, &mut Silent)
            .unwrap()
            .summary;
        (dir, summary)
    })
}

#[test]
fn the_counterfactual_model_learns_to_answer_behind_the_edit() {
    let (dir, summary) = trained_with_counterfactual();
    let cf = &summary["counterfactual"];
    let first = cf["best"]["step"].as_u64().unwrap();
    eprintln!("{cf:#}");
    assert_eq!(cf["steps"], 12);
    // Validation NLL of the edits' targets behind their contexts falls with training.
    let history: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("counterfactual-state.json")).unwrap(),
    )
    .unwrap();
    let nll: Vec<f64> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["val_nll"].as_f64().unwrap())
        .collect();
    assert_eq!(nll.len(), 3);
    assert!(nll[2] < nll[0], "validation NLL {nll:?}");
    assert!(first >= 4);
    let yaml = std::fs::read_to_string(dir.join("hparams.yaml")).unwrap();
    assert!(
        yaml.contains("counterfactual: counterfactual.safetensors"),
        "{yaml}"
    );
    assert!(dir.join("counterfactual-curve.png").exists());
}

#[test]
fn routed_inputs_run_through_the_counterfactual_model_and_the_rest_stay_bit_identical() {
    let (dir, _) = trained_with_counterfactual();
    let Edited {
        requests,
        mut editor,
        pre,
        post,
        edit,
    } = edit_two_dev_records(dir);
    let model = smollm2();
    let refs: Vec<&EditRequest> = requests.iter().collect();
    let pre_refs: Vec<&Metrics> = pre.iter().collect();

    // The edit's own prompt is routed: it is answered by the model with the counterfactual
    // deltas added, reading the edit's context in front of it.
    let tok = model.tokenizer().unwrap();
    let Edit::Memory(memory) = &edit else {
        panic!("SERAC's edit is a memory")
    };
    let record = &memory.records[0];
    let prompt = tok.encode(&requests[0].prompt).unwrap();
    let through_editor = editor.next_logits(std::slice::from_ref(&prompt)).unwrap();
    let mut finetuned = Editor::new(model.clone());
    finetuned
        .apply(&Edit::load(&dir.join("counterfactual.safetensors")).unwrap())
        .unwrap();
    let behind = tok
        .encode(&format!("{}{}", record.context, requests[0].prompt))
        .unwrap();
    let by_hand = finetuned
        .next_logits(std::slice::from_ref(&behind))
        .unwrap();
    let diff = common::max_abs_diff(&through_editor, &by_hand);
    assert!(diff < 1e-4, "routed prompt: {diff}");
    // ... and not by the base model reading the same context.
    let base = model.next_logits(std::slice::from_ref(&behind)).unwrap();
    assert!(common::max_abs_diff(&through_editor, &base) > 1e-3);
    // An unrelated input is not routed: the plain model answers it, bit for bit.
    let far = tok
        .encode("The recipe for a classic French omelette calls for")
        .unwrap();
    let plain = model.next_logits(std::slice::from_ref(&far)).unwrap();
    let edited = editor.next_logits(std::slice::from_ref(&far)).unwrap();
    assert_eq!(common::max_abs_diff(&plain, &edited), 0.0);
    // Routed and unrouted rows in one call come back in their order.
    let both = editor.next_logits(&[far.clone(), prompt.clone()]).unwrap();
    assert_eq!(
        common::max_abs_diff(&both.get(0).unwrap().unsqueeze(0).unwrap(), &plain),
        0.0
    );
    let routed_row = both.get(1).unwrap().unsqueeze(0).unwrap();
    assert!(common::max_abs_diff(&routed_row, &through_editor) < 1e-4);

    // A weight edit applied after the memory: routed inputs see it too (the counterfactual
    // model is the system's weights plus its deltas), and a restored checkpoint takes it back.
    let before_weights = editor.checkpoint();
    let id = kedit::ParamId::mlp_out(29);
    let w = model.params.require(id).unwrap();
    let nudge = (w.ones_like().unwrap() * 1e-3).unwrap();
    let mut weight_edit = kedit::edit::WeightEdit::new();
    weight_edit.push(id, kedit::edit::Delta::Dense(nudge));
    let weight_edit = Edit::Weights(weight_edit);
    editor.apply(&weight_edit).unwrap();
    finetuned.apply(&weight_edit).unwrap();
    let after_editor = editor.next_logits(std::slice::from_ref(&prompt)).unwrap();
    let after_by_hand = finetuned
        .next_logits(std::slice::from_ref(&behind))
        .unwrap();
    assert!(common::max_abs_diff(&after_editor, &after_by_hand) < 1e-4);
    assert!(common::max_abs_diff(&after_editor, &through_editor) > 1e-4);
    editor.restore(&before_weights);
    let restored = editor.next_logits(std::slice::from_ref(&prompt)).unwrap();
    assert_eq!(common::max_abs_diff(&restored, &through_editor), 0.0);

    // Saved and reloaded, the memory gives the same metrics; reverted, nothing is left.
    let scratch = tempdir("cf-edit");
    let path = scratch.join("serac.safetensors");
    assert_reloads_identically(&mut editor, &edit, &path, &refs, &pre_refs, &post);

    // A counterfactual file replaced since the memory was made: refused, system untouched.
    let copy = scratch.join("cf");
    std::fs::create_dir_all(&copy).unwrap();
    for f in [
        "hparams.yaml",
        "classifier.safetensors",
        "counterfactual.safetensors",
    ] {
        std::fs::copy(dir.join(f), copy.join(f)).unwrap();
    }
    let serac_copy = Registry::builtin()
        .load_source(
            "serac",
            Some(HparamsSource::read(&copy.join("hparams.yaml")).unwrap()),
            model,
        )
        .unwrap();
    let memory_edit = serac_copy
        .method
        .compute(&editor, &requests, &EditContext::default())
        .unwrap()
        .edit;
    let bytes = std::fs::read(copy.join("counterfactual.safetensors")).unwrap();
    std::fs::write(
        copy.join("counterfactual.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    // (An editor that has loaded the file it names keeps it; a fresh one reads the file.)
    let mut fresh = Editor::new(model.clone());
    let err = fresh.apply(&memory_edit).unwrap_err().to_string();
    assert!(
        err.contains("counterfactual.safetensors") && err.contains("sha256"),
        "{err}"
    );
    assert!(fresh.is_pristine().unwrap());
    // Loading SERAC over a truncated file names it.
    let err = load_error(
        HparamsSource::read(&copy.join("hparams.yaml")).unwrap(),
        "a truncated counterfactual model",
    );
    assert!(err.contains("counterfactual.safetensors"), "{err}");
    // A counterfactual model trained on another model (its provenance says so).
    let Edit::Weights(mut w) = Edit::load(&dir.join("counterfactual.safetensors")).unwrap() else {
        panic!("a weight edit")
    };
    w.meta
        .insert("model_fingerprint".into(), "0123456789abcdef".into());
    Edit::Weights(w)
        .save(&copy.join("counterfactual.safetensors"))
        .unwrap();
    let err = load_error(
        HparamsSource::read(&copy.join("hparams.yaml")).unwrap(),
        "another model's counterfactual model",
    );
    assert!(
        err.contains("counterfactual.safetensors") && err.contains("another model"),
        "{err}"
    );
    std::fs::remove_dir_all(&scratch).unwrap();
}
