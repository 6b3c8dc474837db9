//! Exports on the real SmolLM2: a weight edit as a PEFT LoRA adapter read back into kedit
//! (exact for low-rank deltas, truncated SVD with its energy for FT-M's dense one), the
//! edited model as GGUF (f32, f16) and as a Hugging Face directory reloaded with the edited
//! logits and the same tokenizer ids, and bad adapters refused by file and field.

use crate::common;

use candle_core::{DType, Device, Tensor};
use common::*;
use kedit::edit::peft::{self, Truncation};
use kedit::edit::{Delta, Edit, WeightEdit};
use kedit::editor::Editor;
use kedit::methods::{self, EditContext};
use kedit::model::gguf_export::save_gguf;
use kedit::model::gguf_write::GgufDtype;
use kedit::model::{BlockParam, ParamId};
use kedit::{LogitsAt, Model, TokenBatch};

const PROMPTS: [&str; 3] = [
    EIFFEL,
    "The capital of France is",
    "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n",
];

/// Logits at every position of every prompt, concatenated: `[positions, vocab]`.
fn logits(model: &Model) -> Tensor {
    let tok = model.tokenizer().unwrap();
    let all: Vec<Tensor> = PROMPTS
        .iter()
        .map(|p| {
            let ids = tok.encode_input(p).unwrap();
            let out = model
                .forward(&TokenBatch::single(&ids))
                .logits(LogitsAt::All)
                .run()
                .unwrap();
            out.logits().unwrap().squeeze(0).unwrap()
        })
        .collect();
    Tensor::cat(&all, 0).unwrap()
}

fn random(rows: usize, cols: usize, scale: f64, seed: u64) -> Tensor {
    let mut rng = kedit::rng::Rng::new(seed);
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| (rng.normal() * scale) as f32)
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

/// A low-rank edit of two ranks on three kinds of weight: an MLP output projection (where
/// ROME writes, rank 2), and the Q and K projections (rank 1), whose rows llama.cpp's GGUF
/// layout permutes.
fn low_rank_edit(model: &Model) -> WeightEdit {
    let mut edit = WeightEdit::new();
    let mut seed = 1;
    for (param, r, scale) in [
        (ParamId::mlp_out(4), 2, 0.08),
        (ParamId::block(2, BlockParam::QWeight), 1, 0.15),
        (ParamId::block(3, BlockParam::KWeight), 1, 0.15),
    ] {
        let (out, inp) = model.params.require(param).unwrap().dims2().unwrap();
        seed += 2;
        edit.push(
            param,
            Delta::LowRank {
                u: random(out, r, scale, seed),
                v: random(inp, r, scale, seed + 1),
            },
        );
    }
    edit
}

fn edited(edit: &WeightEdit) -> Editor {
    let mut editor = Editor::new(smollm2().clone());
    editor.apply(&Edit::Weights(edit.clone())).unwrap();
    editor
}

#[test]
fn a_low_rank_edit_round_trips_through_a_peft_adapter_exactly() {
    let scratch = Scratch::new("peft-low-rank");
    let model = smollm2();
    let edit = low_rank_edit(model);
    let before = logits(model);
    let want = logits(edited(&edit).model());
    let effect = max_abs_diff(&before, &want);
    assert!(effect > 0.5, "the edit changes the logits ({effect})");

    let dir = scratch.join("adapter");
    let reports = peft::save(&edit, model, &dir, Truncation::default(), None, false).unwrap();
    assert!(reports.iter().all(|r| r.exact && r.energy == 1.0));
    let config = json(dir.join("adapter_config.json"));
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    // Two of three modules have rank 1: that is `r`; the rank-2 one is a pattern.
    assert_eq!(config["r"], 1);
    assert_eq!(config["lora_alpha"], 1);
    let down = r"model\.layers\.4\.mlp\.down_proj";
    assert_eq!(config["rank_pattern"][down], 2);
    assert_eq!(config["alpha_pattern"][down], 2);
    assert_eq!(config["fan_in_fan_out"], false);
    let targets = config["target_modules"].as_array().unwrap();
    assert!(targets.contains(&"model.layers.2.self_attn.q_proj".into()));
    let tensors = load_tensors(dir.join("adapter_model.safetensors"));
    let a = &tensors["base_model.model.model.layers.4.mlp.down_proj.lora_A.weight"];
    let b = &tensors["base_model.model.model.layers.4.mlp.down_proj.lora_B.weight"];
    assert_eq!(a.dims(), [2, 1536]);
    assert_eq!(b.dims(), [576, 2]);

    let back = peft::load(&dir, model).unwrap();
    assert_eq!(back.deltas.len(), 3);
    let got = logits(edited(&back).model());
    let d = max_abs_diff(&got, &want);
    println!(
        "PEFT round trip, rank 1-2: max |Δlogit| {d:.2e} (the edit moves logits by {effect:.2})"
    );
    assert!(d <= 1e-4, "max |Δ| {d}");
}

#[test]
fn a_dense_ft_m_edit_is_exported_by_truncated_svd_with_its_energy() {
    let scratch = Scratch::new("peft-dense");
    let model = smollm2();
    let method = methods::load("ft-m", None, model).unwrap().method;
    let editor = Editor::new(model.clone());
    let request = kedit::request::EditRequest {
        subject: "The Eiffel Tower".into(),
        ..bare_request(EIFFEL, " Rome")
    };
    let computed = method
        .compute(&editor, &[request], &EditContext::default())
        .unwrap();
    let Edit::Weights(edit) = &computed.edit else {
        panic!("FT-M returns weight deltas");
    };
    assert!(matches!(edit.deltas[0].1, Delta::Dense(_)));
    let want = logits(edited(edit).model());
    let before = logits(model);
    let effect = max_abs_diff(&before, &want);

    let mut last = f64::INFINITY;
    for (name, truncation) in [
        ("energy 0.9", Truncation::Energy(0.9)),
        ("rank 64", Truncation::Rank(64)),
        ("energy 0.99", Truncation::Energy(0.99)),
    ] {
        let dir = scratch.join(&name.replace(' ', "-"));
        let reports = peft::save(edit, model, &dir, truncation, None, false).unwrap();
        let r = &reports[0];
        if let Truncation::Energy(e) = truncation {
            assert!(r.energy >= e, "{name}: {}", r.energy);
        }
        assert!(r.rank < 576 && !r.exact);
        let back = peft::load(&dir, model).unwrap();
        let d = max_abs_diff(&logits(edited(&back).model()), &want);
        println!(
            "FT-M dense → LoRA, {name}: rank {}, energy {:.4}, max |Δlogit| {d:.3e} (edit effect {effect:.2})",
            r.rank, r.energy
        );
        assert!(d < 0.05 * effect, "{name}: {d} vs the edit's {effect}");
        // Measured: ranks 15, 64, 237 keep 90%, 96%, 99% and miss by 0.16, 0.07, 0.03.
        assert!(d < last, "{name}: more rank, less error ({d} after {last})");
        last = d;
    }
}

#[test]
fn the_edited_model_as_gguf_reloads_with_its_logits_and_tokenizer() {
    let scratch = Scratch::new("gguf");
    let model = smollm2();
    let editor = edited(&low_rank_edit(model));
    let want = logits(editor.model());
    let texts = ["Ünïcödé 2024: 12345 tokens!", PROMPTS[2]];
    let tok = model.tokenizer().unwrap();
    // f32 is written as it is held: exact. f16 rounds every matrix entry (relative 2^-11):
    // measured 0.03.
    for (dtype, bound) in [(GgufDtype::F32, 1e-4), (GgufDtype::F16, 0.1)] {
        let path = scratch.join(&format!("m-{}.gguf", dtype.name()));
        save_gguf(editor.model(), &path, dtype).unwrap();
        let back = Model::load(&path).unwrap();
        assert_eq!(back.config, model.config);
        let d = max_abs_diff(&logits(&back), &want);
        println!("GGUF {}: max |Δlogit| {d:.2e}", dtype.name());
        assert!(d <= bound, "{}: {d}", dtype.name());
        let back_tok = back.tokenizer().unwrap();
        for t in texts {
            assert_eq!(back_tok.encode(t).unwrap(), tok.encode(t).unwrap(), "{t}");
        }
        drop(back);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn a_saved_hf_directory_carries_the_metadata_reloads_and_becomes_gguf() {
    let scratch = Scratch::new("hf");
    let model = smollm2();
    let editor = edited(&low_rank_edit(model));
    let want = logits(editor.model());
    let dir = scratch.join("hf");
    editor
        .weights_only()
        .unwrap()
        .save_hf_as(&dir, false, DType::BF16)
        .unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(bytes.len() < 300_000_000, "bf16: half of f32's 538 MB");
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(header.metadata().as_ref().unwrap()["format"], "pt");
    let t = header.tensors();
    assert_eq!(
        t["model.layers.0.mlp.down_proj.weight"].dtype,
        safetensors::Dtype::BF16
    );
    drop(bytes);
    assert_eq!(json(dir.join("config.json"))["torch_dtype"], "bfloat16");
    let generation = json(dir.join("generation_config.json"));
    assert_eq!(generation["bos_token_id"], 1);
    assert_eq!(generation["eos_token_id"], 2);
    assert_eq!(
        json(dir.join("special_tokens_map.json"))["eos_token"],
        "<|im_end|>"
    );
    let back = Model::load(&dir).unwrap();
    let d = max_abs_diff(&logits(&back), &want);
    println!("HF bf16 directory: max |Δlogit| {d:.2e}");
    // bf16 keeps 8 bits of mantissa: measured 0.19.
    assert!(d < 0.5, "{d}");

    // From a Hugging Face source the GGUF tokenizer is built from tokenizer.json.
    let path = scratch.join("from-hf.gguf");
    let summary = save_gguf(&back, &path, GgufDtype::F16).unwrap();
    assert_eq!(summary.tokenizer_from, "built from tokenizer.json");
    let gguf = Model::load(&path).unwrap();
    let tok = model.tokenizer().unwrap();
    for t in ["Ünïcödé 2024: 12345 tokens!", PROMPTS[2], EIFFEL] {
        assert_eq!(
            gguf.tokenizer().unwrap().encode(t).unwrap(),
            tok.encode(t).unwrap(),
            "{t}"
        );
    }
    assert_eq!(gguf.tokenizer().unwrap().eos_id(), tok.eos_id());
}

#[test]
fn bad_adapters_are_refused_naming_the_file_and_the_field() {
    let scratch = Scratch::new("peft-bad");
    let model = smollm2();
    let mut edit = WeightEdit::new();
    edit.push(
        ParamId::mlp_out(4),
        Delta::LowRank {
            u: random(576, 1, 0.1, 1),
            v: random(1536, 1, 0.1, 2),
        },
    );
    let good = scratch.join("good");
    peft::save(&edit, model, &good, Truncation::default(), None, false).unwrap();
    let weights = good.join("adapter_model.safetensors");
    let tensors = load_tensors(weights.clone());
    let copy = |name: &str| {
        let dir = scratch.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            good.join("adapter_config.json"),
            dir.join("adapter_config.json"),
        )
        .unwrap();
        dir
    };
    let save = |dir: &std::path::Path, tensors: &[(String, Tensor)]| {
        let map: std::collections::HashMap<String, Tensor> = tensors.iter().cloned().collect();
        candle_core::safetensors::save(&map, dir.join("adapter_model.safetensors")).unwrap();
    };
    let a = tensors["base_model.model.model.layers.4.mlp.down_proj.lora_A.weight"].clone();
    let b = tensors["base_model.model.model.layers.4.mlp.down_proj.lora_B.weight"].clone();

    // A module the model does not have (layer 40 of 30).
    let dir = copy("missing-module");
    save(
        &dir,
        &[
            (
                "base_model.model.model.layers.40.mlp.down_proj.lora_A.weight".into(),
                a.clone(),
            ),
            (
                "base_model.model.model.layers.40.mlp.down_proj.lora_B.weight".into(),
                b.clone(),
            ),
        ],
    );
    let e = peft::load(&dir, model).unwrap_err().to_string();
    assert!(e.contains("adapter_model.safetensors"), "{e}");
    assert!(
        e.contains("model.layers.40.mlp.down_proj") && e.contains("not a weight"),
        "{e}"
    );

    // A factor of the wrong shape.
    let dir = copy("wrong-shape");
    let narrow = a.narrow(1, 0, 1000).unwrap().contiguous().unwrap();
    save(
        &dir,
        &[
            (
                "base_model.model.model.layers.4.mlp.down_proj.lora_A.weight".into(),
                narrow,
            ),
            (
                "base_model.model.model.layers.4.mlp.down_proj.lora_B.weight".into(),
                b.clone(),
            ),
        ],
    );
    let e = peft::load(&dir, model).unwrap_err().to_string();
    assert!(
        e.contains("lora_A.weight") && e.contains("[1, 1000]") && e.contains("1536"),
        "{e}"
    );

    // A half of a pair alone.
    let dir = copy("half-pair");
    save(
        &dir,
        &[(
            "base_model.model.model.layers.4.mlp.down_proj.lora_A.weight".into(),
            a.clone(),
        )],
    );
    let e = peft::load(&dir, model).unwrap_err().to_string();
    assert!(e.contains("lora_B.weight") && e.contains("missing"), "{e}");

    // A truncated weights file.
    let dir = copy("truncated");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(
        dir.join("adapter_model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let e = peft::load(&dir, model).unwrap_err().to_string();
    assert!(e.contains("adapter_model.safetensors"), "{e}");

    // Another kind of adapter.
    let dir = copy("prefix");
    std::fs::copy(&weights, dir.join("adapter_model.safetensors")).unwrap();
    let mut config = json(dir.join("adapter_config.json"));
    config["peft_type"] = "PREFIX_TUNING".into();
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let e = peft::load(&dir, model).unwrap_err().to_string();
    assert!(
        e.contains("adapter_config.json") && e.contains("`peft_type`"),
        "{e}"
    );

    // Writing: a directory that is somebody else's is refused before anything is written.
    let theirs = scratch.join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("notes.txt"), b"mine").unwrap();
    let e = peft::save(&edit, model, &theirs, Truncation::default(), None, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not written by kedit"), "{e}");
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 1);
}

#[test]
fn gguf_export_refuses_what_a_gguf_file_cannot_describe() {
    let scratch = Scratch::new("gguf-bad");
    // GPT-2 has no GGUF writer in kedit.
    let gpt2 = Model::load(tiny_dir("gpt2")).unwrap();
    let e = save_gguf(&gpt2, &scratch.join("g.gguf"), GgufDtype::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("llama, gemma3"), "{e}");
    // A llama with a sliding window (llama.cpp's llama has no such key) would read back
    // as another model.
    let mut windowed = smollm2().clone();
    windowed.config.sliding_window = Some(64);
    let e = save_gguf(&windowed, &scratch.join("w.gguf"), GgufDtype::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("sliding_window"), "{e}");
    assert!(!scratch.join("w.gguf").exists());
}
