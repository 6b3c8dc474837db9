//! IKE on the real SmolLM2 with demonstrations retrieved from the real ZsRE training file:
//! the edit is a context that makes the model give the new target, reloads with identical
//! metrics and reverts to a pristine model; contexts that would overflow the model's window
//! are refused with the system untouched; bad hyper-parameters are clear errors.

use crate::common;

use common::{smollm2, zsre_dev};
use kedit::edit::Edit;
use kedit::editor::Editor;
use kedit::evaluate::{evaluate, MetricOptions, Metrics};
use kedit::methods::{EditContext, HparamsSource, Registry};
use kedit::request::EditRequest;

fn options() -> MetricOptions {
    MetricOptions {
        fluency: false,
        free_generation: false,
        seed: 0,
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn hparams(k: usize) -> HparamsSource {
    let mut src = kedit::methods::hparams::builtin(
        "IKE/smollm2-135m.yaml",
        include_str!("../../../hparams/IKE/smollm2-135m.yaml"),
    );
    src.set("k", serde_json::json!(k));
    // 300 of the pool's 1000 records: 900 demonstrations embed in seconds, not a minute.
    src.set("pool_limit", serde_json::json!(300));
    src
}

#[test]
fn an_ike_context_teaches_the_new_fact_reloads_and_reverts() {
    let model = smollm2();
    let ike = Registry::builtin()
        .load_source("ike", Some(hparams(8)), model)
        .unwrap();
    let requests = zsre_dev(2);
    let refs: Vec<&EditRequest> = requests.iter().collect();
    let mut editor = Editor::new(model.clone());
    let pre = evaluate(&editor, &refs, None, &options()).unwrap();
    let pre_refs: Vec<&Metrics> = pre.iter().collect();
    let ctx = EditContext::default();
    ike.method
        .prepare(model, &ctx, &mut kedit::progress::Silent)
        .unwrap();
    let computed = ike.method.compute(&editor, &requests[..1], &ctx).unwrap();
    let Edit::Context(c) = &computed.edit else {
        panic!("IKE returns a context edit, not {}", computed.edit.kind());
    };
    // k demonstrations, each a "New Fact … Prompt …" pair, then the request's own fact.
    assert_eq!(c.prefix.matches("New Fact: ").count(), 9, "{}", c.prefix);
    assert!(c.prefix.ends_with(&format!(
        "New Fact: {} {}\n",
        requests[0].prompt, requests[0].target_new
    )));
    assert_eq!(c.lead, "Prompt: ");

    editor.apply(&computed.edit).unwrap();
    let post = evaluate(&editor, &refs[..1], Some(&pre_refs[..1]), &options()).unwrap();
    let (before, after) = (mean(&pre[0].rewrite_acc), mean(&post[0].rewrite_acc));
    assert!(
        after >= 0.9 && after > before + 0.3,
        "reliability {before} → {after}"
    );

    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-ike-{}.safetensors", std::process::id()));
    computed.edit.save(&path).unwrap();
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
    let back = Edit::load(&path).unwrap();
    assert_eq!(
        back.fingerprint().unwrap(),
        computed.edit.fingerprint().unwrap()
    );
    editor.apply(&back).unwrap();
    let again = evaluate(&editor, &refs[..1], Some(&pre_refs[..1]), &options()).unwrap();
    assert_eq!(post, again, "metrics after reloading the saved context");
    std::fs::remove_file(&path).unwrap();
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
}

#[test]
fn contexts_that_would_overflow_the_window_are_refused_and_leave_the_system_as_it_was() {
    let model = smollm2();
    let ike = Registry::builtin()
        .load_source("ike", Some(hparams(100)), model)
        .unwrap();
    let requests = zsre_dev(8);
    let mut editor = Editor::new(model.clone());
    let ctx = EditContext::default();
    let mut refused = None;
    for r in &requests {
        match ike.method.compute(&editor, std::slice::from_ref(r), &ctx) {
            Ok(c) => {
                editor.apply(&c.edit).unwrap();
            }
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let message = refused.expect("100 demonstrations per edit overflow the window within 8 edits");
    assert!(
        message.contains("tokens") && message.contains("k"),
        "{message}"
    );
    let held = editor.contexts().len();
    assert!((1..8).contains(&held), "{held} contexts held");
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
}

#[test]
fn bad_ike_hyper_parameters_are_clear_errors() {
    let model = smollm2();
    let mut no_pool = hparams(8);
    no_pool.value.as_object_mut().unwrap().remove("pool");
    let err = Registry::builtin()
        .load_source("ike", Some(no_pool), model)
        .err()
        .expect("no pool");
    assert!(err.to_string().contains("pool"), "{err}");
    let err = Registry::builtin()
        .load_source("ike", Some(hparams(0)), model)
        .err()
        .expect("k = 0");
    assert!(err.to_string().contains('k'), "{err}");
    let mut empty = hparams(8);
    empty.set("pool_limit", serde_json::json!(0));
    let err = Registry::builtin()
        .load_source("ike", Some(empty), model)
        .err()
        .expect("an empty pool");
    assert!(err.to_string().contains("pool_limit"), "{err}");
    let mut foreign = hparams(8);
    foreign.set(
        "sentence_model_name",
        serde_json::json!("/nonexistent/encoder"),
    );
    let err = Registry::builtin()
        .load_source("ike", Some(foreign), model)
        .err()
        .expect("a missing encoder");
    assert!(err.to_string().contains("/nonexistent/encoder"), "{err}");
}
