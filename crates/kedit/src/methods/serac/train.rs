//! `kedit train --method serac`: fine-tunes the sentence encoder into SERAC's scope
//! classifier. Each step takes a batch of training records; every record's prompt is scored
//! against every paraphrase and locality prompt of the batch, its own paraphrase being the
//! one in-scope pair of its row (binary cross-entropy, positives and negatives weighted
//! equally). Validation routes the validation records' paraphrases and locality prompts
//! through a memory of their prompts — the decision SERAC makes at edit time — and the best
//! classifier by balanced routing accuracy is kept; training stops early when it has not
//! improved for `early_stop_patience` validations. Every validation writes a checkpoint
//! (weights, optimiser moments, history) atomically, so a killed run resumes where it was.
//!
//! With `cross_attend`, the classifier is a cross-encoder and a step scores pairs instead:
//! each prompt with itself (in scope), each paraphrase and locality prompt of the batch
//! against its own record's prompt (in scope for a paraphrase, out of it for a locality
//! prompt) and against the
//! [`HARD_NEGATIVES`] other prompts of the batch nearest to it under the base encoder —
//! the candidates its shortlist will hold when it routes.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{counterfactual, scope_examples, ScopeExample, SeracHparams};
use crate::edit::scope::cross_logits;
use crate::edit::ScopeClassifier;
use crate::encoder::{bert, BertWeights, SentenceEncoder};
use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::methods::adam::Adam;
use crate::methods::train::{TrainInputs, Trained};
use crate::methods::validated_loop::{self, Report, Schedule};
use crate::model::safetensors_io::{save_atomic, SafetensorFiles};
use crate::plot::{Figure, LinePlot, Panel};
use crate::rng::{epoch_order, Rng};

pub const CHECKPOINT: &str = "classifier.safetensors";
/// Other records' prompts each input of a cross-encoder's batch is paired with.
pub const HARD_NEGATIVES: usize = 2;
const LAST: &str = "last.safetensors";
const STATE: &str = "train-state.json";

/// One validation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Validation {
    pub step: usize,
    /// Mean training loss since the previous validation.
    pub train_loss: f64,
    /// Paraphrases routed to their own edit.
    pub in_scope: f64,
    /// Locality prompts routed to no edit.
    pub out_of_scope: f64,
    pub balanced: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    step: usize,
    best: Option<Validation>,
    history: Vec<Validation>,
    stale: usize,
    seconds: f64,
}

/// The trainer [`crate::methods::registry`] names for SERAC.
pub fn train(inputs: TrainInputs) -> Result<Trained> {
    let (hp, _): (SeracHparams, _) = inputs.hparams.deserialize()?;
    hp.check(inputs.hparams)?;
    let train = scope_examples(inputs.train);
    if train.len() < 2 {
        return Err(Error::invalid(format!(
            "the training files hold {} record(s) with a paraphrase; SERAC's scope classifier \
             needs in-scope pairs (a prompt and its paraphrase) to learn from",
            train.len()
        )));
    }
    let mut val = scope_examples(inputs.val);
    val.truncate(hp.val_records);
    if val.is_empty() {
        return Err(Error::invalid(
            "the validation file holds no record with a paraphrase to validate the scope \
             classifier on",
        ));
    }
    let base = SentenceEncoder::load(&hp.encoder_dir())?;
    let mut trainer = Trainer::new(&hp, &base, inputs.out_dir)?;
    let tokenized = Tokenized::new(&base, &train)?;
    let seconds_before = trainer.state.seconds;
    let progress = inputs.progress;
    progress.phase("SERAC scope classifier", hp.max_iters, trainer.state.step);
    let schedule = Schedule {
        max_iters: hp.max_iters,
        val_every: hp.val_every,
        patience: hp.early_stop_patience,
    };
    validated_loop::run(
        &mut trainer,
        schedule,
        progress,
        |t| (t.state.step, t.state.stale),
        |t| {
            let batch = tokenized.batch(&train, t.state.step, hp.batch_size, inputs.seed);
            let loss = t.step(&batch)?;
            t.state.step += 1;
            Ok(loss)
        },
        |t, train_loss, seconds| {
            let v = t.validate(&val, train_loss)?;
            let report = Report {
                status: format!(
                    "loss {train_loss:.4} · in-scope {:.3} · out-of-scope {:.3}",
                    v.in_scope, v.out_of_scope
                ),
                log: format!(
                    "step {}: loss {train_loss:.4}, in-scope {:.4}, out-of-scope {:.4}",
                    v.step, v.in_scope, v.out_of_scope
                ),
            };
            t.state.seconds = seconds_before + seconds;
            t.record(v)?;
            Ok(report)
        },
    )?;
    let best = trainer.state.best.clone().ok_or_else(|| {
        Error::invalid("training ended before its first validation (max_iters below val_every?)")
    })?;
    let title = if hp.cross_attend {
        "SERAC scope classifier (cross-encoder): validation routing"
    } else {
        "SERAC scope classifier: validation routing"
    };
    let curve = write_curve(&trainer.state.history, &inputs.out_dir.join("curve"), title)?;
    let mut hparams = serde_json::Map::new();
    hparams.insert("cls_name".into(), Value::String(hp.cls_name.clone()));
    let mut summary = json!({
        "best": best,
        "steps": trainer.state.step,
        "stopped_early": trainer.state.stale >= hp.early_stop_patience,
        "seconds": trainer.state.seconds,
        "train_examples": train.len(),
        "val_examples": val.len(),
        "curve": curve.map(|p| p.display().to_string()),
    });
    if hp.cf_layers > 0 {
        let cf = counterfactual::train(
            inputs.model,
            &hp,
            inputs.train,
            inputs.val,
            inputs.out_dir,
            inputs.seed,
            progress,
        )?;
        hparams.insert(
            "counterfactual".into(),
            Value::String(counterfactual::COUNTERFACTUAL.into()),
        );
        summary["counterfactual"] = json!({
            "best": cf.best,
            "steps": cf.steps,
            "stopped_early": cf.stopped_early,
            "seconds": cf.seconds,
            "train_rows": cf.train_rows,
            "val_rows": cf.val_rows,
            "curve": cf.curve.map(|p| p.display().to_string()),
        });
    }
    Ok(Trained {
        checkpoint: inputs.out_dir.join(CHECKPOINT),
        hparams,
        summary,
    })
}

/// Token ids of every training text, made once.
struct Tokenized {
    anchors: Vec<Vec<u32>>,
    positives: Vec<Vec<Vec<u32>>>,
    negatives: Vec<Vec<Vec<u32>>>,
}

/// One step's rows: anchors, then the candidates each anchor is scored against (its
/// positive at the same index; the negatives after all positives).
struct Batch {
    anchors: Vec<Vec<u32>>,
    candidates: Vec<Vec<u32>>,
    /// The anchor each negative candidate belongs to.
    negative_of: Vec<usize>,
}

impl Tokenized {
    fn new(encoder: &SentenceEncoder, examples: &[ScopeExample]) -> Result<Self> {
        let tok = |texts: &[String]| -> Result<Vec<Vec<u32>>> {
            texts.iter().map(|t| encoder.tokenize(t)).collect()
        };
        Ok(Tokenized {
            anchors: examples
                .iter()
                .map(|e| encoder.tokenize(&e.anchor))
                .collect::<Result<_>>()?,
            positives: examples
                .iter()
                .map(|e| tok(&e.positives))
                .collect::<Result<_>>()?,
            negatives: examples
                .iter()
                .map(|e| tok(&e.negatives))
                .collect::<Result<_>>()?,
        })
    }

    /// The batch of step `step`: epochs are permutations drawn from (`seed`, epoch), so a
    /// resumed run sees the batches an uninterrupted one would.
    fn batch(&self, examples: &[ScopeExample], step: usize, size: usize, seed: u64) -> Batch {
        let n = examples.len();
        let size = size.min(n);
        let mut anchors = Vec::with_capacity(size);
        let mut positives = Vec::with_capacity(size);
        let mut negatives = Vec::new();
        let mut negative_of = Vec::new();
        for slot in 0..size {
            let global = step * size + slot;
            let (epoch, at) = (global / n, global % n);
            let i = epoch_order(n, seed, epoch)[at];
            let mut rng = Rng::new(seed ^ (global as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
            anchors.push(self.anchors[i].clone());
            let p = &self.positives[i];
            positives.push(p[(rng.next_u64() % p.len() as u64) as usize].clone());
            let ng = &self.negatives[i];
            if !ng.is_empty() {
                negatives.push(ng[(rng.next_u64() % ng.len() as u64) as usize].clone());
                negative_of.push(slot);
            }
        }
        positives.extend(negatives);
        Batch {
            anchors,
            candidates: positives,
            negative_of,
        }
    }
}

struct Trainer<'a> {
    hp: &'a SeracHparams,
    base: &'a SentenceEncoder,
    out_dir: &'a Path,
    /// The encoder's weights; the trained layers' tensors are `Var`s the optimiser holds.
    weights: BertWeights,
    scale: Var,
    bias: Var,
    /// The cross-encoder's direction (absent for the embedding classifier).
    head: Option<Var>,
    adam: Adam,
    scale_adam: Adam,
    state: State,
}

impl<'a> Trainer<'a> {
    /// A fresh trainer, or the one a checkpoint in `out_dir` left.
    fn new(hp: &'a SeracHparams, base: &'a SentenceEncoder, out_dir: &'a Path) -> Result<Self> {
        let n_layers = base.config.num_hidden_layers;
        if hp.train_layers > n_layers {
            return Err(Error::config(format!(
                "train_layers is {}; the encoder has {n_layers} layers",
                hp.train_layers
            )));
        }
        let state_path = out_dir.join(STATE);
        let resumed = state_path.exists();
        let (weights, scale, bias, head, state, moments) = if resumed {
            let text =
                std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
            let state: State = serde_json::from_str(&text).map_err(|e| {
                Error::model(&state_path, format!("not a SERAC training state: {e}"))
            })?;
            let last = out_dir.join(LAST);
            let files = SafetensorFiles::open_file(&last)?;
            let weights = BertWeights::read(&files, &base.config)?;
            let scalar = |name: &str| -> Result<f64> {
                Ok(f64::from(
                    files.get(name)?.flatten_all()?.to_vec1::<f32>()?[0],
                ))
            };
            let n_moments = (0..)
                .take_while(|i| files.contains(&format!("adam.m{i}")))
                .count();
            let moments = (0..n_moments)
                .map(|i| {
                    Ok((
                        files.get(&format!("adam.m{i}"))?,
                        files.get(&format!("adam.v{i}"))?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            let head = if hp.cross_attend {
                Some(files.get("scope.head").map_err(|_| {
                    Error::model(
                        &last,
                        "holds no cross-encoder head (scope.head): the run there trained an \
                         embedding classifier; cross_attend must be what it was",
                    )
                })?)
            } else {
                None
            };
            (
                weights,
                scalar("scope.scale")?,
                scalar("scope.bias")?,
                head,
                state,
                Some(moments),
            )
        } else {
            let head = hp
                .cross_attend
                .then(|| Tensor::zeros(base.dim(), DType::F32, &Device::Cpu))
                .transpose()?;
            (
                base.weights.clone(),
                hp.scale_init,
                hp.bias_init,
                head,
                State::default(),
                None,
            )
        };
        let mut weights = weights;
        let mut vars = Vec::new();
        for layer in weights.layers.iter_mut().skip(n_layers - hp.train_layers) {
            for t in layer_tensors(layer) {
                let v = Var::from_tensor(t)?;
                *t = v.as_tensor().clone();
                vars.push(v);
            }
        }
        let dev = Device::Cpu;
        let scale = Var::from_tensor(&Tensor::new(&[scale as f32], &dev)?)?;
        let bias = Var::from_tensor(&Tensor::new(&[bias as f32], &dev)?)?;
        let head = head.map(|h| Var::from_tensor(&h)).transpose()?;
        let mut adam = Adam::new(vars, hp.lr, 0.0)?;
        let mut small = vec![scale.clone(), bias.clone()];
        small.extend(head.clone());
        let n_small = small.len();
        let mut scale_adam = Adam::new(small, hp.scale_lr, 0.0)?;
        if let Some(mut m) = moments {
            let tail = m.split_off(m.len().saturating_sub(n_small));
            let bad = |e: Error| Error::model(out_dir.join(LAST), e.to_string());
            adam.restore(state.step as i32, m).map_err(bad)?;
            scale_adam.restore(state.step as i32, tail).map_err(bad)?;
        }
        Ok(Trainer {
            hp,
            base,
            out_dir,
            weights,
            scale,
            bias,
            head,
            adam,
            scale_adam,
            state,
        })
    }

    /// One optimisation step; the batch's loss.
    fn step(&mut self, batch: &Batch) -> Result<f64> {
        let (logits, y) = match &self.head {
            None => self.embedding_logits(batch)?,
            Some(head) => self.pair_logits(batch, head.as_tensor())?,
        };
        // softplus(−l) for in-scope pairs, softplus(l) for the rest; each kind averaged.
        let n_pos = y.sum_all()?.to_scalar::<f32>()? as f64;
        let n_neg = y.elem_count() as f64 - n_pos;
        let pos = (softplus(&logits.neg()?)? * &y)?.sum_all()? / n_pos.max(1.0);
        let neg = (softplus(&logits)? * (1.0 - &y)?)?.sum_all()? / n_neg.max(1.0);
        let loss = (pos? + neg?)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        if !value.is_finite() {
            return Err(Error::invalid(format!(
                "the scope classifier's loss became {value} at step {} (lr too high?)",
                self.state.step
            )));
        }
        let grads = loss.backward()?;
        self.adam.step(&grads)?;
        self.scale_adam.step(&grads)?;
        Ok(value)
    }

    /// Every anchor against every candidate (its own positive in scope): logits and labels
    /// `[anchors, candidates]`.
    fn embedding_logits(&self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let a = self.base.embed_ids(&self.weights, &batch.anchors)?;
        let c = self.base.embed_ids(&self.weights, &batch.candidates)?;
        let logits = a
            .matmul(&c.t()?)?
            .broadcast_mul(self.scale.as_tensor())?
            .broadcast_add(self.bias.as_tensor())?;
        let (rows, cols) = logits.dims2()?;
        let mut labels = vec![0f32; rows * cols];
        for i in 0..rows {
            labels[i * cols + i] = 1.0;
        }
        Ok((
            logits,
            Tensor::from_vec(labels, (rows, cols), &Device::Cpu)?,
        ))
    }

    /// Each candidate paired with its own anchor and with the [`HARD_NEGATIVES`] other
    /// anchors nearest to it under the base encoder: logits and labels `[pairs]`.
    fn pair_logits(&self, batch: &Batch, head: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = batch.anchors.len();
        let a = self.base.embed_ids(&self.base.weights, &batch.anchors)?;
        let c = self.base.embed_ids(&self.base.weights, &batch.candidates)?;
        let near = c.matmul(&a.t()?)?.to_vec2::<f32>()?;
        // An edit's own prompt is in its scope: the pair a stored edit's reliability probe
        // makes, which no paraphrase shows.
        let mut pairs: Vec<Vec<u32>> = batch
            .anchors
            .iter()
            .map(|x| SentenceEncoder::pair_ids(x, x))
            .collect();
        let mut labels = vec![1f32; n];
        for (k, row) in near.iter().enumerate() {
            let (own, in_scope) = if k < n {
                (k, true)
            } else {
                (batch.negative_of[k - n], false)
            };
            pairs.push(SentenceEncoder::pair_ids(
                &batch.anchors[own],
                &batch.candidates[k],
            ));
            labels.push(if in_scope { 1f32 } else { 0.0 });
            let mut others: Vec<usize> = (0..n).filter(|&j| j != own).collect();
            others.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
            for &j in others.iter().take(HARD_NEGATIVES) {
                pairs.push(SentenceEncoder::pair_ids(
                    &batch.anchors[j],
                    &batch.candidates[k],
                ));
                labels.push(0.0);
            }
        }
        let pooled = self.base.embed_ids(&self.weights, &pairs)?;
        let logits = cross_logits(&pooled, head, self.scale.as_tensor(), self.bias.as_tensor())?;
        let count = labels.len();
        Ok((logits, Tensor::from_vec(labels, count, &Device::Cpu)?))
    }

    fn classifier(&self) -> Result<ScopeClassifier> {
        let weights = detach(&self.weights)?;
        let s = f64::from(self.scale.as_tensor().to_vec1::<f32>()?[0]);
        let b = f64::from(self.bias.as_tensor().to_vec1::<f32>()?[0]);
        let untrained = match &self.head {
            None => ScopeClassifier::new(self.base.clone(), s, b),
            Some(h) => ScopeClassifier::cross(
                self.base.clone(),
                self.hp.shortlist,
                s,
                b,
                h.as_tensor().detach(),
            )?,
        };
        untrained.with_parts(weights, s, b)
    }

    fn validate(&self, val: &[ScopeExample], train_loss: f64) -> Result<Validation> {
        let (in_scope, out_of_scope) =
            routing_accuracy(&self.classifier()?, val, self.hp.threshold)?;
        Ok(Validation {
            step: self.state.step,
            train_loss,
            in_scope,
            out_of_scope,
            balanced: (in_scope + out_of_scope) / 2.0,
        })
    }

    /// Keeps the validation, the best classifier and a checkpoint to resume from.
    fn record(&mut self, v: Validation) -> Result<()> {
        let better = self
            .state
            .best
            .as_ref()
            .is_none_or(|b| v.balanced > b.balanced);
        if better {
            let mut meta = BTreeMap::new();
            meta.insert("step".into(), v.step.to_string());
            meta.insert("in_scope".into(), format!("{:.4}", v.in_scope));
            meta.insert("out_of_scope".into(), format!("{:.4}", v.out_of_scope));
            self.classifier()?
                .save(&self.out_dir.join(CHECKPOINT), meta)?;
            self.state.best = Some(v.clone());
            self.state.stale = 0;
        } else {
            self.state.stale += 1;
        }
        self.state.history.push(v);
        let mut tensors: BTreeMap<String, Tensor> = detach(&self.weights)?
            .named()
            .into_iter()
            .map(|(n, t)| (n, t.clone()))
            .collect();
        tensors.insert("scope.scale".into(), self.scale.as_tensor().detach());
        tensors.insert("scope.bias".into(), self.bias.as_tensor().detach());
        if let Some(h) = &self.head {
            tensors.insert("scope.head".into(), h.as_tensor().detach());
        }
        let (_, mut moments) = self.adam.moments();
        moments.extend(self.scale_adam.moments().1);
        for (i, (m, v)) in moments.into_iter().enumerate() {
            tensors.insert(format!("adam.m{i}"), m);
            tensors.insert(format!("adam.v{i}"), v);
        }
        // The weights first, then the state that points at them: a kill between the two
        // resumes from the previous validation's state with these (newer) weights, which
        // only repeats a few steps' data.
        save_atomic(&tensors, &self.out_dir.join(LAST))?;
        let text = serde_json::to_vec_pretty(&self.state).expect("state serialises");
        write_atomic(&self.out_dir.join(STATE), &text)
    }
}

/// Routes the paraphrases and locality prompts of `val` through a memory of its prompts:
/// the fraction of paraphrases routed to their own edit, and of locality prompts routed to
/// none.
pub fn routing_accuracy(
    c: &ScopeClassifier,
    val: &[ScopeExample],
    threshold: f64,
) -> Result<(f64, f64)> {
    let anchors: Vec<&str> = val.iter().map(|e| e.anchor.as_str()).collect();
    let keys = c.keys(&anchors)?;
    let route = |texts: &[(usize, &str)]| -> Result<Vec<Option<usize>>> {
        let strs: Vec<&str> = texts.iter().map(|(_, t)| *t).collect();
        Ok(c.best(&strs, &keys)?
            .into_iter()
            .map(|b| b.filter(|&(_, l)| l >= logit_of(threshold)).map(|(i, _)| i))
            .collect())
    };
    let pos: Vec<(usize, &str)> = val
        .iter()
        .enumerate()
        .flat_map(|(i, e)| e.positives.iter().map(move |p| (i, p.as_str())))
        .collect();
    let neg: Vec<(usize, &str)> = val
        .iter()
        .enumerate()
        .flat_map(|(i, e)| e.negatives.iter().map(move |p| (i, p.as_str())))
        .collect();
    let hit = route(&pos)?
        .iter()
        .zip(&pos)
        .filter(|(r, (i, _))| **r == Some(*i))
        .count();
    let quiet = route(&neg)?.iter().filter(|r| r.is_none()).count();
    let in_scope = hit as f64 / pos.len().max(1) as f64;
    let out_of_scope = if neg.is_empty() {
        1.0
    } else {
        quiet as f64 / neg.len() as f64
    };
    Ok((in_scope, out_of_scope))
}

/// Every tensor of a layer, in a fixed order.
fn layer_tensors(l: &mut bert::BertLayer) -> Vec<&mut Tensor> {
    vec![
        &mut l.query.w,
        &mut l.query.b,
        &mut l.key.w,
        &mut l.key.b,
        &mut l.value.w,
        &mut l.value.b,
        &mut l.attn_out.w,
        &mut l.attn_out.b,
        &mut l.attn_norm.w,
        &mut l.attn_norm.b,
        &mut l.intermediate.w,
        &mut l.intermediate.b,
        &mut l.output.w,
        &mut l.output.b,
        &mut l.out_norm.w,
        &mut l.out_norm.b,
    ]
}

fn detach(w: &BertWeights) -> Result<BertWeights> {
    let mut out = w.clone();
    for l in &mut out.layers {
        for t in layer_tensors(l) {
            *t = t.detach().copy()?;
        }
    }
    Ok(out)
}

/// log(1 + eˣ), stable for large |x|.
fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((x.relu()? + tail)?)
}

fn logit_of(p: f64) -> f32 {
    let p = p.clamp(1e-9, 1.0 - 1e-9);
    (p / (1.0 - p)).ln() as f32
}

fn write_curve(
    history: &[Validation],
    stem: &Path,
    title: &str,
) -> Result<Option<std::path::PathBuf>> {
    if history.len() < 2 {
        return Ok(None);
    }
    let step = (history[1].step - history[0].step) as f64;
    let figure = Figure {
        panels: vec![
            Panel::Lines(LinePlot {
                title: title.into(),
                x_label: "training step".into(),
                y_label: "accuracy".into(),
                series: vec![
                    (
                        "in scope".into(),
                        history.iter().map(|v| v.in_scope).collect(),
                    ),
                    (
                        "out of scope".into(),
                        history.iter().map(|v| v.out_of_scope).collect(),
                    ),
                ],
                x_start: history[0].step as f64,
                x_step: step,
            }),
            Panel::Lines(LinePlot {
                title: "training loss".into(),
                x_label: "training step".into(),
                y_label: "binary cross-entropy".into(),
                series: vec![(
                    "loss".into(),
                    history.iter().map(|v| v.train_loss).collect(),
                )],
                x_start: history[0].step as f64,
                x_step: step,
            }),
        ],
        columns: 2,
        panel_size: (640, 420),
    };
    Ok(Some(figure.write(stem)?.png))
}
