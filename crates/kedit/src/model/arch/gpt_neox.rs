//! GPT-NeoX (Pythia): LayerNorm, parallel residual (two norms), rotate-half RoPE on a
//! fraction of each head, exact GELU, `query_key_value` fused per head as
//! `[q_h | k_h | v_h]`.

use serde_json::{json, Value};

use super::fields::activation_name;
use super::{Arch, Fields, HfLayout, HfSlot};
use crate::error::Result;
use crate::model::config::{Biases, BlockLayout, Family, ModelConfig, NormKind, Rope};
use crate::model::params::{BlockParam, ParamId};

pub static ARCH: Arch = Arch {
    family: Family::GptNeoX,
    hf_class: "GPTNeoXForCausalLM",
    model_type: "gpt_neox",
    gated_mlp: false,
    parse,
    synthesize,
    hf_slot,
    hf_droppable_prefix: None,
    gguf: None,
};

fn parse(f: &Fields) -> Result<ModelConfig> {
    f.reject_rope_scaling()?;
    let d = f.usize("hidden_size")?;
    let heads = f.usize("num_attention_heads")?;
    let head_dim = f.even_head_dim(d, heads, "num_attention_heads")?;
    let pct = f
        .opt("rope_parameters")
        .and_then(|p| p.get("partial_rotary_factor"))
        .and_then(Value::as_f64)
        .map(Ok)
        .unwrap_or_else(|| f.f64_or("rotary_pct", 0.25))?;
    let bias = f.bool_or("attention_bias", true)?;
    Ok(ModelConfig {
        family: Family::GptNeoX,
        vocab_size: f.usize("vocab_size")?,
        d_model: d,
        n_layers: f.usize("num_hidden_layers")?,
        n_heads: heads,
        n_kv_heads: heads,
        head_dim,
        d_ff: f.usize("intermediate_size")?,
        norm: NormKind::Layer,
        norm_eps: f.f64_or("layer_norm_eps", 1e-5)?,
        activation: f.activation("hidden_act", "gelu")?,
        block: if f.bool_or("use_parallel_residual", true)? {
            BlockLayout::Parallel
        } else {
            BlockLayout::Sequential
        },
        rope: Some(Rope {
            theta: f.rope_theta("rotary_emb_base")?,
            rotary_dim: (head_dim as f64 * pct) as usize,
            interleaved: false,
        }),
        learned_positions: false,
        max_positions: f.usize_or("max_position_embeddings", 2048)?,
        sliding_window: None,
        sliding_layers: None,
        local_rope_theta: None,
        embed_scale: None,
        qk_norm: false,
        attn_scale: None,
        tie_embeddings: f.bool_or("tie_word_embeddings", false)?,
        biases: Biases {
            qkv: bias,
            attn_out: bias,
            mlp: true,
            lm_head: false,
        },
        bos_token_id: f.token_id("bos_token_id"),
        eos_token_id: f.token_id("eos_token_id"),
        pad_token_id: f.token_id("pad_token_id"),
    })
}

fn synthesize(cfg: &ModelConfig) -> Value {
    let (theta, rotary_dim) = cfg
        .rope
        .map_or((10_000.0, cfg.head_dim), |r| (r.theta, r.rotary_dim));
    let pct = rotary_dim as f64 / cfg.head_dim as f64;
    json!({
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "hidden_act": activation_name(cfg.activation),
        "max_position_embeddings": cfg.max_positions,
        "layer_norm_eps": cfg.norm_eps,
        "rotary_pct": pct,
        "rotary_emb_base": theta,
        "rope_parameters": {
            "rope_theta": theta,
            "partial_rotary_factor": pct,
            "rope_type": "default",
        },
        "use_parallel_residual": cfg.block == BlockLayout::Parallel,
        "attention_bias": cfg.biases.qkv,
    })
}

fn hf_slot(id: ParamId) -> Option<HfSlot> {
    use BlockParam::*;
    use HfLayout::*;
    let (name, layout) = match id {
        ParamId::TokenEmbed => ("gpt_neox.embed_in.weight".to_string(), Plain),
        ParamId::FinalNormWeight => ("gpt_neox.final_layer_norm.weight".to_string(), Plain),
        ParamId::FinalNormBias => ("gpt_neox.final_layer_norm.bias".to_string(), Plain),
        ParamId::LmHeadWeight => ("embed_out.weight".to_string(), Plain),
        ParamId::Block(l, p) => {
            let (s, layout) = match p {
                AttnNormWeight => ("input_layernorm.weight", Plain),
                AttnNormBias => ("input_layernorm.bias", Plain),
                QWeight => ("attention.query_key_value.weight", NeoxQkv(0)),
                KWeight => ("attention.query_key_value.weight", NeoxQkv(1)),
                VWeight => ("attention.query_key_value.weight", NeoxQkv(2)),
                QBias => ("attention.query_key_value.bias", NeoxQkv(0)),
                KBias => ("attention.query_key_value.bias", NeoxQkv(1)),
                VBias => ("attention.query_key_value.bias", NeoxQkv(2)),
                OWeight => ("attention.dense.weight", Plain),
                OBias => ("attention.dense.bias", Plain),
                MlpNormWeight => ("post_attention_layernorm.weight", Plain),
                MlpNormBias => ("post_attention_layernorm.bias", Plain),
                InWeight => ("mlp.dense_h_to_4h.weight", Plain),
                InBias => ("mlp.dense_h_to_4h.bias", Plain),
                OutWeight => ("mlp.dense_4h_to_h.weight", Plain),
                OutBias => ("mlp.dense_4h_to_h.bias", Plain),
                _ => return None,
            };
            (format!("gpt_neox.layers.{l}.{s}"), layout)
        }
        _ => return None,
    };
    HfSlot::new(name, layout)
}
