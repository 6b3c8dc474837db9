//! Fine-tuning baselines (EasyEdit's FT): Adam on chosen MLP weights.
//!
//! - FT-L (`objective_optimization: prompt_last`, ROME's baseline): the NLL of every target
//!   token read at the last prompt position.
//! - FT-M (`target_new`): cross-entropy over the teacher-forced target span, the prompt
//!   masked.
//!
//! Optionally each weight stays within an L∞ ball (`norm_constraint`) around its original;
//! a batch whose loss is already below `early_stop_loss` takes no step, and training stops
//! when the epoch's mean loss is below it.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::edit::{Delta, WeightEdit};
use crate::editor::Editor;
use crate::error::{Error, Result};
use crate::methods::adam::Adam;
use crate::methods::hparams::{
    lenient_f64, lenient_optional_f64, HparamsSource, MAX_FACTOR, MAX_LR, MAX_STEPS, MAX_STOP_LOSS,
};
use crate::methods::loss::mean_row_nll;
use crate::methods::{
    check_requests, check_subject_request, filter_warnings, Computed, EditContext, EditMethod,
    LoadedMethod, MethodReport,
};
use crate::model::{Model, ParamId};
use crate::prompts::{spaced_target, target_ids};
use crate::request::EditRequest;
use crate::runtime::{LogitsAt, Padding, TokenBatch, WeightOverrides};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// FT-L: NLL of the target tokens at the last prompt position.
    PromptLast,
    /// FT-M: cross-entropy over the target span (teacher forcing), prompt masked.
    TargetNew,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FtHparams {
    pub layers: Vec<usize>,
    pub num_steps: usize,
    #[serde(deserialize_with = "lenient_f64")]
    pub lr: f64,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub weight_decay: f64,
    /// Accepted for compatibility; EasyEdit's FT does not use it for decoder-only models.
    #[serde(default, deserialize_with = "lenient_f64")]
    pub kl_factor: f64,
    /// L∞ bound on each weight's change (`false`: none).
    #[serde(default, deserialize_with = "lenient_optional_f64")]
    pub norm_constraint: Option<f64>,
    pub rewrite_module_tmp: String,
    pub objective_optimization: Objective,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// EasyEdit hard-codes 1e-2.
    #[serde(default = "default_early_stop", deserialize_with = "lenient_f64")]
    pub early_stop_loss: f64,
}

/// The most requests one training batch may hold.
pub const MAX_BATCH_SIZE: usize = 1024;

impl FtHparams {
    /// Every key against its range (see `docs/reliability.md`); the parameters trained.
    fn check(&self, source: &HparamsSource, model: &Model) -> Result<Vec<ParamId>> {
        source.check_layers("layers", &self.layers, model)?;
        let params = source.resolve_modules(
            "rewrite_module_tmp",
            &self.rewrite_module_tmp,
            &self.layers,
            model,
        )?;
        source
            .check("num_steps", self.num_steps as f64)
            .in_range(1.0, MAX_STEPS as f64)?;
        source.check("lr", self.lr).positive()?.at_most(MAX_LR)?;
        source
            .check("weight_decay", self.weight_decay)
            .in_range(0.0, MAX_FACTOR)?;
        source
            .check("kl_factor", self.kl_factor)
            .in_range(0.0, MAX_FACTOR)?;
        if let Some(eps) = self.norm_constraint {
            // 0 would freeze every weight; `false` (or no key) means no constraint.
            source.check("norm_constraint", eps).positive()?;
        }
        source
            .check("batch_size", self.batch_size as f64)
            .in_range(1.0, MAX_BATCH_SIZE as f64)?;
        source
            .check("early_stop_loss", self.early_stop_loss)
            .in_range(0.0, MAX_STOP_LOSS)?;
        Ok(params)
    }
}

fn default_batch_size() -> usize {
    64
}

fn default_early_stop() -> f64 {
    1e-2
}

pub struct Ft {
    name: String,
    hp: FtHparams,
    params: Vec<ParamId>,
}

impl Ft {
    /// `ft-l` and `ft-m` force the objective; `ft` takes it from the file.
    pub fn load(name: &str, source: HparamsSource, model: &Model) -> Result<LoadedMethod> {
        let (mut hp, unknown): (FtHparams, _) = source.deserialize()?;
        match name {
            "ft-l" => hp.objective_optimization = Objective::PromptLast,
            "ft-m" => hp.objective_optimization = Objective::TargetNew,
            _ => {}
        }
        let params = hp.check(&source, model)?;
        let display = match hp.objective_optimization {
            Objective::PromptLast => "FT-L",
            Objective::TargetNew => "FT-M",
        };
        Ok(LoadedMethod {
            warnings: filter_warnings(&source.origin, unknown),
            hparams_origin: source.origin.clone(),
            method: Box::new(Ft {
                name: display.into(),
                hp,
                params,
            }),
        })
    }
}

/// One training batch, prepared once: tokens, where the loss reads the logits, and the
/// frozen residual stream entering the lowest trained layer.
struct Batch {
    tokens: TokenBatch,
    entries: Vec<(usize, usize)>,
    targets: Vec<u32>,
    entry_rows: Vec<usize>,
    resid: Tensor,
}

impl Ft {
    fn prepare(
        &self,
        model: &Model,
        requests: &[EditRequest],
        first_layer: usize,
    ) -> Result<Batch> {
        let tok = model.tokenizer()?;
        let mut seqs = Vec::new();
        let mut spans = Vec::new(); // (scored positions in the unpadded row, targets)
        for r in requests {
            if r.prompt.trim().is_empty() {
                return Err(Error::invalid(format!(
                    "case {}: the prompt is empty",
                    r.case_id
                )));
            }
            let target = target_ids(tok, &r.target_new)?;
            match self.hp.objective_optimization {
                Objective::PromptLast => {
                    let ids = tok.encode_input(&r.prompt)?;
                    spans.push((vec![ids.len() - 1; target.len()], target));
                    seqs.push(ids);
                }
                Objective::TargetNew => {
                    // As EasyEdit: tokenise prompt + target as one text; the prompt's own
                    // token count marks where the target starts.
                    let n_prompt = tok.encode_input(&r.prompt)?.len();
                    let ids =
                        tok.encode_input(&format!("{}{}", r.prompt, spaced_target(&r.target_new)))?;
                    if ids.len() <= n_prompt {
                        return Err(Error::invalid(format!(
                            "case {}: the target adds no tokens",
                            r.case_id
                        )));
                    }
                    let positions = (n_prompt - 1..ids.len() - 1).collect();
                    spans.push((positions, ids[n_prompt..].to_vec()));
                    seqs.push(ids);
                }
            }
        }
        let pad = tok.pad_id();
        let tokens = TokenBatch::new(&seqs, Padding::Right, pad)?;
        let mut entries = Vec::new();
        let mut targets = Vec::new();
        let mut entry_rows = Vec::new();
        for (row, (positions, tgt)) in spans.into_iter().enumerate() {
            for (p, t) in positions.into_iter().zip(tgt) {
                entries.push((row, tokens.index(row, p)));
                targets.push(t);
                entry_rows.push(row);
            }
        }
        let resid = model.forward(&tokens).resid_pre(first_layer)?;
        Ok(Batch {
            tokens,
            entries,
            targets,
            entry_rows,
            resid,
        })
    }
}

impl EditMethod for Ft {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_batch(&self) -> Option<usize> {
        None
    }

    fn hparams_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.hp).expect("hyper-parameters serialise")
    }

    /// As ROME: FT trains on the prompt, but a subject the prompt does not hold means the
    /// request is not what it says.
    fn check_request(&self, model: &Model, request: &EditRequest) -> Result<()> {
        check_subject_request(model, request, 0)
    }

    fn compute(
        &self,
        system: &Editor,
        requests: &[EditRequest],
        _ctx: &EditContext,
    ) -> Result<Computed> {
        let model = system.model();
        check_requests(self, model, requests)?;
        let mut report = MethodReport::default();
        let first_layer = self
            .hp
            .layers
            .iter()
            .copied()
            .min()
            .expect("checked at load");
        let batches = report.timed("prepare", |_| {
            requests
                .chunks(self.hp.batch_size)
                .map(|chunk| self.prepare(model, chunk, first_layer))
                .collect::<Result<Vec<_>>>()
        })?;
        let originals: Vec<Tensor> = self
            .params
            .iter()
            .map(|id| model.params.require(*id).cloned())
            .collect::<Result<_>>()?;
        let vars: Vec<Var> = originals
            .iter()
            .map(Var::from_tensor)
            .collect::<candle_core::Result<_>>()?;
        let mut opt = Adam::new(vars.clone(), self.hp.lr, self.hp.weight_decay)?;
        let bounds = match self.hp.norm_constraint {
            Some(eps) => Some(
                originals
                    .iter()
                    .map(|w| Ok(((w - eps)?, (w + eps)?)))
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => None,
        };
        let mut steps_taken = 0;
        let mut last_loss = f64::NAN;
        report.timed("optimise", |report| {
            for epoch in 0..self.hp.num_steps {
                let mut total = 0.0;
                for b in &batches {
                    let overrides: WeightOverrides = self
                        .params
                        .iter()
                        .zip(&vars)
                        .map(|(id, v)| (*id, v.as_tensor().clone()))
                        .collect();
                    let logits = model
                        .forward(&b.tokens)
                        .start_at(first_layer, b.resid.clone())
                        .weights(&overrides)
                        .logits(LogitsAt::Entries(b.entries.clone()))
                        .run()?
                        .logits
                        .expect("asked for logits");
                    let loss = mean_row_nll(&logits, &b.targets, &b.entry_rows, b.tokens.rows)?;
                    let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                    if !value.is_finite() {
                        return Err(Error::EditRefused(format!(
                            "the fine-tuning loss became {value}"
                        )));
                    }
                    total += value * b.tokens.rows as f64;
                    if value >= self.hp.early_stop_loss {
                        opt.step(&loss.backward()?)?;
                        steps_taken += 1;
                        if let Some(bounds) = &bounds {
                            for (v, (lo, hi)) in vars.iter().zip(bounds) {
                                v.set(&v.as_tensor().clamp(lo, hi)?)?;
                            }
                        }
                    }
                }
                last_loss = total / requests.len() as f64;
                report
                    .log
                    .push(format!("{} epoch {epoch}: loss {last_loss:.4}", self.name));
                if last_loss < self.hp.early_stop_loss {
                    break;
                }
            }
            Ok(())
        })?;
        report.note("steps", steps_taken);
        report.note("final_loss", format!("{last_loss:.4}"));
        let mut edit = WeightEdit::new();
        for ((id, v), w) in self.params.iter().zip(&vars).zip(&originals) {
            edit.push(*id, Delta::Dense((v.as_tensor() - w)?));
        }
        edit.meta.insert("method".into(), self.name.clone());
        Ok(Computed {
            edit: edit.into(),
            report,
        })
    }
}
