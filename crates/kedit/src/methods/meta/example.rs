//! The texts a meta-learned editor trains and validates on, tokenised once: the edit
//! (prompt + target), its rephrase (+ target) and a locality probe (prompt + answer).

use crate::error::{Error, Result};
use crate::model::Model;
use crate::prompts::spaced_target;
use crate::request::EditRequest;
use crate::tokenizer::Tokenizer;

/// A text scored by teacher forcing: the logits at `positions[i]` should predict
/// `targets[i]`.
#[derive(Clone, Debug)]
pub struct Scored {
    pub ids: Vec<u32>,
    pub positions: Vec<usize>,
    pub targets: Vec<u32>,
}

impl Scored {
    /// `prompt + " " + answer` tokenised as one text (as EasyEdit and FT-M do); the
    /// prompt's own token count marks where the answer starts.
    pub fn teacher_forced(tok: &Tokenizer, prompt: &str, answer: &str) -> Result<Scored> {
        if prompt.trim().is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        if answer.trim().is_empty() {
            return Err(Error::invalid("the answer is empty"));
        }
        let n_prompt = tok.encode_input(prompt)?.len();
        let ids = tok.encode_input(&format!("{prompt}{}", spaced_target(answer)))?;
        if ids.len() <= n_prompt || n_prompt == 0 {
            return Err(Error::invalid(format!(
                "`{answer}` adds no tokens to `{prompt}`"
            )));
        }
        Ok(Scored {
            positions: (n_prompt - 1..ids.len() - 1).collect(),
            targets: ids[n_prompt..].to_vec(),
            ids,
        })
    }

    /// The last position whose output the loss reads: later tokens cannot change it.
    pub fn last_read(&self) -> usize {
        *self.positions.last().expect("a scored text has a target")
    }
}

/// One training or validation example.
#[derive(Clone, Debug)]
pub struct MetaExample {
    pub case_id: String,
    pub edit: Scored,
    pub rephrase: Scored,
    pub locality: Scored,
}

impl MetaExample {
    /// The example of a record; refuses, naming the record and the field, one without a
    /// rephrase or a locality probe (a meta-learned editor learns to generalise from the
    /// first and to stay local from the second).
    pub fn of(model: &Model, r: &EditRequest) -> Result<MetaExample> {
        let tok = model.tokenizer()?;
        let bad = |field: &str, why: String| {
            Error::invalid(format!("record {}: `{field}` {why}", r.case_id))
        };
        let edit = Scored::teacher_forced(tok, &r.prompt, &r.target_new)
            .map_err(|e| bad("prompt/target_new", e.to_string()))?;
        let rephrase = r.rephrase.first().ok_or_else(|| {
            bad(
                "rephrase",
                "is missing: training needs a paraphrase of every edit".into(),
            )
        })?;
        let rephrase = Scored::teacher_forced(tok, rephrase, &r.target_new)
            .map_err(|e| bad("rephrase", e.to_string()))?;
        let probe = r.locality.values().flatten().next().ok_or_else(|| {
            bad(
                "locality",
                "is missing: training needs an unrelated prompt and answer per edit".into(),
            )
        })?;
        let locality = Scored::teacher_forced(tok, &probe.prompt, &probe.answer)
            .map_err(|e| bad("locality", e.to_string()))?;
        let limit = model.config.max_positions;
        for (field, s) in [
            ("prompt", &edit),
            ("rephrase", &rephrase),
            ("locality", &locality),
        ] {
            if s.ids.len() > limit.min(crate::request::MAX_PROMPT_TOKENS) {
                return Err(bad(
                    field,
                    format!("is {} tokens long, beyond the model's context", s.ids.len()),
                ));
            }
        }
        Ok(MetaExample {
            case_id: r.case_id.clone(),
            edit,
            rephrase,
            locality,
        })
    }

    /// The examples of `records`, in order; the first bad record is an error.
    pub fn all(model: &Model, records: &[EditRequest]) -> Result<Vec<MetaExample>> {
        records.iter().map(|r| MetaExample::of(model, r)).collect()
    }
}
