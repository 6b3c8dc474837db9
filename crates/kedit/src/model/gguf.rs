//! Loading GGUF files (llama architecture): every tensor dequantised to f32, Q/K rows
//! un-permuted to Hugging Face's layout, the tokenizer and chat template from metadata.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::model::config::{Activation, Biases, BlockLayout, Family, ModelConfig, NormKind, Rope};
use crate::model::params::{BlockParam, ParamId, Params};

/// What a GGUF file holds, read and checked.
pub struct GgufModel {
    pub config: ModelConfig,
    pub params: Params,
    pub metadata: HashMap<String, Value>,
}

fn meta_u32(path: &Path, md: &HashMap<String, Value>, key: &str) -> Result<Option<u32>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .to_u32()
            .or_else(|_| v.to_u64().map(|x| x as u32))
            .or_else(|_| v.to_i32().map(|x| x as u32))
            .map(Some)
            .map_err(|_| Error::model(path, format!("metadata `{key}` is not an integer"))),
    }
}

fn meta_f64(path: &Path, md: &HashMap<String, Value>, key: &str) -> Result<Option<f64>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v
            .to_f32()
            .map(f64::from)
            .or_else(|_| v.to_f64())
            .map(Some)
            .map_err(|_| Error::model(path, format!("metadata `{key}` is not a number"))),
    }
}

fn required(path: &Path, v: Option<u32>, key: &str) -> Result<usize> {
    v.map(|x| x as usize)
        .ok_or_else(|| Error::model(path, format!("metadata `{key}` is missing")))
}

/// The GGUF tensor holding a canonical parameter of a llama model.
fn gguf_name(id: ParamId) -> Option<String> {
    use BlockParam::*;
    Some(match id {
        ParamId::TokenEmbed => "token_embd.weight".into(),
        ParamId::FinalNormWeight => "output_norm.weight".into(),
        ParamId::LmHeadWeight => "output.weight".into(),
        ParamId::Block(l, p) => {
            let s = match p {
                AttnNormWeight => "attn_norm.weight",
                QWeight => "attn_q.weight",
                QBias => "attn_q.bias",
                KWeight => "attn_k.weight",
                KBias => "attn_k.bias",
                VWeight => "attn_v.weight",
                VBias => "attn_v.bias",
                OWeight => "attn_output.weight",
                MlpNormWeight => "ffn_norm.weight",
                GateWeight => "ffn_gate.weight",
                InWeight => "ffn_up.weight",
                OutWeight => "ffn_down.weight",
                _ => return None,
            };
            format!("blk.{l}.{s}")
        }
        _ => return None,
    })
}

/// llama.cpp's converter permutes Q/K rows for its interleaved RoPE; undo it so the
/// weights are in Hugging Face's layout (rotate-half RoPE).
fn unpermute(t: &Tensor, heads: usize) -> Result<Tensor> {
    let rows = t.dim(0)?;
    let cols = t.elem_count() / rows;
    let hd = rows / heads;
    Ok(t.reshape((heads, hd / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(t.shape())?)
}

/// candle's error without the backtrace it appends when RUST_BACKTRACE is set.
fn plain(e: &candle_core::Error) -> &candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => plain(inner),
        other => other,
    }
}

/// An unreadable header. A file that simply ends too early (an interrupted download or
/// copy) is the common case, so say so.
fn header_error(path: &Path, file_len: u64, e: &candle_core::Error) -> Error {
    let e = plain(e);
    let ended = match e {
        candle_core::Error::Io(io) => io.kind() == std::io::ErrorKind::UnexpectedEof,
        // candle's own bounds checks: "... exceeds remaining file bytes", "only N remaining".
        other => other.to_string().contains("remaining"),
    };
    if ended {
        Error::model(
            path,
            format!(
                "the file is truncated: it ends at byte {file_len}, inside the GGUF header \
                 (metadata and tensor list): {e}"
            ),
        )
    } else {
        Error::model(path, format!("not a readable GGUF file: bad header: {e}"))
    }
}

/// Every tensor the model needs must lie inside the file. Checked before anything is
/// dequantised, so that a truncated file fails at once and names the first tensor cut off.
fn check_extents<'a>(
    path: &Path,
    content: &Content,
    names: impl Iterator<Item = &'a str>,
    file_len: u64,
) -> Result<()> {
    let mut cut = Vec::new();
    for name in names {
        // A missing tensor is reported when it is read.
        let Some(info) = content.tensor_infos.get(name) else {
            continue;
        };
        let dtype = info.ggml_dtype;
        let size = (info.shape.elem_count() / dtype.block_size() * dtype.type_size()) as u64;
        let start = content.tensor_data_offset.saturating_add(info.offset);
        let end = start.saturating_add(size);
        if end > file_len {
            cut.push((start, end, name));
        }
    }
    cut.sort();
    match cut.first() {
        None => Ok(()),
        Some(&(start, end, name)) => Err(Error::tensor(
            path,
            name,
            format!(
                "the file is truncated: this tensor's data spans bytes {start}..{end}, but the \
                 file ends at byte {file_len} ({} tensor(s) cut off)",
                cut.len()
            ),
        )),
    }
}

pub fn load(path: &Path) -> Result<GgufModel> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| header_error(path, file_len, &e))?;
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| Error::model(path, "metadata `general.architecture` is missing"))?;
    if arch != "llama" {
        return Err(Error::model(
            path,
            format!("metadata `general.architecture` is `{arch}`; kedit reads GGUF files of the llama architecture"),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let d = required(
        path,
        meta_u32(path, md, &key("embedding_length"))?,
        &key("embedding_length"),
    )?;
    let heads = required(
        path,
        meta_u32(path, md, &key("attention.head_count"))?,
        &key("attention.head_count"),
    )?;
    let kv_heads =
        meta_u32(path, md, &key("attention.head_count_kv"))?.map_or(heads, |x| x as usize);
    if heads == 0 {
        return Err(Error::model(
            path,
            format!("metadata `{}` is zero", key("attention.head_count")),
        ));
    }
    let head_dim =
        meta_u32(path, md, &key("attention.key_length"))?.map_or(d / heads, |x| x as usize);
    let vocab = match content.tensor_infos.get("token_embd.weight") {
        Some(info) => match info.shape.dims() {
            [vocab, _] => *vocab,
            other => {
                return Err(Error::tensor(
                    path,
                    "token_embd.weight",
                    format!("has shape {other:?}; expected [vocab, embedding_length]"),
                ))
            }
        },
        None => return Err(Error::tensor(path, "token_embd.weight", "is missing")),
    };
    let tokenizer_id = |k: &str| meta_u32(path, md, k);
    let config = ModelConfig {
        family: Family::Llama,
        vocab_size: vocab,
        d_model: d,
        n_layers: required(
            path,
            meta_u32(path, md, &key("block_count"))?,
            &key("block_count"),
        )?,
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim,
        d_ff: required(
            path,
            meta_u32(path, md, &key("feed_forward_length"))?,
            &key("feed_forward_length"),
        )?,
        norm: NormKind::Rms,
        norm_eps: meta_f64(path, md, &key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        activation: Activation::Silu,
        block: BlockLayout::Sequential,
        rope: Some(Rope {
            theta: meta_f64(path, md, &key("rope.freq_base"))?.unwrap_or(10_000.0),
            rotary_dim: meta_u32(path, md, &key("rope.dimension_count"))?
                .map_or(head_dim, |x| x as usize),
            interleaved: false,
        }),
        learned_positions: false,
        max_positions: meta_u32(path, md, &key("context_length"))?.map_or(2048, |x| x as usize),
        sliding_window: None,
        tie_embeddings: !content.tensor_infos.contains_key("output.weight"),
        biases: Biases {
            qkv: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            ..Biases::default()
        },
        bos_token_id: tokenizer_id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: tokenizer_id("tokenizer.ggml.eos_token_id")?,
        pad_token_id: tokenizer_id("tokenizer.ggml.padding_token_id")?,
    };
    config.validate().map_err(|m| Error::model(path, m))?;
    let names: Vec<(ParamId, Vec<usize>, String)> = config
        .param_shapes()
        .into_iter()
        .map(|(id, shape)| {
            let name = gguf_name(id).expect("every llama parameter has a GGUF name");
            (id, shape, name)
        })
        .collect();
    check_extents(path, &content, names.iter().map(|n| n.2.as_str()), file_len)?;
    let device = Device::Cpu;
    let mut params = Params::new();
    for (id, shape, name) in names {
        if !content.tensor_infos.contains_key(&name) {
            return Err(Error::tensor(path, &name, "is missing"));
        }
        let q = content
            .tensor(&mut reader, &name, &device)
            .map_err(|e| Error::tensor(path, &name, plain(&e).to_string()))?;
        let mut t = q
            .dequantize(&device)
            .map_err(|e| Error::tensor(path, &name, format!("cannot dequantise: {}", plain(&e))))?;
        if t.dims() != shape.as_slice() {
            return Err(Error::tensor(
                path,
                &name,
                format!("has shape {:?}; expected {:?}", t.dims(), shape),
            ));
        }
        match id {
            ParamId::Block(_, BlockParam::QWeight | BlockParam::QBias) => t = unpermute(&t, heads)?,
            ParamId::Block(_, BlockParam::KWeight | BlockParam::KBias) => {
                t = unpermute(&t, kv_heads)?
            }
            _ => {}
        }
        params.insert(id, t);
    }
    Ok(GgufModel {
        config,
        params,
        metadata: content.metadata,
    })
}
