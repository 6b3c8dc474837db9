//! The Editor on the real SmolLM2: edits apply, revert bit-identically, and bad edits are
//! refused with the model untouched.

use crate::common;

use candle_core::{DType, Tensor};
use common::smollm2;
use kedit::edit::{Delta, Edit, WeightEdit};
use kedit::editor::{params_identical, Editor};
use kedit::rng::Rng;
use kedit::{ParamId, TokenBatch};

fn last_logits(e: &Editor, ids: &[u32]) -> Tensor {
    e.model()
        .forward(&TokenBatch::single(ids))
        .run()
        .unwrap()
        .logits
        .unwrap()
}

fn rank_one(scale: f32, seed: u64) -> Delta {
    let mut r = Rng::new(seed);
    let u: Vec<f32> = r.normal_vec(576).into_iter().map(|x| x * scale).collect();
    let v = r.normal_vec(1536);
    Delta::LowRank {
        u: Tensor::from_vec(u, (576, 1), &candle_core::Device::Cpu).unwrap(),
        v: Tensor::from_vec(v, (1536, 1), &candle_core::Device::Cpu).unwrap(),
    }
}

#[test]
fn apply_changes_outputs_and_revert_is_bit_identical() {
    let mut e = Editor::new(smollm2().clone());
    let ids = e
        .model()
        .tokenizer()
        .unwrap()
        .encode("The capital of France is")
        .unwrap();
    let before = last_logits(&e, &ids);
    let mut edit = WeightEdit::new();
    edit.push(ParamId::mlp_out(5), rank_one(0.01, 1));
    edit.push(
        ParamId::mlp_out(6),
        Delta::Dense(
            Tensor::ones((576, 1536), DType::F32, &candle_core::Device::Cpu)
                .unwrap()
                .affine(1e-3, 0.0)
                .unwrap(),
        ),
    );
    let edit = Edit::from(edit);
    let rec = e.apply(&edit).unwrap().clone();
    assert_eq!(
        rec.params,
        vec![
            "blocks.5.mlp.out_proj.weight",
            "blocks.6.mlp.out_proj.weight"
        ]
    );
    let after = last_logits(&e, &ids);
    assert!(common::max_abs_diff(&before, &after) > 1e-3);
    assert!(!e.is_pristine().unwrap());
    let cp = e.checkpoint();
    e.apply(&edit).unwrap();
    e.restore(&cp);
    assert_eq!(common::max_abs_diff(&after, &last_logits(&e, &ids)), 0.0);
    e.revert_all();
    assert!(e.is_pristine().unwrap());
    assert!(params_identical(&e.model().params, &smollm2().params).unwrap());
    assert_eq!(common::max_abs_diff(&before, &last_logits(&e, &ids)), 0.0);
}

#[test]
fn nan_exploding_and_misshapen_edits_are_refused_and_change_nothing() {
    let mut e = Editor::new(smollm2().clone());
    let good = (ParamId::mlp_out(3), rank_one(0.01, 2));
    let mut nan = Tensor::zeros((576, 1536), DType::F32, &candle_core::Device::Cpu)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    nan[7][9] = f32::NAN;
    let nan = Tensor::new(nan, &candle_core::Device::Cpu).unwrap();
    let cases: Vec<(&str, Vec<(ParamId, Delta)>)> = vec![
        (
            "NaN",
            vec![good.clone(), (ParamId::mlp_out(5), Delta::Dense(nan))],
        ),
        (
            "exploding",
            vec![good.clone(), (ParamId::mlp_out(5), rank_one(1e4, 3))],
        ),
        (
            "shape",
            vec![
                good.clone(),
                (
                    ParamId::mlp_out(5),
                    Delta::Dense(
                        Tensor::zeros((3, 3), DType::F32, &candle_core::Device::Cpu).unwrap(),
                    ),
                ),
            ],
        ),
        ("empty", vec![]),
    ];
    for (what, deltas) in cases {
        let edit = Edit::from(WeightEdit {
            deltas,
            ..Default::default()
        });
        let err = e.apply(&edit).unwrap_err();
        assert!(matches!(err, kedit::Error::EditRefused(_)), "{what}: {err}");
        assert!(e.is_pristine().unwrap(), "{what}: the model changed");
        assert!(e.applied().is_empty());
    }
}

#[test]
fn weight_edits_save_and_load_exactly() {
    let mut edit = WeightEdit::new();
    edit.push(ParamId::mlp_out(5), rank_one(0.01, 4));
    edit.push(
        ParamId::mlp_out(7),
        Delta::Dense(Tensor::ones((576, 1536), DType::F32, &candle_core::Device::Cpu).unwrap()),
    );
    edit.meta.insert("method".into(), "test".into());
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kedit-edit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("edit.safetensors");
    Edit::from(edit.clone()).save(&path).unwrap();
    let back = Edit::load(&path).unwrap().weights().unwrap().clone();
    assert_eq!(back.meta, edit.meta);
    assert_eq!(back.deltas.len(), 2);
    for ((ia, a), (ib, b)) in edit.deltas.iter().zip(&back.deltas) {
        assert_eq!(ia, ib);
        assert_eq!(
            common::max_abs_diff(&a.dense(DType::F32).unwrap(), &b.dense(DType::F32).unwrap()),
            0.0
        );
    }
    assert!(Edit::load(&dir.join("missing.safetensors")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
