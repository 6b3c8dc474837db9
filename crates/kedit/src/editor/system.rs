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
    /// The text put in front of an input whose prompt is `prompt`: every context's prefix,
    /// the context of the memory record the prompt is routed to, then the last lead.
    fn prefix_for(&self, prompt: &str) -> Result<String> {
        let mut prefix: String = self.contexts().iter().map(|c| c.prefix.as_str()).collect();
        if let Some(context) = self.routed_context(prompt)? {
            prefix.push_str(context);
        }
        if let Some(c) = self.contexts().iter().rev().find(|c| !c.lead.is_empty()) {
            prefix.push_str(&c.lead);
        }
        Ok(prefix)
    }

    /// The context of the record, over every memory, that `prompt` is routed to with the
    /// highest score (word overlap, or a scope classifier's probability).
    fn routed_context(&self, prompt: &str) -> Result<Option<&str>> {
        // (score, memory, record) of the best match so far.
        let mut best: Option<(f64, usize, usize)> = None;
        let mut consider = |score: f64, memory: usize, record: usize| {
            if best.is_none_or(|(s, _, _)| score > s) {
                best = Some((score, memory, record));
            }
        };
        let memories = &self.extras.memories;
        for (m, memory) in memories.iter().enumerate() {
            if let Some(r) = memory.route(prompt) {
                let i = memory
                    .records
                    .iter()
                    .position(|x| std::ptr::eq(x, r.record))
                    .expect("a route names one of its memory's records");
                consider(r.score, m, i);
            }
        }
        // One embedding of the prompt per classifier, however many memories use it.
        for index in &self.extras.scopes {
            let x = index.classifier.embed(&[prompt])?;
            if let Some((m, i, p)) = index.best(&x)? {
                consider(p, m, i);
            }
        }
        Ok(best.map(|(_, m, i)| memories[m].records[i].context.as_str()))
    }

    /// `ids` with the prefix for its prompt (its first `prompt_len` tokens) in front; the
    /// new prompt length.
    ///
    /// The prefix and the prompt are encoded as one text, as a user writing them together
    /// (or EasyEdit joining the strings) would have them: encoded apart, a prefix ending in
    /// `Prompt: ` would leave a lone space token before the prompt's first word, a
    /// tokenization the model never saw. The tokens after the prompt (a scored target) are
    /// kept as they are.
    fn with_prefix(&self, ids: &[u32], prompt_len: usize) -> Result<(Vec<u32>, usize)> {
        if self.memories().is_empty() && self.contexts().is_empty() {
            return Ok((ids.to_vec(), prompt_len));
        }
        let tok = self.model().tokenizer()?;
        let prompt = tok.decode(&ids[..prompt_len], true)?;
        let prefix = self.prefix_for(&prompt)?;
        if prefix.is_empty() {
            return Ok((ids.to_vec(), prompt_len));
        }
        // The prefix goes after a leading BOS, which stays first.
        let bos = tok
            .bos_id()
            .filter(|b| tok.adds_bos() && ids.first() == Some(b));
        let head = usize::from(bos.is_some());
        // Special tokens in the prompt (a chat template's) are decoded as written, so that
        // encoding reads them back as the same tokens.
        let written = tok.decode(&ids[head..prompt_len], false)?;
        let joint = tok.encode(&format!("{prefix}{written}"))?;
        let out: Vec<u32> = ids[..head]
            .iter()
            .chain(&joint)
            .chain(&ids[prompt_len..])
            .copied()
            .collect();
        Ok((out, head + joint.len()))
    }

    fn adaptor_hooks(&self, ends: &PromptEnds) -> Result<Vec<Intervention>> {
        Ok(self
            .extras
            .adaptors
            .values()
            .map(|a| a.intervention(ends))
            .collect())
    }

    fn prefixed_prompts(&self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<u32>>> {
        prompts
            .iter()
            .map(|p| Ok(self.with_prefix(p, p.len())?.0))
            .collect()
    }
}

impl LanguageModel for Editor {
    fn tokenizer(&self) -> Result<&Tokenizer> {
        self.model().tokenizer()
    }

    fn score(&self, rows: &[ScoreRow], with_log_probs: bool) -> Result<Vec<Scored>> {
        let rows = rows
            .iter()
            .map(|r| {
                let (ids, prompt_len) = self.with_prefix(&r.ids, r.prompt_len)?;
                Ok(ScoreRow { ids, prompt_len })
            })
            .collect::<Result<Vec<_>>>()?;
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
