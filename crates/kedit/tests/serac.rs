//! SERAC on real data: its scope classifier (all-MiniLM-L6-v2, fine-tuned here for a few
//! score of steps on CounterFact training records) routes better than the untrained encoder,
//! training resumes exactly after an interruption, a SERAC edit answers its own prompt with
//! the new fact and leaves inputs out of its scope bit-identical, saved edits reload with
//! identical metrics, and broken checkpoints and training files are clear errors.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{data, smollm2, zsre_dev};
use kedit::data::{load, Format, LoadOptions};
use kedit::edit::{Edit, ScopeClassifier};
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
    let job = TrainJob {
        method: "serac",
        train: records("counterfact/counterfact-train.json", 96),
        val: records("counterfact/counterfact-val.json", 32),
        hparams: Some(hparams(max_iters)),
        out_dir: dir,
        seed: 3,
    };
    train(&Registry::builtin(), smollm2(), job, &mut Silent)
        .unwrap()
        .summary
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

fn options() -> MetricOptions {
    MetricOptions {
        fluency: false,
        free_generation: false,
        seed: 0,
    }
}

#[test]
fn a_serac_edit_answers_in_scope_and_leaves_the_rest_bit_identical() {
    let source = HparamsSource::read(&trained().join("hparams.yaml")).unwrap();
    let model = smollm2();
    let serac = Registry::builtin()
        .load_source("serac", Some(source), model)
        .unwrap();
    let requests = zsre_dev(2);
    let refs: Vec<&EditRequest> = requests.iter().collect();
    let mut editor = Editor::new(model.clone());
    let pre = evaluate(&editor, &refs, None, &options()).unwrap();
    let pre_refs: Vec<&Metrics> = pre.iter().collect();
    let computed = serac
        .method
        .compute(&editor, &requests, &EditContext::default())
        .unwrap();
    assert_eq!(computed.edit.kind(), "memory");
    editor.apply(&computed.edit).unwrap();
    let post = evaluate(&editor, &refs, Some(&pre_refs), &options()).unwrap();
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

    let path = tempdir("edit").join("serac.safetensors");
    computed.edit.save(&path).unwrap();
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
    editor.apply(&Edit::load(&path).unwrap()).unwrap();
    let again = evaluate(&editor, &refs, Some(&pre_refs), &options()).unwrap();
    assert_eq!(post, again, "metrics after reloading the saved memory");
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
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
    // SERAC without a trained classifier names the key and how to get one.
    let err = Registry::builtin()
        .load_source("serac", Some(hparams(10)), smollm2())
        .err()
        .expect("no archive")
        .to_string();
    assert!(
        err.contains("archive") && err.contains("kedit train"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
