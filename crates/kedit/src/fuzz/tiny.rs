//! Tiny synthetic models, made in code: the seeds of the model-file formats and the model
//! the hyper-parameter loaders are called with.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::json;

use crate::error::Result;
use crate::lm::generate::{generate, GenerateOptions};
use crate::model::{arch, Model, Params};
use crate::rng::Rng;
use crate::runtime::TokenBatch;

/// The byte-level BPE vocabulary of the tiny GGUF model (control tokens first).
pub const TOKENS: &[&str] = &[
    "<s>", "</s>", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p",
    "q", "r", "s", "t", "u", "v", "w", "x", "y", "z", "Ġ", "ab", "Ġa", ".",
];
pub const MERGES: &[&str] = &["a b", "Ġ a"];

/// A random LLaMA-architecture model: width 32, 2 heads (1 key/value head), feed-forward
/// 32, vocabulary 32, context 64, `n_layers` blocks.
pub fn llama(n_layers: usize) -> Result<Model> {
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 32,
        "intermediate_size": 32,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": TOKENS.len(),
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "bos_token_id": 0,
        "eos_token_id": 1,
    });
    let cfg = arch::parse(Path::new("built-in:tiny-llama"), &config)?;
    let mut rng = Rng::new(7);
    let mut params = Params::new();
    for (id, shape) in cfg.param_shapes() {
        let n = shape.iter().product();
        let values: Vec<f32> = rng.normal_vec(n).iter().map(|x| x * 0.2).collect();
        params.insert(id, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    Model::from_parts(cfg, params, None)
}

/// Runs a loaded model a little: a forward of a few tokens, a short generation, and a
/// prompt longer than its context (which must be an error).
pub fn exercise(model: &Model, rng: &mut Rng) -> Result<()> {
    let vocab = model.config.vocab_size as u32;
    let ids: Vec<u32> = match model.tokenizer() {
        Ok(tok) => tok.encode("ab a.b")?,
        Err(_) => Vec::new(),
    };
    let ids: Vec<u32> = if ids.is_empty() || ids.iter().any(|&i| i >= vocab) {
        (0..4)
            .map(|_| (rng.next_u64() % vocab as u64) as u32)
            .collect()
    } else {
        ids
    };
    let out = model.forward(&TokenBatch::single(&ids)).run()?;
    out.logits()?;
    let opts = GenerateOptions {
        max_new_tokens: 2,
        ..GenerateOptions::default()
    };
    generate(model, std::slice::from_ref(&ids), &opts)?;
    let context = model.config.max_positions;
    if context < 4096 {
        let long = vec![ids[0]; context + 1];
        // A harness assertion: caught and reported as a failing case.
        assert!(
            model.forward(&TokenBatch::single(&long)).run().is_err(),
            "a prompt longer than the context ({context}) was accepted"
        );
    }
    Ok(())
}
