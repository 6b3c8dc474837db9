//! The metrics of one model state on many edit requests, computed together: every
//! teacher-forced pair of every case goes through [`teacher_forced::score`] in one call
//! (few padded forwards, logits only at scored positions), every greedy probe through one
//! batched generation, every fluency prompt through one batched sampling.
//!
//! EasyEdit-exact values (see each module for the source they follow):
//! - `rewrite_acc` / `rephrase_acc`: token accuracy of `prompt + " " + target_new` per
//!   prompt;
//! - `portability_acc[group]`: the same on each portability probe with its first answer;
//! - `locality_output[group]`: argmax ids at each locality probe's answer positions;
//!   after an edit `locality_acc[group]` is the fraction equal to the pre-edit ids;
//! - `fluency`: n-gram entropy of a sampled continuation of the prompt.
//!
//! Beside them: free-generation exact match (`*_em`) and ROME's CounterFact comparisons
//! (`counterfact`), computed when the request has a `ground_truth`.

pub mod fluency;
pub mod free_generation;
pub mod teacher_forced;
pub mod word_tokenize;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::Fast64;
use crate::lm::LanguageModel;
use crate::lm::Scored;
use crate::request::EditRequest;
use teacher_forced::Pair;

/// Per-prompt values of one case on one model state. Lists keep EasyEdit's per-prompt
/// granularity; [`crate::experiment::summary`] averages per case, then over cases.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub rewrite_acc: Vec<f64>,
    #[serde(default)]
    pub rephrase_acc: Vec<f64>,
    #[serde(default)]
    pub portability_acc: BTreeMap<String, Vec<f64>>,
    #[serde(default)]
    pub locality_output: BTreeMap<String, Vec<Vec<u32>>>,
    /// Only after an edit: per probe, the fraction of `locality_output` ids unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub locality_acc: BTreeMap<String, Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fluency: Option<f64>,
    /// Free-generation exact match (1.0/0.0 per prompt).
    #[serde(default)]
    pub rewrite_em: Vec<f64>,
    #[serde(default)]
    pub rephrase_em: Vec<f64>,
    #[serde(default)]
    pub portability_em: BTreeMap<String, Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterfact: Option<CounterFact>,
}

/// ROME's CounterFact comparisons, 1.0/0.0 per prompt, from the mean per-token NLL of each
/// answer after the prompt: efficacy (rewrite prompts) and paraphrase — target_new more
/// likely than target_true (`ground_truth[0]`); neighborhood (locality probes) — the
/// probe's own answer (target_true in CounterFact) more likely than target_new.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterFact {
    pub efficacy: Vec<f64>,
    pub paraphrase: Vec<f64>,
    pub neighborhood: Vec<f64>,
}

/// What to compute besides the teacher-forced values.
#[derive(Clone, Copy, Debug)]
pub struct MetricOptions {
    pub fluency: bool,
    pub free_generation: bool,
    /// Seeds the fluency sampling (with each case's id).
    pub seed: u64,
}

impl Default for MetricOptions {
    fn default() -> Self {
        MetricOptions {
            fluency: true,
            free_generation: true,
            seed: 0,
        }
    }
}

/// Which case and which slot a scored pair or probe fills.
#[derive(Clone, Debug)]
enum Slot {
    Rewrite,
    Rephrase,
    Portability(String),
    Locality(String),
    /// CounterFact: `(kind, prompt index, answer is target_new)`.
    Cf(CfKind, usize, bool),
}

/// A CounterFact comparison: `(case, kind, prompt index)`.
type CfKey = (usize, CfKind, usize);
/// Mean NLLs of `(target_new, the other answer)`.
type CfNlls = (Option<f64>, Option<f64>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum CfKind {
    Efficacy,
    Paraphrase,
    Neighborhood,
}

/// Metrics of `requests` on `model`. With `pre` (the same cases' pre-edit metrics, in
/// order) locality is scored against it.
pub fn evaluate(
    lm: &dyn LanguageModel,
    requests: &[&EditRequest],
    pre: Option<&[&Metrics]>,
    opts: &MetricOptions,
) -> Result<Vec<Metrics>> {
    if let Some(pre) = pre {
        if pre.len() != requests.len() {
            return Err(Error::invalid(
                "one pre-edit record per request is required",
            ));
        }
    }
    let mut out = vec![Metrics::default(); requests.len()];
    teacher_forced_values(lm, requests, &mut out)?;
    if opts.free_generation {
        exact_matches(lm, requests, &mut out)?;
    }
    if opts.fluency {
        let prompts: Vec<(String, u64)> = requests
            .iter()
            .map(|r| (r.prompt.clone(), case_seed(opts.seed, &r.case_id)))
            .collect();
        let texts = fluency::sample_texts(lm, &prompts)?;
        for (m, text) in out.iter_mut().zip(&texts) {
            m.fluency = Some(fluency::n_gram_entropy(text));
        }
    }
    if let Some(pre) = pre {
        for (m, p) in out.iter_mut().zip(pre) {
            m.locality_acc = locality_acc(&p.locality_output, &m.locality_output);
        }
    }
    Ok(out)
}

/// A case's fluency seed: the run seed and the case id, so the draw does not depend on
/// the order or batch the case is evaluated in.
pub fn case_seed(seed: u64, case_id: &str) -> u64 {
    let mut h = Fast64::new();
    h.u64(seed);
    h.str(case_id);
    h.finish()
}

fn teacher_forced_values(
    lm: &dyn LanguageModel,
    requests: &[&EditRequest],
    out: &mut [Metrics],
) -> Result<()> {
    let mut pairs = Vec::new();
    let mut slots = Vec::new();
    for (c, r) in requests.iter().enumerate() {
        let mut push = |pair: Pair, slot: Slot| {
            pairs.push(pair);
            slots.push((c, slot));
        };
        push(Pair::new(&r.prompt, &r.target_new), Slot::Rewrite);
        for p in &r.rephrase {
            push(Pair::new(p, &r.target_new), Slot::Rephrase);
        }
        for (group, probes) in &r.portability {
            for p in probes {
                push(
                    Pair::new(&p.prompt, &p.answer),
                    Slot::Portability(group.clone()),
                );
            }
        }
        for (group, probes) in &r.locality {
            for p in probes {
                push(
                    Pair::new(&p.prompt, &p.answer),
                    Slot::Locality(group.clone()),
                );
            }
        }
        if let Some(truth) = r.ground_truth.first() {
            let prompts = std::iter::once((CfKind::Efficacy, &r.prompt))
                .chain(r.rephrase.iter().map(|p| (CfKind::Paraphrase, p)));
            for (i, (kind, p)) in prompts.enumerate() {
                push(Pair::new(p, &r.target_new), Slot::Cf(kind, i, true));
                push(Pair::new(p, truth), Slot::Cf(kind, i, false));
            }
            let neighbours = r.locality.values().flatten();
            for (i, p) in neighbours.enumerate() {
                push(
                    Pair::new(&p.prompt, &r.target_new),
                    Slot::Cf(CfKind::Neighborhood, i, true),
                );
                push(
                    Pair::new(&p.prompt, &p.answer),
                    Slot::Cf(CfKind::Neighborhood, i, false),
                );
            }
        }
    }
    let scored = teacher_forced::score(lm, &pairs, true)?;
    let mut cf: BTreeMap<CfKey, CfNlls> = BTreeMap::new();
    for ((c, slot), s) in slots.into_iter().zip(&scored) {
        let m = &mut out[c];
        let acc = Scored::accuracy(s);
        match slot {
            Slot::Rewrite => m.rewrite_acc.extend(acc),
            Slot::Rephrase => m.rephrase_acc.extend(acc),
            Slot::Portability(g) => m.portability_acc.entry(g).or_default().extend(acc),
            Slot::Locality(g) => m
                .locality_output
                .entry(g)
                .or_default()
                .push(s.predicted.clone()),
            Slot::Cf(kind, i, is_new) => {
                let e = cf.entry((c, kind, i)).or_default();
                if is_new {
                    e.0 = s.mean_nll();
                } else {
                    e.1 = s.mean_nll();
                }
            }
        }
    }
    for (c, r) in requests.iter().enumerate() {
        if !r.ground_truth.is_empty() {
            out[c].counterfact = Some(CounterFact::default());
        }
    }
    for ((c, kind, _), (new, other)) in cf {
        let (Some(new), Some(other)) = (new, other) else {
            continue;
        };
        let cfm = out[c].counterfact.get_or_insert_with(Default::default);
        match kind {
            CfKind::Efficacy => cfm.efficacy.push(f64::from(new < other)),
            CfKind::Paraphrase => cfm.paraphrase.push(f64::from(new < other)),
            CfKind::Neighborhood => cfm.neighborhood.push(f64::from(other < new)),
        }
    }
    Ok(())
}

fn exact_matches(
    lm: &dyn LanguageModel,
    requests: &[&EditRequest],
    out: &mut [Metrics],
) -> Result<()> {
    let mut probes = Vec::new();
    let mut slots = Vec::new();
    for (c, r) in requests.iter().enumerate() {
        let target = vec![r.target_new.clone()];
        probes.push(free_generation::Probe {
            prompt: r.prompt.clone(),
            answers: target.clone(),
        });
        slots.push((c, Slot::Rewrite));
        for p in &r.rephrase {
            probes.push(free_generation::Probe {
                prompt: p.clone(),
                answers: target.clone(),
            });
            slots.push((c, Slot::Rephrase));
        }
        for (group, ps) in &r.portability {
            for p in ps {
                probes.push(free_generation::Probe {
                    prompt: p.prompt.clone(),
                    answers: p.accepted().map(str::to_string).collect(),
                });
                slots.push((c, Slot::Portability(group.clone())));
            }
        }
    }
    let hits = free_generation::exact_match(lm, &probes)?;
    for ((c, slot), hit) in slots.into_iter().zip(hits) {
        let m = &mut out[c];
        match slot {
            Slot::Rewrite => m.rewrite_em.push(hit),
            Slot::Rephrase => m.rephrase_em.push(hit),
            Slot::Portability(g) => m.portability_em.entry(g).or_default().push(hit),
            Slot::Locality(_) | Slot::Cf(..) => unreachable!("not a generation slot"),
        }
    }
    Ok(())
}

/// EasyEdit's `finalize_locality_metrics` (easyeditor/editors/editor.py): per probe,
/// `mean(pre_ids == post_ids)`. The ids come from the same tokenisation before and after,
/// so the lengths agree; a probe scored on one side only is skipped.
pub fn locality_acc(
    pre: &BTreeMap<String, Vec<Vec<u32>>>,
    post: &BTreeMap<String, Vec<Vec<u32>>>,
) -> BTreeMap<String, Vec<f64>> {
    let mut out = BTreeMap::new();
    for (group, before) in pre {
        let Some(after) = post.get(group) else {
            continue;
        };
        let accs: Vec<f64> = before
            .iter()
            .zip(after)
            .filter(|(a, b)| !a.is_empty() && a.len() == b.len())
            .map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64)
            .collect();
        out.insert(group.clone(), accs);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locality_counts_unchanged_tokens_per_probe() {
        let pre = BTreeMap::from([("g".to_string(), vec![vec![1, 2, 3, 4], vec![7]])]);
        let post = BTreeMap::from([("g".to_string(), vec![vec![1, 9, 3, 4], vec![8]])]);
        assert_eq!(locality_acc(&pre, &post)["g"], vec![0.75, 0.0]);
        assert_eq!(locality_acc(&pre, &pre)["g"], vec![1.0, 1.0]);
    }

    #[test]
    fn case_seeds_differ_by_case_and_run_seed() {
        assert_ne!(case_seed(0, "a"), case_seed(0, "b"));
        assert_ne!(case_seed(0, "a"), case_seed(1, "a"));
        assert_eq!(case_seed(3, "a"), case_seed(3, "a"));
    }
}
