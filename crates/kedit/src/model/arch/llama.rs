//! LLaMA (Llama 2/3, SmolLM): RMSNorm, SiLU-gated MLP, rotate-half RoPE, grouped-query
//! attention. Mistral and Qwen2 are this architecture with a few differences, and reuse
//! its parsing and names (see their files).

use candle_core::Tensor;
use serde_json::{json, Value};

use super::fields::{activation_name, Fields};
use super::{Arch, GgufArch, GgufMeta, HfSlot};
use crate::error::Result;
use crate::model::config::{Activation, Biases, BlockLayout, Family, ModelConfig, NormKind, Rope};
use crate::model::params::{BlockParam, ParamId};

pub static ARCH: Arch = Arch {
    family: Family::Llama,
    hf_class: "LlamaForCausalLM",
    model_type: "llama",
    gated_mlp: true,
    parse: |f| parse_family(f, Family::Llama, |_| Ok(None)),
    synthesize,
    hf_slot,
    hf_droppable_prefix: None,
    gguf: Some(&GGUF),
};

/// The LLaMA-family `config.json`; `window` reads the family's sliding window.
pub(super) fn parse_family(
    f: &Fields,
    family: Family,
    window: impl FnOnce(&Fields) -> Result<Option<usize>>,
) -> Result<ModelConfig> {
    f.reject_rope_scaling()?;
    let d = f.usize("hidden_size")?;
    let heads = f.usize("num_attention_heads")?;
    if heads == 0 {
        return Err(f.err("num_attention_heads", "must be positive"));
    }
    // An explicit head_dim need not equal hidden_size / heads.
    let head_dim = match f.opt("head_dim") {
        Some(_) => f.usize("head_dim")?,
        None => f.even_head_dim(d, heads, "num_attention_heads")?,
    };
    let attention_bias = f.bool_or("attention_bias", false)?;
    // HF then biases gate_proj too, a parameter kedit does not have: refuse rather than
    // silently drop it.
    if f.bool_or("mlp_bias", false)? {
        return Err(f.err(
            "mlp_bias",
            "is true: MLP biases are not supported for this family",
        ));
    }
    let sliding_window = window(f)?;
    Ok(ModelConfig {
        family,
        vocab_size: f.usize("vocab_size")?,
        d_model: d,
        n_layers: f.usize("num_hidden_layers")?,
        n_heads: heads,
        n_kv_heads: f.usize_or("num_key_value_heads", heads)?,
        head_dim,
        d_ff: f.usize("intermediate_size")?,
        norm: NormKind::Rms,
        norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
        activation: f.activation("hidden_act", "silu")?,
        block: BlockLayout::Sequential,
        rope: Some(Rope {
            theta: f.rope_theta("rope_theta")?,
            rotary_dim: head_dim,
            interleaved: false,
        }),
        learned_positions: false,
        max_positions: f.usize_or("max_position_embeddings", 2048)?,
        sliding_window,
        sliding_layers: None,
        local_rope_theta: None,
        embed_scale: None,
        qk_norm: false,
        attn_scale: None,
        tie_embeddings: f.bool_or("tie_word_embeddings", false)?,
        biases: Biases {
            qkv: family == Family::Qwen2 || attention_bias,
            attn_out: attention_bias,
            mlp: false,
            lm_head: false,
        },
        bos_token_id: f.token_id("bos_token_id"),
        eos_token_id: f.token_id("eos_token_id"),
        pad_token_id: f.token_id("pad_token_id"),
    })
}

pub(super) fn synthesize(cfg: &ModelConfig) -> Value {
    let theta = cfg.rope.map_or(10_000.0, |r| r.theta);
    json!({
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": activation_name(cfg.activation),
        "max_position_embeddings": cfg.max_positions,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": theta,
        "rope_parameters": {"rope_theta": theta, "rope_type": "default"},
        "attention_bias": cfg.family != Family::Qwen2 && cfg.biases.qkv,
        "mlp_bias": false,
        "sliding_window": cfg.sliding_window,
        "use_sliding_window": false,
    })
}

pub(super) fn hf_slot(id: ParamId) -> Option<HfSlot> {
    use BlockParam::*;
    let name = match id {
        ParamId::TokenEmbed => "model.embed_tokens.weight".to_string(),
        ParamId::FinalNormWeight => "model.norm.weight".to_string(),
        ParamId::LmHeadWeight => "lm_head.weight".to_string(),
        ParamId::Block(l, p) => {
            let s = match p {
                AttnNormWeight => "input_layernorm.weight",
                QWeight => "self_attn.q_proj.weight",
                QBias => "self_attn.q_proj.bias",
                KWeight => "self_attn.k_proj.weight",
                KBias => "self_attn.k_proj.bias",
                VWeight => "self_attn.v_proj.weight",
                VBias => "self_attn.v_proj.bias",
                OWeight => "self_attn.o_proj.weight",
                OBias => "self_attn.o_proj.bias",
                MlpNormWeight => "post_attention_layernorm.weight",
                GateWeight => "mlp.gate_proj.weight",
                InWeight => "mlp.up_proj.weight",
                InBias => "mlp.up_proj.bias",
                OutWeight => "mlp.down_proj.weight",
                OutBias => "mlp.down_proj.bias",
                _ => return None,
            };
            format!("model.layers.{l}.{s}")
        }
        _ => return None,
    };
    HfSlot::plain(name)
}

static GGUF: GgufArch = GgufArch {
    name: "llama",
    parse: parse_gguf,
    tensor: gguf_tensor,
    convert: unpermute_qk,
    unconvert: permute_qk,
    metadata: |cfg| super::gguf_meta::common_metadata("llama", cfg),
};

fn parse_gguf(m: &GgufMeta) -> Result<ModelConfig> {
    let d = m.arch_usize("embedding_length")?;
    let heads = m.arch_usize("attention.head_count")?;
    let head_dim = m.arch_usize_or("attention.key_length", d / heads)?;
    Ok(ModelConfig {
        family: Family::Llama,
        vocab_size: m.vocab_size()?,
        d_model: d,
        n_layers: m.arch_usize("block_count")?,
        n_heads: heads,
        n_kv_heads: m.arch_usize_or("attention.head_count_kv", heads)?,
        head_dim,
        d_ff: m.arch_usize("feed_forward_length")?,
        norm: NormKind::Rms,
        norm_eps: m.arch_f64_or("attention.layer_norm_rms_epsilon", 1e-5)?,
        activation: Activation::Silu,
        block: BlockLayout::Sequential,
        rope: Some(Rope {
            theta: m.arch_f64_or("rope.freq_base", 10_000.0)?,
            rotary_dim: m.arch_usize_or("rope.dimension_count", head_dim)?,
            interleaved: false,
        }),
        learned_positions: false,
        max_positions: m.arch_usize_or("context_length", 2048)?,
        sliding_window: None,
        sliding_layers: None,
        local_rope_theta: None,
        embed_scale: None,
        qk_norm: false,
        attn_scale: None,
        tie_embeddings: !m.has_tensor("output.weight"),
        biases: Biases {
            qkv: m.has_tensor("blk.0.attn_q.bias"),
            ..Biases::default()
        },
        bos_token_id: m.token_id("bos")?,
        eos_token_id: m.token_id("eos")?,
        pad_token_id: m.token_id("padding")?,
    })
}

/// The GGUF tensor holding a canonical parameter (llama.cpp's names, which the
/// architectures it derives from llama share).
pub(super) fn gguf_tensor(id: ParamId) -> Option<String> {
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

/// The heads of a Q or K projection (weight or bias); `None` for every other parameter.
fn qk_heads(cfg: &ModelConfig, id: ParamId) -> Option<usize> {
    match id {
        ParamId::Block(_, BlockParam::QWeight | BlockParam::QBias) => Some(cfg.n_heads),
        ParamId::Block(_, BlockParam::KWeight | BlockParam::KBias) => Some(cfg.n_kv_heads),
        _ => None,
    }
}

/// Swaps the two middle axes of `t` seen as `[heads, a, b, cols]`.
fn swap_within_heads(t: Tensor, heads: usize, a_half: bool) -> Result<Tensor> {
    let rows = t.dim(0)?;
    let cols = t.elem_count() / rows;
    let hd = rows / heads;
    let (a, b) = if a_half { (hd / 2, 2) } else { (2, hd / 2) };
    Ok(t.reshape((heads, a, b, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(t.shape())?)
}

/// llama.cpp's converter permutes Q/K rows for its interleaved RoPE; undo it so the
/// weights are in Hugging Face's layout (rotate-half RoPE).
fn unpermute_qk(cfg: &ModelConfig, id: ParamId, t: Tensor) -> Result<Tensor> {
    match qk_heads(cfg, id) {
        Some(heads) => swap_within_heads(t, heads, true),
        None => Ok(t),
    }
}

/// The permutation llama.cpp's converter applies (`[heads, 2, hd/2] → [heads, hd/2, 2]`),
/// the inverse of [`unpermute_qk`].
fn permute_qk(cfg: &ModelConfig, id: ParamId, t: Tensor) -> Result<Tensor> {
    match qk_heads(cfg, id) {
        Some(heads) => swap_within_heads(t, heads, false),
        None => Ok(t),
    }
}
