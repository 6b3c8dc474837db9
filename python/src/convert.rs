//! Conversions shared by the classes: tensors to bytes, generation options, texts.

use candle_core::{DType, Tensor};
use kedit::generate::{generate, GenerateOptions, Sampling};
use kedit::lm::LanguageModel;
use kedit::tokenizer::ChatMessage;

/// A tensor as little-endian f32 bytes and its shape (numpy's `frombuffer` reads them).
pub fn tensor_bytes(t: &Tensor) -> kedit::Result<(Vec<u8>, Vec<usize>)> {
    let shape = t.dims().to_vec();
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok((bytes, shape))
}

/// Named arrays for Python: `(name, little-endian f32 bytes, shape)` each.
pub type NamedArrays<'py> = Vec<(String, pyo3::Bound<'py, pyo3::types::PyBytes>, Vec<usize>)>;

/// What `generate` takes from Python.
pub struct GenerateArgs {
    pub max_new_tokens: usize,
    pub top_k: Option<usize>,
    pub temperature: f64,
    pub seed: u64,
    pub chat: bool,
}

/// Continuations of `prompts` (greedy, or top-k sampling), as text.
pub fn generate_texts(
    lm: &dyn LanguageModel,
    prompts: &[String],
    args: &GenerateArgs,
) -> kedit::Result<Vec<String>> {
    let tok = lm.tokenizer()?;
    let ids = prompts
        .iter()
        .map(|p| {
            let text = if args.chat {
                tok.apply_chat_template(&[ChatMessage::user(p)], true)?
            } else {
                p.clone()
            };
            tok.encode_input(&text)
        })
        .collect::<kedit::Result<Vec<_>>>()?;
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: match args.top_k {
            Some(k) => Sampling::TopK {
                k,
                temperature: args.temperature,
                seed: args.seed,
            },
            None => Sampling::Greedy,
        },
        stop_at_eos: true,
    };
    generate(lm, &ids, &opts)?
        .iter()
        .map(|g| tok.decode(g, true))
        .collect()
}
