//! BERT, as all-MiniLM-L6-v2 uses it: word + position + token-type embeddings and a
//! LayerNorm, then post-LN blocks (attention, add, LayerNorm; GELU-erf MLP, add, LayerNorm)
//! with bidirectional attention over the unpadded tokens. Every op is differentiable, so
//! the same forward serves embedding and fine-tuning (SERAC's scope classifier).

use std::path::Path;

use candle_core::{DType, Tensor, D};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::config::Activation;
use crate::model::safetensors_io::SafetensorFiles;
use crate::runtime::ops::{activation, layer_norm, linear, masked_softmax, Weight, MASKED};

/// The fields of `config.json` the forward reads.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_position_type() -> String {
    "absolute".into()
}

impl BertConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: BertConfig = serde_json::from_str(&text)
            .map_err(|e| Error::model(path, format!("not a BERT config: {e}")))?;
        let fail = |m: String| Err(Error::model(path, m));
        if cfg.hidden_size == 0
            || cfg.num_attention_heads == 0
            || cfg.hidden_size % cfg.num_attention_heads != 0
        {
            return fail(format!(
                "`hidden_size` {} is not a positive multiple of `num_attention_heads` {}",
                cfg.hidden_size, cfg.num_attention_heads
            ));
        }
        if cfg.num_hidden_layers == 0 || cfg.intermediate_size == 0 || cfg.vocab_size == 0 {
            return fail(
                "`num_hidden_layers`, `intermediate_size` and `vocab_size` must be positive".into(),
            );
        }
        if cfg.position_embedding_type != "absolute" {
            return fail(format!(
                "`position_embedding_type` is `{}`; only `absolute` is supported",
                cfg.position_embedding_type
            ));
        }
        cfg.activation().map_err(|m| Error::model(path, m))?;
        Ok(cfg)
    }

    pub fn activation(&self) -> std::result::Result<Activation, String> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(format!("`hidden_act` `{other}` is not supported")),
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// A linear layer's weight `[out, in]` and bias `[out]`.
#[derive(Clone, Debug)]
pub struct Dense {
    pub w: Tensor,
    pub b: Tensor,
}

/// A LayerNorm's scale and shift.
#[derive(Clone, Debug)]
pub struct Norm {
    pub w: Tensor,
    pub b: Tensor,
}

#[derive(Clone, Debug)]
pub struct BertLayer {
    pub query: Dense,
    pub key: Dense,
    pub value: Dense,
    pub attn_out: Dense,
    pub attn_norm: Norm,
    pub intermediate: Dense,
    pub output: Dense,
    pub out_norm: Norm,
}

/// Every weight of the encoder, by role. The tensors may be `Var`s (fine-tuning).
#[derive(Clone, Debug)]
pub struct BertWeights {
    pub word: Tensor,
    pub position: Tensor,
    pub token_type: Tensor,
    pub embed_norm: Norm,
    pub layers: Vec<BertLayer>,
}

impl BertWeights {
    /// Reads the weights under Hugging Face's names (with or without a `bert.` prefix),
    /// checking every shape against the config.
    pub fn read(files: &SafetensorFiles, cfg: &BertConfig) -> Result<Self> {
        let prefix = if files.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let full = format!("{prefix}{name}");
            let t = files.get(&full)?.to_dtype(DType::F32)?;
            if t.dims() != shape {
                return Err(Error::tensor(
                    files.describe(),
                    &full,
                    format!("has shape {:?}; the config implies {shape:?}", t.dims()),
                ));
            }
            Ok(t)
        };
        let h = cfg.hidden_size;
        let dense = |name: &str, out: usize, inp: usize| -> Result<Dense> {
            Ok(Dense {
                w: get(&format!("{name}.weight"), &[out, inp])?,
                b: get(&format!("{name}.bias"), &[out])?,
            })
        };
        let norm = |name: &str| -> Result<Norm> {
            Ok(Norm {
                w: get(&format!("{name}.weight"), &[h])?,
                b: get(&format!("{name}.bias"), &[h])?,
            })
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                let p = format!("encoder.layer.{l}");
                Ok(BertLayer {
                    query: dense(&format!("{p}.attention.self.query"), h, h)?,
                    key: dense(&format!("{p}.attention.self.key"), h, h)?,
                    value: dense(&format!("{p}.attention.self.value"), h, h)?,
                    attn_out: dense(&format!("{p}.attention.output.dense"), h, h)?,
                    attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                    intermediate: dense(
                        &format!("{p}.intermediate.dense"),
                        cfg.intermediate_size,
                        h,
                    )?,
                    output: dense(&format!("{p}.output.dense"), h, cfg.intermediate_size)?,
                    out_norm: norm(&format!("{p}.output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BertWeights {
            word: get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?,
            position: get(
                "embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
            )?,
            token_type: get(
                "embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab_size, h],
            )?,
            embed_norm: norm("embeddings.LayerNorm")?,
            layers,
        })
    }

    /// Every tensor with its Hugging Face name (for saving a fine-tuned encoder and for
    /// fingerprints).
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> = vec![
            ("embeddings.word_embeddings.weight".into(), &self.word),
            (
                "embeddings.position_embeddings.weight".into(),
                &self.position,
            ),
            (
                "embeddings.token_type_embeddings.weight".into(),
                &self.token_type,
            ),
            ("embeddings.LayerNorm.weight".into(), &self.embed_norm.w),
            ("embeddings.LayerNorm.bias".into(), &self.embed_norm.b),
        ];
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("encoder.layer.{l}");
            let parts: [(&str, &Tensor); 16] = [
                ("attention.self.query.weight", &layer.query.w),
                ("attention.self.query.bias", &layer.query.b),
                ("attention.self.key.weight", &layer.key.w),
                ("attention.self.key.bias", &layer.key.b),
                ("attention.self.value.weight", &layer.value.w),
                ("attention.self.value.bias", &layer.value.b),
                ("attention.output.dense.weight", &layer.attn_out.w),
                ("attention.output.dense.bias", &layer.attn_out.b),
                ("attention.output.LayerNorm.weight", &layer.attn_norm.w),
                ("attention.output.LayerNorm.bias", &layer.attn_norm.b),
                ("intermediate.dense.weight", &layer.intermediate.w),
                ("intermediate.dense.bias", &layer.intermediate.b),
                ("output.dense.weight", &layer.output.w),
                ("output.dense.bias", &layer.output.b),
                ("output.LayerNorm.weight", &layer.out_norm.w),
                ("output.LayerNorm.bias", &layer.out_norm.b),
            ];
            out.extend(parts.into_iter().map(|(n, t)| (format!("{p}.{n}"), t)));
        }
        out
    }
}

/// Right-padded token ids of several texts: `ids: [rows, len]` (u32) and `mask: [rows,
/// len]` (1.0 on tokens, 0.0 on padding).
#[derive(Clone, Debug)]
pub struct EncoderBatch {
    pub ids: Tensor,
    pub mask: Tensor,
    pub lengths: Vec<usize>,
}

impl EncoderBatch {
    pub fn new(rows: &[Vec<u32>]) -> Result<Self> {
        let len = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut mask = Vec::with_capacity(rows.len() * len);
        for r in rows {
            ids.extend(r.iter().copied().chain(std::iter::repeat(0)).take(len));
            mask.extend((0..len).map(|i| if i < r.len() { 1f32 } else { 0.0 }));
        }
        let dev = candle_core::Device::Cpu;
        Ok(EncoderBatch {
            ids: Tensor::from_vec(ids, (rows.len(), len), &dev)?,
            mask: Tensor::from_vec(mask, (rows.len(), len), &dev)?,
            lengths: rows.iter().map(Vec::len).collect(),
        })
    }
}

/// The last hidden state `[rows, len, hidden]` (padding positions carry numbers nobody
/// should read).
pub fn forward(cfg: &BertConfig, w: &BertWeights, batch: &EncoderBatch) -> Result<Tensor> {
    let (rows, len) = batch.ids.dims2()?;
    if len > cfg.max_position_embeddings {
        return Err(Error::invalid(format!(
            "an input of {len} tokens is longer than the encoder's {} positions",
            cfg.max_position_embeddings
        )));
    }
    let h = cfg.hidden_size;
    let words = w
        .word
        .index_select(&batch.ids.flatten_all()?, 0)?
        .reshape((rows, len, h))?;
    let positions = w.position.narrow(0, 0, len)?.unsqueeze(0)?;
    let types = w.token_type.narrow(0, 0, 1)?.unsqueeze(0)?;
    let embedded = words.broadcast_add(&positions)?.broadcast_add(&types)?;
    let mut x = norm(&embedded, &w.embed_norm, cfg.layer_norm_eps)?;
    // Padding keys get a large negative score; every query row sees the same keys.
    let key_mask = ((batch.mask.ones_like()? - &batch.mask)? * MASKED)?
        .reshape((rows, 1, 1, len))?
        .broadcast_as((rows, 1, len, len))?
        .contiguous()?;
    let act = cfg.activation().map_err(Error::invalid)?;
    for layer in &w.layers {
        x = block(cfg, layer, &x, &key_mask, act)?;
    }
    Ok(x)
}

fn block(
    cfg: &BertConfig,
    layer: &BertLayer,
    x: &Tensor,
    key_mask: &Tensor,
    act: Activation,
) -> Result<Tensor> {
    let (rows, len, h) = x.dims3()?;
    let (heads, dh) = (cfg.num_attention_heads, cfg.head_dim());
    let split = |d: &Dense| -> Result<Tensor> {
        Ok(dense(x, d)?
            .reshape((rows, len, heads, dh))?
            .transpose(1, 2)?
            .contiguous()?)
    };
    let q = (split(&layer.query)? * (1.0 / (dh as f64).sqrt()))?;
    let k = split(&layer.key)?;
    let v = split(&layer.value)?;
    let scores = q.matmul(&k.transpose(2, 3)?.contiguous()?)?;
    let probs = masked_softmax(&scores, key_mask)?;
    let context = probs
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, len, h))?;
    let attended = norm(
        &(dense(&context, &layer.attn_out)? + x)?,
        &layer.attn_norm,
        cfg.layer_norm_eps,
    )?;
    let inner = activation(&dense(&attended, &layer.intermediate)?, act)?;
    norm(
        &(dense(&inner, &layer.output)? + &attended)?,
        &layer.out_norm,
        cfg.layer_norm_eps,
    )
}

fn dense(x: &Tensor, d: &Dense) -> Result<Tensor> {
    linear(x, Weight::Plain(&d.w), Some(&d.b))
}

fn norm(x: &Tensor, n: &Norm, eps: f64) -> Result<Tensor> {
    layer_norm(x, &n.w, Some(&n.b), eps)
}

/// Mean of the hidden states over each row's tokens, `[rows, hidden]`.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&m)?.sum(1)?;
    let counts = mask.sum_keepdim(1)?.clamp(1e-9, f64::MAX)?;
    Ok(summed.broadcast_div(&counts)?)
}

/// Rows scaled to unit L2 norm (a zero row stays zero, as in PyTorch's `normalize`).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norms = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norms)?)
}
