//! GPT-2: LayerNorm, learned absolute positions, GELU (tanh) MLP, Conv1D weights (`[in,
//! out]`) and a fused `c_attn` = [q | k | v]; tied embeddings.

use serde_json::{json, Value};

use super::fields::{activation_name, Fields};
use super::{Arch, HfLayout, HfSlot};
use crate::error::Result;
use crate::model::config::{Biases, BlockLayout, Family, ModelConfig, NormKind, Rope};
use crate::model::params::{BlockParam, ParamId};

pub static ARCH: Arch = Arch {
    family: Family::Gpt2,
    hf_class: "GPT2LMHeadModel",
    model_type: "gpt2",
    gated_mlp: false,
    parse: |f| parse_family(f, Family::Gpt2),
    synthesize,
    hf_slot,
    hf_droppable_prefix: Some("transformer."),
    gguf: None,
};

/// GPT-2's `config.json` fields, which GPT-J shares.
pub(super) fn parse_family(f: &Fields, family: Family) -> Result<ModelConfig> {
    let d = f.usize("n_embd")?;
    let heads = f.usize("n_head")?;
    let head_dim = f.even_head_dim(d, heads, "n_head")?;
    if f.bool_or("scale_attn_by_inverse_layer_idx", false)? {
        return Err(f.err("scale_attn_by_inverse_layer_idx", "is true: not supported"));
    }
    if !f.bool_or("scale_attn_weights", true)? {
        return Err(f.err(
            "scale_attn_weights",
            "is false: unscaled attention is not supported",
        ));
    }
    let gpt2 = family == Family::Gpt2;
    Ok(ModelConfig {
        family,
        vocab_size: f.usize("vocab_size")?,
        d_model: d,
        n_layers: f.usize("n_layer")?,
        n_heads: heads,
        n_kv_heads: heads,
        head_dim,
        d_ff: f.usize_or("n_inner", 4 * d)?,
        norm: NormKind::Layer,
        norm_eps: f.f64_or("layer_norm_epsilon", 1e-5)?,
        activation: f.activation("activation_function", "gelu_new")?,
        block: if gpt2 {
            BlockLayout::Sequential
        } else {
            BlockLayout::ParallelSharedNorm
        },
        rope: if gpt2 {
            None
        } else {
            Some(Rope {
                theta: 10_000.0,
                rotary_dim: gptj_rotary_dim(f)?,
                interleaved: true,
            })
        },
        learned_positions: gpt2,
        max_positions: f.usize_or("n_positions", 1024)?,
        sliding_window: None,
        sliding_layers: None,
        local_rope_theta: None,
        embed_scale: None,
        qk_norm: false,
        attn_scale: None,
        tie_embeddings: f.bool_or("tie_word_embeddings", gpt2)?,
        biases: Biases {
            qkv: gpt2,
            attn_out: gpt2,
            mlp: true,
            lm_head: !gpt2,
        },
        bos_token_id: f.token_id("bos_token_id"),
        eos_token_id: f.token_id("eos_token_id"),
        pad_token_id: f.token_id("pad_token_id"),
    })
}

/// GPT-J without `rotary_dim` rotates whole heads with frequencies computed over the
/// full model width, which the arch-neutral RoPE cannot express.
fn gptj_rotary_dim(f: &Fields) -> Result<usize> {
    match f.opt("rotary_dim") {
        Some(_) => f.usize("rotary_dim"),
        None => Err(f.err(
            "rotary_dim",
            "is missing: GPT-J without a rotary dimension is not supported",
        )),
    }
}

pub(super) fn synthesize(cfg: &ModelConfig) -> Value {
    json!({
        "n_embd": cfg.d_model,
        "n_inner": cfg.d_ff,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_positions": cfg.max_positions,
        "layer_norm_epsilon": cfg.norm_eps,
        "activation_function": activation_name(cfg.activation),
    })
}

fn hf_slot(id: ParamId) -> Option<HfSlot> {
    use BlockParam::*;
    use HfLayout::*;
    let (name, layout) = match id {
        ParamId::TokenEmbed => ("transformer.wte.weight".to_string(), Plain),
        ParamId::PositionEmbed => ("transformer.wpe.weight".to_string(), Plain),
        ParamId::FinalNormWeight => ("transformer.ln_f.weight".to_string(), Plain),
        ParamId::FinalNormBias => ("transformer.ln_f.bias".to_string(), Plain),
        ParamId::LmHeadWeight => ("lm_head.weight".to_string(), Plain),
        ParamId::Block(l, p) => {
            let (s, layout) = match p {
                AttnNormWeight => ("ln_1.weight", Plain),
                AttnNormBias => ("ln_1.bias", Plain),
                QWeight => ("attn.c_attn.weight", Gpt2Qkv(0)),
                KWeight => ("attn.c_attn.weight", Gpt2Qkv(1)),
                VWeight => ("attn.c_attn.weight", Gpt2Qkv(2)),
                QBias => ("attn.c_attn.bias", Gpt2Qkv(0)),
                KBias => ("attn.c_attn.bias", Gpt2Qkv(1)),
                VBias => ("attn.c_attn.bias", Gpt2Qkv(2)),
                OWeight => ("attn.c_proj.weight", Conv1D),
                OBias => ("attn.c_proj.bias", Plain),
                MlpNormWeight => ("ln_2.weight", Plain),
                MlpNormBias => ("ln_2.bias", Plain),
                InWeight => ("mlp.c_fc.weight", Conv1D),
                InBias => ("mlp.c_fc.bias", Plain),
                OutWeight => ("mlp.c_proj.weight", Conv1D),
                OutBias => ("mlp.c_proj.bias", Plain),
                _ => return None,
            };
            (format!("transformer.h.{l}.{s}"), layout)
        }
        _ => return None,
    };
    HfSlot::new(name, layout)
}
