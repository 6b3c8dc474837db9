//! The trainer every meta-learned editor shares (`kedit train --method mend|ke`).
//!
//! Each training example edits the frozen model with the hypernetwork's update from the
//! edit's gradient; the loss is `c_edit · NLL(target | edited model)` on the edit and its
//! rephrase plus `c_loc · KL(pre ‖ post)` over a locality text's tokens, and gradients
//! reach the hypernetwork through the update it produced (no second-order terms: the base
//! model stays frozen). With a constraint (KE), `c_loc` is a Lagrange multiplier raised
//! while the KL exceeds its margin and lowered, never below zero, while it is under.
//! `accumulate` examples make one Adam step, their gradient clipped in global norm.
//!
//! Validation every `val_every` steps edits each validation record alone and scores, as
//! the evaluation harness does, teacher-forced accuracy of the edit and its rephrase and
//! the unchanged fraction of the locality answer; the best checkpoint by edit accuracy
//! (mean of the two) among validations whose locality reaches `min_locality` is kept (any
//! validation, when none does), and training stops after `patience` steps without a
//! better one. Every validation writes the state to resume from atomically; the order of examples
//! is a function of the seed and the step, so a killed run resumes to the same result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor, Var, D};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::example::{MetaExample, Scored};
use super::factors::{frozen_resid, gradient_factors, logits_under};
use super::hypernet::{self, Hypernet};
use super::method::out_param;
use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::methods::adam::Adam;
use crate::methods::loss::mean_row_nll;
use crate::methods::validated_loop::{self, Report, Schedule};
use crate::model::safetensors_io::SafetensorFiles;
use crate::model::Model;
use crate::plot::{Figure, LinePlot, Panel};
use crate::progress::Progress;
use crate::rng::epoch_order;
use crate::runtime::ops::log_softmax_last;
use crate::runtime::WeightOverrides;

/// How to train.
#[derive(Clone, Debug)]
pub struct Settings {
    pub lr: f64,
    pub lr_lr: f64,
    pub c_edit: f64,
    pub c_loc: f64,
    pub grad_clip: f64,
    /// Examples per optimiser step.
    pub accumulate: usize,
    pub max_iters: usize,
    pub val_every: usize,
    pub val_records: usize,
    /// Steps without a better validation before training stops.
    pub patience: usize,
    /// A validation whose locality is below this is kept only if none above it is: the
    /// best checkpoint is the most accurate editor among those that stay local enough.
    pub min_locality: f64,
    /// KE: keep the locality KL under `margin`, `c_loc` moving by `lr` per step.
    pub constraint: Option<Constraint>,
}

#[derive(Clone, Copy, Debug)]
pub struct Constraint {
    pub margin: f64,
    pub lr: f64,
}

/// One validation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Validation {
    pub step: usize,
    /// Mean training loss since the previous validation (none before the first step).
    pub train_loss: Option<f64>,
    pub reliability: f64,
    pub generalization: f64,
    pub locality: f64,
    /// The multiplier of the locality term then.
    pub c_loc: f64,
    /// Seconds of training (validations included, caching not) when it was made.
    #[serde(default)]
    pub seconds: Option<f64>,
}

impl Validation {
    pub fn edit_accuracy(&self) -> f64 {
        (self.reliability + self.generalization) / 2.0
    }

    /// Whether this validation's checkpoint should replace `best`'s: one at least
    /// `min_locality` local beats one that is not; between two alike, the higher edit
    /// accuracy wins (a tie keeps the earlier).
    pub fn beats(&self, best: &Validation, min_locality: f64) -> bool {
        let local = |v: &Validation| v.locality >= min_locality;
        match (local(self), local(best)) {
            (true, false) => true,
            (false, true) => false,
            _ => self.edit_accuracy() > best.edit_accuracy(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    step: usize,
    best: Option<Validation>,
    history: Vec<Validation>,
    c_loc: f64,
    seconds: f64,
}

const LAST: &str = "last.safetensors";
const STATE: &str = "train-state.json";

/// The checkpoint file of a kind (`mend.safetensors`).
pub fn checkpoint_name(kind: &str) -> String {
    format!("{}.safetensors", kind.to_ascii_lowercase())
}

/// What training produced.
pub struct Outcome {
    pub checkpoint: PathBuf,
    pub summary: serde_json::Value,
}

/// Texts cached with the residual stream entering the lowest edited layer.
struct Cached {
    ex: MetaExample,
    edit: Tensor,
    rephrase: Tensor,
    locality: Tensor,
}

fn cache(
    model: &Model,
    examples: Vec<MetaExample>,
    first: usize,
    progress: &mut dyn Progress,
    what: &str,
) -> Result<Vec<Cached>> {
    progress.phase(what, examples.len(), 0);
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(16) {
        let texts: Vec<&[u32]> = chunk
            .iter()
            .flat_map(|e| [&e.edit.ids[..], &e.rephrase.ids[..], &e.locality.ids[..]])
            .collect();
        let resid = frozen_resid(model, &texts, first, 48)?;
        for (e, r) in chunk.iter().zip(resid.chunks(3)) {
            out.push(Cached {
                ex: e.clone(),
                edit: r[0].clone(),
                rephrase: r[1].clone(),
                locality: r[2].clone(),
            });
        }
        progress.advance(chunk.len());
    }
    Ok(out)
}

/// The weights the model edited by `updates` has: `W + u·vᵀ` per edited layer.
fn edited_weights(
    model: &Model,
    layers: &[usize],
    updates: &[(Tensor, Tensor)],
) -> Result<WeightOverrides> {
    let mut o = WeightOverrides::new();
    for (&l, (u, v)) in layers.iter().zip(updates) {
        let w = model.params.require(out_param(l))?;
        let delta = u.matmul(&v.t()?)?.to_dtype(w.dtype())?;
        o.insert(out_param(l), (w + delta)?);
    }
    Ok(o)
}

/// Mean over tokens of KL(p_pre ‖ p_post) (`[n, vocab]` logits each).
fn kl_pre_post(pre: &Tensor, post: &Tensor) -> Result<Tensor> {
    let lp_pre = log_softmax_last(&pre.detach())?;
    let lp_post = log_softmax_last(post)?;
    let p_pre = lp_pre.exp()?;
    let kl = (p_pre * (lp_pre - lp_post)?)?.sum(D::Minus1)?;
    Ok(kl.mean_all()?)
}

/// Argmax per row of `[n, vocab]` logits.
fn argmax(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

fn accuracy(logits: &Tensor, text: &Scored) -> Result<f64> {
    let hits = argmax(logits)?
        .iter()
        .zip(&text.targets)
        .filter(|(a, b)| a == b)
        .count();
    Ok(hits as f64 / text.targets.len() as f64)
}

fn nll(logits: &Tensor, text: &Scored) -> Result<Tensor> {
    mean_row_nll(logits, &text.targets, &vec![0; text.targets.len()], 1)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

struct Run<'a> {
    model: &'a Model,
    net: &'a mut dyn Hypernet,
    s: &'a Settings,
    layers: Vec<usize>,
    first: usize,
    fingerprint: u64,
    out_dir: &'a Path,
    adam: Adam,
    lr_adam: Adam,
    state: State,
}

impl Run<'_> {
    /// The loss of one training example, differentiable in the net; the KL beside it.
    fn example_loss(&mut self, c: &Cached) -> Result<(Tensor, f64)> {
        let f = gradient_factors(self.model, &c.ex.edit, Some(&c.edit), &self.layers)?;
        self.net.observe(&f)?;
        let updates = self.net.updates(&f)?;
        let o = edited_weights(self.model, &self.layers, &updates)?;
        let m = self.model;
        let first = self.first;
        let edit = nll(
            &logits_under(m, &c.ex.edit, Some(&c.edit), first, &o, false)?,
            &c.ex.edit,
        )?;
        let reph = nll(
            &logits_under(m, &c.ex.rephrase, Some(&c.rephrase), first, &o, false)?,
            &c.ex.rephrase,
        )?;
        let none = WeightOverrides::new();
        let pre = logits_under(m, &c.ex.locality, Some(&c.locality), first, &none, true)?;
        let post = logits_under(m, &c.ex.locality, Some(&c.locality), first, &o, true)?;
        let kl = kl_pre_post(&pre, &post)?;
        let kl_value = scalar(&kl)?;
        let loss = (((edit + reph)? * (self.s.c_edit / 2.0))? + (kl * self.state.c_loc)?)?;
        Ok((loss, kl_value))
    }

    /// One optimiser step over `batch`; its mean loss.
    fn step(&mut self, batch: &[&Cached]) -> Result<f64> {
        let mut total: Option<Tensor> = None;
        let mut kl_sum = 0.0;
        for c in batch {
            let (loss, kl) = self.example_loss(c)?;
            kl_sum += kl;
            total = Some(match total {
                Some(t) => (t + loss)?,
                None => loss,
            });
        }
        let total = (total.expect("a batch has examples") / batch.len() as f64)?;
        let value = scalar(&total)?;
        if !value.is_finite() {
            return Err(Error::invalid(format!(
                "the {} training loss became {value} at step {} (learning rate too high?)",
                self.net.kind(),
                self.state.step
            )));
        }
        let mut grads = total.backward()?;
        let vars: Vec<Var> = self
            .net
            .vars()
            .into_iter()
            .chain(self.net.lr_vars())
            .map(|(_, v)| v)
            .collect();
        let mut sq = 0.0;
        for v in &vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                sq += scalar(&g.sqr()?.sum_all()?)?;
            }
        }
        let norm = sq.sqrt();
        if norm > self.s.grad_clip {
            let k = self.s.grad_clip / norm;
            for v in &vars {
                if let Some(g) = grads.remove(v.as_tensor()) {
                    grads.insert(v.as_tensor(), (g * k)?);
                }
            }
        }
        self.adam.step(&grads)?;
        self.lr_adam.step(&grads)?;
        if let Some(c) = self.s.constraint {
            let kl = kl_sum / batch.len() as f64;
            self.state.c_loc = (self.state.c_loc + c.lr * (kl - c.margin)).max(0.0);
        }
        Ok(value)
    }

    /// The unedited model's argmax tokens on each validation record's locality answer.
    fn unedited_locality(&self, val: &[Cached]) -> Result<Vec<Vec<u32>>> {
        let none = WeightOverrides::new();
        val.iter()
            .map(|c| {
                let (text, resid) = (&c.ex.locality, Some(&c.locality));
                argmax(&logits_under(
                    self.model, text, resid, self.first, &none, false,
                )?)
            })
            .collect()
    }

    /// Scores every validation record edited alone; `unedited` is
    /// [`Run::unedited_locality`] of `val`.
    fn validate(
        &self,
        val: &[Cached],
        unedited: &[Vec<u32>],
        train_loss: Option<f64>,
    ) -> Result<Validation> {
        let (mut rel, mut gen, mut loc) = (0.0, 0.0, 0.0);
        let m = self.model;
        let first = self.first;
        for (c, pre) in val.iter().zip(unedited) {
            let f = gradient_factors(m, &c.ex.edit, Some(&c.edit), &self.layers)?;
            let updates: Vec<(Tensor, Tensor)> = self
                .net
                .updates(&f)?
                .into_iter()
                .map(|(u, v)| (u.detach(), v.detach()))
                .collect();
            let o = edited_weights(m, &self.layers, &updates)?;
            rel += accuracy(
                &logits_under(m, &c.ex.edit, Some(&c.edit), first, &o, false)?,
                &c.ex.edit,
            )?;
            gen += accuracy(
                &logits_under(m, &c.ex.rephrase, Some(&c.rephrase), first, &o, false)?,
                &c.ex.rephrase,
            )?;
            let post = argmax(&logits_under(
                m,
                &c.ex.locality,
                Some(&c.locality),
                first,
                &o,
                false,
            )?)?;
            loc += pre.iter().zip(&post).filter(|(a, b)| a == b).count() as f64 / pre.len() as f64;
        }
        let n = val.len() as f64;
        Ok(Validation {
            step: self.state.step,
            train_loss,
            reliability: rel / n,
            generalization: gen / n,
            locality: loc / n,
            c_loc: self.state.c_loc,
            seconds: None,
        })
    }

    /// Keeps the validation, the best checkpoint and the state to resume from.
    fn record(&mut self, v: Validation) -> Result<()> {
        let better = self
            .state
            .best
            .as_ref()
            .is_none_or(|b| v.beats(b, self.s.min_locality));
        if better {
            let meta = BTreeMap::from([
                ("step".to_string(), v.step.to_string()),
                ("reliability".into(), format!("{:.4}", v.reliability)),
                ("generalization".into(), format!("{:.4}", v.generalization)),
                ("locality".into(), format!("{:.4}", v.locality)),
            ]);
            hypernet::save(
                &*self.net,
                self.fingerprint,
                meta,
                BTreeMap::new(),
                &self.out_dir.join(checkpoint_name(self.net.kind())),
            )?;
            self.state.best = Some(v.clone());
        }
        self.state.history.push(v);
        let mut extra = BTreeMap::new();
        let (_, m) = self.adam.moments();
        let (_, lm) = self.lr_adam.moments();
        for (i, (a, b)) in m.into_iter().enumerate() {
            extra.insert(format!("adam.m{i}"), a);
            extra.insert(format!("adam.v{i}"), b);
        }
        for (i, (a, b)) in lm.into_iter().enumerate() {
            extra.insert(format!("adam_lr.m{i}"), a);
            extra.insert(format!("adam_lr.v{i}"), b);
        }
        // The tensors first, then the state that points at them: a kill between the two
        // resumes from the previous state with these tensors, which repeats a few steps.
        hypernet::save(
            &*self.net,
            self.fingerprint,
            BTreeMap::new(),
            extra,
            &self.out_dir.join(LAST),
        )?;
        let text = serde_json::to_vec_pretty(&self.state).expect("state serialises");
        write_atomic(&self.out_dir.join(STATE), &text)
    }

    fn stale_steps(&self) -> usize {
        self.state
            .best
            .as_ref()
            .map_or(0, |b| self.state.step - b.step)
    }
}

/// Restores a killed run's net, optimiser moments and state from `out_dir`.
fn resume(
    out_dir: &Path,
    net: &mut dyn Hypernet,
    fingerprint: u64,
    adam: &mut Adam,
    lr_adam: &mut Adam,
) -> Result<Option<State>> {
    let state_path = out_dir.join(STATE);
    if !state_path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: State = serde_json::from_str(&text).map_err(|e| {
        Error::model(
            &state_path,
            format!("not a {} training state: {e}", net.kind()),
        )
    })?;
    let last = out_dir.join(LAST);
    let files: SafetensorFiles = hypernet::open(&last, net, fingerprint)?;
    hypernet::load_into(&files, &last, net)?;
    let moments = |prefix: &str| -> Result<Vec<(Tensor, Tensor)>> {
        (0..)
            .take_while(|i| files.contains(&format!("{prefix}.m{i}")))
            .map(|i| {
                Ok((
                    files.get_stored(&format!("{prefix}.m{i}"))?,
                    files.get_stored(&format!("{prefix}.v{i}"))?,
                ))
            })
            .collect()
    };
    let bad = |e: Error| Error::model(&last, e.to_string());
    adam.restore(state.step as i32, moments("adam")?)
        .map_err(bad)?;
    lr_adam
        .restore(state.step as i32, moments("adam_lr")?)
        .map_err(bad)?;
    Ok(Some(state))
}

/// Trains `net` on `train`, validating on `val`; writes `out_dir/{kind}.safetensors`.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &Model,
    net: &mut dyn Hypernet,
    s: &Settings,
    train: &[crate::request::EditRequest],
    val: &[crate::request::EditRequest],
    out_dir: &Path,
    seed: u64,
    progress: &mut dyn Progress,
) -> Result<Outcome> {
    let train_ex = MetaExample::all(model, train)?;
    let mut val_ex = MetaExample::all(model, val)?;
    val_ex.truncate(s.val_records);
    if train_ex.is_empty() || val_ex.is_empty() {
        return Err(Error::invalid(
            "meta-training needs at least one training and one validation record",
        ));
    }
    let layers = net.layers().to_vec();
    let first = *layers.iter().min().expect("a hypernet edits a layer");
    let fingerprint = model.fingerprint()?;
    let vars: Vec<Var> = net.vars().into_iter().map(|(_, v)| v).collect();
    let lr_vars: Vec<Var> = net.lr_vars().into_iter().map(|(_, v)| v).collect();
    let mut adam = Adam::new(vars, s.lr, 0.0)?;
    let mut lr_adam = Adam::new(lr_vars, s.lr_lr, 0.0)?;
    let resumed = resume(out_dir, net, fingerprint, &mut adam, &mut lr_adam)?;
    let state = resumed.unwrap_or(State {
        step: 0,
        best: None,
        history: Vec::new(),
        c_loc: s.c_loc,
        seconds: 0.0,
    });
    let kind = net.kind();
    let train_c = cache(model, train_ex, first, progress, "caching training texts")?;
    let val_c = cache(model, val_ex, first, progress, "caching validation texts")?;
    let mut run = Run {
        model,
        net,
        s,
        layers,
        first,
        fingerprint,
        out_dir,
        adam,
        lr_adam,
        state,
    };
    let unedited = run.unedited_locality(&val_c)?;
    let seconds_before = run.state.seconds;
    progress.phase(&format!("{kind} training"), s.max_iters, run.state.step);
    if run.state.history.is_empty() {
        let v = Validation {
            seconds: Some(0.0),
            ..run.validate(&val_c, &unedited, None)?
        };
        progress.log(&format!(
            "step 0: reliability {:.4}, generalization {:.4}, locality {:.4}",
            v.reliability, v.generalization, v.locality
        ));
        run.record(v)?;
    }
    let n = train_c.len();
    let schedule = Schedule {
        max_iters: s.max_iters,
        val_every: s.val_every,
        patience: s.patience,
    };
    validated_loop::run(
        &mut run,
        schedule,
        progress,
        |r| (r.state.step, r.stale_steps()),
        |r| {
            let batch: Vec<&Cached> = (0..s.accumulate)
                .map(|k| {
                    let global = r.state.step * s.accumulate + k;
                    let (epoch, at) = (global / n, global % n);
                    &train_c[epoch_order(n, seed, epoch)[at]]
                })
                .collect();
            let loss = r.step(&batch)?;
            r.state.step += 1;
            Ok(loss)
        },
        |r, train_loss, seconds| {
            let v = r.validate(&val_c, &unedited, Some(train_loss))?;
            let report = Report {
                status: format!(
                    "loss {train_loss:.3} · rel {:.3} · gen {:.3} · loc {:.3}",
                    v.reliability, v.generalization, v.locality
                ),
                log: format!(
                    "step {}: loss {train_loss:.4}, reliability {:.4}, generalization {:.4}, \
                     locality {:.4}, c_loc {:.4}",
                    v.step, v.reliability, v.generalization, v.locality, v.c_loc
                ),
            };
            r.state.seconds = seconds_before + seconds;
            r.record(Validation {
                seconds: Some(r.state.seconds),
                ..v
            })?;
            Ok(report)
        },
    )?;
    let best = run.state.best.clone().expect("validated at step 0");
    let curve = write_curve(kind, &run.state.history, &out_dir.join("curve"))?;
    Ok(Outcome {
        checkpoint: out_dir.join(checkpoint_name(kind)),
        summary: json!({
            "best": best,
            "steps": run.state.step,
            "stopped_early": run.state.step < s.max_iters,
            "seconds": run.state.seconds,
            "train_examples": n,
            "val_examples": val_c.len(),
            "history": run.state.history,
            "curve": curve.map(|p| p.display().to_string()),
        }),
    })
}

fn write_curve(kind: &str, history: &[Validation], stem: &Path) -> Result<Option<PathBuf>> {
    if history.len() < 3 {
        return Ok(None);
    }
    // Validations are `val_every` steps apart from step 0 on.
    let step = (history[1].step - history[0].step) as f64;
    let trained = &history[1..];
    let figure = Figure {
        panels: vec![
            Panel::Lines(LinePlot {
                title: format!("{kind}: validation edits"),
                x_label: "training step".into(),
                y_label: "accuracy".into(),
                series: vec![
                    (
                        "reliability".into(),
                        history.iter().map(|v| v.reliability).collect(),
                    ),
                    (
                        "generalization".into(),
                        history.iter().map(|v| v.generalization).collect(),
                    ),
                    (
                        "locality".into(),
                        history.iter().map(|v| v.locality).collect(),
                    ),
                ],
                x_start: history[0].step as f64,
                x_step: step,
            }),
            Panel::Lines(LinePlot {
                title: "training loss".into(),
                x_label: "training step".into(),
                y_label: "c_edit x NLL + c_loc x KL".into(),
                series: vec![(
                    "loss".into(),
                    trained
                        .iter()
                        .map(|v| v.train_loss.unwrap_or(f64::NAN))
                        .collect(),
                )],
                x_start: trained[0].step as f64,
                x_step: step,
            }),
        ],
        columns: 2,
        panel_size: (640, 420),
    };
    Ok(Some(figure.write(stem)?.png))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(step: usize, rel: f64, loc: f64) -> Validation {
        Validation {
            step,
            train_loss: None,
            reliability: rel,
            generalization: rel,
            locality: loc,
            c_loc: 1.0,
            seconds: None,
        }
    }

    /// KE's run: step 550 is the most accurate, but only step 600 is local enough.
    #[test]
    fn the_best_checkpoint_is_the_most_accurate_of_those_local_enough() {
        let history = [
            v(500, 0.93, 0.905),
            v(525, 0.94, 0.937),
            v(550, 0.95, 0.890),
            v(600, 0.944, 0.921),
        ];
        let pick = |min: f64| {
            let mut best = v(0, 0.3, 0.92);
            for h in &history {
                if h.beats(&best, min) {
                    best = h.clone();
                }
            }
            best.step
        };
        assert_eq!(pick(0.0), 550);
        assert_eq!(pick(0.9), 600);
        // Nothing local enough: the most accurate, as without a floor.
        assert_eq!(pick(0.99), 550);
        // A tie keeps the earlier checkpoint.
        assert!(!v(700, 0.944, 0.95).beats(&v(600, 0.944, 0.921), 0.9));
    }
}
