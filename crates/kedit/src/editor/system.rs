//! The edited system as a [`LanguageModel`]: every input gets the contexts in front of it,
//! then the context of the memory record it is routed to (if any); the site adaptors act
//! at the prompt's end. With none of these held it is exactly the plain model.

use candle_core::Tensor;

use crate::editor::Editor;
use crate::error::Result;
use crate::lm::generate::generate_with;
use crate::lm::score::score_rows;
use crate::lm::{
    next_logits_with, ChunkLimits, GenerateOptions, LanguageModel, PromptEnds, ScoreRow, Scored,
};
use crate::runtime::Intervention;
use crate::tokenizer::Tokenizer;

impl Editor {
    /// The text put in front of each input whose prompt is `prompts[i]`: every context's
    /// prefix, the context of the memory record the prompt is routed to, then the last lead.
    fn prefixes_for(&self, prompts: &[String]) -> Result<Vec<String>> {
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
            .map(|context| format!("{common}{}{lead}", context.unwrap_or("")))
            .collect();
        Ok(out)
    }

    /// For each prompt, the context of the record, over every memory, it is routed to with
    /// the highest score (word overlap, or a scope classifier's probability). Each
    /// classifier embeds all the prompts in one call and compares them with every record
    /// it routes in one product.
    fn routed_contexts(&self, prompts: &[String]) -> Result<Vec<Option<&str>>> {
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
                let xs = index.classifier.embed(prompts)?;
                for (at, routed) in index.best(&xs)?.into_iter().enumerate() {
                    if let Some((m, i, p)) = routed {
                        consider(at, p, m, i);
                    }
                }
            }
        }
        Ok(best
            .into_iter()
            .map(|b| b.map(|(_, m, i)| memories[m].records[i].context.as_str()))
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
    fn with_prefixes(&self, rows: &[(&[u32], usize)]) -> Result<Vec<(Vec<u32>, usize)>> {
        if self.memories().is_empty() && self.contexts().is_empty() {
            return Ok(rows.iter().map(|(ids, n)| (ids.to_vec(), *n)).collect());
        }
        let tok = self.model().tokenizer()?;
        let prompts = rows
            .iter()
            .map(|(ids, n)| tok.decode(&ids[..*n], true))
            .collect::<Result<Vec<_>>>()?;
        let prefixes = self.prefixes_for(&prompts)?;
        rows.iter()
            .zip(prefixes)
            .map(|(&(ids, prompt_len), prefix)| {
                if prefix.is_empty() {
                    return Ok((ids.to_vec(), prompt_len));
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
                Ok((out, head + joint.len()))
            })
            .collect()
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

    fn prefixed_prompts(&self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<u32>>> {
        let rows: Vec<(&[u32], usize)> = prompts.iter().map(|p| (p.as_slice(), p.len())).collect();
        Ok(self
            .with_prefixes(&rows)?
            .into_iter()
            .map(|(ids, _)| ids)
            .collect())
    }
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
        let rows: Vec<ScoreRow> = self
            .with_prefixes(&plain)?
            .into_iter()
            .map(|(ids, prompt_len)| ScoreRow { ids, prompt_len })
            .collect();
        let hooks = |ends: &PromptEnds| self.adaptor_hooks(ends);
        score_rows(
            self.model(),
            &rows,
            with_log_probs,
            ChunkLimits::default(),
            &hooks,
        )
    }

    fn next_logits(&self, prompts: &[Vec<u32>]) -> Result<Tensor> {
        let hooks = |ends: &PromptEnds| self.adaptor_hooks(ends);
        next_logits_with(self.model(), &self.prefixed_prompts(prompts)?, &hooks)
    }

    fn generate(
        &self,
        prompts: &[Vec<u32>],
        seeds: &[u64],
        opts: &GenerateOptions,
    ) -> Result<Vec<Vec<u32>>> {
        let hooks = |ends: &PromptEnds| self.adaptor_hooks(ends);
        generate_with(
            self.model(),
            &self.prefixed_prompts(prompts)?,
            seeds,
            opts,
            &hooks,
        )
    }
}
