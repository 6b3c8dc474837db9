//! An architecture-neutral description of a decoder-only transformer.
//!
//! Every supported architecture is expressed in these terms once, when it is loaded; the
//! runtime then has a single forward pass that reads this description.

use serde::{Deserialize, Serialize};

use crate::model::params::{BlockParam, ParamId};

/// The Hugging Face model families kedit can load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Gpt2,
    GptJ,
    GptNeoX,
}

impl Family {
    /// The `architectures[0]` value of a Hugging Face `config.json`.
    pub fn hf_class(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Gpt2 => "GPT2LMHeadModel",
            Family::GptJ => "GPTJForCausalLM",
            Family::GptNeoX => "GPTNeoXForCausalLM",
        }
    }

    pub fn from_hf_class(class: &str) -> Option<Self> {
        [
            Family::Llama,
            Family::Mistral,
            Family::Qwen2,
            Family::Gpt2,
            Family::GptJ,
            Family::GptNeoX,
        ]
        .into_iter()
        .find(|f| f.hf_class() == class)
    }

    /// The `model_type` value of a Hugging Face `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Gpt2 => "gpt2",
            Family::GptJ => "gptj",
            Family::GptNeoX => "gpt_neox",
        }
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
    pub tie_embeddings: bool,
    pub biases: Biases,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

impl ModelConfig {
    /// LLaMA-family MLPs are always gated, key = act(gate(x)) · up(x), whatever their
    /// activation; GPT-2, GPT-J and GPT-NeoX never are: key = act(in(x)).
    pub fn gated_mlp(&self) -> bool {
        matches!(self.family, Family::Llama | Family::Mistral | Family::Qwen2)
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

    /// Checks the numbers fit together, so that the forward pass never meets a shape error.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("d_ff", self.d_ff),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("`{name}` must be positive"));
            }
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
        Ok(())
    }
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
            add(QBias, vec![q], self.biases.qkv);
            add(KWeight, vec![kv, d], true);
            add(KBias, vec![kv], self.biases.qkv);
            add(VWeight, vec![kv, d], true);
            add(VBias, vec![kv], self.biases.qkv);
            add(OWeight, vec![d, q], true);
            add(OBias, vec![d], self.biases.attn_out);
            let own_mlp_norm = self.block != BlockLayout::ParallelSharedNorm;
            add(MlpNormWeight, vec![d], own_mlp_norm);
            add(MlpNormBias, vec![d], own_mlp_norm && layer_norm);
            add(GateWeight, vec![ff, d], self.gated_mlp());
            add(InWeight, vec![ff, d], true);
            add(InBias, vec![ff], self.biases.mlp);
            add(OutWeight, vec![d, ff], true);
            add(OutBias, vec![d], self.biases.mlp);
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
