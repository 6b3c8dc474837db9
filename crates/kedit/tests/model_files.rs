//! Model files: saving and reloading is exact, saved checkpoints keep Hugging Face's
//! layouts, and broken inputs give errors (never panics) that name the file and the
//! tensor or field at fault.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use common::*;
use kedit::runtime::{LogitsAt, TokenBatch};
use kedit::Model;
use safetensors::SafeTensors;
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Round trips

/// Same configuration, same parameter set, every parameter bit-identical.
fn assert_same_weights(a: &Model, b: &Model, what: &str) {
    assert_eq!(a.config, b.config, "{what}: configuration");
    let ids_a: Vec<_> = a.params.ids().collect();
    let ids_b: Vec<_> = b.params.ids().collect();
    assert_eq!(ids_a, ids_b, "{what}: parameter names");
    for (id, t) in a.params.iter() {
        let u = b.params.require(*id).unwrap();
        assert_eq!(t.dims(), u.dims(), "{what}: `{id}` shape");
        assert_eq!(t.dtype(), u.dtype(), "{what}: `{id}` dtype");
        let bits = |x: &Tensor| -> Vec<u32> {
            x.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
                .collect()
        };
        assert!(bits(t) == bits(u), "{what}: `{id}` differs after reload");
    }
}

fn assert_same_logits(a: &Model, b: &Model, batch: &TokenBatch, what: &str) {
    let run = |m: &Model| {
        m.forward(batch)
            .logits(LogitsAt::All)
            .run()
            .unwrap()
            .logits
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (x, y) = (run(a), run(b));
    assert!(
        x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
        "{what}: logits differ after reload"
    );
}

/// Every tensor of `saved` has the same name, dtype, shape and bytes as in `original`.
fn assert_same_tensor_bytes(saved: &Path, original: &Path) {
    let (a, b) = (
        std::fs::read(saved).unwrap(),
        std::fs::read(original).unwrap(),
    );
    let (sa, sb) = (
        SafeTensors::deserialize(&a).unwrap(),
        SafeTensors::deserialize(&b).unwrap(),
    );
    let mut names_a = sa.names();
    let mut names_b = sb.names();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b, "{}: tensor names", saved.display());
    for name in names_b {
        let (x, y) = (sa.tensor(name).unwrap(), sb.tensor(name).unwrap());
        assert_eq!(x.dtype(), y.dtype(), "`{name}` dtype");
        assert_eq!(x.shape(), y.shape(), "`{name}` shape (HF layout)");
        assert!(
            x.data() == y.data(),
            "`{name}` bytes differ from the original"
        );
    }
}

#[test]
fn tiny_models_save_and_reload_exactly_in_their_original_hf_layouts() {
    let scratch = Scratch::new("round-trip-tiny");
    for arch in TINY_ARCHS {
        let original = Model::load(tiny_dir(arch)).unwrap();
        let out = scratch.join(arch);
        original.save_hf(&out, false).unwrap();
        let reloaded = Model::load(&out).unwrap();
        assert_same_weights(&original, &reloaded, arch);
        let refs = load_tensors(tiny_dir(arch).join("reference.safetensors"));
        assert_same_logits(&original, &reloaded, &tiny_inputs(&refs).batch, arch);
        // Fused and transposed tensors go back to HF's layout byte for byte (GPT-2's Conv1D
        // and c_attn = [q|k|v] columns, NeoX's per-head [q_h|k_h|v_h] rows, ...).
        assert_same_tensor_bytes(
            &out.join("model.safetensors"),
            &tiny_dir(arch).join("model.safetensors"),
        );
        let saved = json(out.join("config.json"));
        assert_eq!(
            saved["architectures"],
            json(tiny_dir(arch).join("config.json"))["architectures"]
        );
    }
    // The layouts the byte comparison covered, spelled out.
    let gpt2 = SafetensorHeader::read(&scratch.join("gpt2/model.safetensors"));
    assert_eq!(gpt2.shape("transformer.h.0.attn.c_attn.weight"), [64, 192]);
    assert_eq!(gpt2.shape("transformer.h.1.mlp.c_proj.weight"), [128, 64]);
    assert!(!gpt2.has("lm_head.weight"), "GPT-2 is tied: no lm_head");
    let neox = SafetensorHeader::read(&scratch.join("gpt_neox/model.safetensors"));
    assert_eq!(
        neox.shape("gpt_neox.layers.0.attention.query_key_value.weight"),
        [192, 64]
    );
}

/// A model built in memory has no config.json of its own: the one written for it must
/// be in its family's format and read back as the same configuration.
#[test]
fn models_built_in_memory_save_a_config_of_their_own_family() {
    let scratch = Scratch::new("from-parts");
    for arch in TINY_ARCHS {
        let loaded = Model::load(tiny_dir(arch)).unwrap();
        let built = Model::from_parts(loaded.config.clone(), loaded.params.clone(), None).unwrap();
        let out = scratch.join(arch);
        built.save_hf(&out, false).unwrap();
        let reloaded = Model::load(&out).unwrap();
        assert_same_weights(&loaded, &reloaded, arch);
        assert_same_tensor_bytes(
            &out.join("model.safetensors"),
            &tiny_dir(arch).join("model.safetensors"),
        );
    }
}

#[test]
fn smollm2_saves_as_hf_directory_with_tokenizer_and_reloads_exactly() {
    let original = smollm2();
    let scratch = Scratch::new("round-trip-smollm2");
    let out = scratch.join("smollm2");
    original.save_hf(&out, false).unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(file).is_file(), "{file} was not written");
    }
    let reloaded = Model::load(&out).unwrap();
    assert_same_weights(original, &reloaded, "smollm2");
    let tok_a = original.tokenizer().unwrap();
    let tok_b = reloaded.tokenizer().unwrap();
    let texts = [
        "The Eiffel Tower is located in the city of",
        "  two leading spaces, digits 2024 and ½ ¾",
        "<|im_start|>user\nWhat is 12+7?<|im_end|>\n",
        "Ελληνικά, русский, 中文, 🎉👍🏽",
    ];
    for text in texts {
        assert_eq!(
            tok_a.encode(text).unwrap(),
            tok_b.encode(text).unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(tok_a.chat_template(), tok_b.chat_template());
    assert_eq!(
        (tok_a.bos_id(), tok_a.eos_id(), tok_a.pad_id()),
        (tok_b.bos_id(), tok_b.eos_id(), tok_b.pad_id())
    );
    let ids = tok_a.encode(texts[0]).unwrap();
    assert_same_logits(original, &reloaded, &TokenBatch::single(&ids), "smollm2");
}

// ---------------------------------------------------------------------------------------
// Broken inputs

/// The error of `Model::load(path)`; fails the test on success or panic.
fn load_error(path: &Path) -> String {
    let result = std::panic::catch_unwind(|| Model::load(path));
    match result {
        Ok(Ok(_)) => panic!("{}: loaded, but an error was expected", path.display()),
        Ok(Err(e)) => {
            println!("{e}");
            e.to_string()
        }
        Err(_) => panic!("Model::load panicked on {}", path.display()),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for part in parts {
        assert!(msg.contains(part), "error does not mention `{part}`: {msg}");
    }
}

/// A copy of a tiny model's `config.json` and `model.safetensors` in `scratch/name`.
fn copy_tiny(arch: &str, scratch: &Scratch, name: &str) -> PathBuf {
    let dir = scratch.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny_dir(arch).join(file), dir.join(file)).unwrap();
    }
    dir
}

type ConfigEdit = fn(&mut serde_json::Map<String, Value>);

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut v = json(path.clone());
    edit(v.as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = load_tensors(path.clone());
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

#[test]
fn bad_config_json_names_the_file_and_the_field() {
    let scratch = Scratch::new("config-cases");

    let dir = copy_tiny("llama", &scratch, "case-arch");
    edit_config(&dir, |c| {
        c.insert(
            "architectures".into(),
            serde_json::json!(["FooForCausalLM"]),
        );
    });
    let msg = load_error(&dir);
    assert_mentions(&msg, &["config.json", "architectures", "FooForCausalLM"]);

    // A required field removed, per family; and one of the wrong type.
    for (arch, field) in [
        ("llama", "hidden_size"),
        ("qwen2", "num_hidden_layers"),
        ("gpt2", "n_embd"),
        ("gptj", "n_head"),
        ("gpt_neox", "intermediate_size"),
    ] {
        let dir = copy_tiny(arch, &scratch, &format!("case-{arch}"));
        edit_config(&dir, |c| {
            c.remove(field);
        });
        let msg = load_error(&dir);
        assert_mentions(&msg, &["config.json", field, "missing"]);
    }
    // Features kedit does not implement are refused by name, never silently ignored.
    let unsupported: [(&str, &str, ConfigEdit); 5] = [
        ("llama", "mlp_bias", |c| {
            c.insert("mlp_bias".into(), true.into());
        }),
        ("gpt2", "scale_attn_weights", |c| {
            c.insert("scale_attn_weights".into(), false.into());
        }),
        ("gptj", "rotary_dim", |c| {
            c.remove("rotary_dim");
        }),
        ("gpt2", "n_head", |c| {
            c.insert("n_head".into(), 5.into());
        }),
        ("gpt_neox", "rope_scaling", |c| {
            let linear = serde_json::json!({"rope_type": "linear", "factor": 2.0});
            c.insert("rope_scaling".into(), linear);
        }),
    ];
    for (i, (arch, field, edit)) in unsupported.into_iter().enumerate() {
        let dir = copy_tiny(arch, &scratch, &format!("case-unsupported-{i}"));
        edit_config(&dir, edit);
        assert_mentions(&load_error(&dir), &["config.json", field]);
    }
    let dir = copy_tiny("mistral", &scratch, "case-type");
    edit_config(&dir, |c| {
        c.insert("hidden_size".into(), Value::String("64".into()));
    });
    assert_mentions(
        &load_error(&dir),
        &["config.json", "hidden_size", "integer"],
    );

    let dir = copy_tiny("llama", &scratch, "case-json");
    std::fs::write(
        dir.join("config.json"),
        "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"hidden_size\": 64,,\n}",
    )
    .unwrap();
    let msg = load_error(&dir);
    assert_mentions(&msg, &["config.json", "invalid JSON", "line 3"]);
}

#[test]
fn missing_or_misshapen_tensors_name_the_file_and_the_tensor() {
    let scratch = Scratch::new("tensor-cases");
    for (arch, name) in [
        ("llama", "model.layers.1.mlp.down_proj.weight"),
        ("gpt2", "transformer.h.0.attn.c_attn.bias"),
        ("gpt_neox", "embed_out.weight"),
        ("gptj", "lm_head.bias"),
    ] {
        let dir = copy_tiny(arch, &scratch, &format!("case-{arch}"));
        edit_tensors(&dir, |t| {
            t.remove(name).unwrap();
        });
        let msg = load_error(&dir);
        assert_mentions(&msg, &["model.safetensors", name, "missing"]);
    }
    // Wrong shapes, including fused and transposed tensors whose parts would still fit.
    for (i, (arch, name, shape)) in [
        (
            "llama",
            "model.layers.1.mlp.down_proj.weight",
            vec![64, 127],
        ),
        ("qwen2", "model.layers.0.self_attn.k_proj.bias", vec![64]),
        ("gpt2", "transformer.h.0.attn.c_attn.weight", vec![64, 200]),
        ("gpt2", "transformer.h.1.mlp.c_proj.weight", vec![64, 128]),
        ("gpt2", "transformer.wpe.weight", vec![100, 64]),
        (
            "gpt_neox",
            "gpt_neox.layers.1.attention.query_key_value.weight",
            vec![240, 64],
        ),
        (
            "gpt_neox",
            "gpt_neox.layers.0.attention.query_key_value.bias",
            vec![190],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = copy_tiny(arch, &scratch, &format!("case-{i}"));
        edit_tensors(&dir, |t| {
            t.insert(
                name.to_string(),
                Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap(),
            );
        });
        let msg = load_error(&dir);
        assert_mentions(&msg, &["model.safetensors", name, "shape"]);
    }
    // A tensor of integers where weights belong.
    let dir = copy_tiny("llama", &scratch, "case-dtype");
    edit_tensors(&dir, |t| {
        t.insert(
            "model.norm.weight".into(),
            Tensor::zeros(64, DType::I64, &Device::Cpu).unwrap(),
        );
    });
    assert_mentions(
        &load_error(&dir),
        &["model.safetensors", "model.norm.weight", "I64"],
    );
}

/// The header of a safetensors file: where each tensor's bytes lie.
struct SafetensorHeader {
    /// Length of the 8-byte size prefix plus the JSON header.
    data_start: usize,
    entries: serde_json::Map<String, Value>,
}

impl SafetensorHeader {
    fn read(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let mut entries = header.as_object().unwrap().clone();
        entries.remove("__metadata__");
        SafetensorHeader {
            data_start: 8 + n,
            entries,
        }
    }

    fn has(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn shape(&self, name: &str) -> Vec<usize> {
        self.entries[name]["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    }

    /// `(name, start, end)` in file offsets, in file order.
    fn spans(&self) -> Vec<(String, usize, usize)> {
        let mut v: Vec<(String, usize, usize)> = self
            .entries
            .iter()
            .map(|(k, e)| {
                let off = e["data_offsets"].as_array().unwrap();
                let at = |i: usize| self.data_start + off[i].as_u64().unwrap() as usize;
                (k.clone(), at(0), at(1))
            })
            .collect();
        v.sort_by_key(|s| s.1);
        v
    }
}

fn write_prefix(bytes: &[u8], n: usize, path: &Path) {
    std::fs::write(path, &bytes[..n]).unwrap();
}

#[test]
fn truncated_safetensors_names_the_file_and_the_cut_tensor() {
    let scratch = Scratch::new("cut-safetensors");
    for arch in ["llama", "gpt2"] {
        let original = tiny_dir(arch).join("model.safetensors");
        let bytes = std::fs::read(&original).unwrap();
        let header = SafetensorHeader::read(&original);
        let spans = header.spans();
        let (mid_name, mid_start, mid_end) = spans[spans.len() / 2].clone();
        let cuts = [
            (0, None),
            (5, None),
            (header.data_start / 2, None),
            (header.data_start, Some(spans[0].0.clone())),
            ((mid_start + mid_end) / 2, Some(mid_name)),
            (bytes.len() - 1, Some(spans.last().unwrap().0.clone())),
        ];
        for (n, cut_tensor) in cuts {
            let dir = copy_tiny(arch, &scratch, &format!("{arch}-{n}"));
            write_prefix(&bytes, n, &dir.join("model.safetensors"));
            let msg = load_error(&dir);
            match cut_tensor {
                // Cut inside the data: the first tensor that does not fit is named.
                Some(name) => assert_mentions(&msg, &["model.safetensors", "truncated", &name]),
                None => assert_mentions(&msg, &["model.safetensors", "truncated", "header"]),
            }
        }
    }
}

#[test]
fn truncated_gguf_names_the_file_and_the_header_or_cut_tensor() {
    let real = model_path();
    let bytes = std::fs::read(&real).unwrap();
    let content = {
        let mut f = std::fs::File::open(&real).unwrap();
        gguf_file::Content::read(&mut f).unwrap()
    };
    let data_start = content.tensor_data_offset as usize;
    // End offset of each tensor's bytes.
    let ends: Vec<(String, usize)> = content
        .tensor_infos
        .iter()
        .map(|(name, info)| {
            let size = info.shape.elem_count() / info.ggml_dtype.block_size()
                * info.ggml_dtype.type_size();
            (name.clone(), data_start + info.offset as usize + size)
        })
        .collect();
    let scratch = Scratch::new("cut-gguf");
    let cuts = [
        0,
        3,
        10,
        30,
        100_000,
        data_start / 2,
        data_start - 1,
        data_start + 1000,
        bytes.len() / 2,
        bytes.len() - 1,
    ];
    for n in cuts {
        let path = scratch.join(&format!("prefix-{n}.gguf"));
        write_prefix(&bytes, n, &path);
        let msg = load_error(&path);
        assert_mentions(&msg, &[&format!("prefix-{n}.gguf"), "truncated"]);
        // A cut in the padding between header and data leaves the header whole.
        if n < data_start && msg.contains("header") {
            assert_mentions(&msg, &["GGUF header"]);
        } else {
            let cut: Vec<&String> = ends
                .iter()
                .filter(|(_, end)| *end > n)
                .map(|(name, _)| name)
                .collect();
            assert!(
                cut.iter().any(|name| msg.contains(&format!("`{name}`"))),
                "cut at {n}: the error names none of the {} cut tensors: {msg}",
                cut.len()
            );
        }
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn a_nonexistent_path_is_an_error_naming_it() {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("no-such-model-here");
    let msg = load_error(&path);
    assert_mentions(&msg, &["no-such-model-here", "no such file or directory"]);
    // A directory without weights.
    let scratch = Scratch::new("empty-dir");
    std::fs::copy(
        tiny_dir("llama").join("config.json"),
        scratch.join("config.json"),
    )
    .unwrap();
    let msg = load_error(scratch.path());
    assert_mentions(&msg, &["model.safetensors"]);
    // A directory without config.json.
    let scratch = Scratch::new("no-config");
    let msg = load_error(scratch.path());
    assert_mentions(&msg, &["config.json"]);
}
