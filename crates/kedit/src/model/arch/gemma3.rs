//! Gemma 3 (text): four RMSNorms per block (before and after attention and MLP), each
//! applied as `(1 + w)`; GELU-tanh gated MLP; RMSNorm over each query and key head before
//! RoPE; scores scaled by `query_pre_attn_scalar^-½`; sliding-window layers alternating
//! with global ones, each kind with its own RoPE base; embeddings scaled by √d_model;
//! tied embeddings.
//!
//! Canonical norm weights are the effective ones, `1 + w`: Hugging Face checkpoints store
//! `w` ([`HfLayout::PlusOne`]), llama.cpp's converter already stores `1 + w` (transformers'
//! GGUF loader subtracts the 1 again).

use serde_json::{json, Value};

use super::fields::{activation_name, Fields};
use super::{gguf_as_is, llama, Arch, GgufArch, GgufMeta, HfLayout, HfSlot};
use crate::error::{Error, Result};
use crate::model::config::{check_count, MAX_LAYERS};
use crate::model::config::{Activation, Biases, BlockLayout, Family, ModelConfig, NormKind, Rope};
use crate::model::params::{BlockParam, ParamId};

pub static ARCH: Arch = Arch {
    family: Family::Gemma3,
    hf_class: "Gemma3ForCausalLM",
    model_type: "gemma3_text",
    gated_mlp: true,
    parse,
    synthesize,
    hf_slot,
    hf_droppable_prefix: None,
    gguf: Some(&GGUF),
};

const SLIDING: &str = "sliding_attention";
const FULL: &str = "full_attention";

/// transformers' default when a file gives neither `layer_types` nor a pattern: every
/// sixth layer is global.
const DEFAULT_PATTERN: usize = 6;

fn pattern_layers(n_layers: usize, pattern: usize) -> Vec<bool> {
    (0..n_layers).map(|i| (i + 1) % pattern != 0).collect()
}

/// The RoPE base of one kind of layer: `rope_parameters.{kind}.rope_theta` (transformers
/// 5), else the legacy key.
fn rope_theta(f: &Fields, kind: &str, legacy: &str, default: f64) -> Result<f64> {
    let nested = f.opt("rope_parameters").and_then(|p| p.get(kind));
    if let Some(p) = nested {
        match p.get("rope_type").and_then(Value::as_str) {
            None | Some("default") => {}
            Some(other) => {
                return Err(f.err(
                    "rope_parameters",
                    &format!(
                        "uses rope type `{other}` for {kind}, which kedit does not support yet"
                    ),
                ))
            }
        }
        if let Some(t) = p.get("rope_theta") {
            return t.as_f64().ok_or_else(|| {
                f.err(
                    "rope_parameters",
                    &format!("{kind}.rope_theta must be a number, got {t}"),
                )
            });
        }
    }
    f.f64_or(legacy, default)
}

fn parse(f: &Fields) -> Result<ModelConfig> {
    for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
        if f.opt(key).is_some() {
            return Err(f.err(key, "is set: soft-capping is not supported"));
        }
    }
    if f.bool_or("use_bidirectional_attention", false)? {
        return Err(f.err("use_bidirectional_attention", "is true: not supported"));
    }
    if let Some(s) = f.opt("rope_scaling") {
        if s.get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(Value::as_str)
            != Some("default")
        {
            return Err(f.err("rope_scaling", "is set: RoPE scaling is not supported yet"));
        }
    }
    let d = f.usize("hidden_size")?;
    let heads = f.usize("num_attention_heads")?;
    if heads == 0 {
        return Err(f.err("num_attention_heads", "must be positive"));
    }
    let head_dim = f.usize_or("head_dim", 256)?;
    let n_layers = f.usize("num_hidden_layers")?;
    check_count("num_hidden_layers", n_layers, MAX_LAYERS)
        .map_err(|m| f.err("num_hidden_layers", &m))?;
    let sliding_layers = match f.opt("layer_types") {
        Some(Value::Array(types)) => types
            .iter()
            .map(|t| match t.as_str() {
                Some(SLIDING) => Ok(true),
                Some(FULL) => Ok(false),
                _ => Err(f.err(
                    "layer_types",
                    &format!("holds {t}; expected \"{SLIDING}\" or \"{FULL}\""),
                )),
            })
            .collect::<Result<Vec<bool>>>()?,
        Some(other) => return Err(f.err("layer_types", &format!("must be a list, got {other}"))),
        None => {
            let key = if f.opt("sliding_window_pattern").is_some() {
                "sliding_window_pattern"
            } else {
                "_sliding_window_pattern"
            };
            let pattern = f.usize_or(key, DEFAULT_PATTERN)?;
            if pattern == 0 {
                return Err(f.err(key, "must be positive"));
            }
            pattern_layers(n_layers, pattern)
        }
    };
    let attention_bias = f.bool_or("attention_bias", false)?;
    let scalar = f.f64_or("query_pre_attn_scalar", 256.0)?;
    if scalar <= 0.0 {
        return Err(f.err("query_pre_attn_scalar", "must be positive"));
    }
    Ok(ModelConfig {
        family: Family::Gemma3,
        vocab_size: f.usize("vocab_size")?,
        d_model: d,
        n_layers,
        n_heads: heads,
        n_kv_heads: f.usize_or("num_key_value_heads", heads)?,
        head_dim,
        d_ff: f.usize("intermediate_size")?,
        norm: NormKind::Rms,
        norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
        activation: f.activation("hidden_activation", "gelu_pytorch_tanh")?,
        block: BlockLayout::Sandwich,
        rope: Some(Rope {
            theta: rope_theta(f, FULL, "rope_theta", 1_000_000.0)?,
            rotary_dim: head_dim,
            interleaved: false,
        }),
        learned_positions: false,
        max_positions: f.usize_or("max_position_embeddings", 131_072)?,
        sliding_window: Some(f.usize_or("sliding_window", 4096)?),
        sliding_layers: Some(sliding_layers),
        local_rope_theta: Some(rope_theta(f, SLIDING, "rope_local_base_freq", 10_000.0)?),
        embed_scale: Some((d as f64).sqrt()),
        qk_norm: true,
        attn_scale: Some(scalar.powf(-0.5)),
        tie_embeddings: f.bool_or("tie_word_embeddings", true)?,
        biases: Biases {
            qkv: attention_bias,
            attn_out: attention_bias,
            mlp: false,
            lm_head: false,
        },
        bos_token_id: f.token_id("bos_token_id"),
        eos_token_id: f.token_id("eos_token_id"),
        pad_token_id: f.token_id("pad_token_id"),
    })
}

fn synthesize(cfg: &ModelConfig) -> Value {
    let global = cfg.rope.map_or(1_000_000.0, |r| r.theta);
    let local = cfg.local_rope_theta.unwrap_or(global);
    let layer_types: Vec<&str> = (0..cfg.n_layers)
        .map(|l| if cfg.is_sliding(l) { SLIDING } else { FULL })
        .collect();
    let scalar = cfg.query_scale().powi(-2);
    // transformers types `query_pre_attn_scalar` as an integer.
    let scalar = if (scalar - scalar.round()).abs() < 1e-6 {
        json!(scalar.round() as u64)
    } else {
        json!(scalar)
    };
    json!({
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_activation": match cfg.activation {
            Activation::GeluTanh => "gelu_pytorch_tanh",
            other => activation_name(other),
        },
        "max_position_embeddings": cfg.max_positions,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {
            FULL: {"rope_type": "default", "rope_theta": global},
            SLIDING: {"rope_type": "default", "rope_theta": local},
        },
        "query_pre_attn_scalar": scalar,
        "sliding_window": cfg.sliding_window,
        "layer_types": layer_types,
        "attention_bias": cfg.biases.qkv,
        "final_logit_softcapping": null,
        "attn_logit_softcapping": null,
    })
}

fn hf_slot(id: ParamId) -> Option<HfSlot> {
    use BlockParam::*;
    use HfLayout::*;
    let (name, layout) = match id {
        ParamId::TokenEmbed => ("model.embed_tokens.weight".to_string(), Plain),
        ParamId::FinalNormWeight => ("model.norm.weight".to_string(), PlusOne),
        ParamId::LmHeadWeight => ("lm_head.weight".to_string(), Plain),
        ParamId::Block(l, p) => {
            let (s, layout) = match p {
                AttnNormWeight => ("input_layernorm.weight", PlusOne),
                QWeight => ("self_attn.q_proj.weight", Plain),
                QBias => ("self_attn.q_proj.bias", Plain),
                KWeight => ("self_attn.k_proj.weight", Plain),
                KBias => ("self_attn.k_proj.bias", Plain),
                VWeight => ("self_attn.v_proj.weight", Plain),
                VBias => ("self_attn.v_proj.bias", Plain),
                OWeight => ("self_attn.o_proj.weight", Plain),
                OBias => ("self_attn.o_proj.bias", Plain),
                QNormWeight => ("self_attn.q_norm.weight", PlusOne),
                KNormWeight => ("self_attn.k_norm.weight", PlusOne),
                // Not LLaMA's meaning of the name: here it normalises the attention output.
                AttnPostNormWeight => ("post_attention_layernorm.weight", PlusOne),
                MlpNormWeight => ("pre_feedforward_layernorm.weight", PlusOne),
                MlpPostNormWeight => ("post_feedforward_layernorm.weight", PlusOne),
                GateWeight => ("mlp.gate_proj.weight", Plain),
                InWeight => ("mlp.up_proj.weight", Plain),
                OutWeight => ("mlp.down_proj.weight", Plain),
                _ => return None,
            };
            (format!("model.layers.{l}.{s}"), layout)
        }
        _ => return None,
    };
    HfSlot::new(name, layout)
}

static GGUF: GgufArch = GgufArch {
    name: "gemma3",
    parse: parse_gguf,
    tensor: gguf_tensor,
    // No Q/K permutation (llama.cpp runs Gemma's RoPE rotate-half style), and the norms
    // are stored as 1 + w already.
    convert: gguf_as_is,
    unconvert: gguf_as_is,
    metadata: |cfg| super::gguf_meta::common_metadata("gemma3", cfg),
};

/// The GGUF metadata has no layer pattern, local RoPE base or query scalar: llama.cpp
/// fixes them for the architecture, as below, and so does transformers' GGUF loader.
fn parse_gguf(m: &GgufMeta) -> Result<ModelConfig> {
    let d = m.arch_usize("embedding_length")?;
    let heads = m.arch_usize("attention.head_count")?;
    let head_dim = m.arch_usize_or("attention.key_length", 256)?;
    let n_layers = m.arch_usize("block_count")?;
    check_count("block_count", n_layers, MAX_LAYERS)
        .map_err(|e| Error::model(m.path, format!("metadata `{}`: {e}", m.key("block_count"))))?;
    // llama.cpp: 1/√(d_model/heads) for the 62-layer 27B model, 1/√head_dim for the others.
    let scalar = if n_layers == 62 { d / heads } else { head_dim };
    Ok(ModelConfig {
        family: Family::Gemma3,
        vocab_size: m.vocab_size()?,
        d_model: d,
        n_layers,
        n_heads: heads,
        n_kv_heads: m.arch_usize_or("attention.head_count_kv", heads)?,
        head_dim,
        d_ff: m.arch_usize("feed_forward_length")?,
        norm: NormKind::Rms,
        norm_eps: m.arch_f64_or("attention.layer_norm_rms_epsilon", 1e-6)?,
        activation: Activation::GeluTanh,
        block: BlockLayout::Sandwich,
        rope: Some(Rope {
            theta: m.arch_f64_or("rope.freq_base", 1_000_000.0)?,
            rotary_dim: head_dim,
            interleaved: false,
        }),
        learned_positions: false,
        max_positions: m.arch_usize_or("context_length", 131_072)?,
        sliding_window: Some(m.arch_usize_or("attention.sliding_window", 4096)?),
        sliding_layers: Some(pattern_layers(n_layers, DEFAULT_PATTERN)),
        local_rope_theta: Some(10_000.0),
        embed_scale: Some((d as f64).sqrt()),
        qk_norm: true,
        attn_scale: Some((scalar as f64).powf(-0.5)),
        tie_embeddings: !m.has_tensor("output.weight"),
        biases: Biases::default(),
        bos_token_id: m.token_id("bos")?,
        eos_token_id: m.token_id("eos")?,
        pad_token_id: m.token_id("padding")?,
    })
}

fn gguf_tensor(id: ParamId) -> Option<String> {
    use BlockParam::*;
    let s = match id {
        ParamId::Block(_, QNormWeight) => "attn_q_norm.weight",
        ParamId::Block(_, KNormWeight) => "attn_k_norm.weight",
        ParamId::Block(_, AttnPostNormWeight) => "post_attention_norm.weight",
        ParamId::Block(_, MlpPostNormWeight) => "post_ffw_norm.weight",
        // `ffn_norm` is the pre-feed-forward norm, as in llama.
        _ => return llama::gguf_tensor(id),
    };
    match id {
        ParamId::Block(l, _) => Some(format!("blk.{l}.{s}")),
        _ => None,
    }
}
