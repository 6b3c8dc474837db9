//! GRACE (Hartvigsen et al. 2023): a codebook of edits at one layer, weights untouched.
//!
//! For each request, in order:
//! 1. `key`: the MLP output of the chosen layer at the prompt's last token;
//! 2. `place` the key in the codebook ([`codebook`]: add, expand or split);
//! 3. `value`: for an added (or split) entry, the vector that, written over the MLP output
//!    at that token, makes the model say the target — initialised as GRACE does (`cold`:
//!    uniform random; `warm`: the state it replaces) and trained with Adam on the target's
//!    teacher-forced NLL;
//!
//! and the grown codebook comes back as one [`AdaptorEdit`]: applying it sets the codebook
//! at the site, so single, sequential and batch modes need nothing else.
//!
//! Which system the keys and values see: the weights as currently edited, without the
//! codebook. Without is exact, not an approximation: the codebook acts only at a prompt's
//! last token, after the site is read there, so the key read without it is the query the
//! codebook will see; and while a value trains it is what is written at that token, so the
//! old entries could change nothing in its forwards. (Codebooks at other sites, memories
//! and contexts are not part of GRACE's forwards: one GRACE codebook per system is the
//! intended use.)
//!
//! The value is trained by ROME's v* optimiser ([`value_stars_from`]): replacing the MLP
//! output h by v at one token is adding δ = v − h to the residual stream there, which is
//! what that optimiser trains (one rewriting prompt, no KL term, no norm clamp, no weight
//! decay), with its forwards over frozen prefixes and its gradient checks. v = key + δ.

pub mod codebook;
pub mod hparams;

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use crate::edit::Edit;
use crate::editor::Editor;
use crate::error::{Error, Result};
use crate::methods::rome::key::{at_lookups, Lookup};
use crate::methods::rome::value::{
    value_stars_from, KlAt, ValueHparams, ValuePrompts, DEFAULT_GROUPS, DEFAULT_WAVE,
};
use crate::methods::{
    check_requests, filter_warnings, request_rng, Computed, EditContext, EditMethod, HparamsSource,
    LoadedMethod, MethodReport,
};
use crate::model::Model;
use crate::request::EditRequest;
use crate::runtime::Site;
use codebook::{Codebook, Placement};
use hparams::{GraceHparams, Reg, ValInit};

pub struct Grace {
    hp: GraceHparams,
    site: Site,
}

/// A request as GRACE trains it: the prompt's tokens (the key is read at the last) and the
/// target's, split where EasyEdit (and kedit's metrics) split `prompt + " " + target`
/// tokenised as one text: after as many tokens as the prompt alone has.
struct EditPrompt {
    lookup: Lookup,
    target: Vec<u32>,
    label: String,
}

impl Grace {
    pub fn load(_name: &str, source: HparamsSource, model: &Model) -> Result<LoadedMethod> {
        let (hp, unknown): (GraceHparams, _) = source.deserialize()?;
        let site = hp.check(&source, model)?;
        Ok(LoadedMethod {
            warnings: filter_warnings(&source.origin, unknown),
            hparams_origin: source.origin.clone(),
            method: Box::new(Grace { hp, site }),
        })
    }

    /// The site the codebook lives at.
    pub fn site(&self) -> Site {
        self.site
    }

    fn edit_prompt(model: &Model, r: &EditRequest) -> Result<EditPrompt> {
        let tok = model.tokenizer()?;
        // `prompt + " " + target`, always one space added: EasyEdit's GRACE trains on this
        // text and the metrics score it, even for a target that starts with a space.
        let ids = tok.encode_input(&format!("{} {}", r.prompt, r.target_new))?;
        let prompt_len = tok.encode_input(&r.prompt)?.len().min(ids.len());
        if prompt_len == 0 || ids.len() <= prompt_len {
            return Err(Error::invalid(
                "the target adds no token after the prompt (nothing to train)",
            ));
        }
        Ok(EditPrompt {
            lookup: Lookup {
                ids: ids[..prompt_len].to_vec(),
                index: prompt_len - 1,
            },
            target: ids[prompt_len..].to_vec(),
            label: r.target_new.trim().to_string(),
        })
    }

    fn value_hparams(&self) -> ValueHparams {
        ValueHparams {
            // Forwards: n_iter steps, each after a forward, and a last forward to score.
            steps: self.hp.n_iter + 1,
            lr: self.hp.edit_lr,
            weight_decay: 0.0,
            clamp_norm_factor: f64::INFINITY,
            kl_factor: 0.0,
            kl_at: KlAt::default(),
            early_stop_loss: match self.hp.reg {
                Reg::EarlyStop => self.hp.early_stop_loss,
                Reg::None => 0.0,
            },
            early_stop_nll: 0.0,
            groups: DEFAULT_GROUPS,
            wave: DEFAULT_WAVE,
            answer_end: None,
            attention: false,
        }
    }

    /// δ where the value starts: `cold` a seeded uniform vector in [0, 1)^d (minus the
    /// key, as δ is relative to it), `warm` the key itself (δ = 0).
    /// The draw is seeded by the run's seed and the request, so that a resumed or
    /// reordered run trains the same value.
    fn start(
        &self,
        model: &Model,
        key: &[f64],
        ctx: &EditContext,
        r: &EditRequest,
    ) -> Result<Option<Tensor>> {
        if self.hp.val_init == ValInit::Warm {
            return Ok(None);
        }
        let mut rng = request_rng(ctx.seed, r);
        let start: Vec<f64> = key.iter().map(|k| rng.uniform() - k).collect();
        Ok(Some(Tensor::new(start.as_slice(), model.device())?))
    }
}

impl EditMethod for Grace {
    fn name(&self) -> &str {
        "GRACE"
    }

    fn max_batch(&self) -> Option<usize> {
        None
    }

    fn hparams_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.hp).expect("hyper-parameters serialise")
    }

    fn check_request(&self, model: &Model, request: &EditRequest) -> Result<()> {
        request.check_size(model, 0)?;
        Self::edit_prompt(model, request).map(|_| ())
    }

    fn compute(
        &self,
        system: &Editor,
        requests: &[EditRequest],
        ctx: &EditContext,
    ) -> Result<Computed> {
        let model = system.model();
        check_requests(self, model, requests)?;
        let mut report = MethodReport::default();
        let prompts: Vec<EditPrompt> = requests
            .iter()
            .map(|r| Self::edit_prompt(model, r))
            .collect::<Result<_>>()?;
        let keys = report.timed("keys", |_| {
            let lookups: Vec<Lookup> = prompts.iter().map(|p| p.lookup.clone()).collect();
            Ok(at_lookups(model, self.site, &lookups)?
                .to_dtype(DType::F64)?
                .to_vec2::<f64>()?)
        })?;

        let mut book = match system.adaptor(self.site) {
            Some(a) => Codebook::from_adaptor(a)?,
            None => Codebook::default(),
        };
        let before = book.len();
        // (request, entry) for every value to train; a later request of the call that
        // takes over an entry trained earlier in it wins.
        let mut training: Vec<(usize, usize)> = Vec::new();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, (p, key)) in prompts.iter().zip(&keys).enumerate() {
            let placed = book.place(key.clone(), &p.label, self.hp.eps, self.hp.eps_expand);
            *counts.entry(placed.kind()).or_default() += 1;
            if let Placement::Split { distance, .. } | Placement::Expanded { distance, .. } = placed
            {
                report.log.push(format!(
                    "GRACE case {}: {} (distance {distance:.3})",
                    requests[i].case_id,
                    placed.kind()
                ));
            }
            if let Some(entry) = placed.trains() {
                training.retain(|&(_, e)| e != entry);
                training.push((i, entry));
            }
        }

        let vh = self.value_hparams();
        let stars = report.timed("value", |report| {
            let value_prompts: Vec<ValuePrompts> = training
                .iter()
                .map(|&(i, _)| ValuePrompts {
                    layer: self.site.layer().expect("an MLP site has a layer"),
                    rewriting: std::slice::from_ref(&prompts[i].lookup),
                    target: &prompts[i].target,
                    kl: &[],
                })
                .collect();
            let starts = training
                .iter()
                .map(|&(i, _)| self.start(model, &keys[i], ctx, &requests[i]))
                .collect::<Result<Vec<_>>>()?;
            value_stars_from(model, &value_prompts, &starts, &vh, &mut report.log)
        })?;
        let mut probs = Vec::with_capacity(stars.len());
        for (&(i, entry), star) in training.iter().zip(&stars) {
            let delta = star.delta.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            let value = keys[i].iter().zip(&delta).map(|(k, d)| k + d).collect();
            book.set_value(entry, value);
            probs.push(star.target_prob);
        }
        report.note("entries", format!("{before} -> {}", book.len()));
        for (kind, n) in &counts {
            report.note(kind, n);
        }
        if !probs.is_empty() {
            let mean = probs.iter().sum::<f64>() / probs.len() as f64;
            report.note("target_prob_mean", format!("{mean:.4}"));
            let iterations: usize = stars.iter().map(|s| s.iterations).sum();
            report.note(
                "iterations_mean",
                format!("{:.1}", iterations as f64 / stars.len() as f64),
            );
        }
        let meta = BTreeMap::from([
            ("method".to_string(), "GRACE".to_string()),
            ("hparams".to_string(), self.hparams_json().to_string()),
        ]);
        let edit = book.to_adaptor(self.site, model.dtype(), model.device(), meta)?;
        Ok(Computed {
            edit: Edit::Adaptor(edit),
            report,
        })
    }
}
