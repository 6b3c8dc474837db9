//! AlphaEdit on the real SmolLM2: a batch of facts in one call, a second batch that keeps
//! the first one's keys in place, and the keys' life with their edits (revert, restore,
//! save and load).

use crate::common;

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use common::{smollm2, top1};
use kedit::edit::{Delta, Edit, WeightEdit};
use kedit::editor::{tensors_identical, Editor};
use kedit::methods::{self, EditContext};
use kedit::model::ParamId;
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

fn city(id: &str, subject: &str, target: &str) -> EditRequest {
    request(
        id,
        &format!("{subject} is located in the city of"),
        subject,
        target,
    )
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-alphaedit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn weights(edit: &Edit) -> &WeightEdit {
    edit.weights().expect("AlphaEdit makes a weight edit")
}

/// ‖ΔW kᵢ‖ summed over the rows of `keys`, for the delta of `param` in `edit`.
fn moved(edit: &WeightEdit, param: ParamId, keys: &Tensor) -> f64 {
    let (_, delta) = edit.deltas.iter().find(|(p, _)| *p == param).unwrap();
    let Delta::LowRank { u, v } = delta else {
        panic!("a low-rank delta")
    };
    let k = keys.to_dtype(DType::F64).unwrap();
    let out = k
        .matmul(&v.to_dtype(DType::F64).unwrap())
        .unwrap()
        .matmul(&u.to_dtype(DType::F64).unwrap().t().unwrap())
        .unwrap();
    out.sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .sqrt()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn alphaedit_keeps_earlier_edits_keys_in_place_while_they_are_applied() {
    let dir = scratch("seq");
    let model = smollm2().clone();
    let alpha = methods::load(
        "alphaedit",
        // Five context templates, not ten: z* of half the rows (this test is about keys).
        Some(&common::hparams_with_small_stats(
            "AlphaEdit",
            &dir,
            &[(
                "context_template_length_params",
                serde_json::json!([[5, 5]]),
            )],
        )),
        &model,
    )
    .unwrap();
    assert!(alpha.warnings.is_empty(), "{:?}", alpha.warnings);
    let ctx = EditContext {
        cache: common::shared_cache(),
        ..Default::default()
    };
    let first = [
        city("eiffel", "The Eiffel Tower", "Rome"),
        city("louvre", "The Louvre museum", "Tokyo"),
        city("colosseum", "The Colosseum", "Paris"),
    ];
    let second = [
        city("brandenburg", "The Brandenburg Gate", "Madrid"),
        city("bigben", "Big Ben", "Berlin"),
    ];
    let mut editor = Editor::new(model.clone());
    common::prepare_shared(alpha.method.as_ref(), editor.model(), &ctx);

    // 1. A batch of three in one call: each target becomes the top token.
    let one = alpha.method.compute(&editor, &first, &ctx).unwrap();
    let w1 = weights(&one.edit).clone();
    let layers = alpha.method.hparams_json()["layers"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(w1.deltas.len(), layers, "one delta per edited layer");
    assert_eq!(
        w1.keys.len(),
        layers,
        "the keys written at each edited layer"
    );
    for (param, k) in &w1.keys {
        assert_eq!(k.dims(), [3, model.config.d_ff], "{param}");
    }
    let lowest = alpha.method.hparams_json()["layers"][0].as_u64().unwrap();
    let rank = one
        .report
        .notes
        .iter()
        .find(|(k, _)| *k == format!("layer {lowest} null space"))
        .map(|(_, v)| v.clone())
        .expect("the null space's rank is reported");
    assert!(!rank.starts_with("0/"), "{rank}");
    editor.apply(&one.edit).unwrap();
    for r in &first {
        assert_eq!(top1(&editor, &r.prompt), format!(" {}", r.target_new));
    }
    let params: Vec<ParamId> = w1.deltas.iter().map(|(p, _)| *p).collect();
    for &p in &params {
        assert_eq!(editor.applied_keys(p).len(), 1);
    }

    // 2. A second batch, with and without the first batch's keys in C_prev (the same
    //    weights; the blind editor's copy of the first edit carries no keys).
    let mut blind = Editor::new(model.clone());
    let mut keyless = w1.clone();
    keyless.keys.clear();
    blind.apply(&Edit::from(keyless)).unwrap();
    assert!(blind.applied_keys(params[0]).is_empty());
    let two = alpha.method.compute(&editor, &second, &ctx).unwrap();
    let two_blind = alpha.method.compute(&blind, &second, &ctx).unwrap();
    let earlier = |p: ParamId| w1.keys_of(p).next().unwrap().clone();
    let (with, without): (f64, f64) = params
        .iter()
        .map(|&p| {
            (
                moved(weights(&two.edit), p, &earlier(p)),
                moved(weights(&two_blind.edit), p, &earlier(p)),
            )
        })
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    eprintln!(
        "first batch's keys moved by the second: {with:.4} with C_prev, {without:.4} without"
    );
    assert!(
        with < 0.25 * without,
        "C_prev keeps the first batch's keys: {with} vs {without}"
    );
    let before_second = editor.checkpoint();
    editor.apply(&two.edit).unwrap();
    for r in first.iter().chain(&second) {
        assert_eq!(top1(&editor, &r.prompt), format!(" {}", r.target_new));
    }
    for &p in &params {
        assert_eq!(editor.applied_keys(p).len(), 2);
    }

    // 3. The keys live and die with their edits.
    editor.restore(&before_second);
    for &p in &params {
        let keys = editor.applied_keys(p);
        assert_eq!(keys.len(), 1);
        assert!(tensors_identical(keys[0], &earlier(p)).unwrap());
    }
    editor.revert_all();
    assert!(editor.is_pristine().unwrap());
    for &p in &params {
        assert!(
            editor.applied_keys(p).is_empty(),
            "no C_prev after revert_all"
        );
    }

    // 4. Saved and loaded, the edit keeps its keys; applying it again (a resumed run)
    //    gives the same C_prev.
    let path = dir.join("first.safetensors");
    one.edit.save(&path).unwrap();
    let loaded = Edit::load(&path).unwrap();
    let wl = weights(&loaded);
    assert_eq!(wl.keys.len(), w1.keys.len());
    for ((pa, ka), (pb, kb)) in wl.keys.iter().zip(&w1.keys) {
        assert_eq!(pa, pb);
        assert!(tensors_identical(ka, kb).unwrap(), "{pa}");
    }
    editor.apply(&loaded).unwrap();
    for &p in &params {
        let keys = editor.applied_keys(p);
        assert!(tensors_identical(keys[0], &earlier(p)).unwrap());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn alphaedit_refuses_bad_settings_at_load_naming_file_and_key() {
    let dir = scratch("bad");
    let model = smollm2().clone();
    for (key, value) in [
        ("nullspace_threshold", serde_json::json!(0)),
        ("nullspace_threshold", serde_json::json!(-0.02)),
        ("nullspace_threshold", serde_json::json!("a lot")),
        ("L2", serde_json::json!(0)),
        ("L2", serde_json::json!(-10)),
        ("L2", serde_json::json!(1e300)),
    ] {
        let e = methods::load(
            "alphaedit",
            Some(&common::hparams_with_small_stats(
                "AlphaEdit",
                &dir,
                &[(key, value.clone())],
            )),
            &model,
        )
        .err()
        .unwrap_or_else(|| panic!("{key} = {value} accepted"))
        .to_string();
        assert!(
            e.contains(key) && e.contains("alphaedit.json"),
            "{key} = {value}: {e}"
        );
    }
    // EasyEdit's string form of a number ("2e-2") and its P_loc key are accepted.
    let loaded = methods::load(
        "alphaedit",
        Some(&common::hparams_with_small_stats(
            "AlphaEdit",
            &dir,
            &[
                ("nullspace_threshold", serde_json::json!("2e-2")),
                ("P_loc", serde_json::json!("./null_space_project.pt")),
            ],
        )),
        &model,
    )
    .unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let hp = loaded.method.hparams_json();
    assert_eq!(hp["nullspace_threshold"], serde_json::json!(0.02));
    assert_eq!(hp["L2"], serde_json::json!(10.0));
    let _ = std::fs::remove_dir_all(&dir);
}
