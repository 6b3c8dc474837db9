//! The edited system as a [`LanguageModel`]: every input gets the contexts in front of it,
//! then the context of the memory record it is routed to (if any); the site adaptors act
//! at the prompt's end. With none of these held it is exactly the plain model.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use candle_core::Tensor;

use crate::edit::WeightEdit;
use crate::editor::Editor;
use crate::error::Result;
use crate::lm::generate::generate_with;
use crate::lm::score::score_rows;
use crate::lm::{
    next_logits_with, ChunkLimits, GenerateOptions, LanguageModel, PromptEnds, ScoreRow, Scored,
};
use crate::model::Model;
use crate::runtime::Intervention;
use crate::tokenizer::Tokenizer;

impl Editor {
    /// The text put in front of each input whose prompt is `prompts[i]` — every context's
    /// prefix, the context of the memory record the prompt is routed to, then the last lead —
    /// and the memory whose counterfactual model answers it, if that memory has one.
    fn prefixes_for(&self, prompts: &[String]) -> Result<Vec<(String, Option<usize>)>> {
        let common: String = self.contexts().iter().map(|c| c.prefix.as_str()).collect();
        let lead = self
            .contexts()
            .iter()
            .rev()
            .find(|c| !c.lead.is_empty())
            .map_or("", |c| c.lead.as_str());
        let routed = self.routed_contexts(prompts)?;
        let out = routed
            .into_iter()
            .map(|routed| {
                let context = routed.map_or("", |(c, _)| c);
                let answerer = routed
                    .map(|(_, m)| m)
                    .filter(|&m| self.extras.counterfactuals[m].is_some());
                (format!("{common}{context}{lead}"), answerer)
            })
            .collect();
        Ok(out)
    }

    /// Which of `prompts` a memory routes (a stored record's context goes in front).
    pub(crate) fn routed(&self, prompts: &[String]) -> Result<Vec<bool>> {
        Ok(self
            .routed_contexts(prompts)?
            .iter()
            .map(Option::is_some)
            .collect())
    }

    /// For each prompt, the context of the record, over every memory, it is routed to with
    /// the highest score (word overlap, or a scope classifier's probability), and that
    /// record's memory. Each classifier embeds all the prompts in one call and compares
    /// them with every record it routes in one product.
    fn routed_contexts(&self, prompts: &[String]) -> Result<Vec<Option<(&str, usize)>>> {
        // A scoring call holds a prompt once per target scored after it: each distinct
        // text is embedded and routed once.
        let mut slot_of: HashMap<&str, usize> = HashMap::new();
        let mut distinct: Vec<&str> = Vec::new();
        let slots: Vec<usize> = prompts
            .iter()
            .map(|p| {
                *slot_of.entry(p).or_insert_with(|| {
                    distinct.push(p);
                    distinct.len() - 1
                })
            })
            .collect();
        let routed = self.routed_distinct(&distinct)?;
        Ok(slots.into_iter().map(|s| routed[s]).collect())
    }

    fn routed_distinct(&self, prompts: &[&str]) -> Result<Vec<Option<(&str, usize)>>> {
        // Per prompt: (score, memory, record) of the best match so far.
        let mut best: Vec<Option<(f64, usize, usize)>> = vec![None; prompts.len()];
        let mut consider = |at: usize, score: f64, memory: usize, record: usize| {
            if best[at].is_none_or(|(s, _, _)| score > s) {
                best[at] = Some((score, memory, record));
            }
        };
        let memories = &self.extras.memories;
        for (m, memory) in memories.iter().enumerate() {
            for (at, prompt) in prompts.iter().enumerate() {
                if let Some(r) = memory.route(prompt) {
                    let i = memory
                        .records
                        .iter()
                        .position(|x| std::ptr::eq(x, r.record))
                        .expect("a route names one of its memory's records");
                    consider(at, r.score, m, i);
                }
            }
        }
        if !self.extras.scopes.is_empty() && !prompts.is_empty() {
            for index in &self.extras.scopes {
                for (at, routed) in index.best(prompts)?.into_iter().enumerate() {
                    if let Some((m, i, p)) = routed {
                        consider(at, p, m, i);
                    }
                }
            }
        }
        Ok(best
            .into_iter()
            .map(|b| b.map(|(_, m, i)| (memories[m].records[i].context.as_str(), m)))
            .collect())
    }

    /// Each `(ids, prompt_len)` with the prefix for its prompt (its first `prompt_len`
    /// tokens) in front, and the new prompt length.
    ///
    /// The prefix and the prompt are encoded as one text, as a user writing them together
    /// (or EasyEdit joining the strings) would have them: encoded apart, a prefix ending in
    /// `Prompt: ` would leave a lone space token before the prompt's first word, a
    /// tokenization the model never saw. The tokens after the prompt (a scored target) are
    /// kept as they are.
    ///
    /// Each row also names the memory whose counterfactual model answers it, if any.
    fn with_prefixes(&self, rows: &[(&[u32], usize)]) -> Result<Vec<Prefixed>> {
        if self.memories().is_empty() && self.contexts().is_empty() {
            return Ok(rows
                .iter()
                .map(|(ids, n)| Prefixed {
                    ids: ids.to_vec(),
                    prompt_len: *n,
                    answerer: None,
                })
                .collect());
        }
        let tok = self.model().tokenizer()?;
        let prompts = rows
            .iter()
            .map(|(ids, n)| tok.decode(&ids[..*n], true))
            .collect::<Result<Vec<_>>>()?;
        let prefixes = self.prefixes_for(&prompts)?;
        rows.iter()
            .zip(prefixes)
            .map(|(&(ids, prompt_len), (prefix, answerer))| {
                if prefix.is_empty() {
                    return Ok(Prefixed {
                        ids: ids.to_vec(),
                        prompt_len,
                        answerer,
                    });
                }
                // The prefix goes after a leading BOS, which stays first.
                let bos = tok
                    .bos_id()
                    .filter(|b| tok.adds_bos() && ids.first() == Some(b));
                let head = usize::from(bos.is_some());
                // Special tokens in the prompt (a chat template's) are decoded as written,
                // so that encoding reads them back as the same tokens.
                let written = tok.decode(&ids[head..prompt_len], false)?;
                let joint = tok.encode(&format!("{prefix}{written}"))?;
                let out: Vec<u32> = ids[..head]
                    .iter()
                    .chain(&joint)
                    .chain(&ids[prompt_len..])
                    .copied()
                    .collect();
                Ok(Prefixed {
                    ids: out,
                    prompt_len: head + joint.len(),
                    answerer,
                })
            })
            .collect()
    }

    /// Runs `f` once per model that answers some of `answerers` — the system's own (`None`)
    /// or a memory's counterfactual model — with the indices of the rows it answers, and
    /// puts the results back in row order.
    fn by_answerer<T>(
        &self,
        answerers: &[Option<usize>],
        mut f: impl FnMut(&Model, &[usize]) -> Result<Vec<T>>,
    ) -> Result<Vec<T>> {
        if answerers.iter().all(Option::is_none) {
            let all: Vec<usize> = (0..answerers.len()).collect();
            return f(self.model(), &all);
        }
        let mut groups: BTreeMap<Option<usize>, Vec<usize>> = BTreeMap::new();
        for (i, a) in answerers.iter().enumerate() {
            groups.entry(*a).or_default().push(i);
        }
        let mut out: Vec<Option<T>> = (0..answerers.len()).map(|_| None).collect();
        for (answerer, rows) in groups {
            let results = match answerer {
                None => f(self.model(), &rows)?,
                Some(m) => {
                    let answerer = self.extras.counterfactuals[m]
                        .as_ref()
                        .expect("an answering memory has a counterfactual model");
                    f(answerer.model(self.model())?, &rows)?
                }
            };
            for (i, r) in rows.into_iter().zip(results) {
                out[i] = Some(r);
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every row has one answerer"))
            .collect())
    }

    fn adaptor_hooks(&self, ends: &PromptEnds) -> Result<Vec<Intervention>> {
        Ok(self
            .extras
            .adaptors
            .values()
            .map(|a| a.intervention(ends))
            .chain(self.extras.side_memories.values().map(|s| s.intervention()))
            .collect())
    }

    fn prefixed_prompts(&self, prompts: &[Vec<u32>]) -> Result<Vec<Prefixed>> {
        let rows: Vec<(&[u32], usize)> = prompts.iter().map(|p| (p.as_slice(), p.len())).collect();
        self.with_prefixes(&rows)
    }
}

/// A memory's counterfactual model: its deltas, and the model they make with the system's
/// weights — built on first use (with its weights' contiguous transposes) and forgotten when
/// the system's weights change. Clones share what was built: a checkpoint keeps the model
/// of its weights.
#[derive(Clone, Debug)]
pub(super) struct Answerer {
    deltas: Arc<WeightEdit>,
    built: Arc<OnceLock<Model>>,
}

impl Answerer {
    pub fn new(deltas: Arc<WeightEdit>) -> Self {
        Answerer {
            deltas,
            built: Arc::new(OnceLock::new()),
        }
    }

    pub fn forget_model(&mut self) {
        self.built = Arc::new(OnceLock::new());
    }

    /// The system's model `base` with the deltas added to its weights.
    fn model(&self, base: &Model) -> Result<&Model> {
        if let Some(m) = self.built.get() {
            return Ok(m);
        }
        let mut model = base.clone();
        for (id, delta) in &self.deltas.deltas {
            let updated = delta.added_to(model.params.require(*id)?)?;
            model.params.replace(*id, updated)?;
        }
        Ok(self.built.get_or_init(|| model))
    }
}

/// An input with what goes in front of it.
struct Prefixed {
    ids: Vec<u32>,
    prompt_len: usize,
    /// The memory whose counterfactual model answers it (`None`: the system's model).
    answerer: Option<usize>,
}

impl LanguageModel for Editor {
    fn tokenizer(&self) -> Result<&Tokenizer> {
        self.model().tokenizer()
    }

    fn score(&self, rows: &[ScoreRow], with_log_probs: bool) -> Result<Vec<Scored>> {
        let plain: Vec<(&[u32], usize)> = rows
            .iter()
            .map(|r| (r.ids.as_slice(), r.prompt_len))
            .collect();
        let prefixed = self.with_prefixes(&plain)?;
        let answerers: Vec<Option<usize>> = prefixed.iter().map(|p| p.answerer).collect();
        let rows: Vec<ScoreRow> = prefixed
            .into_iter()
            .map(|p| ScoreRow {
                ids: p.ids,
                prompt_len: p.prompt_len,
            })
            .collect();
        let hooks = |ends: &PromptEnds| self.adaptor_hooks(ends);
        self.by_answerer(&answerers, |model, at| {
            let rows: Vec<ScoreRow> = at.iter().map(|&i| rows[i].clone()).collect();
            score_rows(model, &rows, with_log_probs, ChunkLimits::default(), &hooks)
        })
    }

    fn next_logits(&self, prompts: &[Vec<u32>]) -> Result<Tensor> {
        let hooks = |ends: &PromptEnds| self.adaptor_hooks(ends);
        let prefixed = self.prefixed_prompts(prompts)?;
        let answerers: Vec<Option<usize>> = prefixed.iter().map(|p| p.answerer).collect();
        let rows = self.by_answerer(&answerers, |model, at| {
            let ids: Vec<Vec<u32>> = at.iter().map(|&i| prefixed[i].ids.clone()).collect();
            let logits = next_logits_with(model, &ids, &hooks)?;
            (0..at.len())
                .map(|r| Ok(logits.get(r)?))
                .collect::<Result<Vec<Tensor>>>()
        })?;
        Ok(Tensor::stack(&rows, 0)?)
    }

    fn generate(
        &self,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        opts: &GenerateOptions,
    ) -> Result<Vec<Vec<u32>>> {
        let hooks = |ends: &PromptEnds| self.adaptor_hooks(ends);
        let prefixed = self.prefixed_prompts(prompts)?;
        let answerers: Vec<Option<usize>> = prefixed.iter().map(|p| p.answerer).collect();
        self.by_answerer(&answerers, |model, at| {
            let ids: Vec<Vec<u32>> = at.iter().map(|&i| prefixed[i].ids.clone()).collect();
            let seeds: Vec<u64> = at.iter().map(|&i| seeds[i]).collect();
            generate_with(model, &ids, &seeds, opts, &hooks)
        })
    }
}
