//! Every model file a user names is hostile: each defect a hostile tester found has its
//! case here. Each load must end in a typed error naming the file and the field (or the
//! tensor) — never a panic, an abort or an allocation the file's size does not justify —
//! and a model that loads must refuse input longer than its context.

use crate::common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value as GgufValue;
use kedit::fuzz::gguf::{tiny_doc, GgufDoc};
use kedit::fuzz::hf::tiny_dir;
use kedit::lm::generate::{generate, GenerateOptions};
use kedit::methods::hparams::HparamsSource;
use kedit::{Model, TokenBatch};
use serde_json::{json, Value};

use common::Scratch;

/// The error of `Model::load(path)`; fails the test on success or panic.
fn load_error(path: &Path) -> String {
    match std::panic::catch_unwind(|| Model::load(path)) {
        Ok(Ok(_)) => panic!("{}: loaded, but an error was expected", path.display()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("Model::load panicked on {}", path.display()),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for part in parts {
        assert!(msg.contains(part), "error does not mention `{part}`: {msg}");
    }
}

/// The tiny GGUF with metadata `key` set to `value` (added when absent).
fn gguf_with(scratch: &Scratch, name: &str, edit: impl FnOnce(&mut GgufDoc)) -> PathBuf {
    let mut doc = tiny_doc().unwrap();
    edit(&mut doc);
    let path = scratch.join(name);
    std::fs::write(&path, doc.to_bytes()).unwrap();
    path
}

fn set(doc: &mut GgufDoc, key: &str, value: GgufValue) {
    match doc.metadata.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => doc.metadata.push((key.to_string(), value)),
    }
}

#[test]
fn the_tiny_gguf_model_loads_and_runs() {
    let scratch = Scratch::new("hostile-tiny-gguf");
    let path = gguf_with(&scratch, "tiny.gguf", |_| {});
    let model = Model::load(&path).unwrap();
    let ids = model.tokenizer().unwrap().encode("ab a.").unwrap();
    model.forward(&TokenBatch::single(&ids)).run().unwrap();
}

#[test]
fn gguf_alignment_zero_is_an_error_not_a_division_by_zero() {
    let scratch = Scratch::new("hostile-align");
    for (i, v) in [GgufValue::U32(0), GgufValue::U8(0), GgufValue::U32(48)]
        .into_iter()
        .enumerate()
    {
        let path = gguf_with(&scratch, &format!("align-{i}.gguf"), |d| {
            set(d, "general.alignment", v)
        });
        let msg = load_error(&path);
        assert_mentions(&msg, &[&format!("align-{i}.gguf"), "general.alignment"]);
    }
}

#[test]
fn gguf_zero_or_inconsistent_head_counts_are_errors() {
    let scratch = Scratch::new("hostile-heads");
    let cases: [(&str, GgufValue); 7] = [
        ("llama.attention.head_count", GgufValue::U32(0)),
        ("llama.attention.head_count_kv", GgufValue::U32(0)),
        ("llama.attention.head_count_kv", GgufValue::U32(3)),
        ("llama.attention.head_count", GgufValue::U32(3)),
        ("llama.embedding_length", GgufValue::U32(7)),
        ("llama.attention.key_length", GgufValue::U32(0)),
        ("llama.rope.dimension_count", GgufValue::U32(3)),
    ];
    for (i, (key, v)) in cases.into_iter().enumerate() {
        let path = gguf_with(&scratch, &format!("heads-{i}.gguf"), |d| set(d, key, v));
        let msg = load_error(&path);
        assert_mentions(&msg, &[&format!("heads-{i}.gguf")]);
    }
}

#[test]
fn gguf_integers_out_of_range_are_errors_not_truncated() {
    let scratch = Scratch::new("hostile-ints");
    // 2^32 + 2 blocks used to be read as 2.
    let path = gguf_with(&scratch, "blocks.gguf", |d| {
        set(d, "llama.block_count", GgufValue::U64((1 << 32) + 2))
    });
    assert_mentions(&load_error(&path), &["llama.block_count"]);
    let path = gguf_with(&scratch, "negative.gguf", |d| {
        set(d, "llama.context_length", GgufValue::I32(-1))
    });
    assert_mentions(&load_error(&path), &["llama.context_length"]);
}

#[test]
fn gguf_absurd_sizes_are_refused_before_anything_is_allocated() {
    let scratch = Scratch::new("hostile-sizes");
    let cases: [(&str, u32); 4] = [
        ("llama.block_count", 1_000_000_000),
        ("llama.embedding_length", 1_000_000_000),
        ("llama.feed_forward_length", 1_000_000_000),
        ("llama.context_length", 4_000_000_000),
    ];
    for (i, (key, v)) in cases.into_iter().enumerate() {
        let path = gguf_with(&scratch, &format!("size-{i}.gguf"), |d| {
            set(d, key, GgufValue::U32(v))
        });
        let msg = load_error(&path);
        assert_mentions(&msg, &[&format!("size-{i}.gguf")]);
    }
    // 128 blocks of a model whose file holds 2: refused against the file's size.
    let path = gguf_with(&scratch, "blocks.gguf", |d| {
        set(d, "llama.block_count", GgufValue::U32(128))
    });
    assert_mentions(&load_error(&path), &["blocks.gguf", "weights"]);
}

#[test]
fn gguf_tensor_dimensions_that_overflow_are_errors() {
    let scratch = Scratch::new("hostile-dims");
    // 2^33 × 2^31 elements wrap around to 0 in 64 bits.
    let path = gguf_with(&scratch, "wrap.gguf", |d| {
        d.tensors[0].dims = vec![1 << 33, 1 << 31];
    });
    assert_mentions(&load_error(&path), &["wrap.gguf", "token_embd.weight"]);
    // A vocabulary of 10^12 rows.
    let path = gguf_with(&scratch, "vocab.gguf", |d| {
        d.tensors[0].dims = vec![8, 1_000_000_000_000];
    });
    assert_mentions(&load_error(&path), &["vocab.gguf", "token_embd.weight"]);
}

#[test]
fn gguf_header_counts_beyond_the_file_are_errors() {
    let scratch = Scratch::new("hostile-counts");
    let path = gguf_with(&scratch, "tensors.gguf", |d| {
        d.tensor_count = Some(u64::MAX)
    });
    assert_mentions(&load_error(&path), &["tensors.gguf", "GGUF header"]);
    let path = gguf_with(&scratch, "kv.gguf", |d| d.metadata_count = Some(1 << 40));
    assert_mentions(&load_error(&path), &["kv.gguf", "GGUF header"]);
    // An array of 2^30 arrays: each would be a value in memory, ~32 GB.
    let path = gguf_with(&scratch, "array.gguf", |d| {
        set(d, "tokenizer.ggml.tokens", GgufValue::Array(vec![]));
    });
    let mut bytes = std::fs::read(&path).unwrap();
    let key = b"tokenizer.ggml.tokens";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4;
    bytes[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
    bytes[at + 4..at + 12].copy_from_slice(&(1u64 << 30).to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    assert_mentions(&load_error(&path), &["array.gguf"]);
}

#[test]
fn gguf_nan_or_out_of_range_reals_are_errors_naming_the_field() {
    let scratch = Scratch::new("hostile-reals");
    let cases: [(&str, f32, &str); 7] = [
        ("llama.rope.freq_base", f32::NAN, "llama.rope.freq_base"),
        ("llama.rope.freq_base", 0.0, "rope_theta"),
        ("llama.rope.freq_base", -10_000.0, "rope_theta"),
        (
            "llama.attention.layer_norm_rms_epsilon",
            f32::NAN,
            "epsilon",
        ),
        ("llama.attention.layer_norm_rms_epsilon", 0.0, "norm_eps"),
        ("llama.attention.layer_norm_rms_epsilon", -1e-5, "norm_eps"),
        (
            "llama.attention.layer_norm_rms_epsilon",
            f32::INFINITY,
            "epsilon",
        ),
    ];
    for (i, (key, v, field)) in cases.into_iter().enumerate() {
        let path = gguf_with(&scratch, &format!("real-{i}.gguf"), |d| {
            set(d, key, GgufValue::F32(v))
        });
        let msg = load_error(&path);
        assert_mentions(&msg, &[&format!("real-{i}.gguf"), field]);
    }
}

/// A copy of the tiny llama directory with `config.json` edited.
fn hf_with(
    scratch: &Scratch,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> PathBuf {
    let dir = scratch.join(name);
    tiny_dir(&dir).unwrap();
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    dir
}

#[test]
fn config_json_absurd_counts_are_refused_before_anything_is_allocated() {
    let scratch = Scratch::new("hostile-config-sizes");
    let cases: [(&str, Value); 6] = [
        ("num_hidden_layers", json!(1_000_000_000u64)),
        ("num_hidden_layers", json!(1_000_000_000_000u64)),
        ("hidden_size", json!(1_000_000_000u64)),
        ("vocab_size", json!(1_000_000_000_000u64)),
        ("intermediate_size", json!(1_000_000_000u64)),
        ("num_hidden_layers", json!(100)),
    ];
    for (i, (key, v)) in cases.into_iter().enumerate() {
        let dir = hf_with(&scratch, &format!("size-{i}"), |c| {
            c.insert(key.into(), v);
        });
        let msg = load_error(&dir);
        assert_mentions(&msg, &[&format!("size-{i}"), "config.json"]);
    }
    // Gemma 3 builds its layer pattern from the count: refused before that too.
    let dir = scratch.join("gemma");
    std::fs::create_dir_all(&dir).unwrap();
    let tiny = common::gemma3_tiny_dir();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny.join(f), dir.join(f)).unwrap();
    }
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["num_hidden_layers"] = json!(1_000_000_000_000u64);
    v.as_object_mut().unwrap().shift_remove("layer_types");
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    assert_mentions(&load_error(&dir), &["config.json", "num_hidden_layers"]);
}

#[test]
fn config_json_reals_out_of_range_are_errors_naming_the_field() {
    let scratch = Scratch::new("hostile-config-reals");
    let cases: [(&str, Value, &str); 5] = [
        ("rms_norm_eps", json!(0.0), "norm_eps"),
        ("rms_norm_eps", json!(-1e-6), "norm_eps"),
        ("rms_norm_eps", json!(5.0), "norm_eps"),
        ("rope_theta", json!(0.0), "rope_theta"),
        ("rope_theta", json!(-1.0), "rope_theta"),
    ];
    for (i, (key, v, field)) in cases.into_iter().enumerate() {
        let dir = hf_with(&scratch, &format!("real-{i}"), |c| {
            c.insert(key.into(), v);
            c.shift_remove("rope_parameters");
        });
        let msg = load_error(&dir);
        assert_mentions(&msg, &["config.json", field]);
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error() {
    let scratch = Scratch::new("hostile-context");
    let dir = scratch.join("tiny");
    tiny_dir(&dir).unwrap();
    let model = Model::load(&dir).unwrap();
    let context = model.config.max_positions;
    let ids = vec![3u32; context + 1];
    let err = model.forward(&TokenBatch::single(&ids)).run().unwrap_err();
    assert_mentions(&err.to_string(), &["context length", &context.to_string()]);
    // Exactly the context is fine.
    model
        .forward(&TokenBatch::single(&ids[..context]))
        .run()
        .unwrap();
    // Generation: the prompt and the new tokens together.
    let opts = GenerateOptions {
        max_new_tokens: 10,
        ..GenerateOptions::default()
    };
    let err = generate(&model, &[ids[..context - 5].to_vec()], &opts).unwrap_err();
    assert_mentions(&err.to_string(), &["context length"]);
    generate(&model, &[ids[..context - 10].to_vec()], &opts).unwrap();
}

#[test]
fn shard_names_must_stay_inside_the_model_directory() {
    let scratch = Scratch::new("hostile-index");
    // The weights, sharded, in `elsewhere`; a model directory whose index points there.
    let elsewhere = scratch.join("elsewhere");
    tiny_dir(&elsewhere).unwrap();
    let index = kedit::fuzz::hf::shard(&elsewhere).unwrap();
    let dir = scratch.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(elsewhere.join("config.json"), dir.join("config.json")).unwrap();
    let shard = "model-00001-of-00002.safetensors";
    let absolute = elsewhere.join(shard).display().to_string();
    for (i, bad) in [format!("../elsewhere/{shard}"), absolute, String::new()]
        .into_iter()
        .enumerate()
    {
        let mut v = index.clone();
        for (_, file) in v["weight_map"].as_object_mut().unwrap().iter_mut() {
            *file = json!(file.as_str().unwrap().replace(shard, &bad));
        }
        if bad.starts_with('/') || bad.starts_with("..") {
            // Every entry escapes: the other shard too.
            for (_, file) in v["weight_map"].as_object_mut().unwrap().iter_mut() {
                if !file.as_str().unwrap().contains('/') {
                    *file = json!(format!("../elsewhere/{}", file.as_str().unwrap()));
                }
            }
        }
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let msg = load_error(&dir);
        assert_mentions(&msg, &["model.safetensors.index.json", "weight_map"]);
        let _ = i;
    }
}

#[test]
fn safetensors_headers_that_lie_are_typed_errors() {
    let scratch = Scratch::new("hostile-safetensors");
    let dir = scratch.join("tiny");
    tiny_dir(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let good = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&good[8..8 + n]).unwrap();
    let data = &good[8 + n..];
    let name = "model.embed_tokens.weight";
    let edits: [(&str, Value); 5] = [
        ("shape", json!([32, 9])),
        ("shape", json!([1u64 << 62, 1u64 << 62])),
        ("data_offsets", json!([0, 1u64 << 62])),
        ("dtype", json!("I64")),
        ("dtype", json!("BOGUS")),
    ];
    for (field, v) in edits {
        let mut h = header.clone();
        h[name][field] = v;
        let text = serde_json::to_vec(&h).unwrap();
        let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
        bytes.extend(text);
        bytes.extend(data);
        std::fs::write(&path, bytes).unwrap();
        let msg = load_error(&dir);
        assert_mentions(&msg, &["model.safetensors"]);
    }
    // A header length of 2^63.
    let mut bytes = good.clone();
    bytes[..8].copy_from_slice(&(1u64 << 63).to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    assert_mentions(&load_error(&dir), &["model.safetensors"]);
}

#[test]
fn an_oversized_hyper_parameter_file_is_refused_before_parsing() {
    // `kedit fuzz` found a 2 MB deeply nested YAML file that took 192 MB to parse; real
    // files are under 2 KB, so anything over 256 KiB is refused before the parser runs.
    let mut text = String::from("alg_name: FT\nlayers: [");
    text.push_str(&"1, ".repeat(100_000));
    text.push_str("1]\n");
    let err = HparamsSource::parse(Path::new("wide.yaml"), &text).unwrap_err();
    assert_mentions(&err.to_string(), &["wide.yaml", "bytes"]);
}

#[test]
fn a_sentencepiece_token_of_a_megabyte_is_refused_not_a_hang() {
    // Deriving SentencePiece merges costs the square of a token's length.
    let scratch = Scratch::new("hostile-token");
    let path = gguf_with(&scratch, "token.gguf", |d| {
        set(d, "tokenizer.ggml.model", GgufValue::String("llama".into()));
        let mut tokens: Vec<GgufValue> = kedit::fuzz::tiny::TOKENS
            .iter()
            .map(|t| GgufValue::String(t.to_string()))
            .collect();
        tokens[5] = GgufValue::String("ab".repeat(500_000));
        let scores = vec![GgufValue::F32(0.0); tokens.len()];
        set(d, "tokenizer.ggml.tokens", GgufValue::Array(tokens));
        set(d, "tokenizer.ggml.scores", GgufValue::Array(scores));
    });
    let start = std::time::Instant::now();
    let msg = load_error(&path);
    assert_mentions(&msg, &["token.gguf", "tokenizer.ggml.tokens[5]"]);
    assert!(start.elapsed().as_secs() < 10);
}
