//! An architecture-neutral description of a decoder-only transformer.
//!
//! Every supported architecture is expressed in these terms once, when it is loaded; the
//! runtime then has a single forward pass that reads this description.

use serde::{Deserialize, Serialize};

use crate::model::arch;
use crate::model::params::{BlockParam, ParamId};

/// The Hugging Face model families kedit can load; each has its file under
/// [`crate::model::arch`] and a line in its registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Gpt2,
    GptJ,
    GptNeoX,
    Gemma3,
}

impl Family {
    /// The `architectures[0]` value of a Hugging Face `config.json`.
    pub fn hf_class(self) -> &'static str {
        arch::spec(self).hf_class
    }

    pub fn from_hf_class(class: &str) -> Option<Self> {
        arch::by_hf_class(class).map(|a| a.family)
    }

    /// The `model_type` value of a Hugging Face `config.json`.
    pub fn model_type(self) -> &'static str {
        arch::spec(self).model_type
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NormKind {
    Rms,
    Layer,
}

/// The non-linearity of the MLP (gated or not is a property of the family, see
/// [`ModelConfig::gated_mlp`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (`gelu_new`).
    GeluTanh,
    /// Exact GELU (erf).
    GeluErf,
    Relu,
}

/// How attention and MLP are wired into the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockLayout {
    /// h += attn(norm1(h)); h += mlp(norm2(h))   (LLaMA, GPT-2, sequential NeoX)
    Sequential,
    /// h += attn(norm1(h)) + mlp(norm1(h))      (GPT-J: one norm shared)
    ParallelSharedNorm,
    /// h += attn(norm1(h)) + mlp(norm2(h))      (GPT-NeoX `use_parallel_residual`)
    Parallel,
    /// h += post1(attn(norm1(h))); h += post2(mlp(norm2(h)))   (Gemma 3: four norms)
    Sandwich,
}

/// Rotary position embedding on the first `rotary_dim` dimensions of each head.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rope {
    pub theta: f64,
    pub rotary_dim: usize,
    /// true: rotate pairs (2i, 2i+1) (GPT-J); false: rotate (i, i + rotary_dim/2) (NeoX style).
    pub interleaved: bool,
}

/// Which linear layers carry a bias (LayerNorms always do, RMSNorms never).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Biases {
    pub qkv: bool,
    pub attn_out: bool,
    pub mlp: bool,
    pub lm_head: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub activation: Activation,
    pub block: BlockLayout,
    pub rope: Option<Rope>,
    /// Learned absolute position embeddings (GPT-2).
    pub learned_positions: bool,
    pub max_positions: usize,
    /// A key j is visible to query i only if i - window < j (Mistral).
    pub sliding_window: Option<usize>,
    // The fields below are left out of the serialised form when unused, so that the
    // configurations (and fingerprints: cached statistics) of the other architectures stay
    // what they were before these fields existed.
    /// Which layers the window applies to; `None`: all of them (Gemma 3 alternates
    /// sliding-window layers with global ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_layers: Option<Vec<bool>>,
    /// The RoPE base of the sliding-window layers, where it differs from `rope.theta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rope_theta: Option<f64>,
    /// Token embeddings are multiplied by this (Gemma: √d_model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed_scale: Option<f64>,
    /// RMSNorm over each query and key head before RoPE (weights `attn.{q,k}_norm`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub qk_norm: bool,
    /// Scores are q·k times this; `None`: 1/√head_dim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_scale: Option<f64>,
    pub tie_embeddings: bool,
    pub biases: Biases,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

impl ModelConfig {
    /// LLaMA-family and Gemma MLPs are always gated, key = act(gate(x)) · up(x), whatever
    /// their activation; GPT-2, GPT-J and GPT-NeoX never are: key = act(in(x)). Each
    /// architecture says which in its registry line.
    pub fn gated_mlp(&self) -> bool {
        arch::spec(self.family).gated_mlp
    }

    /// Whether layer `l` attends only within the sliding window.
    pub fn is_sliding(&self, l: usize) -> bool {
        self.sliding_window.is_some()
            && self
                .sliding_layers
                .as_ref()
                .is_none_or(|layers| layers.get(l).copied().unwrap_or(false))
    }

    /// The rotary embedding of layer `l`.
    pub fn rope_at(&self, l: usize) -> Option<Rope> {
        let rope = self.rope?;
        match self.local_rope_theta {
            Some(theta) if self.is_sliding(l) => Some(Rope { theta, ..rope }),
            _ => Some(rope),
        }
    }

    /// The factor of the attention scores.
    pub fn query_scale(&self) -> f64 {
        self.attn_scale
            .unwrap_or(1.0 / (self.head_dim as f64).sqrt())
    }

    /// Query heads per key/value head (grouped-query attention).
    pub fn kv_group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// A one-line summary.
    pub fn describe(&self) -> String {
        format!(
            "{:?}: {} layers, d_model {}, {} heads ({} kv, head_dim {}), d_ff {}, vocab {}",
            self.family,
            self.n_layers,
            self.d_model,
            self.n_heads,
            self.n_kv_heads,
            self.head_dim,
            self.d_ff,
            self.vocab_size
        )
    }

    /// Checks the numbers fit together, so that the forward pass never meets a shape error,
    /// and that each is within what any real model uses, so that a hostile file cannot
    /// make kedit allocate without bound or compute garbage (a NaN RoPE base, a zero
    /// epsilon) without a word.
    pub fn validate(&self) -> Result<(), String> {
        let counts = [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("d_model", self.d_model, MAX_WIDTH),
            ("n_layers", self.n_layers, MAX_LAYERS),
            ("n_heads", self.n_heads, MAX_HEADS),
            ("n_kv_heads", self.n_kv_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_WIDTH),
            ("d_ff", self.d_ff, MAX_WIDTH),
            ("max_positions", self.max_positions, MAX_POSITIONS),
        ];
        for (name, v, max) in counts {
            check_count(name, v, max)?;
        }
        check_real("norm_eps (RMS/layer-norm epsilon)", self.norm_eps, 0.0, 1.0)?;
        if let Some(r) = self.rope {
            check_real("rope_theta (RoPE base)", r.theta, 1.0, MAX_ROPE_THETA)?;
        }
        if let Some(t) = self.local_rope_theta {
            check_real("local_rope_theta (RoPE base)", t, 1.0, MAX_ROPE_THETA)?;
        }
        if let Some(s) = self.embed_scale {
            check_real("embed_scale", s, 0.0, 1e6)?;
        }
        if let Some(s) = self.attn_scale {
            check_real("attn_scale (query_pre_attn_scalar^-1/2)", s, 0.0, 1e6)?;
        }
        if let Some(w) = self.sliding_window {
            check_count("sliding_window", w, usize::MAX)?;
        }
        if self
            .n_heads
            .checked_mul(self.head_dim)
            .is_none_or(|q| q > MAX_WIDTH)
        {
            return Err(format!(
                "n_heads × head_dim ({} × {}) exceeds {MAX_WIDTH}",
                self.n_heads, self.head_dim
            ));
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.n_heads, self.n_kv_heads
            ));
        }
        if let Some(r) = self.rope {
            if r.rotary_dim == 0 || r.rotary_dim > self.head_dim || r.rotary_dim % 2 != 0 {
                return Err(format!(
                    "rotary dimension {} must be even and within head_dim {}",
                    r.rotary_dim, self.head_dim
                ));
            }
        }
        if self.sliding_window == Some(0) {
            return Err("sliding_window must be positive".into());
        }
        if let Some(layers) = &self.sliding_layers {
            if layers.len() != self.n_layers {
                return Err(format!(
                    "{} layer types for {} layers",
                    layers.len(),
                    self.n_layers
                ));
            }
        }
        Ok(())
    }
}

/// Bounds on sizes and counts, far above any released model (Llama 3 405B: width 16 384,
/// 126 layers, 128 heads, feed-forward 53 248; vocabularies reach 262 144; contexts
/// 10 million tokens), checked before anything is allocated from them.
pub const MAX_VOCAB: usize = 1 << 24;
pub const MAX_WIDTH: usize = 1 << 20;
pub const MAX_LAYERS: usize = 4096;
pub const MAX_HEADS: usize = 4096;
pub const MAX_POSITIONS: usize = 1 << 26;
pub const MAX_ROPE_THETA: f64 = 1e12;

/// A count must be positive and at most `max`.
pub fn check_count(name: &str, v: usize, max: usize) -> Result<(), String> {
    if v == 0 {
        return Err(format!("`{name}` must be positive"));
    }
    if v > max {
        return Err(format!(
            "`{name}` is {v}; more than {max} is not a real model"
        ));
    }
    Ok(())
}

/// A real number must be finite and in `(lo, hi]`.
pub fn check_real(name: &str, v: f64, lo: f64, hi: f64) -> Result<(), String> {
    if !v.is_finite() || v <= lo || v > hi {
        return Err(format!(
            "`{name}` is {v}; it must be a finite number above {lo} and at most {hi}"
        ));
    }
    Ok(())
}

impl ModelConfig {
    /// The number of weights of every parameter together, computed without allocating
    /// (the configuration must have passed [`ModelConfig::validate`]).
    pub fn param_count(&self) -> u64 {
        let one_layer = ModelConfig {
            n_layers: 1,
            sliding_layers: None,
            ..self.clone()
        };
        let count = |shapes: &[(ParamId, Vec<usize>)], layer: bool| -> u64 {
            shapes
                .iter()
                .filter(|(id, _)| matches!(id, ParamId::Block(..)) == layer)
                .map(|(_, s)| s.iter().map(|&d| d as u64).product::<u64>())
                .sum()
        };
        let shapes = one_layer.param_shapes();
        count(&shapes, false) + self.n_layers as u64 * count(&shapes, true)
    }

    /// Refuses a model whose weights (as f32) could not fit in this machine's memory, or
    /// that needs more weights than `file_len` bytes can hold at `min_bits` bits each:
    /// checked before any tensor is read.
    pub fn check_fits(&self, file_len: u64, min_bits: u64) -> Result<(), String> {
        let n = self.param_count();
        let needs = n.saturating_mul(min_bits) / 8;
        if needs > file_len {
            return Err(format!(
                "{}: {n} weights need at least {needs} bytes, but the weights take {file_len} \
                 bytes: the sizes in the configuration do not match the tensors",
                self.describe()
            ));
        }
        let f32_bytes = n.saturating_mul(4);
        if let Some(mem) = memory_bytes() {
            if f32_bytes > mem {
                return Err(format!(
                    "{}: {n} weights need {:.1} GiB as f32; this machine has {:.1} GiB",
                    self.describe(),
                    f32_bytes as f64 / (1u64 << 30) as f64,
                    mem as f64 / (1u64 << 30) as f64
                ));
            }
        }
        Ok(())
    }
}

/// This machine's memory (`MemTotal` of `/proc/meminfo`), where known.
fn memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

impl ModelConfig {
    /// Every parameter this configuration needs, with its shape (linear weights `[out, in]`).
    pub fn param_shapes(&self) -> Vec<(ParamId, Vec<usize>)> {
        use BlockParam::*;
        let (d, ff, v) = (self.d_model, self.d_ff, self.vocab_size);
        let q = self.n_heads * self.head_dim;
        let kv = self.n_kv_heads * self.head_dim;
        let layer_norm = self.norm == NormKind::Layer;
        let mut out = vec![(ParamId::TokenEmbed, vec![v, d])];
        if self.learned_positions {
            out.push((ParamId::PositionEmbed, vec![self.max_positions, d]));
        }
        for l in 0..self.n_layers {
            let mut add = |p: BlockParam, shape: Vec<usize>, present: bool| {
                if present {
                    out.push((ParamId::Block(l, p), shape));
                }
            };
            add(AttnNormWeight, vec![d], true);
            add(AttnNormBias, vec![d], layer_norm);
            add(QWeight, vec![q, d], true);
            add(QNormWeight, vec![self.head_dim], self.qk_norm);
            add(KNormWeight, vec![self.head_dim], self.qk_norm);
            add(QBias, vec![q], self.biases.qkv);
            add(KWeight, vec![kv, d], true);
            add(KBias, vec![kv], self.biases.qkv);
            add(VWeight, vec![kv, d], true);
            add(VBias, vec![kv], self.biases.qkv);
            add(OWeight, vec![d, q], true);
            add(OBias, vec![d], self.biases.attn_out);
            let sandwich = self.block == BlockLayout::Sandwich;
            add(AttnPostNormWeight, vec![d], sandwich);
            let own_mlp_norm = self.block != BlockLayout::ParallelSharedNorm;
            add(MlpNormWeight, vec![d], own_mlp_norm);
            add(MlpNormBias, vec![d], own_mlp_norm && layer_norm);
            add(GateWeight, vec![ff, d], self.gated_mlp());
            add(InWeight, vec![ff, d], true);
            add(InBias, vec![ff], self.biases.mlp);
            add(OutWeight, vec![d, ff], true);
            add(OutBias, vec![d], self.biases.mlp);
            add(MlpPostNormWeight, vec![d], sandwich);
        }
        out.push((ParamId::FinalNormWeight, vec![d]));
        if layer_norm {
            out.push((ParamId::FinalNormBias, vec![d]));
        }
        if !self.tie_embeddings {
            out.push((ParamId::LmHeadWeight, vec![v, d]));
        }
        if self.biases.lm_head {
            out.push((ParamId::LmHeadBias, vec![v]));
        }
        out
    }
}
