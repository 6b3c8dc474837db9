//! Locate: causal tracing averaged over known facts (ROME's Figure 2), and the layer it
//! recommends editing.
//!
//! Which facts: ROME traces facts its model knows. Here a fact counts as known when the
//! model's most likely next token after the prompt is the first token of
//! `" " + attribute` (the true object); the first `limit` such facts, in file order, are
//! traced with that token as the answer. Facts whose subject does not occur in the prompt
//! are skipped. `only_known: false` traces every fact with the model's own prediction.
//!
//! Token classes (per fact, subject tokens `[s, e)`, prompt length `n`): first subject
//! token `s`; middle subject tokens `s+1..e-1`; last subject token `e-1`; first subsequent
//! token `e`; further tokens `e+1..n-1`; last token `n-1`. Classes may share a token (a
//! one-token subject is both first and last). A class's value for a fact is the mean
//! indirect effect p_restored − p_corrupted over its tokens; the average indirect effect
//! (AIE) is the mean over the facts that have that class.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::error::Result;
use crate::fsio::write_atomic;
use crate::hash::Fast64;
use crate::model::Model;
use crate::progress::Progress;
use crate::runtime::{Padding, TokenBatch};
use crate::trace::known_facts::KnownFact;
use crate::trace::tokens::{subject_range, token_texts};
use crate::trace::{trace_prompt, Kind, TraceOptions, TraceResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenClass {
    FirstSubject,
    MiddleSubject,
    LastSubject,
    FirstSubsequent,
    Further,
    Last,
}

impl TokenClass {
    pub const ALL: [TokenClass; 6] = [
        TokenClass::FirstSubject,
        TokenClass::MiddleSubject,
        TokenClass::LastSubject,
        TokenClass::FirstSubsequent,
        TokenClass::Further,
        TokenClass::Last,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TokenClass::FirstSubject => "first subject token",
            TokenClass::MiddleSubject => "middle subject tokens",
            TokenClass::LastSubject => "last subject token",
            TokenClass::FirstSubsequent => "first subsequent token",
            TokenClass::Further => "further tokens",
            TokenClass::Last => "last token",
        }
    }

    /// The class's tokens in a prompt of `len` tokens with subject tokens `[s, e)`.
    pub fn tokens(self, (s, e): (usize, usize), len: usize) -> Vec<usize> {
        match self {
            TokenClass::FirstSubject => vec![s],
            TokenClass::MiddleSubject => (s + 1..e.saturating_sub(1)).collect(),
            TokenClass::LastSubject => vec![e - 1],
            TokenClass::FirstSubsequent => (e..len.min(e + 1)).collect(),
            TokenClass::Further => (e + 1..len.saturating_sub(1)).collect(),
            TokenClass::Last => vec![len - 1],
        }
    }
}

#[derive(Clone, Debug)]
pub struct LocateOptions {
    /// Facts to trace.
    pub limit: usize,
    pub trace: TraceOptions,
    /// Trace only facts the model knows (see the module docs).
    pub only_known: bool,
}

/// AIE per layer of one token class.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassEffect {
    pub class: TokenClass,
    pub label: String,
    /// Facts that have this class.
    pub facts: usize,
    pub aie: Vec<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KindEffects {
    pub kind: Kind,
    pub classes: Vec<ClassEffect>,
}

impl KindEffects {
    pub fn class(&self, class: TokenClass) -> Option<&ClassEffect> {
        self.classes.iter().find(|c| c.class == class)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FactSummary {
    pub id: usize,
    pub subject: String,
    pub prompt: String,
    pub answer: String,
    pub clean_prob: f64,
    pub corrupted_prob: f64,
    pub subject_range: (usize, usize),
    pub n_tokens: usize,
    /// The layer of the largest MLP effect at the last subject token.
    pub mlp_peak_layer: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocateResult {
    pub selection: String,
    /// Records examined, known (by the selection rule), traced.
    pub scanned: usize,
    pub known: usize,
    pub traced: usize,
    pub n_layers: usize,
    pub options: TraceOptions,
    pub mean_clean_prob: f64,
    pub mean_corrupted_prob: f64,
    pub effects: Vec<KindEffects>,
    /// argmax over layers of the MLP AIE at the last subject token.
    pub recommended_layer: usize,
    pub recommended_aie: f64,
    pub seconds_per_fact: f64,
    pub facts: Vec<FactSummary>,
}

impl LocateResult {
    pub fn kind(&self, kind: Kind) -> Option<&KindEffects> {
        self.effects.iter().find(|k| k.kind == kind)
    }
}

/// Facts to trace, in order, and how many records were examined and known.
fn select<'f>(
    model: &Model,
    facts: &'f [KnownFact],
    opts: &LocateOptions,
) -> Result<(Vec<&'f KnownFact>, usize, usize)> {
    let tok = model.tokenizer()?;
    let mut chosen = Vec::new();
    let (mut scanned, mut known) = (0, 0);
    for chunk in facts.chunks(32) {
        if chosen.len() >= opts.limit {
            break;
        }
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .map(|f| tok.encode_input(&f.prompt))
            .collect::<Result<_>>()?;
        let batch = TokenBatch::new(&prompts, Padding::Left, tok.pad_id())?;
        let predicted = model
            .forward(&batch)
            .run()?
            .logits()?
            .argmax(1)?
            .to_vec1::<u32>()?;
        for ((fact, ids), &pred) in chunk.iter().zip(&prompts).zip(&predicted) {
            if chosen.len() >= opts.limit {
                break;
            }
            scanned += 1;
            let texts = token_texts(tok, ids)?;
            if ids.is_empty() || subject_range(&texts, &fact.subject).is_err() {
                continue;
            }
            let target = tok.encode(&format!(" {}", fact.attribute.trim_start()))?;
            let knows = target.first() == Some(&pred);
            known += knows as usize;
            if knows || !opts.only_known {
                chosen.push(fact);
            }
        }
    }
    Ok((chosen, scanned, known))
}

/// Mean indirect effect per layer over `tokens` of one grid.
fn class_curve(grid: &[Vec<f64>], tokens: &[usize], low: f64) -> Vec<f64> {
    let n_layers = grid.first().map_or(0, Vec::len);
    (0..n_layers)
        .map(|l| tokens.iter().map(|&t| grid[t][l] - low).sum::<f64>() / tokens.len() as f64)
        .collect()
}

/// Where a fact's trace is cached: named by the model's weights, the fact and the options.
fn trace_cache_path(
    cache: &Cache,
    model_fingerprint: u64,
    fact: &KnownFact,
    opts: &TraceOptions,
) -> Result<PathBuf> {
    let mut h = Fast64::new();
    h.str(&fact.prompt);
    h.str(&fact.subject);
    h.str(&serde_json::to_string(opts).expect("options serialise"));
    cache.file(
        "trace",
        &format!("m{model_fingerprint:016x}-{:016x}.json", h.finish()),
    )
}

/// A fact's trace, from the cache when there (a long locate run resumes where it stopped).
fn trace_fact(
    model: &Model,
    fact: &KnownFact,
    opts: &TraceOptions,
    cached: Option<(&Cache, u64)>,
) -> Result<TraceResult> {
    let Some((cache, fingerprint)) = cached else {
        return trace_prompt(model, &fact.prompt, &fact.subject, None, opts);
    };
    let path = trace_cache_path(cache, fingerprint, fact, opts)?;
    if let Some(r) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
    {
        return Ok(r);
    }
    let r = trace_prompt(model, &fact.prompt, &fact.subject, None, opts)?;
    let text = serde_json::to_string(&r).expect("results serialise");
    write_atomic(&path, text.as_bytes())?;
    Ok(r)
}

/// Traces known facts and averages their indirect effects by token class. With a cache,
/// each fact's trace is stored as it completes and reused by later runs.
pub fn locate(
    model: &Model,
    facts: &[KnownFact],
    opts: &LocateOptions,
    cache: Option<&Cache>,
    progress: &mut dyn Progress,
) -> Result<LocateResult> {
    let n_layers = model.config.n_layers;
    let (chosen, scanned, known) = select(model, facts, opts)?;
    let cached = match cache {
        Some(c) => Some((c, model.fingerprint()?)),
        None => None,
    };
    progress.phase("locate (facts)", chosen.len(), 0);
    let started = Instant::now();
    // sums[kind][class] = (Σ curves, facts)
    let mut sums = vec![vec![(vec![0.0; n_layers], 0usize); TokenClass::ALL.len()]; 3];
    let mut summaries = Vec::with_capacity(chosen.len());
    for fact in &chosen {
        let r = trace_fact(model, fact, &opts.trace, cached)?;
        let len = r.tokens.len();
        for (k, kind) in Kind::ALL.iter().enumerate() {
            for (c, class) in TokenClass::ALL.iter().enumerate() {
                let tokens = class.tokens(r.subject_range, len);
                if tokens.is_empty() {
                    continue;
                }
                let curve = class_curve(r.grid(*kind), &tokens, r.corrupted_prob);
                let (sum, count) = &mut sums[k][c];
                sum.iter_mut().zip(&curve).for_each(|(s, v)| *s += v);
                *count += 1;
            }
        }
        let last_subject = r.subject_range.1 - 1;
        summaries.push(FactSummary {
            id: fact.id,
            subject: fact.subject.clone(),
            prompt: fact.prompt.clone(),
            answer: r.answer.clone(),
            clean_prob: r.clean_prob,
            corrupted_prob: r.corrupted_prob,
            subject_range: r.subject_range,
            n_tokens: len,
            mlp_peak_layer: argmax(&r.mlp[last_subject]).0,
        });
        progress.advance(1);
        progress.status(&format!(
            "{:.1} s/fact",
            started.elapsed().as_secs_f64() / summaries.len() as f64
        ));
    }
    let effects: Vec<KindEffects> = Kind::ALL
        .iter()
        .zip(&sums)
        .map(|(&kind, per_class)| KindEffects {
            kind,
            classes: TokenClass::ALL
                .iter()
                .zip(per_class)
                .map(|(&class, (sum, count))| ClassEffect {
                    class,
                    label: class.label().to_string(),
                    facts: *count,
                    aie: sum.iter().map(|s| s / (*count).max(1) as f64).collect(),
                })
                .collect(),
        })
        .collect();
    let mlp_last_subject = effects
        .iter()
        .find(|k| k.kind == Kind::Mlp)
        .and_then(|k| k.class(TokenClass::LastSubject))
        .map_or(&[][..], |c| c.aie.as_slice());
    let (recommended_layer, recommended_aie) = argmax(mlp_last_subject);
    let traced = summaries.len();
    let mean =
        |f: fn(&FactSummary) -> f64| summaries.iter().map(f).sum::<f64>() / traced.max(1) as f64;
    Ok(LocateResult {
        selection: if opts.only_known {
            "known facts: the model's most likely next token is the first token of \" \" + attribute"
                .into()
        } else {
            "all facts, answer = the model's most likely next token".into()
        },
        scanned,
        known,
        traced,
        n_layers,
        options: opts.trace.clone(),
        mean_clean_prob: mean(|s| s.clean_prob),
        mean_corrupted_prob: mean(|s| s.corrupted_prob),
        effects,
        recommended_layer,
        recommended_aie,
        seconds_per_fact: started.elapsed().as_secs_f64() / traced.max(1) as f64,
        facts: summaries,
    })
}

/// (index, value) of the largest value; (0, -inf) for an empty slice.
fn argmax(xs: &[f64]) -> (usize, f64) {
    xs.iter()
        .copied()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_classes() {
        // "The E iff el Tower is in Paris": subject [0, 5), 8 tokens
        let t = |c: TokenClass| c.tokens((0, 5), 8);
        assert_eq!(t(TokenClass::FirstSubject), vec![0]);
        assert_eq!(t(TokenClass::MiddleSubject), vec![1, 2, 3]);
        assert_eq!(t(TokenClass::LastSubject), vec![4]);
        assert_eq!(t(TokenClass::FirstSubsequent), vec![5]);
        assert_eq!(t(TokenClass::Further), vec![6]);
        assert_eq!(t(TokenClass::Last), vec![7]);
        // A one-token subject right before the last token.
        let u = |c: TokenClass| c.tokens((2, 3), 4);
        assert!(u(TokenClass::MiddleSubject).is_empty());
        assert_eq!(u(TokenClass::FirstSubsequent), vec![3]);
        assert!(u(TokenClass::Further).is_empty());
    }
}
