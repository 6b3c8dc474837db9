//! WISE (Wang et al. 2024): lifelong editing in a side memory.
//!
//! The side memory is a copy of one MLP output projection, held as its difference Δ from
//! the main weight. Each edit trains Δ, in the random subspace of the current knowledge
//! shard only (a gradient mask freeing `mask_ratio` of the entries), so that
//! - the edit's prompts, under ROME's context templates, produce the target (NLL of its
//!   tokens), and
//! - the side memory's *activation distance* — the mean over a row's tokens of
//!   ‖act(h_side) − act(h_main)‖ — rises above β on the edit's prompts, stays below α on
//!   an irrelevant input, and separates the two by γ.
//!
//! At inference each input row is answered by the memory it activates most beyond that
//! memory's threshold (`act_ratio` × the smallest distance its edits reached), or by the
//! main weight. After `save_freq` edits a shard closes and a new subspace opens; every
//! `merge_freq` edits the closed shards since the last merge are TIES-merged into one
//! memory. The whole state comes back as one [`SideMemoryEdit`]: applying it sets the side
//! memories of the layer, so single, sequential and batch modes need nothing else.
//!
//! Differences from EasyEdit's, on purpose: an edit row's distance is measured over its
//! prompt's tokens, not over the answer too (EasyEdit's router then needs the answer in
//! its input to recognise the edit: scored teacher-forced it sees it, asked the question
//! it does not); no weight decay on the side memory (EasyEdit's
//! SGD decays the whole copy, main weight included, toward zero), the distance of an edit
//! is measured after its last step rather than before it, and is the least over its rows
//! rather than their mean, and a row's routing does not
//! depend on the other rows of its batch.

pub mod hparams;
pub mod shard;

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};

use crate::data::{self, Format, LoadOptions};
use crate::edit::{Edit, SideMemory, SideMemoryEdit, SideMemoryInfo, WrittenFact};
use crate::editor::Editor;
use crate::error::{Error, Result};
use crate::methods::loss::mean_row_nll;
use crate::methods::rome::templates::{count_warnings, TemplateCache, TemplateSpec};
use crate::methods::{
    check_requests, filter_warnings, request_rng, Computed, EditContext, EditMethod, HparamsSource,
    LoadedMethod, MethodReport,
};
use crate::model::{BlockLayout, BlockParam, Model, ParamId};
use crate::request::EditRequest;
use crate::runtime::side_memory::{activation_distance, routed_tokens, side_change};
use crate::runtime::{Intervention, LogitsAt, Padding, Site, TokenBatch};
use hparams::WiseHparams;
use shard::{shard_seed, subspace_mask, ties_merge};

/// Salts the seed of the replay draw, so that it is not the irrelevant inputs' draw.
const REPLAY_STREAM: u64 = 0x7265_706c_6179;

pub struct Wise {
    hp: WiseHparams,
    layer: usize,
    /// `prompt answer` texts a side memory must not react to.
    irrelevant: Vec<String>,
    templates: TemplateCache,
}

/// One edit's training rows: the templated prompts with the target, then the replayed
/// facts (bare prompt and target), then the irrelevant inputs.
struct Rows {
    batch: TokenBatch,
    /// The fact rows alone, padded among themselves: the only rows the blocks above the
    /// memory need to run (an irrelevant row's loss is its activation distance, read at
    /// the memory's own layer). (Padding the edit's templated prompts and the shorter
    /// replayed ones apart, in two passes, was slower: 16.8 s an edit against 15.4.)
    facts: TokenBatch,
    /// Rows holding a fact to write: the edit's and the replayed ones (the rest are
    /// irrelevant inputs).
    edit_rows: usize,
    /// Where the target's tokens are predicted (`(row, index)` in `facts`), what they are,
    /// and their row.
    entries: Vec<(usize, usize)>,
    targets: Vec<u32>,
    entry_rows: Vec<usize>,
    /// The tokens whose activation distance counts (`[rows * len]`): an edit row's
    /// templated prompt — what the router will see when the prompt is asked, before any
    /// answer — and every token of an irrelevant row; never a sequence's first token
    /// (the router leaves it out: [`routed_tokens`]).
    measured: Vec<bool>,
}

/// What one edit's training ended with.
struct Trained {
    delta: Tensor,
    /// The smallest activation distance of the edit's rows, and of the replayed facts'
    /// rows, under the trained memory.
    act: f64,
    steps: usize,
    loss: f64,
    nll: f64,
    /// The largest activation distance of the irrelevant rows.
    irrelevant_act: f64,
}

impl Wise {
    pub fn load(_name: &str, source: HparamsSource, model: &Model) -> Result<LoadedMethod> {
        let (hp, unknown): (WiseHparams, _) = source.deserialize()?;
        let layer = hp.check(&source, model)?;
        let path = source
            .path_key("irrelevant_data")?
            .expect("a required key was deserialised");
        let loaded = data::load(
            &path,
            Format::Auto,
            &LoadOptions {
                skip_invalid: true,
                ..Default::default()
            },
        )?;
        let irrelevant: Vec<String> = loaded
            .requests
            .iter()
            .skip(hp.irrelevant_from)
            .flat_map(|r| r.locality.values().flatten())
            .map(|p| format!("{} {}", p.prompt, p.answer))
            .collect();
        if irrelevant.is_empty() {
            return Err(Error::invalid(format!(
                "{}: no locality prompt in its records from {} on: WISE needs irrelevant \
                 inputs (`irrelevant_data`, `irrelevant_from`)",
                path.display(),
                hp.irrelevant_from
            )));
        }
        let mut warnings = filter_warnings(&source.origin, unknown);
        warnings.extend(count_warnings(&hp.context_template_length_params).map(|w| {
            format!(
                "{}: `context_template_length_params`: {w}",
                source.origin.display()
            )
        }));
        Ok(LoadedMethod {
            warnings,
            hparams_origin: source.origin.clone(),
            method: Box::new(Wise {
                hp,
                layer,
                irrelevant,
                templates: TemplateCache::default(),
            }),
        })
    }

    pub fn layer(&self) -> usize {
        self.layer
    }

    fn templates(&self, model: &Model, ctx: &EditContext) -> Result<Vec<String>> {
        let spec = TemplateSpec {
            length_params: self.hp.context_template_length_params.clone(),
            seed: self.hp.context_template_seed ^ ctx.seed,
        };
        self.templates.get(model, spec, &ctx.cache)
    }

    /// The irrelevant inputs paired with `r`: drawn by the run's seed and the request, so
    /// a resumed or reordered run trains the same memory.
    fn irrelevant_for(&self, r: &EditRequest, ctx: &EditContext) -> Vec<&str> {
        let mut rng = request_rng(ctx.seed, r);
        (0..self.hp.irrelevant_per_edit)
            .map(|_| {
                let i = (rng.uniform() * self.irrelevant.len() as f64) as usize;
                self.irrelevant[i.min(self.irrelevant.len() - 1)].as_str()
            })
            .collect()
    }

    /// The open shard's earlier facts this edit trains on again: `replay_size` of them,
    /// drawn by the run's seed and the request (a resumed run draws the same).
    fn replayed<'a>(
        &self,
        written: &'a [WrittenFact],
        r: &EditRequest,
        ctx: &EditContext,
    ) -> Vec<&'a WrittenFact> {
        if !self.hp.replay {
            return Vec::new();
        }
        request_rng(ctx.seed ^ REPLAY_STREAM, r)
            .sample_indices(written.len(), self.hp.replay_size)
            .into_iter()
            .map(|i| &written[i])
            .collect()
    }

    fn rows(
        &self,
        model: &Model,
        r: &EditRequest,
        templates: &[String],
        replayed: &[&WrittenFact],
        irrelevant: &[&str],
    ) -> Result<Rows> {
        let tok = model.tokenizer()?;
        let mut seqs = Vec::new();
        let mut spans = Vec::new();
        // As EasyEdit: `prompt + " " + target` tokenised as one text; the prompt's own
        // token count marks where the target starts.
        let texts = templates
            .iter()
            .map(|t| {
                (
                    t.replace("{}", &format!("{} {}", r.prompt, r.target_new)),
                    t.replace("{}", &r.prompt),
                )
            })
            .chain(
                replayed
                    .iter()
                    .map(|f| (format!("{} {}", f.prompt, f.target), f.prompt.clone())),
            );
        for (with_target, prompt) in texts {
            let full = tok.encode_input(&with_target)?;
            let n_prompt = tok.encode_input(&prompt)?.len();
            if n_prompt == 0 || full.len() <= n_prompt {
                return Err(Error::invalid(format!(
                    "case {}: the target adds no token after the prompt `{prompt}` (nothing \
                     to train)",
                    r.case_id
                )));
            }
            spans.push((n_prompt, full.len()));
            seqs.push(full);
        }
        let edit_rows = seqs.len();
        let facts = TokenBatch::new(&seqs, Padding::Right, tok.pad_id())?;
        let mut entries = Vec::new();
        let mut targets = Vec::new();
        let mut entry_rows = Vec::new();
        for (row, &(n_prompt, len)) in spans.iter().enumerate() {
            for p in n_prompt - 1..len - 1 {
                entries.push((row, facts.index(row, p)));
                targets.push(seqs[row][p + 1]);
                entry_rows.push(row);
            }
        }
        for text in irrelevant {
            seqs.push(tok.encode_input(text)?);
        }
        let batch = TokenBatch::new(&seqs, Padding::Right, tok.pad_id())?;
        let mut measured = routed_tokens(&batch);
        for (row, &(n_prompt, _)) in spans.iter().enumerate() {
            for t in 0..batch.len {
                let at = row * batch.len + t;
                measured[at] = measured[at] && batch.index(row, n_prompt) > t;
            }
        }
        Ok(Rows {
            batch,
            facts,
            edit_rows,
            entries,
            targets,
            entry_rows,
            measured,
        })
    }

    /// Trains the open memory's `delta` on one edit, in the subspace `mask`; each step
    /// starts above the memory's block when `above` ([`starts_above`]), else runs it.
    fn train(
        &self,
        model: &Model,
        rows: &Rows,
        delta: &Tensor,
        mask: &Tensor,
        above: bool,
    ) -> Result<Trained> {
        let l = self.layer;
        let act = model.config.activation;
        let b = &rows.batch;
        let start_site = if above {
            Site::ResidPost(l)
        } else {
            Site::ResidPre(l)
        };
        let frozen = model
            .forward(b)
            .capture([start_site, Site::MlpKey(l), Site::MlpOut(l)])
            .stop_after(l)
            .run()?;
        let key = frozen.capture(Site::MlpKey(l))?.clone();
        let main = frozen.capture(Site::MlpOut(l))?.clone();
        let start = frozen.capture(start_site)?;
        let n = rows.edit_rows;
        let facts = &rows.facts;
        let part = |t: &Tensor| -> Result<Tensor> {
            Ok(t.narrow(0, 0, facts.rows)?.narrow(1, 0, facts.len)?)
        };
        let resid = part(start)?;
        let width = main.dim(2)?;
        // Where each step runs the block, the change is added at every position of its
        // MLP output.
        let every: Vec<(usize, usize)> = if above {
            Vec::new()
        } else {
            (0..facts.rows)
                .flat_map(|r| (0..facts.len).map(move |t| (r, t)))
                .collect()
        };
        let (alpha, beta, gamma) = (self.hp.alpha(), self.hp.beta(), self.hp.gamma());
        let c = self.hp.norm_constraint;
        let var = Var::from_tensor(&delta.to_dtype(key.dtype())?)?;
        let mut previous = f64::INFINITY;
        let mut last = (f64::NAN, f64::NAN);
        let mut steps = 0;
        for _ in 0..self.hp.n_iter {
            let change = side_change(&key, var.as_tensor())?;
            let on_facts = part(&change)?;
            let pass = if above {
                model.forward(facts).start_at(l + 1, (&resid + on_facts)?)
            } else {
                model
                    .forward(facts)
                    .start_at(l, resid.clone())
                    .intervene(Intervention::add(
                        Site::MlpOut(l),
                        every.clone(),
                        on_facts.reshape((facts.rows * facts.len, width))?,
                    ))
            };
            let logits = pass
                .logits(LogitsAt::Entries(rows.entries.clone()))
                .run()?
                .logits
                .expect("asked for logits");
            let nll = mean_row_nll(&logits, &rows.targets, &rows.entry_rows, n)?;
            let dist = activation_distance(&main, &change, &rows.measured, act)?;
            let inside = dist.narrow(0, 0, n)?;
            let outside = dist.narrow(0, n, b.rows - n)?;
            // EasyEdit's margins, each a mean over the terms still violated (every pair of
            // an edit row and an irrelevant row for the separation).
            let pairs = outside.unsqueeze(1)?.broadcast_sub(&inside.unsqueeze(0)?)?;
            let separation = positive_mean(&(pairs + gamma)?)?;
            let quiet = positive_mean(&(&outside - alpha)?)?;
            let loud = positive_mean(&((&inside * -1.0)? + beta)?)?;
            let loss = (((&nll + separation)? + quiet)? + loud)?;
            let value = scalar(&loss)?;
            if !value.is_finite() {
                return Err(Error::EditRefused(format!(
                    "WISE: the loss became {value} at step {steps}"
                )));
            }
            last = (value, scalar(&nll)?);
            // EasyEdit's stopping rule: the loss has settled near zero.
            if (previous - value).abs() <= 1e-4 && value <= 0.02 {
                break;
            }
            previous = value;
            let grads = loss.backward()?;
            let g = grads
                .get(var.as_tensor())
                .ok_or_else(|| Error::invalid("WISE: no gradient reached the side memory"))?;
            let g = g.broadcast_mul(&mask.to_dtype(g.dtype())?)?;
            let next = (var.as_tensor() - (g * self.hp.edit_lr)?)?.clamp(-c, c)?;
            var.set(&next)?;
            steps += 1;
        }
        let change = side_change(&key, var.as_tensor())?;
        let dist = activation_distance(&main, &change, &rows.measured, act)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        // The least activated of the edit's rows, not their mean (EasyEdit's): the
        // threshold derived from it must let every form of the prompt through, the bare
        // one included.
        // Replayed facts count too: the threshold follows what the memory now does to
        // them, not what it did when they were written.
        let act_in = dist[..n].iter().copied().fold(f64::INFINITY, f64::min);
        Ok(Trained {
            delta: var.as_tensor().to_dtype(DType::F32)?,
            act: act_in,
            steps,
            loss: last.0,
            nll: last.1,
            irrelevant_act: dist[n..].iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }

    /// Merges the closed shards written since the last merge into one memory.
    fn merge(&self, state: &mut SideMemoryEdit) -> Result<usize> {
        let k = self.hp.merge_freq / self.hp.save_freq;
        let start = state.memories.len().saturating_sub(k);
        let group: Vec<SideMemory> = state.memories.drain(start..).collect();
        if group.len() < 2 {
            state.memories.extend(group);
            return Ok(0);
        }
        let deltas: Vec<Tensor> = group.iter().map(|m| m.delta.clone()).collect();
        let merged = ties_merge(&deltas, self.hp.weights, self.hp.densities)?;
        state.memories.push(SideMemory {
            delta: merged,
            info: SideMemoryInfo {
                min_act: group
                    .iter()
                    .map(|m| m.info.min_act)
                    .fold(f64::INFINITY, f64::min),
                edits: group.iter().map(|m| m.info.edits).sum(),
                mask_seed: group[0].info.mask_seed,
                open: false,
                written: group.iter().flat_map(|m| m.info.written.clone()).collect(),
            },
        });
        Ok(group.len())
    }
}

/// Whether a step of training can start above block `layer`: where the MLP output adds
/// straight into the residual stream, the block's output under the memory is its frozen
/// output plus the memory's change, so the block need not run again at every step (a
/// third of the forward work at SmolLM2's layer 27). A sandwich block normalises the MLP
/// output first, and the last block has no block above it: those run the block with the
/// change added at its MLP output.
fn starts_above(model: &Model, layer: usize) -> bool {
    model.config.block != BlockLayout::Sandwich && layer + 1 < model.config.n_layers
}

/// The mean of the positive entries of `t` (0 when none is positive), differentiable.
fn positive_mean(t: &Tensor) -> Result<Tensor> {
    let values = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let count = values.iter().filter(|&&v| v > 0.0).count();
    if count == 0 {
        return Ok(Tensor::zeros((), t.dtype(), t.device())?);
    }
    Ok((t.relu()?.sum_all()? / count as f64)?)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

impl EditMethod for Wise {
    fn name(&self) -> &str {
        "WISE"
    }

    fn max_batch(&self) -> Option<usize> {
        None
    }

    fn hparams_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.hp).expect("hyper-parameters serialise")
    }

    fn check_request(&self, model: &Model, request: &EditRequest) -> Result<()> {
        request.check_size(model, 0)?;
        let tok = model.tokenizer()?;
        let full = tok.encode_input(&format!("{} {}", request.prompt, request.target_new))?;
        if full.len() <= tok.encode_input(&request.prompt)?.len() {
            return Err(Error::invalid(
                "the target adds no token after the prompt (nothing to train)",
            ));
        }
        Ok(())
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
        let templates = report.timed("templates", |_| self.templates(model, ctx))?;
        let shape = model
            .params
            .require(ParamId::Block(self.layer, BlockParam::OutWeight))?
            .dims2()?;
        let mut state = match system.side_memory(self.layer) {
            Some(s) => s.clone(),
            None => SideMemoryEdit {
                layer: self.layer,
                activation: model.config.activation,
                act_ratio: self.hp.act_ratio,
                memories: Vec::new(),
                total_edits: 0,
                meta: BTreeMap::new(),
            },
        };
        state.act_ratio = self.hp.act_ratio;
        let above = starts_above(model, self.layer);
        let (mut steps, mut merged, mut replays) = (0, 0, 0);
        let mut stats = Vec::new();
        for r in requests {
            if !state.memories.last().is_some_and(|m| m.info.open) {
                state.memories.push(SideMemory {
                    delta: Tensor::zeros(shape, DType::F32, model.device())?,
                    info: SideMemoryInfo {
                        min_act: 0.0,
                        edits: 0,
                        mask_seed: shard_seed(ctx.seed, state.total_edits as u64),
                        open: true,
                        written: Vec::new(),
                    },
                });
            }
            let memory = state.memories.last_mut().expect("just ensured");
            let mask = subspace_mask(
                shape,
                self.hp.mask_ratio,
                memory.info.mask_seed,
                model.device(),
            )?;
            let replayed = self.replayed(&memory.info.written, r, ctx);
            replays += replayed.len();
            let rows = self.rows(
                model,
                r,
                &templates,
                &replayed,
                &self.irrelevant_for(r, ctx),
            )?;
            let trained = report.timed("train", |_| {
                self.train(model, &rows, &memory.delta, &mask, above)
            })?;
            report.log.push(format!(
                "WISE case {}: {} steps, loss {:.4} (target NLL {:.4}), activation {:.3} on the \
                 edit, {:.3} on an irrelevant input",
                r.case_id,
                trained.steps,
                trained.loss,
                trained.nll,
                trained.act,
                trained.irrelevant_act
            ));
            steps += trained.steps;
            stats.push((trained.act, trained.irrelevant_act, trained.nll));
            memory.delta = trained.delta;
            memory.info.min_act = if memory.info.edits == 0 {
                trained.act
            } else {
                memory.info.min_act.min(trained.act)
            };
            memory.info.edits += 1;
            if self.hp.replay {
                memory.info.written.push(WrittenFact {
                    prompt: r.prompt.clone(),
                    target: r.target_new.clone(),
                });
            }
            if memory.info.edits >= self.hp.save_freq {
                memory.info.open = false;
            }
            state.total_edits += 1;
            if state.total_edits % self.hp.merge_freq == 0 {
                merged += report.timed("merge", |_| self.merge(&mut state))?;
            }
        }
        let mean =
            |f: fn(&(f64, f64, f64)) -> f64| stats.iter().map(f).sum::<f64>() / stats.len() as f64;
        report.note(
            "steps_mean",
            format!("{:.1}", steps as f64 / requests.len() as f64),
        );
        if self.hp.replay {
            report.note(
                "replayed_mean",
                format!("{:.1}", replays as f64 / requests.len() as f64),
            );
        }
        report.note("edit_act_mean", format!("{:.3}", mean(|s| s.0)));
        report.note("irrelevant_act_mean", format!("{:.3}", mean(|s| s.1)));
        report.note("target_nll_mean", format!("{:.4}", mean(|s| s.2)));
        report.note("memories", state.memories.len());
        report.note("total_edits", state.total_edits);
        if merged > 0 {
            report.note("shards_merged", merged);
        }
        state.meta = BTreeMap::from([
            ("method".to_string(), "WISE".to_string()),
            ("hparams".to_string(), self.hparams_json().to_string()),
        ]);
        Ok(Computed {
            edit: Edit::SideMemory(state),
            report,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::DEFAULT_MODEL_FILE;

    /// Starting above the memory's block from its frozen output plus the memory's change
    /// is the same sum as running the block with the change added: the real SmolLM2 trains
    /// the same memory both ways, step for step, up to the order of float additions.
    #[test]
    fn starting_above_the_block_trains_the_memory_running_it_would() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let model = Model::load(root.join("models").join(DEFAULT_MODEL_FILE))
            .expect("the default model: run scripts/fetch-model (scripts/test does)");
        let mut source = HparamsSource::read(&root.join("hparams/WISE/smollm2-135m.yaml")).unwrap();
        source.set("n_iter", serde_json::json!(5));
        let (hp, _): (WiseHparams, _) = source.deserialize().unwrap();
        let layer = hp.check(&source, &model).unwrap();
        assert!(starts_above(&model, layer), "SmolLM2's layer {layer}");
        let wise = Wise {
            hp,
            layer,
            irrelevant: Vec::new(),
            templates: TemplateCache::default(),
        };
        let request = EditRequest {
            case_id: "eiffel".into(),
            prompt: "The Eiffel Tower is located in the city of".into(),
            target_new: "Rome".into(),
            ..Default::default()
        };
        let templates = ["{}".to_string(), "It was a quiet morning. {}".to_string()];
        let replayed = WrittenFact {
            prompt: "The capital of Kenya is".into(),
            target: "Lima".into(),
        };
        let rows = wise
            .rows(
                &model,
                &request,
                &templates,
                &[&replayed],
                &["Who wrote Hamlet? William Shakespeare"],
            )
            .unwrap();
        let shape = model
            .params
            .require(ParamId::Block(layer, BlockParam::OutWeight))
            .unwrap()
            .dims2()
            .unwrap();
        let delta = Tensor::zeros(shape, DType::F32, model.device()).unwrap();
        let mask = subspace_mask(shape, 0.2, 7, model.device()).unwrap();
        let fast = wise.train(&model, &rows, &delta, &mask, true).unwrap();
        let slow = wise.train(&model, &rows, &delta, &mask, false).unwrap();
        assert_eq!((fast.steps, slow.steps), (5, 5));
        assert!(fast.nll > 0.0 && fast.act > 0.0, "the memory was trained");
        for (a, b, what) in [
            (fast.loss, slow.loss, "loss"),
            (fast.nll, slow.nll, "target NLL"),
            (fast.act, slow.act, "edit activation"),
            (
                fast.irrelevant_act,
                slow.irrelevant_act,
                "irrelevant activation",
            ),
        ] {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{what}: {a} against {b}"
            );
        }
        let largest = |t: &Tensor| -> f32 {
            t.abs()
                .and_then(|t| t.max_all())
                .and_then(|t| t.to_scalar())
                .unwrap()
        };
        let moved = largest(&slow.delta);
        let apart = largest(&(&fast.delta - &slow.delta).unwrap());
        assert!(
            moved > 0.1 && apart <= 1e-4 * moved,
            "{apart} apart of {moved}"
        );
    }
}
