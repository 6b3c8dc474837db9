//! GPT-J: GPT-2's configuration fields, a parallel block with one shared LayerNorm,
//! interleaved RoPE on the first `rotary_dim` dimensions, no q/k/v/out biases, an
//! untied `lm_head` with a bias.

use serde_json::Value;

use super::{gpt2, Arch, HfSlot};
use crate::model::config::{Family, ModelConfig};
use crate::model::params::{BlockParam, ParamId};

pub static ARCH: Arch = Arch {
    family: Family::GptJ,
    hf_class: "GPTJForCausalLM",
    model_type: "gptj",
    gated_mlp: false,
    parse: |f| gpt2::parse_family(f, Family::GptJ),
    synthesize,
    hf_slot,
    hf_droppable_prefix: None,
    gguf: None,
};

fn synthesize(cfg: &ModelConfig) -> Value {
    let mut v = gpt2::synthesize(cfg);
    let rotary_dim = cfg.rope.map_or(cfg.head_dim, |r| r.rotary_dim);
    v["rotary_dim"] = rotary_dim.into();
    v
}

fn hf_slot(id: ParamId) -> Option<HfSlot> {
    use BlockParam::*;
    let name = match id {
        ParamId::TokenEmbed => "transformer.wte.weight".to_string(),
        ParamId::FinalNormWeight => "transformer.ln_f.weight".to_string(),
        ParamId::FinalNormBias => "transformer.ln_f.bias".to_string(),
        ParamId::LmHeadWeight => "lm_head.weight".to_string(),
        ParamId::LmHeadBias => "lm_head.bias".to_string(),
        ParamId::Block(l, p) => {
            let s = match p {
                AttnNormWeight => "ln_1.weight",
                AttnNormBias => "ln_1.bias",
                QWeight => "attn.q_proj.weight",
                KWeight => "attn.k_proj.weight",
                VWeight => "attn.v_proj.weight",
                OWeight => "attn.out_proj.weight",
                InWeight => "mlp.fc_in.weight",
                InBias => "mlp.fc_in.bias",
                OutWeight => "mlp.fc_out.weight",
                OutBias => "mlp.fc_out.bias",
                _ => return None,
            };
            format!("transformer.h.{l}.{s}")
        }
        _ => return None,
    };
    HfSlot::plain(name)
}
