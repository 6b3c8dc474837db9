//! The six tiny Hugging Face models (`../shared/fixtures/tiny/<arch>`) and a tiny Gemma 3
//! (`tests/fixtures/gemma3/tiny`) against transformers:
//! every captured site, the logits, the loss and a full weight gradient, at real positions.

use crate::common;

use candle_core::{Tensor, Var};
use common::*;
use kedit::runtime::{ForwardOutput, LogitsAt, Site, WeightOverrides};
use kedit::{Model, ParamId};

/// Every comparison must hold within this absolute tolerance (fixtures README, section B).
const ATOL: f64 = 1e-5;

/// The worst |Δ| of each compared quantity, for the report.
struct Report {
    arch: &'static str,
    figures: Vec<(String, f64)>,
}

impl Report {
    fn check(&mut self, what: impl Into<String>, d: f64) {
        self.figures.push((what.into(), d));
    }

    fn print_and_assert(&self) {
        let (worst_name, worst) = self
            .figures
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        let all: Vec<String> = self
            .figures
            .iter()
            .map(|(n, d)| format!("{n} {d:.1e}"))
            .collect();
        println!(
            "{}: worst max |Δ| {worst:.2e} ({worst_name}); {}",
            self.arch,
            all.join(", ")
        );
        let failed: Vec<&String> = self
            .figures
            .iter()
            .filter(|(_, d)| d.is_nan() || *d > ATOL)
            .map(|(n, _)| n)
            .collect();
        assert!(
            failed.is_empty(),
            "{}: above {ATOL:e}: {failed:?}\n{}",
            self.arch,
            all.join("\n")
        );
    }
}

fn check_architecture(arch: &'static str) {
    check_model_dir(arch, tiny_dir(arch));
}

fn check_model_dir(arch: &'static str, dir: std::path::PathBuf) {
    let refs = load_tensors(dir.join("reference.safetensors"));
    let model = Model::load(&dir).unwrap_or_else(|e| panic!("{arch}: {e}"));
    assert!(model.tokenizer.is_none(), "{arch}: no tokenizer.json here");
    let n = model.config.n_layers;
    assert_eq!(n, 2);
    let inp = tiny_inputs(&refs);

    let w = Var::from_tensor(model.params.require(ParamId::mlp_out(1)).unwrap()).unwrap();
    let mut overrides = WeightOverrides::new();
    overrides.insert(ParamId::mlp_out(1), w.as_tensor().clone());
    let mut sites = vec![Site::Embed, Site::FinalNorm];
    for l in 0..n {
        sites.extend([
            Site::ResidPost(l),
            Site::AttnOut(l),
            Site::MlpKey(l),
            Site::MlpOut(l),
        ]);
    }
    let out: ForwardOutput = model
        .forward(&inp.batch)
        .weights(&overrides)
        .capture(sites)
        .logits(LogitsAt::All)
        .run()
        .unwrap_or_else(|e| panic!("{arch}: {e}"));

    let mut report = Report {
        arch,
        figures: Vec::new(),
    };
    let real = &inp.real;
    let cmp =
        |got: &Tensor, want: &Tensor| max_abs_diff(&at_entries(got, real), &at_entries(want, real));
    report.check("logits", cmp(out.logits().unwrap(), &refs["logits"]));
    let hidden = &refs["hidden_states"];
    for i in 0..=n {
        let site = if i == 0 {
            Site::Embed
        } else {
            Site::ResidPost(i - 1)
        };
        let want = hidden.get(i).unwrap();
        report.check(
            format!("hidden_states[{i}]"),
            cmp(out.capture(site).unwrap(), &want),
        );
    }
    report.check(
        "final_norm",
        cmp(out.capture(Site::FinalNorm).unwrap(), &refs["final_norm"]),
    );
    for l in 0..n {
        for (name, site) in [
            ("attn_out", Site::AttnOut(l)),
            ("mlp_key", Site::MlpKey(l)),
            ("mlp_out", Site::MlpOut(l)),
        ] {
            let want = &refs[&format!("{name}.layer{l}")];
            report.check(
                format!("{name}.layer{l}"),
                cmp(out.capture(site).unwrap(), want),
            );
        }
    }

    assert_eq!(inp.targets.len(), 18, "{arch}: 11 + 7 shifted targets");
    let logits = at_entries(out.logits().unwrap(), &inp.target_at);
    let loss = mean_nll(&logits, &inp.targets);
    let want_loss = refs["loss"].to_vec1::<f32>().unwrap()[0] as f64;
    let got_loss = loss.to_scalar::<f32>().unwrap() as f64;
    report.check("loss", (got_loss - want_loss).abs());

    let grads = loss.backward().unwrap();
    let gw = grads
        .get(w.as_tensor())
        .expect("gradient of the MLP output weight");
    let want = &refs["grad.mlp_down_weight.layer1"];
    // GPT-2's Conv1D stores this weight as [in, out]; ours is [out, in].
    let want = if model.config.family == kedit::model::Family::Gpt2 {
        want.t().unwrap()
    } else {
        want.clone()
    };
    assert_eq!(gw.dims(), want.dims(), "{arch}: gradient shape");
    report.check("grad.mlp_down_weight.layer1", max_abs_diff(gw, &want));
    report.print_and_assert();
}

#[test]
fn llama_matches_transformers() {
    check_architecture("llama");
}

#[test]
fn qwen2_matches_transformers() {
    check_architecture("qwen2");
}

#[test]
fn mistral_matches_transformers() {
    check_architecture("mistral");
}

#[test]
fn gpt2_matches_transformers() {
    check_architecture("gpt2");
}

#[test]
fn gptj_matches_transformers() {
    check_architecture("gptj");
}

#[test]
fn gpt_neox_matches_transformers() {
    check_architecture("gpt_neox");
}

/// A tiny random Gemma 3 of our own (`tests/fixtures/gemma3/tiny`, made by
/// scripts/reference/gemma3_reference.py): one sliding-window layer, one global one.
#[test]
fn gemma3_matches_transformers() {
    check_model_dir("gemma3", gemma3_tiny_dir());
}

/// Mistral's weights are Llama's: only the sliding window differs, and it must matter.
#[test]
fn mistral_sliding_window_changes_late_positions_only() {
    let llama = Model::load(tiny_dir("llama")).unwrap();
    let mistral = Model::load(tiny_dir("mistral")).unwrap();
    assert_eq!(mistral.config.sliding_window, Some(4));
    let refs = load_tensors(fixture("tiny/mistral/reference.safetensors"));
    let inp = tiny_inputs(&refs);
    let run = |m: &Model| {
        m.forward(&inp.batch)
            .logits(LogitsAt::All)
            .run()
            .unwrap()
            .logits
            .unwrap()
    };
    let (a, b) = (run(&llama), run(&mistral));
    // Positions 0..4 see at most 4 keys: identical; later ones differ.
    let early: Vec<(usize, usize)> = (0..4).map(|t| (0, t)).collect();
    let late: Vec<(usize, usize)> = (4..12).map(|t| (0, t)).collect();
    assert_eq!(
        max_abs_diff(&at_entries(&a, &early), &at_entries(&b, &early)),
        0.0
    );
    assert!(max_abs_diff(&at_entries(&a, &late), &at_entries(&b, &late)) > 1e-3);
}

/// A LLaMA-family MLP is gated whatever its activation: key = act(gate(x)) · up(x).
#[test]
fn llama_family_mlp_stays_gated_with_a_gelu_activation() {
    use kedit::model::BlockParam;
    let scratch = Scratch::new("gelu-llama");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny_dir("llama").join(file), scratch.join(file)).unwrap();
    }
    let mut cfg = json(scratch.join("config.json"));
    cfg["hidden_act"] = "gelu_pytorch_tanh".into();
    std::fs::write(scratch.join("config.json"), cfg.to_string()).unwrap();
    let model = Model::load(scratch.path()).unwrap();
    assert!(model.config.gated_mlp());
    let p = |b| ParamId::Block(0, b);
    let gate = model.params.require(p(BlockParam::GateWeight)).unwrap();
    let up = model.params.require(p(BlockParam::InWeight)).unwrap();
    let norm = model.params.require(p(BlockParam::MlpNormWeight)).unwrap();

    let refs = load_tensors(tiny_dir("llama").join("reference.safetensors"));
    let inp = tiny_inputs(&refs);
    let out = model
        .forward(&inp.batch)
        .capture([Site::ResidPre(0), Site::AttnOut(0), Site::MlpKey(0)])
        .logits(LogitsAt::None)
        .run()
        .unwrap();
    let mid =
        (out.capture(Site::ResidPre(0)).unwrap() + out.capture(Site::AttnOut(0)).unwrap()).unwrap();
    let x = kedit::runtime::ops::rms_norm(&mid, norm, model.config.norm_eps).unwrap();
    let lin = |w: &Tensor| x.broadcast_matmul(&w.t().unwrap()).unwrap();
    let want = (lin(gate).gelu().unwrap() * lin(up)).unwrap();
    let got = out.capture(Site::MlpKey(0)).unwrap();
    let d = max_abs_diff(got, &want);
    assert!(d <= ATOL, "gated GELU key: max |Δ| {d}");
}

/// Some GPT-2 checkpoints name their tensors without the `transformer.` prefix.
#[test]
fn gpt2_checkpoint_without_its_prefix_loads_the_same_weights() {
    let scratch = Scratch::new("gpt2-unprefixed");
    std::fs::copy(
        tiny_dir("gpt2").join("config.json"),
        scratch.join("config.json"),
    )
    .unwrap();
    let tensors: std::collections::HashMap<String, Tensor> =
        load_tensors(tiny_dir("gpt2").join("model.safetensors"))
            .into_iter()
            .map(|(k, v)| (k.trim_start_matches("transformer.").to_string(), v))
            .collect();
    assert!(tensors.contains_key("wte.weight"));
    candle_core::safetensors::save(&tensors, scratch.join("model.safetensors")).unwrap();
    let a = Model::load(tiny_dir("gpt2")).unwrap();
    let b = Model::load(scratch.path()).unwrap();
    for (id, t) in a.params.iter() {
        assert_eq!(
            max_abs_diff(t, b.params.require(*id).unwrap()),
            0.0,
            "`{id}`"
        );
    }
}
