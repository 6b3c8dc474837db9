//! Mistral: LLaMA with a sliding attention window on every layer.

use super::{llama, Arch};
use crate::model::config::Family;

pub static ARCH: Arch = Arch {
    family: Family::Mistral,
    hf_class: "MistralForCausalLM",
    model_type: "mistral",
    gated_mlp: true,
    parse: |f| {
        llama::parse_family(f, Family::Mistral, |f| match f.opt("sliding_window") {
            Some(_) => f.usize("sliding_window").map(Some),
            None => Ok(None),
        })
    },
    synthesize: llama::synthesize,
    hf_slot: llama::hf_slot,
    hf_droppable_prefix: None,
    gguf: None,
};
