//! Mass editing inside runs on the real SmolLM2: a batch in which some requests are refused
//! still edits the rest, each refusal named on its own case; a batch refused whole leaves the
//! model untouched.

use crate::common;

use common::{smollm2, top1};
use kedit::cache::Cache;
use kedit::editor::Editor;
use kedit::evaluate::MetricOptions;
use kedit::experiment::{run, Mode, RunOptions, RunStore};
use kedit::methods::{self, EditContext};
use kedit::request::EditRequest;

fn request(id: &str, prompt: &str, subject: &str, target: &str) -> EditRequest {
    EditRequest {
        case_id: id.into(),
        prompt: prompt.into(),
        subject: subject.into(),
        target_new: target.into(),
        ..Default::default()
    }
}

/// The shipped file with small statistics, and the tests' shared cache.
fn hparams(method: &str, extra: &[(&str, serde_json::Value)]) -> (std::path::PathBuf, Cache) {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-mass-runs-{method}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = common::hparams_with_small_stats(method, &dir, extra);
    (path, common::shared_cache())
}

fn options() -> RunOptions {
    RunOptions {
        mode: Mode::Batch,
        batch_size: 4,
        metrics: MetricOptions {
            fluency: false,
            free_generation: false,
            seed: 0,
        },
        shard: None,
    }
}

#[test]
fn refused_requests_in_a_batch_are_named_and_the_rest_still_edit() {
    let model = smollm2().clone();
    let (path, cache) = hparams("MEMIT", &[]);
    let memit = methods::load("memit", Some(&path), &model).unwrap();
    let ctx = EditContext {
        cache,
        ..Default::default()
    };
    let requests = [
        request(
            "eiffel",
            "The Eiffel Tower is located in the city of",
            "The Eiffel Tower",
            "Rome",
        ),
        request(
            "absent-subject",
            "The Colosseum is located in the city of",
            "Big Ben",
            "Madrid",
        ),
        request(
            "empty-target",
            "The Louvre museum is located in the city of",
            "The Louvre museum",
            "",
        ),
        request(
            "louvre",
            "The Louvre museum is located in the city of",
            "The Louvre museum",
            "Tokyo",
        ),
    ];
    common::prepare_shared(memit.method.as_ref(), &model, &ctx);
    let mut editor = Editor::new(model);
    let mut store = RunStore::in_memory();
    run(
        &mut editor,
        memit.method.as_ref(),
        &ctx,
        &requests,
        &options(),
        &mut store,
        &mut (),
    )
    .unwrap();
    assert!(editor.is_pristine().unwrap());
    for (i, r) in store.cases.values().enumerate() {
        println!("{}: {:?}", r.case_id, r.edit.error);
        match i {
            1 => {
                let why = r.edit.error.as_deref().expect("refused");
                assert!(why.contains("Big Ben"), "{why}");
                assert!(r.post.is_none());
            }
            2 => {
                let why = r.edit.error.as_deref().expect("refused");
                assert!(why.contains("target"), "{why}");
                assert!(r.post.is_none());
            }
            _ => {
                assert!(r.edit.error.is_none(), "{:?}", r.edit.error);
                assert_eq!(
                    r.edit.batch_size, 2,
                    "the two editable requests in one call"
                );
                let post = r.post.as_ref().unwrap();
                let rel = post.rewrite_acc.iter().sum::<f64>() / post.rewrite_acc.len() as f64;
                assert!(rel > 0.99, "{}: reliability {rel}", r.case_id);
            }
        }
    }
}

/// Two copies of one request give EMMET two equal keys: with no ridge, D = KᵀC⁻¹K is
/// singular and the batch must be refused whole, the model untouched.
#[test]
fn an_ill_conditioned_batch_is_refused_whole_and_the_model_untouched() {
    let model = smollm2().clone();
    let (path, cache) = hparams("EMMET", &[("emmet_lambda", serde_json::json!(0.0))]);
    let emmet = methods::load("emmet", Some(&path), &model).unwrap();
    let ctx = EditContext {
        cache,
        ..Default::default()
    };
    let eiffel = request(
        "eiffel",
        "The Eiffel Tower is located in the city of",
        "The Eiffel Tower",
        "Rome",
    );
    let twin = EditRequest {
        case_id: "eiffel-again".into(),
        ..eiffel.clone()
    };
    common::prepare_shared(emmet.method.as_ref(), &model, &ctx);
    let mut editor = Editor::new(model);
    let before = editor.model().fingerprint().unwrap();
    let mut store = RunStore::in_memory();
    run(
        &mut editor,
        emmet.method.as_ref(),
        &ctx,
        &[eiffel, twin],
        &options(),
        &mut store,
        &mut (),
    )
    .unwrap();
    for r in store.cases.values() {
        let why = r.edit.error.as_deref().expect("the batch is refused");
        println!("{}: {why}", r.case_id);
        assert!(
            why.contains("dependent") || why.contains("non-finite"),
            "{why}"
        );
        assert!(r.post.is_none());
    }
    assert_eq!(editor.model().fingerprint().unwrap(), before);
    assert_eq!(
        top1(&editor, "The Eiffel Tower is located in the city of"),
        " Paris"
    );
}
