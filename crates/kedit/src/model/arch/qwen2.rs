//! Qwen2: LLaMA with q/k/v biases (always) and an optional per-layer sliding window,
//! which kedit refuses.

use super::{llama, Arch};
use crate::model::config::Family;

pub static ARCH: Arch = Arch {
    family: Family::Qwen2,
    hf_class: "Qwen2ForCausalLM",
    model_type: "qwen2",
    gated_mlp: true,
    parse: |f| {
        llama::parse_family(f, Family::Qwen2, |f| {
            if f.bool_or("use_sliding_window", false)? {
                return Err(f.err(
                    "use_sliding_window",
                    "is true; Qwen2's per-layer sliding window is not supported",
                ));
            }
            Ok(None)
        })
    },
    synthesize: llama::synthesize,
    hf_slot: llama::hf_slot,
    hf_droppable_prefix: None,
    gguf: None,
};
