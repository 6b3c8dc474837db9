//! Hostile hyper-parameters and requests: every bad value is refused when the file is
//! loaded (naming the file and the key) or when the request is checked, before any work; an
//! edit that changes nothing is refused, not reported as a success.

use crate::common;

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Tensor};
use common::{smollm2, workspace};
use kedit::edit::{ContextEdit, Delta, Edit, MemoryEdit, MemoryRecord, Router, WeightEdit};
use kedit::editor::Editor;
use kedit::methods::{self, EditContext, HparamsSource, LoadedMethod, Registry};
use kedit::request::EditRequest;
use kedit::ParamId;

fn shipped(dir: &str) -> String {
    std::fs::read_to_string(workspace().join(format!("hparams/{dir}/smollm2-135m.yaml"))).unwrap()
}

/// `text` with the line of `key` replaced by `key: value` (appended when absent).
fn with(text: &str, key: &str, value: &str) -> String {
    let prefix = format!("{key}:");
    let mut found = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&prefix) {
                found = true;
                format!("{key}: {value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.push(format!("{key}: {value}"));
    }
    out.join("\n") + "\n"
}

fn load(method: &str, origin: &str, text: &str) -> kedit::Result<LoadedMethod> {
    let source = HparamsSource::parse(Path::new(origin), text)?;
    methods::load_source(method, Some(source), smollm2())
}

/// Loads `text` as `origin`; the error must name the file and the key.
fn refused(method: &str, origin: &str, text: &str, key: &str) -> String {
    match load(method, origin, text) {
        Ok(_) => panic!("{method}: `{key}` was accepted:\n{text}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(origin),
                "{key}: the error names no file: {msg}"
            );
            assert!(
                msg.contains(&format!("`{key}")),
                "{key}: the error names no key: {msg}"
            );
            msg
        }
    }
}

#[test]
fn ft_hyper_parameters_out_of_range_are_refused_at_load_naming_file_and_key() {
    let base = shipped("FT");
    let origin = "hparams/FT/hostile.yaml";
    let t = Instant::now();
    for (key, value) in [
        ("lr", "0"),
        ("lr", "-1"),
        ("lr", ".nan"),
        ("lr", "\"nan\""),
        ("lr", ".inf"),
        ("norm_constraint", ".nan"),
        ("norm_constraint", "0"),
        ("norm_constraint", "-1"),
        (
            "rewrite_module_tmp",
            "\"model.layers.5.mlp.down_proj.weight\"",
        ),
        ("layers", "[30]"),
        ("layers", "[]"),
        ("layers", "[21, 21]"),
        ("num_steps", "0"),
        ("num_steps", "1000000"),
        ("num_steps", "-3"),
        ("batch_size", "0"),
        ("weight_decay", "-1"),
        ("kl_factor", "-1"),
        ("early_stop_loss", "-1"),
        ("early_stop_loss", "1000"),
        ("objective_optimization", "\"everything\""),
    ] {
        for method in ["ft-l", "ft-m"] {
            let msg = refused(method, origin, &with(&base, key, value), key);
            println!("{key}: {value} -> {msg}");
        }
    }
    let msg = refused("ft-m", origin, &with(&base, "lr", "-1"), "lr");
    assert!(msg.contains("> 0") && msg.contains("-1"), "{msg}");
    // All of it is found at load: no edit is computed.
    assert!(t.elapsed().as_secs_f64() < 30.0);
    // EasyEdit's `false` still means "no constraint".
    let off = load("ft-m", origin, &with(&base, "norm_constraint", "false")).unwrap();
    assert!(off.method.hparams_json()["norm_constraint"].is_null());
}

#[test]
fn rome_hyper_parameters_out_of_range_are_refused_at_load_naming_file_and_key() {
    let base = shipped("ROME");
    let origin = "hparams/ROME/hostile.yaml";
    for (key, value) in [
        ("v_lr", "0"),
        ("v_lr", "-0.5"),
        ("v_lr", ".nan"),
        ("clamp_norm_factor", "0"),
        ("clamp_norm_factor", "-4"),
        ("kl_factor", "-1"),
        ("kl_factor", ".nan"),
        ("v_weight_decay", "-1"),
        ("v_num_grad_steps", "0"),
        ("v_num_grad_steps", "1000000"),
        ("context_template_length_params", "[[100000, 100000]]"),
        ("context_template_length_params", "[[10, 100000]]"),
        ("context_template_length_params", "[[100000, 5]]"),
        ("context_template_length_params", "[[0, 5]]"),
        ("layers", "[30]"),
        ("layers", "[]"),
        ("layers", "[5, 5]"),
        ("rewrite_module_tmp", "\"model.layers.5.mlp.down_proj\""),
        ("mom2_n_samples", "0"),
        ("mom2_dtype", "\"float8\""),
        ("v_early_stop_loss", "-1"),
        ("v_early_stop_nll", "-1"),
        ("v_early_stop_nll", ".nan"),
        ("fact_token", "\"subject_middle\""),
        ("kl_at", "\"nowhere\""),
        ("mom2_extra", "[{dataset: \"q.jsonl\", weight: 0}]"),
        ("mom2_extra", "[{dataset: \"q.jsonl\", weight: -2}]"),
        ("mom2_extra", "[{dataset: \"q.jsonl\", weight: 1e9}]"),
        ("mom2_extra", "[{dataset: \"\", weight: 1}]"),
        (
            "mom2_extra",
            "[{dataset: \"q.json\", fields: [loc], weight: 1}]",
        ),
        (
            "mom2_extra",
            "[{dataset: \"q.json\", records: [0, 9], weight: 1}]",
        ),
        (
            "mom2_extra",
            "[{dataset: \"q.json\", fields: [loc], records: [9, 9], weight: 1}]",
        ),
        ("v_wordings", "{dataset: \"no/such.json\", count: 3}"),
        (
            "v_wordings",
            "{dataset: \"../shared/data/zsre/zsre_mend_train-1k.json\", count: 0}",
        ),
        (
            "v_wordings",
            "{dataset: \"../shared/data/zsre/zsre_mend_train-1k.json\", records: [0, 5000], count: 3}",
        ),
        (
            "v_wordings",
            "{dataset: \"../shared/data/zsre/zsre_mend_train-1k.json\", count: 3, extra: 1}",
        ),
    ] {
        for method in ["rome", "r-rome"] {
            let msg = refused(method, origin, &with(&base, key, value), key);
            println!("{key}: {value} -> {msg}");
        }
    }
    let msg = refused(
        "rome",
        origin,
        &with(
            &base,
            "context_template_length_params",
            "[[100000, 100000]]",
        ),
        "context_template_length_params",
    );
    assert!(msg.contains("64"), "the bound is stated: {msg}");
}

#[test]
fn a_duplicate_key_is_refused_naming_the_file_and_the_key() {
    let yaml = shipped("FT") + "lr: 1e-3\n";
    let msg = refused("ft-m", "hparams/FT/twice.yaml", &yaml, "lr");
    assert!(msg.contains("twice"), "{msg}");
    let json = r#"{"layers": [21], "num_steps": 3, "lr": 5e-4, "lr": 0.1,
        "rewrite_module_tmp": "model.layers.{}.mlp.down_proj.weight",
        "objective_optimization": "target_new"}"#;
    refused("ft-m", "hparams/FT/twice.json", json, "lr");
    let rome = shipped("ROME") + "v_lr: 0.5\n";
    refused("rome", "hparams/ROME/twice.yaml", &rome, "v_lr");
}

/// EasyEdit's `hparams/ROME/llama-7b.yaml`, verbatim (its layer 5 exists in SmolLM2).
const EASYEDIT_ROME_LLAMA: &str = r#"alg_name: "ROME"
model_name: "./hugging_cache/llama-2-7b"
stats_dir: "./data/stats"
device: 1
layers: [5]
fact_token: "subject_last"
v_num_grad_steps: 25
v_lr: 5e-1
v_loss_layer: 31
v_weight_decay: 1e-3
clamp_norm_factor: 4
kl_factor: 0.0625
mom2_adjustment: false
context_template_length_params: [[5, 10], [10, 10]]
rewrite_module_tmp: "model.layers.{}.mlp.down_proj"
layer_module_tmp: "model.layers.{}"
mlp_module_tmp: "model.layers.{}.mlp"
attn_module_tmp: "model.layers.{}.self_attn"
ln_f_module: "model.norm"
lm_head_module: "lm_head"
mom2_dataset: "wikipedia"
mom2_n_samples: 100000
mom2_dtype: "float32"
"#;

#[test]
fn every_shipped_hparams_file_and_easyedit_originals_load() {
    let registry = Registry::builtin();
    for spec in registry.methods() {
        for file in spec.shipped {
            let path = workspace().join("hparams").join(file.path);
            let result = registry.load(spec.name, Some(&path), smollm2());
            if spec
                .needs
                .contains(&kedit::methods::Need::TrainedCheckpoint)
            {
                // Settings for `kedit train`: without a trained checkpoint the method says
                // how to make one.
                let err = result.err().expect("no checkpoint named").to_string();
                assert!(
                    err.contains("archive") && err.contains("kedit train"),
                    "{}: {err}",
                    spec.name
                );
                continue;
            }
            let loaded = result.unwrap_or_else(|e| panic!("{}: {}: {e}", spec.name, file.path));
            assert!(
                loaded.warnings.is_empty(),
                "{}: {:?}",
                spec.name,
                loaded.warnings
            );
        }
    }
    for method in ["rome", "r-rome"] {
        load(method, "llama-7b.yaml", EASYEDIT_ROME_LLAMA).unwrap();
    }
    // The variant for free generation on ZsRE: the shipped file and two keys of z*.
    let path = workspace().join("hparams/MEMIT/smollm2-135m-zsre-free-generation.yaml");
    let loaded = registry.load("memit", Some(&path), smollm2()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let hp = loaded.method.hparams_json();
    assert_eq!(hp["v_answer_end"], true);
    assert_eq!(hp["v_wordings"]["count"], 3);
}

fn request(prompt: &str, subject: &str, target: &str) -> EditRequest {
    EditRequest {
        case_id: "hostile".into(),
        prompt: prompt.into(),
        subject: subject.into(),
        target_new: target.into(),
        ..Default::default()
    }
}

/// The shipped settings made cheap (one step; ROME without key statistics), so that a
/// request that is wrongly accepted costs seconds, not minutes.
fn cheap(method: &str) -> LoadedMethod {
    let (dir, extra) = if method.starts_with("ft") {
        ("FT", "num_steps: 1\n")
    } else {
        (
            "ROME",
            "v_num_grad_steps: 1\nmom2_adjustment: false\ncontext_template_length_params: []\n",
        )
    };
    let mut text = shipped(dir);
    for line in extra.lines() {
        let (k, v) = line.split_once(": ").unwrap();
        text = with(&text, k, v);
    }
    load(method, "cheap.yaml", &text).unwrap()
}

#[test]
fn requests_beyond_the_bounds_are_refused_before_any_work() {
    let long_target = vec!["word"; 1000].join(" ");
    let long_prompt = format!("{} The Eiffel Tower is in", vec!["very"; 2000].join(" "));
    let editor = Editor::new(smollm2().clone());
    let ctx = EditContext::default();
    let eiffel = "The Eiffel Tower is located in";
    let cases = [
        (request(eiffel, "The Eiffel Tower", &long_target), "target"),
        (request(&long_prompt, "The Eiffel Tower", "Rome"), "prompt"),
        (request(eiffel, "The Eiffel Tower", ""), "target"),
        (request(eiffel, "The Eiffel Tower", "  "), "target"),
        (request("", "The Eiffel Tower", "Rome"), "prompt"),
    ];
    for method in ["ft-l", "ft-m", "rome", "r-rome"] {
        let m = cheap(method);
        for (r, what) in &cases {
            let t = Instant::now();
            let err = m
                .method
                .compute(&editor, std::slice::from_ref(r), &ctx)
                .err()
                .unwrap_or_else(|| panic!("{method}: a request with a bad {what} was edited"));
            let msg = err.to_string();
            assert!(msg.contains(what), "{method}: {msg}");
            assert!(t.elapsed().as_secs_f64() < 5.0, "{method}: {msg}");
            println!("{method}: {msg}");
        }
    }
    // A model with a short context: prompt and target must fit it.
    let mut model = smollm2().clone();
    model.config.max_positions = 8;
    let short = Editor::new(model);
    let r = request(
        "The Eiffel Tower is located in the city of",
        "The Eiffel Tower",
        "Rome",
    );
    for method in ["ft-m", "rome"] {
        let err = cheap(method)
            .method
            .compute(&short, std::slice::from_ref(&r), &ctx)
            .err()
            .unwrap_or_else(|| panic!("{method}: a request longer than the context was edited"));
        assert!(err.to_string().contains("context"), "{method}: {err}");
    }
    assert!(editor.is_pristine().unwrap());
}

#[test]
fn fine_tuning_refuses_a_subject_missing_from_the_prompt_as_rome_does() {
    let editor = Editor::new(smollm2().clone());
    let ctx = EditContext::default();
    let r = request("The Eiffel Tower is located in", "The Louvre", "Rome");
    let mut messages = Vec::new();
    for method in ["rome", "ft-l", "ft-m"] {
        let err = cheap(method)
            .method
            .compute(&editor, std::slice::from_ref(&r), &ctx)
            .err()
            .unwrap_or_else(|| panic!("{method}: a subject missing from the prompt was edited"));
        messages.push(err.to_string());
    }
    assert!(messages[0].contains("does not occur"), "{}", messages[0]);
    assert!(
        messages.iter().all(|m| m == &messages[0]),
        "one check, one message: {messages:?}"
    );
    assert!(editor.is_pristine().unwrap());
}

#[test]
fn an_edit_that_changes_no_weight_is_refused() {
    let mut editor = Editor::new(smollm2().clone());
    let id = ParamId::mlp_out(3);
    let w = editor.param(id).unwrap().clone();
    let zero = Tensor::zeros(w.dims(), DType::F32, w.device()).unwrap();
    // Too small to change any weight once added (relative to each weight: far below f32's
    // precision; zero where the weight is zero).
    let tiny = (&w * 1e-10).unwrap();
    for (what, delta) in [("zero", zero), ("vanishing", tiny)] {
        let mut edit = WeightEdit::new();
        edit.push(id, Delta::Dense(delta));
        let err = editor.apply(&Edit::from(edit)).unwrap_err();
        assert!(matches!(err, kedit::Error::EditRefused(_)), "{what}: {err}");
        assert!(
            err.to_string().contains("changes no weight"),
            "{what}: {err}"
        );
        assert!(editor.is_pristine().unwrap());
        assert!(editor.applied().is_empty());
    }
}

#[test]
fn memory_and_context_edits_that_add_nothing_are_refused() {
    let mut editor = Editor::new(smollm2().clone());
    let record = |context: &str| MemoryRecord {
        prompt: "The Eiffel Tower is located in".into(),
        target: "Rome".into(),
        context: context.into(),
    };
    let empty = [
        Edit::Memory(MemoryEdit {
            records: vec![
                record("New fact: the Eiffel Tower is in Rome.\n"),
                record(""),
            ],
            router: Router::WordOverlap { threshold: 0.5 },
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
    for edit in &empty {
        let err = editor.apply(edit).unwrap_err();
        assert!(matches!(err, kedit::Error::EditRefused(_)), "{err}");
        assert!(editor.is_pristine().unwrap(), "{}: {err}", edit.kind());
    }
}
