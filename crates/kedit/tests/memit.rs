//! MEMIT and EMMET on the real SmolLM2: a batch of facts in one call, spread over five
//! layers.

use crate::common;

use std::path::PathBuf;

use common::{smollm2, top1};
use kedit::cache::Cache;
use kedit::edit::Edit;
use kedit::editor::Editor;
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

fn scratch(name: &str) -> PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-memit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn memit_writes_a_batch_of_facts_in_one_call_and_reverts() {
    batch_of_two("memit", "MEMIT");
}

#[test]
fn emmet_writes_a_batch_of_facts_in_one_call_and_reverts() {
    batch_of_two("emmet", "EMMET");
}

#[test]
fn pmet_writes_a_batch_of_facts_in_one_call_and_reverts() {
    batch_of_two("pmet", "PMET");
}

fn batch_of_two(name: &str, dir_name: &str) {
    let dir = scratch(name);
    let model = smollm2().clone();
    let memit = methods::load(
        name,
        Some(&common::hparams_with_small_stats(dir_name, &dir, &[])),
        &model,
    )
    .unwrap();
    let ctx = EditContext {
        cache: common::shared_cache(),
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
            "louvre",
            "The Louvre museum is located in the city of",
            "The Louvre museum",
            "Tokyo",
        ),
    ];
    let mut editor = Editor::new(model);
    common::prepare_shared(memit.method.as_ref(), editor.model(), &ctx);
    let computed = memit.method.compute(&editor, &requests, &ctx).unwrap();
    let Edit::Weights(w) = &computed.edit else {
        panic!("MEMIT makes a weight edit")
    };
    let layers = memit.method.hparams_json()["layers"]
        .as_array()
        .unwrap()
        .len();
    assert!(layers >= 2);
    assert_eq!(w.deltas.len(), layers, "one delta per edited layer");
    editor.apply(&computed.edit).unwrap();
    assert_eq!(
        top1(&editor, "The Eiffel Tower is located in the city of"),
        " Rome"
    );
    assert_eq!(
        top1(&editor, "The Louvre museum is located in the city of"),
        " Tokyo"
    );
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn memit_refuses_bad_settings_at_load_naming_the_key() {
    let dir = scratch("bad");
    let model = smollm2().clone();
    for (key, value, says) in [
        (
            "mom2_update_weight",
            serde_json::json!(-1),
            "mom2_update_weight",
        ),
        (
            "mom2_adjustment",
            serde_json::json!(false),
            "mom2_adjustment",
        ),
        (
            "layer_selection",
            serde_json::json!("random"),
            "layer_selection",
        ),
        ("layers", serde_json::json!([3, 40]), "layers"),
        ("emmet_lambda", serde_json::json!(-0.1), "emmet_lambda"),
    ] {
        let e = methods::load(
            "emmet",
            Some(&common::hparams_with_small_stats(
                "EMMET",
                &dir,
                &[(key, value)],
            )),
            &model,
        )
        .err()
        .unwrap_or_else(|| panic!("{key} accepted"))
        .to_string();
        assert!(e.contains(says), "{key}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_statistics_source_that_cannot_be_read_is_refused_before_any_edit() {
    let dir = scratch("extra");
    let model = smollm2();
    let ctx = EditContext {
        cache: Cache::new(dir.join("cache")),
        ..Default::default()
    };
    let prepare = |extra: serde_json::Value, main: Option<&str>| {
        let mut settings = vec![("mom2_extra", extra)];
        if let Some(m) = main {
            settings.push(("mom2_dataset", serde_json::json!(m)));
        }
        let hp = common::hparams_with_small_stats("MEMIT", &dir, &settings);
        let memit = methods::load("memit", Some(&hp), model).unwrap();
        memit
            .method
            .prepare(model, &ctx, &mut kedit::progress::Silent)
            .unwrap_err()
            .to_string()
    };
    let nowhere = serde_json::json!([{ "dataset": "no/such/questions.json", "weight": 2 }]);
    let msg = prepare(nowhere.clone(), None);
    assert!(
        msg.contains("mom2_extra[0].dataset") && msg.contains("no/such/questions.json"),
        "{msg}"
    );
    // Cached statistics of an unknown corpus cannot be mixed: the main corpus must be a file.
    let questions = serde_json::json!([{
        "dataset": common::data("zsre/zsre_mend_train-1k.json").display().to_string(),
        "fields": ["loc", "loc_ans"], "records": [0, 4], "weight": 2
    }]);
    let msg = prepare(questions.clone(), Some("wikipedia"));
    assert!(msg.contains("mom2_extra needs the main corpus"), "{msg}");
    // Records past the end of the file: named with the file, before any pass.
    let mut past = questions;
    past[0]["records"] = serde_json::json!([990, 1200]);
    let msg = prepare(past, None);
    assert!(
        msg.contains("zsre_mend_train-1k.json") && msg.contains("1000 records"),
        "{msg}"
    );
    assert!(
        !dir.join("cache").join("stats").exists(),
        "no statistics were computed"
    );
}

/// MEMIT reads each layer's keys (and the residual z* replaces) after updating the layers
/// below, running only the blocks above the residual it kept: the same activations as a
/// forward from the embeddings of the model as edited so far.
#[test]
fn keys_read_from_a_kept_residual_equal_a_full_forward_of_the_edited_model() {
    use kedit::methods::memit::reads::LayerReads;
    use kedit::methods::rome::key::{at_lookups, Lookup};
    use kedit::model::ParamId;
    use kedit::prompts::{lookup, FactToken};
    use kedit::runtime::Site;

    let _threads = common::own_threads();
    let mut current = smollm2().clone();
    let tok = current.tokenizer().unwrap().clone();
    let prompts: Vec<Lookup> = [
        "Which constellation is {} in?",
        "The sky is clear tonight. Which constellation is {} in?",
        "{} is a",
    ]
    .iter()
    .map(|text| {
        let (ids, index) =
            lookup(&tok, text, "the Butterfly Cluster", FactToken::SubjectLast).unwrap();
        Lookup { ids, index }
    })
    .collect();
    let mut keys = LayerReads::new(&current, &prompts).unwrap();
    let mut resid = LayerReads::new(&current, &prompts).unwrap();
    for layer in [4, 5, 7] {
        let kept = keys.read(&current, Site::MlpKey(layer), layer).unwrap();
        let top = resid.read(&current, Site::ResidPost(9), layer).unwrap();
        for (site, got) in [(Site::MlpKey(layer), kept), (Site::ResidPost(9), top)] {
            let full = at_lookups(&current, site, &prompts).unwrap();
            let diff = (&got - &full).unwrap().abs().unwrap().max_all().unwrap();
            let scale = full.abs().unwrap().max_all().unwrap();
            let (diff, scale) = (
                diff.to_scalar::<f32>().unwrap(),
                scale.to_scalar::<f32>().unwrap(),
            );
            assert!(
                diff <= 1e-5 * scale,
                "{site} after editing below {layer}: {diff} of {scale}"
            );
        }
        // An edit of this layer's output projection: what the next read must see.
        let w = current
            .params
            .require(ParamId::mlp_out(layer))
            .unwrap()
            .clone();
        current
            .params
            .replace(ParamId::mlp_out(layer), (w * 1.5).unwrap())
            .unwrap();
    }
    // Reading below the kept residual is refused, not silently wrong.
    assert!(keys.read(&current, Site::MlpKey(5), 5).is_err());
}

/// Activations at looked-up tokens are read from prompts cut after that token and sorted by
/// length (MEMIT's keys, ROME's k*, GRACE's keys): each equal to its own prompt's uncut
/// forward, and returned in the prompts' order.
#[test]
fn activations_at_lookups_of_cut_and_sorted_prompts_equal_each_prompt_alone() {
    use kedit::methods::memit::reads::LayerReads;
    use kedit::methods::rome::key::{at_lookups, Lookup};
    use kedit::prompts::{lookup, FactToken};
    use kedit::runtime::{Site, TokenBatch};

    let _threads = common::own_threads();
    let model = smollm2();
    let tok = model.tokenizer().unwrap();
    // Longest first, and text after every subject, so that both the cut and the sort act.
    let prompts: Vec<Lookup> = [
        (
            "The sky is clear tonight, and the stars are out. Which constellation is {} in?",
            "the Butterfly Cluster",
        ),
        ("{} is a", "Danielle Darrieux"),
        (
            "Which constellation is {} in, and who named it?",
            "NGC 6604",
        ),
        ("What is the native language of {}?", "Danielle Darrieux"),
    ]
    .iter()
    .map(|(text, subject)| {
        let (ids, index) = lookup(tok, text, subject, FactToken::SubjectLast).unwrap();
        Lookup { ids, index }
    })
    .collect();
    assert!(prompts.iter().all(|p| p.index + 1 < p.ids.len()));
    for site in [Site::MlpKey(6), Site::ResidPost(9)] {
        let together = at_lookups(model, site, &prompts).unwrap();
        // Two prompts a pass: the reads' batches split the sorted prompts.
        let mut reads = LayerReads::with_batch_size(model, &prompts, 2).unwrap();
        let layered = reads.read(model, site, 3).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let alone = model
                .forward(&TokenBatch::single(&p.ids))
                .capture([site])
                .run()
                .unwrap();
            let alone = alone
                .capture(site)
                .unwrap()
                .get(0)
                .unwrap()
                .get(p.index)
                .unwrap();
            let scale = alone
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            for (how, got) in [("together", &together), ("layered", &layered)] {
                let got = got.get(i).unwrap();
                let diff = (&got - &alone).unwrap().abs().unwrap().max_all().unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(
                    diff <= 1e-5 * scale,
                    "{site}, prompt {i}, {how}: {diff} of {scale}"
                );
            }
        }
    }
}
