//! Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT"):
//! where in the network does a model recall a fact?
//!
//! 1. Clean run of the prompt; the answer is the model's most likely next token (or given).
//! 2. Corrupted runs: Gaussian noise of standard deviation k·σ (k = 3) added to the
//!    embeddings of the subject's tokens, σ the standard deviation of subject-token
//!    embeddings over the known facts; 10 seeded samples. Score = p(answer) averaged over
//!    the samples.
//! 3. Restore the clean value of one state in the corrupted runs — the hidden state at one
//!    (token, layer); the MLP or attention outputs at one token over a window of 10 layers
//!    centred on a layer — and score again. Indirect effect = p_restored − p_corrupted.
//!
//! [`locate`] averages the effects over many known facts and recommends the layer to edit.

pub mod grid;
pub mod known_facts;
pub mod locate;
pub mod noise;
pub mod pictures;
pub mod tokens;
pub mod tracer;

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Model;
pub use grid::Kind;
pub use known_facts::{load_known_facts, KnownFact};
pub use noise::{cached_subject_embedding_std, subject_embedding_std, SubjectEmbeddingStd};
pub use tracer::Tracer;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceOptions {
    /// Corrupted runs (rows of one batch).
    pub samples: usize,
    /// The noise's standard deviation in units of σ (ROME: 3).
    pub noise: f64,
    /// σ, the standard deviation of subject-token embeddings.
    pub sigma: f64,
    /// Layers restored together for MLP and attention.
    pub window: usize,
    pub seed: u64,
    /// Tokens whose restorations share one forward pass (as more rows).
    pub tokens_per_pass: usize,
    /// Threads running forward passes (see [`grid::grids`]); not part of the result.
    #[serde(skip, default = "one")]
    pub workers: usize,
}

fn one() -> usize {
    1
}

impl TraceOptions {
    /// ROME's settings with a given σ.
    pub fn with_sigma(sigma: f64) -> Self {
        TraceOptions {
            samples: 10,
            noise: 3.0,
            sigma,
            window: 10,
            seed: 1,
            tokens_per_pass: 3,
            workers: 1,
        }
    }
}

/// One traced prompt: the three grids are [tokens × layers] of p(answer) with the state of
/// that cell restored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceResult {
    /// The model's file name, for titles.
    pub model: String,
    pub prompt: String,
    pub subject: String,
    /// The text of each prompt token.
    pub tokens: Vec<String>,
    /// `[start, end)` of the subject's tokens.
    pub subject_range: (usize, usize),
    pub answer: String,
    pub answer_id: u32,
    /// p(answer) of the clean run.
    pub clean_prob: f64,
    /// p(answer) of the corrupted runs (averaged): the low score.
    pub corrupted_prob: f64,
    pub n_layers: usize,
    pub options: TraceOptions,
    pub hidden: Vec<Vec<f64>>,
    pub mlp: Vec<Vec<f64>>,
    pub attn: Vec<Vec<f64>>,
    pub seconds: f64,
}

/// The largest cell of a grid.
#[derive(Clone, Debug, Serialize)]
pub struct Peak {
    pub token: usize,
    pub layer: usize,
    pub prob: f64,
}

impl TraceResult {
    pub fn grid(&self, kind: Kind) -> &Vec<Vec<f64>> {
        match kind {
            Kind::Hidden => &self.hidden,
            Kind::Mlp => &self.mlp,
            Kind::Attn => &self.attn,
        }
    }

    pub fn peak(&self, kind: Kind) -> Peak {
        let mut best = Peak {
            token: 0,
            layer: 0,
            prob: f64::NEG_INFINITY,
        };
        for (t, row) in self.grid(kind).iter().enumerate() {
            for (l, &p) in row.iter().enumerate() {
                if p > best.prob {
                    best = Peak {
                        token: t,
                        layer: l,
                        prob: p,
                    };
                }
            }
        }
        best
    }

    /// Token labels with the subject's marked by `*` (as in ROME's figures).
    pub fn labels(&self) -> Vec<String> {
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let star = (self.subject_range.0..self.subject_range.1).contains(&i);
                format!("{}{}", t, if star { "*" } else { "" })
            })
            .collect()
    }
}

/// Traces `prompt` with `subject` corrupted. `answer` (its first token) defaults to the
/// model's most likely next token.
pub fn trace_prompt(
    model: &Model,
    prompt: &str,
    subject: &str,
    answer: Option<&str>,
    options: &TraceOptions,
) -> Result<TraceResult> {
    let started = Instant::now();
    let tok = model.tokenizer()?;
    let ids = tok.encode_input(prompt)?;
    if ids.is_empty() {
        return Err(Error::invalid("the prompt is empty"));
    }
    let texts = tokens::token_texts(tok, &ids)?;
    let range = tokens::subject_range(&texts, subject)?;
    let answer_id = match answer {
        Some(a) => Some(
            *tok.encode(a)?
                .first()
                .ok_or_else(|| Error::invalid(format!("the answer {a:?} has no tokens")))?,
        ),
        None => None,
    };
    if !(options.sigma.is_finite() && options.sigma > 0.0) {
        return Err(Error::invalid(format!(
            "σ must be a positive number; got {}",
            options.sigma
        )));
    }
    let tracer = Tracer::new(
        model,
        &ids,
        range,
        answer_id,
        options.samples,
        options.noise * options.sigma,
        options.seed,
    )?;
    let n_layers = model.config.n_layers;
    let mut grids = grid::grids(
        &tracer,
        &Kind::ALL,
        options.window,
        n_layers,
        options.tokens_per_pass,
        options.workers,
    )?
    .into_iter();
    let (hidden, mlp, attn) = match (grids.next(), grids.next(), grids.next()) {
        (Some(h), Some(m), Some(a)) => (h, m, a),
        _ => return Err(Error::invalid("tracing returned fewer than three grids")),
    };
    Ok(TraceResult {
        model: model_name(model),
        prompt: prompt.to_string(),
        subject: subject.trim().to_string(),
        tokens: texts,
        subject_range: range,
        answer: tok.decode(&[tracer.answer()], false)?,
        answer_id: tracer.answer(),
        clean_prob: tracer.clean_prob,
        corrupted_prob: tracer.corrupted_prob,
        n_layers,
        options: options.clone(),
        hidden,
        mlp,
        attn,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A short name for a model: its file or directory name without extension.
pub fn model_name(model: &Model) -> String {
    model
        .source
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "the model".into())
}
