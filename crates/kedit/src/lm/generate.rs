//! Text generation with a KV cache: greedy or seeded top-k sampling, many prompts at once.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lm::{Hooks, LanguageModel, PromptEnds};
use crate::model::Model;
use crate::rng::Rng;
use crate::runtime::side_memory::Routes;
use crate::runtime::{Action, Intervention, LogitsAt, Padding, Site, TokenBatch};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Sampling {
    Greedy,
    /// Sample among the `k` most likely tokens at `temperature`; prompt `i` of a call draws
    /// from a generator seeded with `(seed, i)`, so results do not depend on batch makeup.
    TopK {
        k: usize,
        temperature: f64,
        seed: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Stop a sequence at the end-of-sequence token (which is not included).
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 32,
            sampling: Sampling::Greedy,
            stop_at_eos: true,
        }
    }
}

/// Generates continuations of every prompt (token ids); returns the new tokens of each.
pub fn generate(
    lm: &dyn LanguageModel,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    let seed = match opts.sampling {
        Sampling::TopK { seed, .. } => seed,
        Sampling::Greedy => 0,
    };
    let seeds: Vec<u64> = (0..prompts.len())
        .map(|i| seed.wrapping_mul(0x100_0000_01B3).wrapping_add(i as u64))
        .collect();
    lm.generate(prompts, &seeds, opts)
}

/// As [`generate`], but prompt `i` samples from a generator seeded with `seeds[i]` (the
/// seed in `opts.sampling` is not used): a prompt gets the same text whatever batch it is
/// in and wherever it sits in it.
pub fn generate_seeded(
    lm: &dyn LanguageModel,
    prompts: &[Vec<u32>],
    seeds: &[u64],
    opts: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    lm.generate(prompts, seeds, opts)
}

/// Generation on `model` with `hooks` acting at the prompts' ends (the first chunk's last
/// column, left-padded) and on every generated token after them.
pub fn generate_with(
    model: &Model,
    prompts: &[Vec<u32>],
    seeds: &[u64],
    opts: &GenerateOptions,
    hooks: Hooks,
) -> Result<Vec<Vec<u32>>> {
    if prompts.iter().any(Vec::is_empty) {
        return Err(Error::invalid("cannot generate from an empty prompt"));
    }
    if seeds.len() != prompts.len() {
        return Err(Error::invalid("one seed per prompt is required"));
    }
    let context = model.config.max_positions;
    if let Some(p) = prompts
        .iter()
        .find(|p| p.len().saturating_add(opts.max_new_tokens) > context)
    {
        return Err(Error::invalid(format!(
            "a prompt of {} tokens and up to {} new tokens exceed the model's context length \
             ({context}, max_position_embeddings / context_length)",
            p.len(),
            opts.max_new_tokens
        )));
    }
    let eos = model
        .config
        .eos_token_id
        .or_else(|| model.tokenizer.as_ref().and_then(|t| t.eos_id()));
    let pad = eos.unwrap_or(0);
    let mut rngs: Vec<Rng> = match opts.sampling {
        Sampling::TopK { .. } => seeds.iter().map(|&s| Rng::new(s)).collect(),
        Sampling::Greedy => Vec::new(),
    };
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut done = vec![opts.max_new_tokens == 0; prompts.len()];
    if opts.max_new_tokens == 0 {
        return Ok(out);
    }
    let batch = TokenBatch::new(prompts, Padding::Left, pad)?;
    let ends = PromptEnds::last_column(&batch);
    let first = model
        .forward(&batch)
        .interventions(hooks(&ends)?)
        .keep_kv()
        .run()?;
    let mut logits = first.logits()?.clone();
    // Side memories route a row by its prompt; the tokens generated after it are answered
    // by the same memory (one token alone says too little about what is being asked).
    let routes = first.routes;
    let mut cache = first.kv.expect("asked for");
    let mut next_pos = batch.next_positions();
    for step in 0..opts.max_new_tokens {
        let picked = pick(&logits, opts.sampling, &mut rngs)?;
        for (i, &tok) in picked.iter().enumerate() {
            if done[i] {
                continue;
            }
            if opts.stop_at_eos && Some(tok) == eos {
                done[i] = true;
            } else {
                out[i].push(tok);
            }
        }
        if done.iter().all(|&d| d) || step + 1 == opts.max_new_tokens {
            break;
        }
        let chunk: Vec<Vec<u32>> = picked.iter().map(|&t| vec![t]).collect();
        let batch = TokenBatch::continuation(&chunk, &next_pos, Padding::Right, pad)?;
        let ends = PromptEnds {
            last: Vec::new(),
            after: (0..batch.rows).map(|r| (r, 0)).collect(),
        };
        let step_out = model
            .forward(&batch)
            .interventions(with_routes(hooks(&ends)?, &routes))
            .prefix(&cache)
            .keep_kv()
            .logits(LogitsAt::Last)
            .run()?;
        logits = step_out.logits()?.clone();
        cache = step_out.kv.expect("asked for");
        for p in &mut next_pos {
            *p += 1;
        }
    }
    Ok(out)
}

/// One next token per row of `[rows, vocab]` logits.
fn pick(logits: &Tensor, sampling: Sampling, rngs: &mut [Rng]) -> Result<Vec<u32>> {
    match sampling {
        Sampling::Greedy => Ok(logits.argmax(1)?.to_vec1::<u32>()?),
        Sampling::TopK { k, temperature, .. } => {
            if k == 0 || temperature <= 0.0 {
                return Err(Error::invalid(
                    "top-k sampling needs k ≥ 1 and a positive temperature",
                ));
            }
            let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            Ok(rows
                .iter()
                .zip(rngs.iter_mut())
                .map(|(row, rng)| sample_top_k(row, k, temperature, rng))
                .collect())
        }
    }
}

fn sample_top_k(row: &[f32], k: usize, temperature: f64, rng: &mut Rng) -> u32 {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let k = k.min(row.len());
    // Ties broken by id so the order — and so the draw — is fully determined.
    idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    let mut top = idx[..k].to_vec();
    top.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    let max = row[top[0]] as f64;
    let weights: Vec<f64> = top
        .iter()
        .map(|&i| ((row[i] as f64 - max) / temperature).exp())
        .collect();
    top[rng.weighted_index(&weights)] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_never_leaves_the_top_k_and_top_1_is_argmax() {
        let row = [0.1f32, 3.0, -1.0, 2.5, 2.9];
        let mut rng = Rng::new(5);
        for _ in 0..200 {
            let t = sample_top_k(&row, 3, 1.0, &mut rng);
            assert!([1, 3, 4].contains(&t));
        }
        assert_eq!(sample_top_k(&row, 1, 1.0, &mut rng), 1);
    }
}

/// A candidate next token with its probability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NextToken {
    pub id: u32,
    pub text: String,
    pub prob: f64,
}

/// The `k` most likely next tokens after `prompt`.
pub fn top_next_tokens(lm: &dyn LanguageModel, prompt: &[u32], k: usize) -> Result<Vec<NextToken>> {
    let tok = lm.tokenizer()?;
    let logits = lm.next_logits(&[prompt.to_vec()])?;
    let probs = crate::runtime::ops::softmax_last(&logits.to_dtype(DType::F64)?)?
        .squeeze(0)?
        .to_vec1::<f64>()?;
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    idx.truncate(k);
    idx.into_iter()
        .map(|i| {
            Ok(NextToken {
                id: i as u32,
                text: tok.decode(&[i as u32], false)?,
                prob: probs[i],
            })
        })
        .collect()
}

/// `interventions` with the side memories' routing fixed to `routes` where one was taken.
fn with_routes(
    mut interventions: Vec<Intervention>,
    routes: &BTreeMap<Site, Routes>,
) -> Vec<Intervention> {
    for iv in &mut interventions {
        if let (Action::SideMemory { forced, .. }, Some(r)) = (&mut iv.action, routes.get(&iv.site))
        {
            *forced = Some(r.clone());
        }
    }
    interventions
}
