//! Where each canonical parameter lives in a Hugging Face checkpoint, per architecture.
//! This table is the only place that knows Hugging Face's module names.

use crate::model::config::Family;
use crate::model::params::{BlockParam, ParamId};

/// How a canonical tensor is stored in the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfLayout {
    /// As is (`nn.Linear` weights are `[out, in]` like ours).
    Plain,
    /// GPT-2 `Conv1D`: `[in, out]`, transposed relative to ours.
    Conv1D,
    /// One third (0 = q, 1 = k, 2 = v) of GPT-2's fused `c_attn` (a Conv1D).
    Gpt2Qkv(usize),
    /// One part of GPT-NeoX's `query_key_value`, fused per head as `[q_h | k_h | v_h]`.
    NeoxQkv(usize),
}

impl HfLayout {
    /// The shape the checkpoint tensor must have for a canonical parameter of shape
    /// `canonical`. Checking it before converting matters for the fused layouts: a fused
    /// tensor that is too large still yields parts of the right shape.
    pub fn hf_shape(self, canonical: &[usize]) -> Vec<usize> {
        match (self, canonical) {
            (HfLayout::Conv1D, [out, inp]) => vec![*inp, *out],
            (HfLayout::Gpt2Qkv(_), [out, inp]) => vec![*inp, 3 * out],
            (HfLayout::NeoxQkv(_), [out, rest @ ..]) | (HfLayout::Gpt2Qkv(_), [out, rest @ ..]) => {
                let mut shape = vec![3 * out];
                shape.extend(rest);
                shape
            }
            _ => canonical.to_vec(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfSlot {
    pub name: String,
    pub layout: HfLayout,
}

fn slot(name: String, layout: HfLayout) -> Option<HfSlot> {
    Some(HfSlot { name, layout })
}

/// The checkpoint tensor holding canonical parameter `id` in a model of `family`.
pub fn hf_slot(family: Family, id: ParamId) -> Option<HfSlot> {
    use BlockParam::*;
    use HfLayout::*;
    match family {
        Family::Llama | Family::Mistral | Family::Qwen2 => {
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
                        AttnNormBias | MlpNormBias => return None,
                    };
                    format!("model.layers.{l}.{s}")
                }
                _ => return None,
            };
            slot(name, Plain)
        }
        Family::Gpt2 => {
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
                        GateWeight => return None,
                    };
                    (format!("transformer.h.{l}.{s}"), layout)
                }
                _ => return None,
            };
            slot(name, layout)
        }
        Family::GptJ => {
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
            slot(name, Plain)
        }
        Family::GptNeoX => {
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
                        GateWeight => return None,
                    };
                    (format!("gpt_neox.layers.{l}.{s}"), layout)
                }
                _ => return None,
            };
            slot(name, layout)
        }
    }
}

/// The canonical id of a Hugging Face module or parameter name (`model.layers.5.mlp.down_proj`
/// or `...down_proj.weight`), as EasyEdit's hyper-parameter files name them.
pub fn canonical_of(family: Family, n_layers: usize, hf_name: &str) -> Option<ParamId> {
    let full = if hf_name.ends_with(".weight") || hf_name.ends_with(".bias") {
        hf_name.to_string()
    } else {
        format!("{hf_name}.weight")
    };
    let layer = full
        .split('.')
        .find_map(|part| part.parse::<usize>().ok())
        .unwrap_or(0);
    let mut candidates: Vec<ParamId> = vec![
        ParamId::TokenEmbed,
        ParamId::PositionEmbed,
        ParamId::FinalNormWeight,
        ParamId::FinalNormBias,
        ParamId::LmHeadWeight,
        ParamId::LmHeadBias,
    ];
    if layer < n_layers {
        candidates.extend(BlockParam::ALL.iter().map(|p| ParamId::Block(layer, *p)));
    }
    let matches: Vec<ParamId> = candidates
        .into_iter()
        .filter(|id| {
            hf_slot(family, *id).is_some_and(|s| {
                s.name == full || s.name.strip_prefix("transformer.") == Some(full.as_str())
            })
        })
        .collect();
    // A fused tensor (GPT-2 c_attn) maps to several canonical parameters: ambiguous.
    match matches.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_shapes_of_transposed_and_fused_layouts() {
        assert_eq!(HfLayout::Plain.hf_shape(&[64, 128]), vec![64, 128]);
        assert_eq!(HfLayout::Conv1D.hf_shape(&[64, 128]), vec![128, 64]);
        assert_eq!(HfLayout::Gpt2Qkv(1).hf_shape(&[64, 64]), vec![64, 192]);
        assert_eq!(HfLayout::Gpt2Qkv(2).hf_shape(&[64]), vec![192]);
        assert_eq!(HfLayout::NeoxQkv(0).hf_shape(&[64, 64]), vec![192, 64]);
        assert_eq!(HfLayout::NeoxQkv(0).hf_shape(&[64]), vec![192]);
    }

    #[test]
    fn easyedit_module_names_map_to_canonical_ids() {
        let down = canonical_of(Family::Llama, 30, "model.layers.5.mlp.down_proj");
        assert_eq!(down, Some(ParamId::mlp_out(5)));
        let c_proj = canonical_of(Family::Gpt2, 48, "transformer.h.17.mlp.c_proj");
        assert_eq!(c_proj, Some(ParamId::mlp_out(17)));
        let fc_out = canonical_of(Family::GptJ, 28, "transformer.h.5.mlp.fc_out");
        assert_eq!(fc_out, Some(ParamId::mlp_out(5)));
        let neox = canonical_of(Family::GptNeoX, 2, "gpt_neox.layers.1.mlp.dense_4h_to_h");
        assert_eq!(neox, Some(ParamId::mlp_out(1)));
        assert_eq!(
            canonical_of(Family::Gpt2, 2, "transformer.h.0.attn.c_attn"),
            None
        );
        assert_eq!(
            canonical_of(Family::Llama, 30, "model.layers.40.mlp.down_proj"),
            None
        );
    }
}
