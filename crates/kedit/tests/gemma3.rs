//! Gemma 3: the real 270M model (GGUF, `scripts/fetch-model gemma3`) against transformers
//! on the same file (`tests/fixtures/gemma3/real.json`, made by
//! scripts/reference/gemma3_reference.py), and the tiny random Gemma 3's files.
//!
//! The tiny model's activations, loss and gradient are checked in `architectures.rs`, its
//! finite-difference gradients in `gradient_checks.rs`.

use crate::common;

use std::sync::OnceLock;

use common::*;
use kedit::generate::{generate, GenerateOptions};
use kedit::model::{BlockLayout, Family};
use kedit::runtime::{LogitsAt, TokenBatch};
use kedit::Model;
use serde_json::Value;

/// Last-position logits must agree with transformers within this (float32 both sides).
const LOGIT_ATOL: f64 = 1e-3;

/// The real model, or `None` (with a message) when it has not been fetched.
fn gemma3() -> Option<&'static Model> {
    static MODEL: OnceLock<Option<Model>> = OnceLock::new();
    let model = MODEL.get_or_init(|| {
        gemma3_path().map(|p| Model::load(p).unwrap_or_else(|e| panic!("load Gemma 3: {e}")))
    });
    if model.is_none() {
        println!(
            "skipped: models/gemma-3-270m-q4_k_m.gguf is missing (run scripts/fetch-model gemma3)"
        );
    }
    model.as_ref()
}

fn reference() -> Value {
    json(own_fixture("gemma3/real.json"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn gguf_configuration_is_gemma3_270m() {
    let Some(m) = gemma3() else { return };
    let c = &m.config;
    assert_eq!(c.family, Family::Gemma3);
    assert_eq!(
        (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim),
        (18, 640, 4, 1, 256)
    );
    assert_eq!((c.d_ff, c.vocab_size), (2048, 262_144));
    assert_eq!(c.block, BlockLayout::Sandwich);
    assert_eq!(c.sliding_window, Some(512));
    let global: Vec<usize> = (0..18).filter(|&l| !c.is_sliding(l)).collect();
    assert_eq!(global, [5, 11, 17]);
    assert_eq!(c.rope_at(0).unwrap().theta, 10_000.0);
    assert_eq!(c.rope_at(5).unwrap().theta, 1_000_000.0);
    assert!(c.tie_embeddings && c.qk_norm);
    assert_eq!(c.query_scale(), 1.0 / 16.0);
    assert_eq!(m.tokenizer().unwrap().vocab_size(), 262_144);
}

#[test]
fn tokenizer_ids_equal_transformers_on_all_47_strings() {
    let Some(m) = gemma3() else { return };
    let tok = m.tokenizer().unwrap();
    let r = reference();
    let cases = r["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 47);
    let mut wrong = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text).unwrap();
        let want = ids(&case["ids"]);
        if got != want {
            wrong.push(format!("{text:?}: got {got:?}, transformers {want:?}"));
        }
    }
    println!("tokenizer: {}/47 identical", 47 - wrong.len());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(tok.bos_id(), Some(r["bos_id"].as_u64().unwrap() as u32));
    assert!(tok.adds_bos(), "Gemma's GGUF says add_bos_token");
}

#[test]
fn last_position_logits_match_transformers() {
    let Some(m) = gemma3() else { return };
    let r = reference();
    let bos = r["bos_id"].as_u64().unwrap() as u32;
    let probes = ids(&r["probe_ids"]);
    let cases = r["cases"].as_array().unwrap();
    // One padded batch per few strings: batching is part of what is checked.
    let seqs: Vec<Vec<u32>> = cases
        .iter()
        .map(|c| {
            let mut s = vec![bos];
            s.extend(ids(&c["ids"]));
            s
        })
        .collect();
    let mut worst: (f64, String) = (0.0, String::new());
    let mut argmax_equal = 0;
    for (chunk_i, chunk) in seqs.chunks(8).enumerate() {
        let batch = TokenBatch::new(chunk, kedit::Padding::Left, 0).unwrap();
        let logits = m
            .forward(&batch)
            .logits(LogitsAt::Last)
            .run()
            .unwrap()
            .logits
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (j, row) in logits.iter().enumerate() {
            let case = &cases[chunk_i * 8 + j];
            let text = case["text"].as_str().unwrap();
            let mut check = |what: &str, got: f64, want: f64| {
                let d = (got - want).abs();
                // NaN counts as the worst.
                if d.is_nan() || d > worst.0 {
                    worst = (d, format!("{text:?} {what}"));
                }
            };
            for (id, want) in ids(&case["top_ids"])
                .iter()
                .zip(floats(&case["top_logits"]))
            {
                check(&format!("top id {id}"), row[*id as usize] as f64, want);
            }
            for (id, want) in probes.iter().zip(floats(&case["probe_logits"])) {
                check(&format!("probe id {id}"), row[*id as usize] as f64, want);
            }
            let max = row.iter().fold(f64::MIN, |a, &x| a.max(x as f64));
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            check("logsumexp", lse, case["logsumexp"].as_f64().unwrap());
            let argmax = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap();
            if argmax as u64 == case["argmax"].as_u64().unwrap() {
                argmax_equal += 1;
            }
        }
    }
    println!(
        "gemma3 last-position logits vs transformers: max |Δ| {:.2e} ({}), argmax {argmax_equal}/47",
        worst.0, worst.1
    );
    assert!(
        worst.0 <= LOGIT_ATOL,
        "max |Δ| {:e} at {}",
        worst.0,
        worst.1
    );
    assert_eq!(argmax_equal, 47);
}

#[test]
fn greedy_continuation_equals_transformers() {
    let Some(m) = gemma3() else { return };
    let r = reference();
    let g = &r["greedy"];
    let prompt = ids(&g["prompt_ids"]);
    let tok = m.tokenizer().unwrap();
    let mut from_text = vec![r["bos_id"].as_u64().unwrap() as u32];
    from_text.extend(tok.encode(g["prompt"].as_str().unwrap()).unwrap());
    assert_eq!(prompt, from_text);
    let want = ids(&g["new_ids"]);
    let opts = GenerateOptions {
        max_new_tokens: want.len(),
        ..GenerateOptions::default()
    };
    let got = generate(m, &[prompt], &opts).unwrap().remove(0);
    let text = tok.decode(&got, true).unwrap();
    println!("gemma3 greedy: \"The capital of France is\" → {text:?}");
    assert_eq!(got, want, "transformers: {:?}", g["text"]);
    let want_text = g["text"].as_str().unwrap();
    if want_text.contains("Paris") {
        assert!(text.contains("Paris"), "{text:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The tiny Gemma 3's files

/// Saving keeps the configuration, the effective norm weights (1 + w) and the logits
/// exactly, and writes transformers' zero-centred norms back.
#[test]
fn tiny_gemma3_saves_and_reloads_exactly() {
    let original = Model::load(gemma3_tiny_dir()).unwrap();
    assert_eq!(original.config.family, Family::Gemma3);
    let scratch = Scratch::new("gemma3-round-trip");
    let out = scratch.join("tiny");
    original.save_hf(&out, false).unwrap();
    let reloaded = Model::load(&out).unwrap();
    assert_eq!(original.config, reloaded.config);
    for (id, t) in original.params.iter() {
        let u = reloaded.params.require(*id).unwrap();
        assert_eq!(max_abs_diff(t, u), 0.0, "`{id}` differs after reload");
    }
    let saved = load_tensors(out.join("model.safetensors"));
    let orig = load_tensors(gemma3_tiny_dir().join("model.safetensors"));
    let mut names: Vec<&String> = orig.keys().collect();
    names.sort();
    let mut saved_names: Vec<&String> = saved.keys().collect();
    saved_names.sort();
    assert_eq!(names, saved_names);
    for name in names {
        // (1 + w) − 1 may differ from w in the last bit of a tiny w; nothing more.
        let d = max_abs_diff(&saved[name], &orig[name]);
        assert!(d <= 1e-7, "`{name}` differs by {d:e}");
    }
    let saved_cfg = json(out.join("config.json"));
    let orig_cfg = json(gemma3_tiny_dir().join("config.json"));
    for key in [
        "architectures",
        "model_type",
        "layer_types",
        "sliding_window",
        "query_pre_attn_scalar",
        "rope_parameters",
        "head_dim",
        "hidden_activation",
    ] {
        assert_eq!(saved_cfg[key], orig_cfg[key], "config.json `{key}`");
    }
}

/// The settings that make Gemma Gemma each change the output: the window only for late
/// positions of the sliding layer, the local RoPE base, the query scale.
#[test]
fn tiny_gemma3_window_rope_base_and_scale_each_matter() {
    let base = Model::load(gemma3_tiny_dir()).unwrap();
    let refs = load_tensors(gemma3_tiny_dir().join("reference.safetensors"));
    let inp = tiny_inputs(&refs);
    let run = |m: &Model| {
        m.forward(&inp.batch)
            .logits(LogitsAt::All)
            .run()
            .unwrap()
            .logits
            .unwrap()
    };
    let with = |edit: fn(&mut kedit::model::ModelConfig)| {
        let mut m = base.clone();
        edit(&mut m.config);
        run(&m)
    };
    let a = run(&base);
    let early: Vec<(usize, usize)> = (0..4).map(|t| (0, t)).collect();
    let late: Vec<(usize, usize)> = (4..12).map(|t| (0, t)).collect();
    let no_window = with(|c| c.sliding_window = Some(1000));
    assert_eq!(
        max_abs_diff(&at_entries(&a, &early), &at_entries(&no_window, &early)),
        0.0
    );
    assert!(max_abs_diff(&at_entries(&a, &late), &at_entries(&no_window, &late)) > 1e-3);
    let one_base = with(|c| c.local_rope_theta = None);
    assert!(max_abs_diff(&a, &one_base) > 1e-3);
    let plain_scale = with(|c| c.attn_scale = None);
    assert!(max_abs_diff(&a, &plain_scale) > 1e-3);
}

type ConfigEdit = fn(&mut serde_json::Map<String, Value>);

fn load_error_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let scratch = Scratch::new(&format!("gemma3-config-{}", rand_name()));
    let dir = scratch.path();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(gemma3_tiny_dir().join(file), dir.join(file)).unwrap();
    }
    let mut cfg = json(dir.join("config.json"));
    edit(cfg.as_object_mut().unwrap());
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    match Model::load(dir) {
        Ok(_) => panic!("loaded, but an error was expected"),
        Err(e) => e.to_string(),
    }
}

fn rand_name() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

#[test]
fn bad_gemma3_config_names_the_file_and_the_field() {
    let cases: [(&str, ConfigEdit); 4] = [
        ("layer_types", |c| {
            c.insert(
                "layer_types".into(),
                serde_json::json!(["sliding_attention", "chunked"]),
            );
        }),
        ("final_logit_softcapping", |c| {
            c.insert("final_logit_softcapping".into(), 30.0.into());
        }),
        ("rope_parameters", |c| {
            c["rope_parameters"]["full_attention"]["rope_type"] = "linear".into();
        }),
        ("hidden_size", |c| {
            c.remove("hidden_size");
        }),
    ];
    for (field, edit) in cases {
        let msg = load_error_with(edit);
        assert!(
            msg.contains("config.json") && msg.contains(field),
            "{field}: {msg}"
        );
    }
}

/// A GGUF holding only `metadata` (no tensors).
fn write_gguf(
    path: &std::path::Path,
    metadata: &[(&str, candle_core::quantized::gguf_file::Value)],
) {
    let md: Vec<(&str, &candle_core::quantized::gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (*k, v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    candle_core::quantized::gguf_file::write(&mut f, &md, &[]).unwrap();
}

#[test]
fn bad_gguf_metadata_names_the_file_and_the_key() {
    use candle_core::quantized::gguf_file::Value as V;
    let scratch = Scratch::new("gemma3-gguf-metadata");
    let arch = |a: &str| ("general.architecture", V::String(a.into()));
    // (metadata, what the error must mention besides the file)
    type Case<'a> = (Vec<(&'a str, V)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            vec![arch("phi3")],
            vec!["general.architecture", "phi3", "llama", "gemma3"],
        ),
        (
            vec![
                arch("gemma3"),
                ("gemma3.embedding_length", V::String("640".into())),
            ],
            vec!["gemma3.embedding_length", "not an integer"],
        ),
        (
            vec![
                arch("gemma3"),
                ("gemma3.embedding_length", V::U32(640)),
                ("gemma3.attention.head_count", V::U32(4)),
            ],
            vec!["gemma3.block_count", "missing"],
        ),
    ];
    for (i, (metadata, parts)) in cases.into_iter().enumerate() {
        let path = scratch.join(&format!("case{i}.gguf"));
        write_gguf(&path, &metadata);
        let msg = match Model::load(&path) {
            Ok(_) => panic!("case {i}: loaded, but an error was expected"),
            Err(e) => e.to_string(),
        };
        for part in parts.iter().chain([&format!("case{i}.gguf").as_str()]) {
            assert!(msg.contains(part), "case {i}: `{part}` not in: {msg}");
        }
    }
}

/// Gemma expects its BOS first (as transformers' tokenizer adds it); SmolLM2 does not.
/// Model inputs — metric rows, prompts, ROME's lookups — start with it; fragments that
/// continue a sequence do not; an edited system's context goes after it.
#[test]
fn model_inputs_start_with_bos_where_the_model_expects_it() {
    use kedit::edit::{ContextEdit, Edit};
    use kedit::editor::Editor;
    use kedit::evaluate::metrics::teacher_forced::{tokenise, Pair};
    use kedit::lm::LanguageModel;
    let smol = smollm2().tokenizer().unwrap();
    assert!(!smol.adds_bos());
    assert_eq!(
        smol.encode_input("The capital of France is").unwrap(),
        smol.encode("The capital of France is").unwrap()
    );
    let Some(m) = gemma3() else { return };
    let tok = m.tokenizer().unwrap();
    let bos = tok.bos_id().unwrap();
    assert!(tok.adds_bos());
    let prompt = "The capital of France is";
    let input = tok.encode_input(prompt).unwrap();
    assert_eq!(input[0], bos);
    assert_eq!(&input[1..], tok.encode(prompt).unwrap().as_slice());
    let row = tokenise(m, &Pair::new(prompt, "Paris")).unwrap();
    assert_eq!(row.ids[0], bos);
    assert_eq!(row.prompt_len, input.len());
    let (_, index) = kedit::prompts::lookup(
        tok,
        "{} is located in",
        "The Eiffel Tower",
        kedit::prompts::FactToken::SubjectLast,
    )
    .unwrap();
    let subject = tok.encode("The Eiffel Tower").unwrap();
    assert_eq!(index, subject.len(), "BOS, then the subject's tokens");

    let mut editor = Editor::new(m.clone());
    let context = "Fact: Paris is in Italy.\n";
    editor
        .apply(&Edit::Context(ContextEdit {
            prefix: context.into(),
            lead: String::new(),
            meta: Default::default(),
        }))
        .unwrap();
    // The context and the prompt are encoded as one text, after the BOS.
    let written = tok.decode(&input[1..], false).unwrap();
    let by_hand: Vec<u32> = std::iter::once(bos)
        .chain(tok.encode(&format!("{context}{written}")).unwrap())
        .collect();
    let edited = editor.next_logits(std::slice::from_ref(&input)).unwrap();
    let plain = m.next_logits(&[by_hand]).unwrap();
    assert_eq!(max_abs_diff(&edited, &plain), 0.0);
}
