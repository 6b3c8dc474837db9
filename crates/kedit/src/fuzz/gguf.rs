//! GGUF files: a tiny synthetic llama model written by a GGUF writer of our own (so that
//! any field, count or offset can be made to lie), mutated as structure (metadata values,
//! types and counts; tensor shapes, types and offsets) and as bytes.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use super::mutate::{self, below, chance, nasty_f64, nasty_u64};
use super::tiny;
use crate::error::Result;
use crate::model::arch;
use crate::model::gguf_write::value_type;
use crate::model::Model;
use crate::rng::Rng;

/// One tensor of a GGUF file as its header describes it.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub name: String,
    /// GGUF order: the innermost (fastest) dimension first.
    pub dims: Vec<u64>,
    pub dtype: u32,
    pub offset: u64,
}

/// A GGUF file as values, written by [`GgufDoc::to_bytes`].
#[derive(Clone, Debug)]
pub struct GgufDoc {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorEntry>,
    pub data: Vec<u8>,
    /// Counts written instead of the true ones.
    pub tensor_count: Option<u64>,
    pub metadata_count: Option<u64>,
}

impl GgufDoc {
    fn len(&self, out: &mut Vec<u8>, n: u64) {
        if self.version == 1 {
            out.extend((n as u32).to_le_bytes());
        } else {
            out.extend(n.to_le_bytes());
        }
    }

    fn string(&self, out: &mut Vec<u8>, s: &str) {
        self.len(out, s.len() as u64);
        out.extend(s.as_bytes());
    }

    fn value(&self, out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend(x.to_le_bytes()),
            Value::I16(x) => out.extend(x.to_le_bytes()),
            Value::U32(x) => out.extend(x.to_le_bytes()),
            Value::I32(x) => out.extend(x.to_le_bytes()),
            Value::U64(x) => out.extend(x.to_le_bytes()),
            Value::I64(x) => out.extend(x.to_le_bytes()),
            Value::F32(x) => out.extend(x.to_le_bytes()),
            Value::F64(x) => out.extend(x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => self.string(out, s),
            Value::Array(a) => {
                let ty = a.first().map_or(4, value_type);
                out.extend(ty.to_le_bytes());
                self.len(out, a.len() as u64);
                for x in a {
                    self.value(out, x);
                }
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(0x4655_4747u32.to_le_bytes());
        out.extend(self.version.to_le_bytes());
        self.len(
            &mut out,
            self.tensor_count.unwrap_or(self.tensors.len() as u64),
        );
        self.len(
            &mut out,
            self.metadata_count.unwrap_or(self.metadata.len() as u64),
        );
        for (k, v) in &self.metadata {
            self.string(&mut out, k);
            out.extend(value_type(v).to_le_bytes());
            self.value(&mut out, v);
        }
        for t in &self.tensors {
            self.string(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                self.len(&mut out, d);
            }
            out.extend(t.dtype.to_le_bytes());
            out.extend(t.offset.to_le_bytes());
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }
}

/// GGUF's number of the Q8_0 type.
const Q8_0: u32 = 8;

/// `x` (a multiple of 32 values) as Q8_0 blocks: an f16 scale and 32 signed bytes each.
fn q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for block in x.chunks(32) {
        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = max / 127.0;
        out.extend(half::f16::from_f32(d).to_le_bytes());
        for v in block {
            let q = if d > 0.0 { (v / d).round() } else { 0.0 };
            out.push(q as i8 as u8);
        }
    }
    out
}

fn strings(list: &[&str]) -> Value {
    Value::Array(list.iter().map(|s| Value::String(s.to_string())).collect())
}

/// The tiny llama model as a GGUF file (f32 tensors, a byte-level BPE tokenizer).
pub fn tiny_doc() -> Result<GgufDoc> {
    let model = tiny::llama(2)?;
    let cfg = &model.config;
    let names = arch::by_gguf_name("llama")
        .and_then(|a| a.gguf)
        .expect("llama reads GGUF");
    let mut tensors = Vec::new();
    let mut data = Vec::new();
    for (id, shape) in cfg.param_shapes() {
        let name = (names.tensor)(id).expect("every llama parameter has a GGUF name");
        let t = model.params.require(id)?.flatten_all()?.to_vec1::<f32>()?;
        // The embedding and the MLP's output as Q8_0, as in real files: candle's
        // quantised readers meet hostile shapes too.
        let quantised = name == "token_embd.weight" || name.ends_with("ffn_down.weight");
        tensors.push(TensorEntry {
            name,
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            dtype: if quantised { Q8_0 } else { 0 },
            offset: data.len() as u64,
        });
        if quantised {
            data.extend(q8_0(&t));
        } else {
            data.extend(t.iter().flat_map(|x| x.to_le_bytes()));
        }
        while data.len() % 32 != 0 {
            data.push(0);
        }
    }
    let arch = |k: &str| format!("llama.{k}");
    let tokens = tiny::TOKENS;
    let metadata = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.alignment".into(), Value::U32(32)),
        (arch("block_count"), Value::U32(cfg.n_layers as u32)),
        (arch("context_length"), Value::U32(cfg.max_positions as u32)),
        (arch("embedding_length"), Value::U32(cfg.d_model as u32)),
        (arch("feed_forward_length"), Value::U32(cfg.d_ff as u32)),
        (arch("attention.head_count"), Value::U32(cfg.n_heads as u32)),
        (
            arch("attention.head_count_kv"),
            Value::U32(cfg.n_kv_heads as u32),
        ),
        (
            arch("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.norm_eps as f32),
        ),
        (arch("rope.freq_base"), Value::F32(10_000.0)),
        (
            arch("rope.dimension_count"),
            Value::U32(cfg.head_dim as u32),
        ),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                (0..tokens.len())
                    .map(|i| Value::I32(if i < 2 { 3 } else { 1 }))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.merges".into(), strings(tiny::MERGES)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
    ];
    Ok(GgufDoc {
        version: 3,
        metadata,
        tensors,
        data,
        tensor_count: None,
        metadata_count: None,
    })
}

/// A metadata value broken in one way.
fn nasty_gguf_value(rng: &mut Rng, old: &Value) -> Value {
    match below(rng, 10) {
        0 => Value::U32(nasty_u64(rng) as u32),
        1 => Value::U64(nasty_u64(rng)),
        2 => Value::I32(-(below(rng, 100) as i32) - 1),
        3 => Value::F32(nasty_f64(rng) as f32),
        4 => Value::F64(nasty_f64(rng)),
        5 => Value::String(["", "NaN", "llama", "gemma3", "x"][below(rng, 5)].into()),
        6 => Value::Bool(chance(rng, 0.5)),
        7 => match old {
            Value::Array(a) if !a.is_empty() => {
                let mut a = a.clone();
                match below(rng, 4) {
                    0 => a.truncate(below(rng, a.len())),
                    1 => a.push(a[0].clone()),
                    2 => {
                        let i = below(rng, a.len());
                        a[i] = nasty_gguf_value(rng, &a[i]);
                    }
                    _ => a = vec![Value::Array(a.clone())],
                }
                Value::Array(a)
            }
            _ => Value::Array(vec![]),
        },
        8 => Value::U8(nasty_u64(rng) as u8),
        _ => Value::U32(0),
    }
}

/// One structural change to the document.
pub fn mutate_doc(rng: &mut Rng, doc: &mut GgufDoc) {
    match below(rng, 12) {
        0..=3 => {
            let i = below(rng, doc.metadata.len());
            let old = doc.metadata[i].1.clone();
            doc.metadata[i].1 = nasty_gguf_value(rng, &old);
        }
        4 => {
            if !doc.metadata.is_empty() {
                let i = below(rng, doc.metadata.len());
                doc.metadata.remove(i);
            }
        }
        5 => {
            let key = [
                "llama.attention.key_length",
                "llama.attention.head_count_kv",
                "general.alignment",
                "llama.rope.dimension_count",
                "tokenizer.ggml.padding_token_id",
                "tokenizer.chat_template",
                "tokenizer.ggml.add_bos_token",
            ][below(rng, 7)];
            let v = nasty_gguf_value(rng, &Value::U32(0));
            doc.metadata.push((key.into(), v));
        }
        6..=8 => {
            let i = below(rng, doc.tensors.len());
            let t = &mut doc.tensors[i];
            match below(rng, 6) {
                0 => {
                    let d = below(rng, t.dims.len().max(1));
                    if let Some(x) = t.dims.get_mut(d) {
                        *x = nasty_u64(rng);
                    }
                }
                1 => t.dims.push(nasty_u64(rng) % 8),
                2 => t.dtype = [1, 2, 3, 8, 12, 14, 30, 5, 99, u32::MAX][below(rng, 10)],
                3 => t.offset = nasty_u64(rng),
                4 => {
                    t.name = ["", "token_embd.weight", "blk.0.attn_q.weight"][below(rng, 3)].into()
                }
                _ => {
                    t.dims = (0..below(rng, 6))
                        .map(|_| 1 + below(rng, 9) as u64)
                        .collect()
                }
            }
        }
        9 => {
            if !doc.tensors.is_empty() {
                let i = below(rng, doc.tensors.len());
                doc.tensors.remove(i);
            }
        }
        10 => {
            if chance(rng, 0.5) {
                doc.tensor_count = Some(nasty_u64(rng));
            } else {
                doc.metadata_count = Some(nasty_u64(rng));
            }
        }
        _ => doc.version = [1, 2, 3, 0, 4][below(rng, 5)],
    }
}

/// One case: a mutated tiny GGUF file at `path`, loaded; when it loads, a short forward
/// and a generation run on it.
pub fn case(rng: &mut Rng, seed: &GgufDoc, path: &Path) -> Result<()> {
    let mut doc = seed.clone();
    let structural = 1 + below(rng, 3);
    for _ in 0..structural {
        if chance(rng, 0.8) {
            mutate_doc(rng, &mut doc);
        }
    }
    let mut bytes = doc.to_bytes();
    if chance(rng, 0.4) {
        for _ in 0..1 + below(rng, 4) {
            mutate::bytes(rng, &mut bytes);
        }
    }
    std::fs::write(path, &bytes).map_err(|e| crate::Error::io(path, e))?;
    let model = Model::load(path)?;
    tiny::exercise(&model, rng)
}
