//! Architectures: one file each, one line each in [`REGISTRY`].
//!
//! An architecture's file holds everything that is particular to it: how its
//! `config.json` (and, where kedit reads them, its GGUF metadata) becomes the
//! architecture-neutral [`ModelConfig`] the runtime reads, the `config.json` written back
//! when saving, and where each canonical parameter lives in a Hugging Face checkpoint and
//! in a GGUF file. This module holds what they share. A new architecture is a new file and
//! a registry line.

pub mod fields;
pub mod gguf_meta;
pub mod layout;

mod gemma3;
mod gpt2;
mod gpt_neox;
mod gptj;
mod llama;
mod mistral;
mod qwen2;

use std::path::Path;

use candle_core::quantized::gguf_file::Value as GgufValue;
use candle_core::Tensor;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::model::config::{Family, ModelConfig};
use crate::model::params::{BlockParam, ParamId};
pub use fields::Fields;
pub use gguf_meta::GgufMeta;
pub use layout::{HfLayout, HfSlot, HfWriter};

/// What kedit knows about one architecture.
pub struct Arch {
    pub family: Family,
    /// `architectures[0]` of its `config.json`.
    pub hf_class: &'static str,
    pub model_type: &'static str,
    /// MLP key = act(gate(x)) · up(x) rather than act(in(x)).
    pub gated_mlp: bool,
    /// `config.json` → configuration (the family is already known).
    pub parse: fn(&Fields) -> Result<ModelConfig>,
    /// The fields of `config.json` particular to this architecture (see [`synthesize`]).
    pub synthesize: fn(&ModelConfig) -> Value,
    /// The checkpoint tensor holding a canonical parameter.
    pub hf_slot: fn(ParamId) -> Option<HfSlot>,
    /// A prefix of those names that some checkpoints drop (GPT-2's `transformer.`).
    pub hf_droppable_prefix: Option<&'static str>,
    pub gguf: Option<&'static GgufArch>,
}

/// How an architecture is read from GGUF files.
pub struct GgufArch {
    /// `general.architecture`
    pub name: &'static str,
    pub parse: fn(&GgufMeta) -> Result<ModelConfig>,
    /// The GGUF tensor holding a canonical parameter.
    pub tensor: fn(ParamId) -> Option<String>,
    /// The dequantised GGUF tensor → the canonical tensor (e.g. llama's Q/K un-permutation).
    pub convert: fn(&ModelConfig, ParamId, Tensor) -> Result<Tensor>,
    /// The canonical tensor → the GGUF tensor: the inverse of `convert`, for export.
    pub unconvert: fn(&ModelConfig, ParamId, Tensor) -> Result<Tensor>,
    /// The architecture's own metadata (`{name}.*` keys) for a configuration. What they
    /// cannot say (a layer pattern the reader assumes, say) is found by reading them back
    /// with `parse` (`model/gguf_export.rs`).
    pub metadata: fn(&ModelConfig) -> Vec<(String, GgufValue)>,
}

/// Every supported architecture.
pub static REGISTRY: &[&Arch] = &[
    &llama::ARCH,
    &mistral::ARCH,
    &qwen2::ARCH,
    &gpt2::ARCH,
    &gptj::ARCH,
    &gpt_neox::ARCH,
    &gemma3::ARCH,
];

pub fn spec(family: Family) -> &'static Arch {
    REGISTRY
        .iter()
        .find(|a| a.family == family)
        .expect("every family has a registry line")
}

pub fn by_hf_class(class: &str) -> Option<&'static Arch> {
    REGISTRY.iter().copied().find(|a| a.hf_class == class)
}

pub fn by_gguf_name(name: &str) -> Option<&'static Arch> {
    REGISTRY
        .iter()
        .copied()
        .find(|a| a.gguf.is_some_and(|g| g.name == name))
}

fn names(list: impl Iterator<Item = &'static str>) -> String {
    list.collect::<Vec<_>>().join(", ")
}

/// Parses `config.json` (`path` is used in error messages).
pub fn parse(path: &Path, v: &Value) -> Result<ModelConfig> {
    let f = Fields { path, v };
    let class = v
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            f.err(
                "architectures",
                "is missing (expected e.g. [\"LlamaForCausalLM\"])",
            )
        })?;
    let arch = by_hf_class(class).ok_or_else(|| {
        f.err(
            "architectures",
            &format!(
                "names `{class}`; supported: {}",
                names(REGISTRY.iter().map(|a| a.hf_class))
            ),
        )
    })?;
    let cfg = (arch.parse)(&f)?;
    cfg.validate().map_err(|m| Error::model(path, m))?;
    Ok(cfg)
}

/// A `config.json` for a model that did not come with one (GGUF, or built in memory), in
/// its family's own format, so that [`parse`] reads back the same configuration.
pub fn synthesize(cfg: &ModelConfig) -> Value {
    let arch = spec(cfg.family);
    let mut v = (arch.synthesize)(cfg);
    let common = json!({
        "architectures": [arch.hf_class],
        "model_type": arch.model_type,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": "float32",
    });
    if let (Some(obj), Value::Object(common)) = (v.as_object_mut(), common) {
        obj.extend(common);
    }
    v
}

/// The GGUF reader of `general.architecture = name`, or an error listing those kedit reads.
pub fn gguf_arch(path: &Path, name: &str) -> Result<(&'static Arch, &'static GgufArch)> {
    by_gguf_name(name)
        .and_then(|a| a.gguf.map(|g| (a, g)))
        .ok_or_else(|| {
            Error::model(
                path,
                format!(
                    "metadata `general.architecture` is `{name}`; kedit reads GGUF files of \
                     the architectures {}",
                    names(REGISTRY.iter().filter_map(|a| a.gguf.map(|g| g.name)))
                ),
            )
        })
}

/// The checkpoint tensor holding canonical parameter `id` in a model of `family`.
pub fn hf_slot(family: Family, id: ParamId) -> Option<HfSlot> {
    (spec(family).hf_slot)(id)
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

/// Converts a GGUF tensor as it is (no permutation, no folding).
pub(crate) fn gguf_as_is(_: &ModelConfig, _: ParamId, t: Tensor) -> Result<Tensor> {
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_one_registry_line_and_round_trips_its_names() {
        for a in REGISTRY {
            assert_eq!(spec(a.family).hf_class, a.hf_class);
            assert_eq!(Family::from_hf_class(a.hf_class), Some(a.family));
            if let Some(g) = a.gguf {
                assert_eq!(by_gguf_name(g.name).map(|x| x.family), Some(a.family));
            }
        }
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
        let gemma = canonical_of(Family::Gemma3, 18, "model.layers.4.mlp.down_proj");
        assert_eq!(gemma, Some(ParamId::mlp_out(4)));
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
