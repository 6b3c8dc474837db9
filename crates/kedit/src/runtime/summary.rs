//! A description of a loaded model for people (`kedit inspect`) and machines (`--json`).

use serde::Serialize;

use crate::model::{Model, SourceFormat};
use crate::runtime::sites::Site;

#[derive(Clone, Debug, Serialize)]
pub struct ModelSummary {
    pub source: String,
    pub format: String,
    pub architecture: String,
    pub parameters: usize,
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub norm: String,
    pub activation: String,
    pub block: String,
    pub rope: Option<String>,
    pub sliding_window: Option<usize>,
    pub tied_embeddings: bool,
    pub dtype: String,
    pub tokenizer: Option<String>,
    pub chat_template: bool,
    /// Site name patterns, `{l}` ranging over the layers.
    pub sites: Vec<String>,
    /// Canonical names of the parameters of block 0 and the top-level ones.
    pub parameter_names: Vec<String>,
}

impl ModelSummary {
    pub fn of(model: &Model) -> Self {
        let c = &model.config;
        let tok = model.tokenizer.as_ref();
        ModelSummary {
            source: model.source.path.display().to_string(),
            format: match model.source.format {
                SourceFormat::Gguf => "gguf",
                SourceFormat::HfDir => "huggingface",
                SourceFormat::Memory => "memory",
            }
            .into(),
            architecture: c.family.hf_class().into(),
            parameters: model.params.numel(),
            vocab_size: c.vocab_size,
            d_model: c.d_model,
            n_layers: c.n_layers,
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            d_ff: c.d_ff,
            norm: format!("{:?} (eps {:e})", c.norm, c.norm_eps),
            activation: format!(
                "{:?}{}",
                c.activation,
                if c.gated_mlp() { ", gated" } else { "" }
            ),
            block: format!("{:?}", c.block),
            rope: c.rope.map(|r| {
                let local = match c.local_rope_theta {
                    Some(t) => format!(" (sliding-window layers: theta {t})"),
                    None => String::new(),
                };
                format!(
                    "theta {}, rotary dims {}{}{local}",
                    r.theta,
                    r.rotary_dim,
                    if r.interleaved { ", interleaved" } else { "" }
                )
            }),
            sliding_window: c.sliding_window,
            tied_embeddings: c.tie_embeddings,
            dtype: format!("{:?}", model.dtype()),
            tokenizer: tok.map(|t| format!("{} tokens", t.vocab_size())),
            chat_template: tok.is_some_and(|t| t.chat_template().is_some()),
            sites: Site::all(1)
                .into_iter()
                .map(|s| s.to_string().replace("blocks.0.", "blocks.{l}."))
                .collect(),
            parameter_names: model
                .params
                .ids()
                .filter(|id| !matches!(id, crate::ParamId::Block(l, _) if *l > 0))
                .map(|id| id.to_string().replace("blocks.0.", "blocks.{l}."))
                .collect(),
        }
    }
}
