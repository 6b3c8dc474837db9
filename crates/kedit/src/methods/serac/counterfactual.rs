//! SERAC's counterfactual model: what answers an input the scope classifier routed to an
//! edit, with the edit's context in front of it. With `cf_layers: N` it is the base model
//! with the matrices of its top N blocks fine-tuned — on training records' prompts and
//! paraphrases, each behind its own edit's context (`context_template`), to give the edit's
//! target — and saved as a weight edit (`counterfactual.safetensors`). Only routed inputs
//! run through it; every other input reaches the model untouched. With `cf_layers: 0` the
//! base model answers routed inputs, prompted.
//!
//! Training validates on the validation records' paraphrases (teacher-forced token
//! accuracy behind their contexts), keeps the best delta, stops after `early_stop_patience`
//! validations without gain, and checkpoints the delta, Adam's moments and the history at
//! every validation, so a killed run resumes where it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::SeracHparams;
use crate::edit::counterfactual::KIND;
use crate::edit::{Delta, Edit, WeightEdit};
use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::methods::adam::Adam;
use crate::methods::loss::mean_row_nll;
use crate::methods::validated_loop::{self, Report, Schedule};
use crate::model::safetensors_io::{save_atomic, SafetensorFiles};
use crate::model::{BlockParam, Model, ParamId};
use crate::plot::{Figure, LinePlot, Panel};
use crate::progress::Progress;
use crate::prompts::target_ids;
use crate::request::EditRequest;
use crate::rng::epoch_order;
use crate::runtime::{LogitsAt, Padding, Site, TokenBatch};

pub const COUNTERFACTUAL: &str = "counterfactual.safetensors";
const LAST: &str = "counterfactual-last.safetensors";
const STATE: &str = "counterfactual-state.json";

/// The matrices a counterfactual model trains in each of its blocks.
const TRAINED: [BlockParam; 7] = [
    BlockParam::QWeight,
    BlockParam::KWeight,
    BlockParam::VWeight,
    BlockParam::OWeight,
    BlockParam::GateWeight,
    BlockParam::InWeight,
    BlockParam::OutWeight,
];

/// One training or validation row: an edit's context, an input, then the edit's target.
#[derive(Clone, Debug)]
struct Row {
    ids: Vec<u32>,
    prompt_len: usize,
}

/// The rows of `records`: each record's prompt and paraphrases behind its context.
fn rows(model: &Model, hp: &SeracHparams, records: &[EditRequest]) -> Result<Vec<Row>> {
    let tok = model.tokenizer()?;
    let mut out = Vec::new();
    for r in records.iter().filter(|r| !r.target_new.trim().is_empty()) {
        let target = target_ids(tok, &r.target_new)?;
        let context = hp.context(r);
        let inputs = std::iter::once(&r.prompt)
            .chain(&r.rephrase)
            .filter(|p| !p.trim().is_empty());
        for input in inputs {
            let mut ids = tok.encode(&format!("{context}{input}"))?;
            let prompt_len = ids.len();
            ids.extend_from_slice(&target);
            out.push(Row { ids, prompt_len });
        }
    }
    Ok(out)
}

/// The matrices of the top `layers` blocks that the model has, in a fixed order.
pub fn trained_params(model: &Model, layers: usize) -> Result<Vec<ParamId>> {
    let n = model.config.n_layers;
    if layers == 0 || layers > n {
        return Err(Error::config(format!(
            "cf_layers is {layers}; the model has {n} blocks (1 to {n} can be fine-tuned)"
        )));
    }
    Ok((n - layers..n)
        .flat_map(|l| TRAINED.iter().map(move |&p| ParamId::block(l, p)))
        .filter(|id| model.params.contains(*id))
        .collect())
}

/// One validation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CfValidation {
    pub step: usize,
    /// Mean training loss since the previous validation.
    pub train_loss: f64,
    /// Mean NLL per target token of the validation rows.
    pub val_nll: f64,
    /// Teacher-forced token accuracy of the validation rows.
    pub val_accuracy: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    step: usize,
    best: Option<CfValidation>,
    history: Vec<CfValidation>,
    stale: usize,
    seconds: f64,
}

/// What training the counterfactual model produced.
pub struct CfTrained {
    pub path: PathBuf,
    pub best: CfValidation,
    pub steps: usize,
    pub stopped_early: bool,
    pub seconds: f64,
    pub train_rows: usize,
    pub val_rows: usize,
    pub curve: Option<PathBuf>,
}

/// Trains the counterfactual model of `hp` into `out_dir` (resuming a checkpoint there).
pub fn train(
    model: &Model,
    hp: &SeracHparams,
    train: &[EditRequest],
    val: &[EditRequest],
    out_dir: &Path,
    seed: u64,
    progress: &mut dyn Progress,
) -> Result<CfTrained> {
    let train_rows = rows(model, hp, train)?;
    if train_rows.len() < 2 {
        return Err(Error::invalid(format!(
            "the training files hold {} row(s) with a target; SERAC's counterfactual model \
             learns from edits' prompts and paraphrases answered with their targets",
            train_rows.len()
        )));
    }
    let val_records = &val[..val.len().min(hp.val_records)];
    let val_rows: Vec<Row> = rows(model, hp, val_records)?
        .into_iter()
        .filter(|r| r.ids.len() > r.prompt_len)
        .collect();
    if val_rows.is_empty() {
        return Err(Error::invalid(
            "the validation file holds no record with a target to validate the \
             counterfactual model on",
        ));
    }
    let mut trainer = Trainer::new(model, hp, out_dir)?;
    let seconds_before = trainer.state.seconds;
    progress.phase(
        "SERAC counterfactual model",
        hp.cf_max_iters,
        trainer.state.step,
    );
    let schedule = Schedule {
        max_iters: hp.cf_max_iters,
        val_every: hp.cf_val_every,
        patience: hp.early_stop_patience,
    };
    validated_loop::run(
        &mut trainer,
        schedule,
        progress,
        |t| (t.state.step, t.state.stale),
        |t| {
            let rows = batch(&train_rows, t.state.step, hp.cf_batch_size, seed);
            let loss = t.step(&rows)?;
            t.state.step += 1;
            Ok(loss)
        },
        |t, train_loss, seconds| {
            let v = t.validate(&val_rows, train_loss)?;
            let report = Report {
                status: format!(
                    "loss {train_loss:.4} · val NLL {:.4} · val accuracy {:.3}",
                    v.val_nll, v.val_accuracy
                ),
                log: format!(
                    "step {}: loss {train_loss:.4}, val NLL {:.4}, val accuracy {:.4}",
                    v.step, v.val_nll, v.val_accuracy
                ),
            };
            t.state.seconds = seconds_before + seconds;
            t.record(v)?;
            Ok(report)
        },
    )?;
    let best = trainer.state.best.clone().ok_or_else(|| {
        Error::invalid(
            "the counterfactual model's training ended before its first validation \
             (cf_max_iters below cf_val_every?)",
        )
    })?;
    let curve = write_curve(
        &trainer.state.history,
        &out_dir.join("counterfactual-curve"),
    )?;
    Ok(CfTrained {
        path: out_dir.join(COUNTERFACTUAL),
        best,
        steps: trainer.state.step,
        stopped_early: trainer.state.stale >= hp.early_stop_patience,
        seconds: trainer.state.seconds,
        train_rows: train_rows.len(),
        val_rows: val_rows.len(),
        curve,
    })
}

/// The rows of step `step`: epochs are permutations drawn from (`seed`, epoch), so a
/// resumed run sees the batches an uninterrupted one would.
fn batch(rows: &[Row], step: usize, size: usize, seed: u64) -> Vec<&Row> {
    let n = rows.len();
    let size = size.min(n);
    let mut orders: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    (0..size)
        .map(|slot| {
            let global = step * size + slot;
            let (epoch, at) = (global / n, global % n);
            let order = orders
                .entry(epoch)
                .or_insert_with(|| epoch_order(n, seed, epoch));
            &rows[order[at]]
        })
        .collect()
}

struct Trainer<'a> {
    model: &'a Model,
    hp: &'a SeracHparams,
    out_dir: &'a Path,
    params: Vec<ParamId>,
    originals: Vec<Tensor>,
    vars: Vec<Var>,
    adam: Adam,
    first_layer: usize,
    state: State,
}

impl<'a> Trainer<'a> {
    /// A fresh trainer, or the one a checkpoint in `out_dir` left.
    fn new(model: &'a Model, hp: &'a SeracHparams, out_dir: &'a Path) -> Result<Self> {
        let params = trained_params(model, hp.cf_layers)?;
        let first_layer = model.config.n_layers - hp.cf_layers;
        let originals: Vec<Tensor> = params
            .iter()
            .map(|id| Ok(model.params.require(*id)?.to_dtype(DType::F32)?))
            .collect::<Result<_>>()?;
        let state_path = out_dir.join(STATE);
        let (state, deltas, moments) = if state_path.exists() {
            let text =
                std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
            let state: State = serde_json::from_str(&text).map_err(|e| {
                Error::model(
                    &state_path,
                    format!("not a SERAC counterfactual training state: {e}"),
                )
            })?;
            let last = out_dir.join(LAST);
            let files = SafetensorFiles::open_file(&last)?;
            let mut deltas = Vec::with_capacity(params.len());
            let mut moments = Vec::with_capacity(params.len());
            for (i, (id, w)) in params.iter().zip(&originals).enumerate() {
                let d = files.get(&format!("delta.{id}"))?;
                if d.dims() != w.dims() {
                    return Err(Error::model(
                        &last,
                        format!(
                            "`delta.{id}` is {:?}; the model's weight is {:?} (a checkpoint \
                             of another model or cf_layers?)",
                            d.dims(),
                            w.dims()
                        ),
                    ));
                }
                deltas.push(d);
                moments.push((
                    files.get(&format!("adam.m{i}"))?,
                    files.get(&format!("adam.v{i}"))?,
                ));
            }
            (state, Some(deltas), Some(moments))
        } else {
            (State::default(), None, None)
        };
        let vars = match &deltas {
            Some(deltas) => originals
                .iter()
                .zip(deltas)
                .map(|(w, d)| Ok(Var::from_tensor(&(w + d)?)?))
                .collect::<Result<Vec<_>>>()?,
            None => originals
                .iter()
                .map(|w| Ok(Var::from_tensor(w)?))
                .collect::<Result<Vec<_>>>()?,
        };
        let mut adam = Adam::new(vars.clone(), hp.cf_lr, 0.0)?;
        if let Some(m) = moments {
            adam.restore(state.step as i32, m)
                .map_err(|e| Error::model(out_dir.join(LAST), e.to_string()))?;
        }
        Ok(Trainer {
            model,
            hp,
            out_dir,
            params,
            originals,
            vars,
            adam,
            first_layer,
            state,
        })
    }

    /// The rows' mean NLL per target token (averaged per row) under the current weights,
    /// and the logits and labels it was computed from.
    fn loss(&self, rows: &[&Row], weights: &[Tensor]) -> Result<(Tensor, Tensor, Vec<u32>)> {
        let pad = self.model.tokenizer()?.pad_id();
        let seqs: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| r.ids[..r.ids.len() - 1].to_vec())
            .collect();
        let batch = TokenBatch::new(&seqs, Padding::Right, pad)?;
        let mut entries = Vec::new();
        let mut targets = Vec::new();
        let mut entry_rows = Vec::new();
        for (b, r) in rows.iter().enumerate() {
            for j in r.prompt_len..r.ids.len() {
                entries.push((b, batch.index(b, j - 1)));
                targets.push(r.ids[j]);
                entry_rows.push(b);
            }
        }
        // The blocks below the trained ones are the base model's: run them once, without
        // a graph, and start the differentiated pass at the first trained block.
        let mut forward = self.model.forward(&batch);
        if self.first_layer > 0 {
            // The residual leaving the last untrained block is what enters the first trained.
            let site = Site::ResidPost(self.first_layer - 1);
            let below = self
                .model
                .forward(&batch)
                .capture([site])
                .stop_after(self.first_layer - 1)
                .run()?;
            forward = forward.start_at(self.first_layer, below.capture(site)?.clone());
        }
        let overrides = self
            .params
            .iter()
            .zip(weights)
            .map(|(id, w)| Ok((*id, w.to_dtype(self.model.dtype())?)))
            .collect::<Result<_>>()?;
        let logits = forward
            .weights(&overrides)
            .logits(LogitsAt::Entries(entries))
            .run()?
            .logits
            .expect("asked for logits");
        let loss = mean_row_nll(&logits, &targets, &entry_rows, rows.len())?;
        Ok((loss, logits, targets))
    }

    /// One optimisation step; the batch's loss.
    fn step(&mut self, rows: &[&Row]) -> Result<f64> {
        let weights: Vec<Tensor> = self.vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (loss, _, _) = self.loss(rows, &weights)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(Error::invalid(format!(
                "the counterfactual model's loss became {value} at step {} (cf_lr too high?)",
                self.state.step
            )));
        }
        self.adam.step(&loss.backward()?)?;
        Ok(value)
    }

    fn validate(&self, rows: &[Row], train_loss: f64) -> Result<CfValidation> {
        let weights: Vec<Tensor> = self.vars.iter().map(|v| v.as_tensor().detach()).collect();
        let (mut nll, mut hits, mut tokens) = (0.0, 0usize, 0usize);
        for chunk in rows.chunks(32) {
            let chunk: Vec<&Row> = chunk.iter().collect();
            let (loss, logits, targets) = self.loss(&chunk, &weights)?;
            nll += loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * chunk.len() as f64;
            let argmax = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
            hits += argmax.iter().zip(&targets).filter(|(a, b)| a == b).count();
            tokens += targets.len();
        }
        Ok(CfValidation {
            step: self.state.step,
            train_loss,
            val_nll: nll / rows.len() as f64,
            val_accuracy: hits as f64 / tokens.max(1) as f64,
        })
    }

    /// The trained weights' differences from the model's.
    fn deltas(&self) -> Result<Vec<Tensor>> {
        self.vars
            .iter()
            .zip(&self.originals)
            .map(|(v, w)| Ok((v.as_tensor().detach() - w)?))
            .collect()
    }

    /// Keeps the validation, the best model and a checkpoint to resume from.
    fn record(&mut self, v: CfValidation) -> Result<()> {
        let better = self
            .state
            .best
            .as_ref()
            .is_none_or(|b| v.val_nll < b.val_nll);
        let deltas = self.deltas()?;
        if better {
            let mut edit = WeightEdit::new();
            for (id, d) in self.params.iter().zip(&deltas) {
                edit.push(*id, Delta::Dense(d.clone()));
            }
            edit.meta.insert("method".into(), KIND.into());
            edit.meta.insert(
                "model_fingerprint".into(),
                format!("{:016x}", self.model.fingerprint()?),
            );
            edit.meta
                .insert("context_template".into(), self.hp.context_template.clone());
            edit.meta
                .insert("cf_layers".into(), self.hp.cf_layers.to_string());
            edit.meta.insert("step".into(), v.step.to_string());
            edit.meta
                .insert("val_accuracy".into(), format!("{:.4}", v.val_accuracy));
            Edit::Weights(edit).save(&self.out_dir.join(COUNTERFACTUAL))?;
            self.state.best = Some(v.clone());
            self.state.stale = 0;
        } else {
            self.state.stale += 1;
        }
        self.state.history.push(v);
        let mut tensors = BTreeMap::new();
        for (id, d) in self.params.iter().zip(deltas) {
            tensors.insert(format!("delta.{id}"), d);
        }
        for (i, (m, v)) in self.adam.moments().1.into_iter().enumerate() {
            tensors.insert(format!("adam.m{i}"), m);
            tensors.insert(format!("adam.v{i}"), v);
        }
        // The weights first, then the state that points at them (as the classifier's
        // trainer does): a kill between the two only repeats a few steps' data.
        save_atomic(&tensors, &self.out_dir.join(LAST))?;
        let text = serde_json::to_vec_pretty(&self.state).expect("state serialises");
        write_atomic(&self.out_dir.join(STATE), &text)
    }
}

fn write_curve(history: &[CfValidation], stem: &Path) -> Result<Option<PathBuf>> {
    if history.len() < 2 {
        return Ok(None);
    }
    let step = (history[1].step - history[0].step) as f64;
    let series = |name: &str, f: &dyn Fn(&CfValidation) -> f64| {
        (name.to_string(), history.iter().map(f).collect::<Vec<_>>())
    };
    let figure = Figure {
        panels: vec![
            Panel::Lines(LinePlot {
                title: "SERAC counterfactual model: validation".into(),
                x_label: "training step".into(),
                y_label: "token accuracy behind the edit".into(),
                series: vec![series("validation accuracy", &|v| v.val_accuracy)],
                x_start: history[0].step as f64,
                x_step: step,
            }),
            Panel::Lines(LinePlot {
                title: "loss".into(),
                x_label: "training step".into(),
                y_label: "NLL per target token".into(),
                series: vec![
                    series("training", &|v| v.train_loss),
                    series("validation", &|v| v.val_nll),
                ],
                x_start: history[0].step as f64,
                x_step: step,
            }),
        ],
        columns: 2,
        panel_size: (640, 420),
    };
    Ok(Some(figure.write(stem)?.png))
}
