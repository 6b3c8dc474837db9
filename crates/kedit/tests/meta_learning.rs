//! MEND and KE: their trainers on a tiny random model (validation edit accuracy rises; a
//! killed run resumes to the same checkpoint), the edit a trained network makes on the
//! real SmolLM2, and the errors bad checkpoints and training files get.

use crate::common;

use std::path::{Path, PathBuf};

use common::{data, smollm2, Scratch};
use kedit::fuzz::gguf::tiny_doc;
use kedit::methods::train::{train, TrainJob, Trained};
use kedit::methods::{HparamsSource, Registry};
use kedit::progress::Silent;
use kedit::request::{EditRequest, Probe};
use kedit::rng::Rng;
use kedit::Model;

/// The tiny GGUF llama (2 layers, width 32, a 32-token letter vocabulary), loaded.
fn tiny_model(scratch: &Scratch) -> Model {
    let path = scratch.join("tiny.gguf");
    std::fs::write(&path, tiny_doc().unwrap().to_bytes()).unwrap();
    Model::load(&path).unwrap()
}

fn word(rng: &mut Rng) -> String {
    let letters: Vec<char> = "bcdefghijklmnopqrstuvwxyz".chars().collect();
    let n = 2 + (rng.next_u64() % 2) as usize;
    (0..n)
        .map(|_| letters[(rng.next_u64() % letters.len() as u64) as usize])
        .collect()
}

/// Random letter "facts": a three-word prompt, a one-word target, the prompt with a full
/// stop as its rephrase, and an unrelated prompt and answer for locality.
fn letter_facts(n: usize, seed: u64) -> Vec<EditRequest> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let prompt = format!("{} {} {}", word(&mut rng), word(&mut rng), word(&mut rng));
            let loc = format!("{} {}", word(&mut rng), word(&mut rng));
            EditRequest {
                case_id: i.to_string(),
                rephrase: vec![format!("{prompt}.")],
                subject: prompt.split(' ').next().unwrap().to_string(),
                target_new: word(&mut rng),
                locality: [("loc".to_string(), vec![Probe::new(loc, word(&mut rng))])]
                    .into_iter()
                    .collect(),
                prompt,
                ..Default::default()
            }
        })
        .collect()
}

const TINY_MEND: &str = "
alg_name: MEND
inner_params: [model.layers.1.mlp.down_proj.weight]
edit_lr: 1.0e-2
lr: 1.0e-3
lr_lr: 1.0e-2
rank: 16
n_hidden: 1
cedit: 1.0
cloc: 1.0
accumulate_bs: 4
max_iters: 40
val_interval: 10
val_steps: 12
early_stop_patience: 1000
";

const TINY_KE: &str = "
alg_name: KE
inner_params: [model.layers.1.mlp.down_proj.weight]
edit_lr: 30.0
lr: 1.0e-2
lr_lr: 0.1
hidden_dim: 16
cedit: 1.0
cloc: 1.0
kl_margin: 0.05
constraint_lr: 0.5
accumulate_bs: 4
max_iters: 40
val_interval: 10
val_steps: 12
early_stop_patience: 1000
";

fn hparams(text: &str, overrides: &[(&str, serde_json::Value)]) -> HparamsSource {
    let mut h = HparamsSource::parse(Path::new("test.yaml"), text).unwrap();
    for (k, v) in overrides {
        h.set(k, v.clone());
    }
    h
}

fn run(model: &Model, method: &str, h: HparamsSource, out: &Path) -> kedit::Result<Trained> {
    train(
        &Registry::builtin(),
        model,
        TrainJob {
            method,
            train: letter_facts(64, 1),
            val: letter_facts(12, 2),
            hparams: Some(h),
            out_dir: out,
            seed: 5,
        },
        &mut Silent,
    )
}

fn edit_accuracy(v: &serde_json::Value) -> f64 {
    (v["reliability"].as_f64().unwrap() + v["generalization"].as_f64().unwrap()) / 2.0
}

fn assert_learns(method: &str, text: &str) {
    let scratch = Scratch::new(&format!("meta-learns-{method}"));
    let model = tiny_model(&scratch);
    let out = scratch.join("run");
    let trained = run(&model, method, hparams(text, &[]), &out).unwrap();
    let history = trained.summary["history"].as_array().unwrap();
    let start = edit_accuracy(&history[0]);
    let best = edit_accuracy(&trained.summary["best"]);
    assert!(
        best >= start + 0.3,
        "{method}: validation edit accuracy {start:.3} at step 0, best {best:.3}: {history:?}"
    );
    assert!(out.join("curve.png").exists());
    // The hparams.yaml training wrote edits with the checkpoint.
    let loaded = Registry::builtin()
        .load(method, Some(&out.join("hparams.yaml")), &model)
        .unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn mend_training_raises_validation_edit_accuracy_on_a_tiny_model() {
    assert_learns("mend", TINY_MEND);
}

#[test]
fn ke_training_raises_validation_edit_accuracy_on_a_tiny_model() {
    assert_learns("ke", TINY_KE);
}

/// A run stopped after its step-10 checkpoint and run again ends with the checkpoint an
/// uninterrupted run writes, byte for byte.
#[test]
fn a_resumed_run_ends_with_the_uninterrupted_runs_checkpoint() {
    let scratch = Scratch::new("meta-resume");
    let model = tiny_model(&scratch);
    for (method, text) in [("mend", TINY_MEND), ("ke", TINY_KE)] {
        let whole = scratch.join(&format!("{method}-whole"));
        let parts = scratch.join(&format!("{method}-parts"));
        let short = [("max_iters", serde_json::json!(20))];
        run(&model, method, hparams(text, &short), &whole).unwrap();
        let cut = [("max_iters", serde_json::json!(10))];
        run(&model, method, hparams(text, &cut), &parts).unwrap();
        // Steps 10..13 done again after a kill: the state on disk is the step-10 one.
        run(&model, method, hparams(text, &short), &parts).unwrap();
        let state = |d: &PathBuf| std::fs::read_to_string(d.join("train-state.json")).unwrap();
        let (sa, sb) = (state(&whole), state(&parts));
        // Everything but the clock.
        let strip = |s: &str| -> serde_json::Value {
            let mut v: serde_json::Value = serde_json::from_str(s).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("seconds");
            o["best"].as_object_mut().unwrap().remove("seconds");
            for h in o["history"].as_array_mut().unwrap() {
                h.as_object_mut().unwrap().remove("seconds");
            }
            v
        };
        assert_eq!(
            strip(&sa),
            strip(&sb),
            "{method}: training histories differ"
        );
        let file = format!("{method}.safetensors");
        let a = std::fs::read(whole.join(&file)).unwrap();
        let b = std::fs::read(parts.join(&file)).unwrap();
        assert!(a == b, "{method}: the resumed checkpoint differs");
    }
}

fn err_of<T>(r: kedit::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn contains_all(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{p}` not in: {msg}");
    }
}

#[test]
fn bad_checkpoints_and_training_files_are_refused_by_name() {
    let scratch = Scratch::new("meta-refusals");
    let model = tiny_model(&scratch);
    let out = scratch.join("run");
    run(
        &model,
        "mend",
        hparams(TINY_MEND, &[("max_iters", 10.into())]),
        &out,
    )
    .unwrap();
    let registry = Registry::builtin();
    let load = |h: HparamsSource, m: &Model| registry.load_source("mend", Some(h), m).map(|_| ());
    let trained = HparamsSource::read(&out.join("hparams.yaml")).unwrap();

    // No archive.
    let msg = err_of(load(hparams(TINY_MEND, &[]), &model));
    contains_all(&msg, &["archive", "kedit train --method mend"]);

    // Another layer set.
    let mut other_layer = trained.clone();
    other_layer.set(
        "inner_params",
        serde_json::json!(["model.layers.0.mlp.down_proj.weight"]),
    );
    contains_all(
        &err_of(load(other_layer, &model)),
        &["mend.safetensors", "manifest.layers", "[1]", "[0]"],
    );

    // A weight that is not an MLP output projection.
    let mut attention = trained.clone();
    attention.set(
        "inner_params",
        serde_json::json!(["model.layers.1.self_attn.q_proj.weight"]),
    );
    contains_all(
        &err_of(load(attention, &model)),
        &["inner_params", "q_proj"],
    );

    // Another model: the same architecture with one weight changed.
    let mut changed = model.clone();
    let id = kedit::model::ParamId::Block(0, kedit::model::BlockParam::OutWeight);
    let w = changed.params.require(id).unwrap().clone();
    changed.params.insert(id, (w * 1.01).unwrap());
    contains_all(
        &err_of(load(trained.clone(), &changed)),
        &["mend.safetensors", "manifest.model", "trained on model"],
    );

    // A truncated checkpoint.
    let bytes = std::fs::read(out.join("mend.safetensors")).unwrap();
    std::fs::write(out.join("mend.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    contains_all(
        &err_of(load(trained.clone(), &model)),
        &["mend.safetensors", "truncated"],
    );

    // Training records without a rephrase or a locality probe: the record and the field.
    let mut facts = letter_facts(8, 3);
    facts[5].rephrase.clear();
    let (dir_a, dir_b) = (scratch.join("a"), scratch.join("b"));
    let job = |train: Vec<EditRequest>, dir: &'static str| TrainJob {
        method: "mend",
        train,
        val: letter_facts(4, 4),
        hparams: Some(hparams(TINY_MEND, &[])),
        out_dir: if dir == "a" { &dir_a } else { &dir_b },
        seed: 0,
    };
    let msg = err_of(train(&registry, &model, job(facts, "a"), &mut Silent));
    contains_all(&msg, &["record 5", "`rephrase`"]);
    let mut facts = letter_facts(8, 3);
    facts[2].locality.clear();
    let msg = err_of(train(&registry, &model, job(facts, "b"), &mut Silent));
    contains_all(&msg, &["record 2", "`locality`"]);
}

/// The shipped settings name SmolLM2's layers; an untrained (identity) MEND editor is a
/// normalised gradient step: on the real model its edit raises the target's probability,
/// saves and reloads to the same weights, and reverts to the original bit for bit.
#[test]
fn an_identity_mend_editor_edits_smollm2_and_reverts() {
    use kedit::editor::Editor;
    use kedit::methods::mend::MendNet;
    use kedit::methods::meta::{Hypernet, MetaMethod};
    let model = smollm2();
    let layers = [27, 28, 29];
    let net = MendNet::new(&layers, 576, 1536, 64, 1, 5e-3, 0).unwrap();
    assert_eq!(net.layers(), &layers);
    let method = MetaMethod {
        name: "MEND".into(),
        net: Box::new(net),
        hparams: serde_json::Value::Null,
        max_batch: None,
    };
    let request = kedit::data::load(
        &data("zsre/zsre_mend_eval_portability_gpt4.dev.json"),
        kedit::data::Format::Zsre,
        &kedit::data::LoadOptions {
            limit: Some(1),
            ..Default::default()
        },
    )
    .unwrap()
    .requests
    .remove(0);
    let mut editor = Editor::new(model.clone());
    let before = editor.model().fingerprint().unwrap();
    // The NLL the edit's gradient is of: the teacher-forced target's.
    let text = kedit::methods::meta::Scored::teacher_forced(
        model.tokenizer().unwrap(),
        &request.prompt,
        &request.target_new,
    )
    .unwrap();
    let nll = |m: &Model| {
        kedit::methods::meta::gradient_factors(m, &text, None, &[29])
            .unwrap()
            .loss
    };
    let nll_before = nll(editor.model());
    let computed = kedit::methods::EditMethod::compute(
        &method,
        &editor,
        std::slice::from_ref(&request),
        &Default::default(),
    )
    .unwrap();
    editor.apply(&computed.edit).unwrap();
    let nll_after = nll(editor.model());
    assert!(
        nll_after < nll_before - 0.1,
        "target NLL {nll_before:.3} -> {nll_after:.3}"
    );
    editor.revert_all();
    assert_eq!(editor.model().fingerprint().unwrap(), before);
}

/// EasyEdit's MEND file for LLaMA-2-7B, its layers moved to SmolLM2's last three.
const EASYEDIT_MEND_LLAMA: &str = r#"
archive: ./results/models/MEND/llama-2-7b-ZsRE
alg_name: "MEND"
device: 1
model_name: ./hugging_cache/llama-2-7b
model_class: LlamaForCausalLM
tokenizer_class: LlamaTokenizer
tokenizer_name: ./hugging_cache/llama-2-7b
inner_params:
- model.layers.27.mlp.gate_proj.weight
- model.layers.27.mlp.up_proj.weight
- model.layers.27.mlp.down_proj.weight
- model.layers.28.mlp.down_proj.weight
- model.layers.29.mlp.down_proj.weight
alg: MEND
lr: 1e-6
edit_lr: 1e-4
lr_lr: 1e-4
lr_scale: 1.0
seed: 42
cedit: 0.1
cloc: 1.0
cbase: 1.0
dropout: 0.0
train_base: False
no_grad_layers: null
one_sided: False
n_hidden: 1
hidden_dim: null
init: id
norm: True
combine: True
x_only: False
delta_only: False
act: relu
rank: 1920
mlp_class: IDMLP
shared: True
batch_size: 1
model_save_pt: 5000
silent: False
max_iters: 100000
log_interval: 1000
eval_log_interval: 1000
final_eval: True
val_interval: 1000
early_stop_patience: 20000
early_stop_key: "loss/total_edit_val"
eval_only: True
half: False
debug: False
save: False
verbose: True
val_batch_size: 5
accumulate_bs: 10
val_steps: 500
opt: Adam
grad_clip: 100.
results_dir: ./results
"#;

#[test]
fn easyedit_mend_files_are_read_where_they_apply() {
    use kedit::methods::mend::MendHparams;
    let model = smollm2();
    let source = hparams(EASYEDIT_MEND_LLAMA, &[]);
    let (hp, unknown): (MendHparams, _) = source.deserialize().unwrap();
    // Its gate and up projections are refused by name: kedit's MEND edits down_proj.
    contains_all(
        &err_of(hp.check(&source, model)),
        &["inner_params", "gate_proj", "down_proj"],
    );
    let mut down_only = source.clone();
    down_only.set(
        "inner_params",
        serde_json::json!([
            "model.layers.27.mlp.down_proj.weight",
            "model.layers.28.mlp.down_proj.weight",
            "model.layers.29.mlp.down_proj.weight"
        ]),
    );
    let (hp, _): (MendHparams, _) = down_only.deserialize().unwrap();
    assert_eq!(hp.check(&down_only, model).unwrap(), vec![27, 28, 29]);
    assert_eq!((hp.rank, hp.accumulate_bs, hp.val_steps), (1920, 10, 500));
    // Every other key is one kedit reads or knows to be EasyEdit's plumbing.
    let warnings = kedit::methods::meta::unknown_warnings(Path::new("x.yaml"), unknown);
    assert!(warnings.is_empty(), "{warnings:?}");
    // Its archive does not exist here: the error names it.
    let msg = err_of(Registry::builtin().load_source("mend", Some(down_only), model));
    contains_all(&msg, &["results/models/MEND/llama-2-7b-ZsRE"]);
}

/// The factors are the gradient: `Σₜ δₜ kₜᵀ` equals autograd's gradient of the same loss
/// with respect to the output projection (in f64, on the tiny model), and so do its finite
/// differences at a few entries.
#[test]
fn gradient_factors_are_the_gradient_of_the_output_projection() {
    use candle_core::{DType, Var};
    use kedit::methods::meta::factors::logits_under;
    use kedit::methods::meta::{gradient_factors, Scored};
    use kedit::model::{BlockParam, ParamId};
    use kedit::runtime::WeightOverrides;
    let scratch = Scratch::new("meta-factors");
    let model = tiny_model(&scratch).to_dtype(DType::F64).unwrap();
    let text = Scored::teacher_forced(model.tokenizer().unwrap(), "bc de fg", "hij").unwrap();
    let f = gradient_factors(&model, &text, None, &[1]).unwrap();
    let from_factors = f.grads[0].t().unwrap().matmul(&f.keys[0]).unwrap();
    let id = ParamId::Block(1, BlockParam::OutWeight);
    let w = model.params.require(id).unwrap().clone();
    let loss_with = |w: &candle_core::Tensor| {
        let o: WeightOverrides = [(id, w.clone())].into_iter().collect();
        let logits = logits_under(&model, &text, None, 0, &o, false).unwrap();
        common::mean_nll(&logits, &text.targets)
    };
    let var = Var::from_tensor(&w).unwrap();
    let grads = loss_with(var.as_tensor()).backward().unwrap();
    let autograd = grads.get(var.as_tensor()).unwrap();
    let diff = (autograd - &from_factors)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = autograd
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(
        scale > 0.0 && diff <= 1e-9 * scale,
        "max diff {diff} at scale {scale}"
    );
    let g = from_factors.to_vec2::<f64>().unwrap();
    let h = 1e-5;
    for (i, j) in [(0, 0), (3, 7), (17, 30), (31, 12)] {
        let mut bump = vec![0f64; w.elem_count()];
        bump[i * w.dim(1).unwrap() + j] = h;
        let bump = candle_core::Tensor::from_vec(bump, w.dims(), w.device()).unwrap();
        let at = |s: f64| {
            loss_with(&(&w + (&bump * s).unwrap()).unwrap())
                .to_scalar::<f64>()
                .unwrap()
        };
        let fd = (at(1.0) - at(-1.0)) / (2.0 * h);
        assert!(
            (fd - g[i][j]).abs() <= 1e-6 * (1.0 + fd.abs()),
            "entry ({i}, {j}): finite differences {fd}, factors {}",
            g[i][j]
        );
    }
}
