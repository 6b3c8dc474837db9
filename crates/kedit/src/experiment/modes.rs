//! Editing modes: how edits and evaluations interleave.
//!
//! - **single**: per case, edit → evaluate → revert; the weights are checked bit-identical
//!   to the original after every case (a failed check stops the run: every later number
//!   would be wrong).
//! - **sequential**: edits accumulate, one method call per `batch_size` requests (a stream
//!   of batches: AlphaEdit's and MEMIT's lifelong setting); each case is evaluated right
//!   after its own call's edit (EasyEdit since 2026-06, `post`) and every case again after
//!   all edits (the older papers' protocol, `after_all`). The model is reverted and checked
//!   at the end.
//! - **batch**: one method call per `batch_size` requests, evaluated together, reverted.
//!
//! Pre-edit metrics are computed once per case (batched across cases) before any edit and
//! kept in the store. A request the method's `check_request` refuses is recorded on its case
//! with its reason and left out of the call; the rest of the call still edits. A refused
//! edit (an error from `compute`, or an edit `apply` refuses, such as one that changes no
//! weight or is not finite) is recorded on every case of the call; the editor leaves the
//! model as it was.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::edit::Edit;
use crate::editor::Editor;
use crate::error::{Error, Result};
use crate::evaluate::metrics::{evaluate, MetricOptions, Metrics};
use crate::experiment::efficiency::{peak_rss_bytes, reset_peak_rss};
use crate::experiment::shard::Shard;
use crate::experiment::store::{CaseRecord, EditOutcome, RunStore};
use crate::methods::{EditContext, EditMethod};
use crate::progress::Progress;
use crate::request::{same_subject_other_target, EditRequest};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Single,
    Sequential,
    Batch,
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "single" => Ok(Mode::Single),
            "sequential" => Ok(Mode::Sequential),
            "batch" => Ok(Mode::Batch),
            other => Err(Error::config(format!(
                "unknown mode `{other}`; known: single, sequential, batch"
            ))),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    pub mode: Mode,
    /// Requests per method call in batch and sequential mode.
    pub batch_size: usize,
    pub metrics: MetricOptions,
    /// Only this shard's cases (single and batch mode).
    pub shard: Option<Shard>,
}

impl RunOptions {
    /// Refuses options that cannot run, before any work (callers that keep a run
    /// directory call it before opening one, so that nothing is written for them).
    pub fn check(&self, method: Option<&dyn EditMethod>) -> Result<()> {
        if let Some(shard) = &self.shard {
            shard.check(self.mode)?;
        }
        if self.mode == Mode::Single {
            return Ok(());
        }
        let size = self.batch_size;
        if size == 0 {
            return Err(Error::config("--batch-size must be at least 1"));
        }
        if let Some(max) = method.and_then(|m| m.max_batch()) {
            if size > max {
                return Err(Error::config(format!(
                    "{} edits at most {max} request(s) per call; --batch-size {size} is too large",
                    method.map_or("", |m| m.name()),
                )));
            }
        }
        Ok(())
    }

    /// Whether case `i` is this run's to edit and evaluate (every case unless sharded).
    pub fn owns(&self, i: usize) -> bool {
        self.shard
            .is_none_or(|s| s.owns(i, self.mode, self.batch_size))
    }
}

/// Cases evaluated together before any edit (bounded so progress shows and memory stays
/// small; the forwards inside are chunked by tokens anyway).
const PRE_CHUNK: usize = 16;

/// Running means of the finished cases, shown as the progress status.
#[derive(Default)]
struct Running {
    cases: usize,
    rel: f64,
    loc: (f64, usize),
}

impl Running {
    fn add(&mut self, record: &CaseRecord) -> Option<String> {
        let post = record.post.as_ref()?;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        self.cases += 1;
        self.rel += mean(&post.rewrite_acc);
        for v in post.locality_acc.values() {
            self.loc.0 += mean(v);
            self.loc.1 += 1;
        }
        Some(format!(
            "rel {:.1} loc {:.1}",
            100.0 * self.rel / self.cases as f64,
            100.0 * self.loc.0 / self.loc.1.max(1) as f64
        ))
    }
}

/// What the modes share: the editor, the method and where progress goes.
struct Session<'a> {
    editor: &'a mut Editor,
    method: &'a dyn EditMethod,
    ctx: &'a EditContext,
    requests: &'a [EditRequest],
    opts: &'a RunOptions,
    progress: &'a mut dyn Progress,
    running: Running,
}

/// Runs every case of `requests` not yet in `store`. The editor's model must be the
/// original one; it is the original again when this returns.
pub fn run(
    editor: &mut Editor,
    method: &dyn EditMethod,
    ctx: &EditContext,
    requests: &[EditRequest],
    opts: &RunOptions,
    store: &mut RunStore,
    progress: &mut dyn Progress,
) -> Result<()> {
    opts.check(Some(method))?;
    ensure_pristine(editor, "before the run")?;
    method.prepare(editor.model(), ctx, progress)?;
    pre_edit(editor, requests, opts, store, progress)?;
    let mut s = Session {
        editor,
        method,
        ctx,
        requests,
        opts,
        progress,
        running: Running::default(),
    };
    match opts.mode {
        Mode::Single => s.single(store)?,
        Mode::Sequential => s.sequential(store)?,
        Mode::Batch => s.batch(store)?,
    }
    s.editor.revert_all();
    ensure_pristine(s.editor, "after the run")
}

fn ensure_pristine(editor: &Editor, when: &str) -> Result<()> {
    if editor.is_pristine()? {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "the model's weights are not the original ones {when}"
        )))
    }
}

/// Computes the pre-edit metrics of every case not yet in `store` (no edit is made).
pub fn pre_edit(
    editor: &Editor,
    requests: &[EditRequest],
    opts: &RunOptions,
    store: &mut RunStore,
    progress: &mut dyn Progress,
) -> Result<()> {
    let todo: Vec<usize> = (0..requests.len())
        .filter(|&i| opts.owns(i) && !store.pre.contains_key(&i))
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    progress.phase("pre-edit metrics", todo.len(), 0);
    for chunk in todo.chunks(PRE_CHUNK) {
        let reqs: Vec<&EditRequest> = chunk.iter().map(|&i| &requests[i]).collect();
        let metrics = evaluate(editor, &reqs, None, &opts.metrics)?;
        for (&i, m) in chunk.iter().zip(metrics) {
            store.put_pre(i, &requests[i].case_id, m)?;
        }
        progress.advance(chunk.len());
    }
    Ok(())
}

impl Session<'_> {
    /// Computes and applies one edit of `indices`, then evaluates those cases on the
    /// edited system. Returns the edit (when applied) and one record per case.
    fn edit_and_evaluate(
        &mut self,
        indices: &[usize],
        store: &RunStore,
    ) -> Result<(Option<Edit>, Vec<CaseRecord>)> {
        let requests = self.requests;
        reset_peak_rss();
        let start = Instant::now();
        // Requests the method cannot edit are refused before any work, each with its own
        // reason; the rest of the call still edits.
        let mut refusals: Vec<Option<String>> = indices
            .iter()
            .map(|&i| {
                self.method
                    .check_request(self.editor.model(), &requests[i])
                    .err()
                    .map(|e| e.to_string())
            })
            .collect();
        let batch: Vec<EditRequest> = indices
            .iter()
            .zip(&refusals)
            .filter(|(_, refused)| refused.is_none())
            .map(|(&i, _)| requests[i].clone())
            .collect();
        let same_subject = self.same_subject(indices, &refusals);
        let computed = if batch.is_empty() {
            Err(Error::EditRefused(
                "every request of the call was refused".into(),
            ))
        } else {
            self.method.compute(self.editor, &batch, self.ctx)
        };
        let mut outcome = EditOutcome {
            batch_size: batch.len(),
            ..Default::default()
        };
        let applied = match computed {
            Ok(c) => {
                outcome.phases = c.report.timings.clone();
                outcome.notes = c.report.notes.clone();
                for line in &c.report.log {
                    self.progress.log(line);
                }
                self.editor.apply(&c.edit).map(|_| c.edit)
            }
            Err(e) => Err(e),
        };
        outcome.seconds = start.elapsed().as_secs_f64();
        outcome.peak_rss_bytes = peak_rss_bytes();
        let pre: Vec<&Metrics> = indices
            .iter()
            .map(|i| {
                store
                    .pre
                    .get(i)
                    .ok_or_else(|| Error::invalid(format!("case {i} has no pre-edit metrics")))
            })
            .collect::<Result<_>>()?;
        let (edit, posts) = match applied {
            Ok(edit) => {
                let start = Instant::now();
                let edited: Vec<(usize, &EditRequest)> = indices
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| refusals[*k].is_none())
                    .map(|(k, &i)| (k, &requests[i]))
                    .collect();
                let reqs: Vec<&EditRequest> = edited.iter().map(|(_, r)| *r).collect();
                let pres: Vec<&Metrics> = edited.iter().map(|(k, _)| pre[*k]).collect();
                let mut posts = vec![None; indices.len()];
                for ((k, _), m) in edited.iter().zip(evaluate(
                    &*self.editor,
                    &reqs,
                    Some(&pres),
                    &self.opts.metrics,
                )?) {
                    posts[*k] = Some(m);
                }
                outcome.eval_seconds = start.elapsed().as_secs_f64();
                (Some(edit), posts)
            }
            Err(e) => {
                let why = e.to_string();
                for r in refusals.iter_mut().filter(|r| r.is_none()) {
                    *r = Some(why.clone());
                }
                (None, vec![None; indices.len()])
            }
        };
        let records = indices
            .iter()
            .zip(posts)
            .zip(pre)
            .zip(refusals)
            .zip(same_subject)
            .map(|((((&i, post), pre), refused), ids)| CaseRecord {
                index: i,
                case_id: requests[i].case_id.clone(),
                prompt: requests[i].prompt.clone(),
                target_new: requests[i].target_new.clone(),
                pre: pre.clone(),
                post,
                edit: EditOutcome {
                    error: refused,
                    ..outcome.clone()
                },
                same_subject: ids,
            })
            .collect();
        Ok((edit, records))
    }

    /// For each of `indices`, the case ids of the others in the call (refused ones left
    /// out) about its subject with another target; logged once per call, since such
    /// requests compete for one key and may contradict each other.
    fn same_subject(&mut self, indices: &[usize], refusals: &[Option<String>]) -> Vec<Vec<String>> {
        let requests = self.requests;
        let kept: Vec<usize> = (0..indices.len())
            .filter(|&k| refusals[k].is_none())
            .collect();
        let reqs: Vec<&EditRequest> = kept.iter().map(|&k| &requests[indices[k]]).collect();
        let mut ids = vec![Vec::new(); indices.len()];
        for (&k, others) in kept.iter().zip(same_subject_other_target(&reqs)) {
            ids[k] = others.iter().map(|&j| reqs[j].case_id.clone()).collect();
        }
        let involved = ids.iter().filter(|o| !o.is_empty()).count();
        if let Some(first) = ids.iter().position(|o| !o.is_empty()) {
            let r = &requests[indices[first]];
            self.progress.notice(&format!(
                "{involved} requests of this call share a subject with another of its requests \
                 that has a different target (e.g. case {} \"{}\" → {} and case {}); they compete \
                 for one key, and if they ask the same question they contradict each other \
                 (`same_subject` in cases.jsonl)",
                r.case_id, r.subject, r.target_new, ids[first][0]
            ));
        }
        ids
    }

    fn put_all(&mut self, store: &mut RunStore, records: Vec<CaseRecord>) -> Result<()> {
        for rec in records {
            if store.cases.contains_key(&rec.index) {
                continue;
            }
            if let Some(status) = self.running.add(&rec) {
                self.progress.status(&status);
            }
            self.progress.advance(1);
            store.put_case(rec)?;
        }
        Ok(())
    }

    fn single(&mut self, store: &mut RunStore) -> Result<()> {
        let mine: Vec<usize> = (0..self.requests.len())
            .filter(|&i| self.opts.owns(i))
            .collect();
        let todo: Vec<usize> = mine
            .iter()
            .copied()
            .filter(|i| !store.cases.contains_key(i))
            .collect();
        self.progress
            .phase("edits (single)", mine.len(), mine.len() - todo.len());
        for i in todo {
            let (_, records) = self.edit_and_evaluate(&[i], store)?;
            self.editor.revert_all();
            ensure_pristine(self.editor, &format!("after reverting case {i}"))?;
            self.put_all(store, records)?;
        }
        Ok(())
    }

    fn batch(&mut self, store: &mut RunStore) -> Result<()> {
        let size = self.opts.batch_size;
        let all: Vec<usize> = (0..self.requests.len()).collect();
        let mine = all.iter().filter(|&&i| self.opts.owns(i)).count();
        let done = all
            .iter()
            .filter(|&&i| self.opts.owns(i) && store.cases.contains_key(&i))
            .count();
        self.progress.phase("edits (batch)", mine, done);
        // Whole chunks are redone when any of their cases is missing: the edit depends on
        // every request of the chunk. A shard owns whole chunks.
        for chunk in all.chunks(size) {
            if !self.opts.owns(chunk[0]) || chunk.iter().all(|i| store.cases.contains_key(i)) {
                continue;
            }
            let (_, records) = self.edit_and_evaluate(chunk, store)?;
            self.editor.revert_all();
            ensure_pristine(
                self.editor,
                &format!("after reverting the batch from case {}", chunk[0]),
            )?;
            self.put_all(store, records)?;
        }
        Ok(())
    }

    fn sequential(&mut self, store: &mut RunStore) -> Result<()> {
        let n = self.requests.len();
        let all: Vec<usize> = (0..n).collect();
        // Calls of `batch_size` requests, in order; each call's edit is saved under its
        // first case's index.
        let chunks: Vec<&[usize]> = all.chunks(self.opts.batch_size.max(1)).collect();
        // Resume: rebuild the accumulated system from the edits of the calls already done. A
        // call some of whose cases are missing was interrupted before its records were all
        // written: it is redone, as are all after it.
        let first_todo = chunks
            .iter()
            .position(|chunk| !chunk.iter().all(|i| store.cases.contains_key(i)))
            .unwrap_or(chunks.len());
        let edited = |chunk: &[usize]| chunk.iter().any(|i| store.cases[i].edit.error.is_none());
        let edited_calls: Vec<usize> = chunks[..first_todo]
            .iter()
            .filter(|c| edited(c))
            .map(|c| c[0])
            .collect();
        // The newest saved edit first: when it holds the whole state (a codebook, side
        // memories), it is all there is to re-apply, and the earlier files are dropped.
        let mut newest = match edited_calls.last() {
            Some(&i) => store.load_edit(i)?.map(|e| (i, e)),
            None => None,
        };
        let mut held: Option<(usize, (&'static str, String))> = None;
        if let Some((i, edit)) = &newest {
            if let Some(place) = edit.whole_state_place() {
                self.editor.apply(edit)?;
                for &earlier in &edited_calls[..edited_calls.len() - 1] {
                    store.remove_edit(earlier)?;
                }
                held = Some((*i, place));
            }
        }
        if held.is_none() {
            for chunk in &chunks[..first_todo] {
                // (The newest is read once, above.)
                let saved = match newest.take_if(|(i, _)| *i == chunk[0]) {
                    Some((_, edit)) => Some(edit),
                    None => store.load_edit(chunk[0])?,
                };
                match saved {
                    Some(edit) if edited(chunk) => {
                        self.editor.apply(&edit)?;
                    }
                    None if !edited(chunk) => {}
                    _ => {
                        return Err(Error::invalid(format!(
                            "cannot resume this sequential run: the saved edit of the call \
                             from case {} is missing or inconsistent with its records; start \
                             a new run",
                            chunk[0]
                        )))
                    }
                }
            }
        }
        let todo = &chunks[first_todo..];
        if !todo.is_empty() {
            // New edits change the final system: every after-all value is stale.
            // (Re-written lines are appended; the last line of a case wins when a run is
            // reopened.)
            store.after_all.clear();
        }
        let done = chunks[..first_todo].iter().map(|c| c.len()).sum();
        self.progress.phase("edits (sequential)", n, done);
        for chunk in todo {
            let (edit, records) = self.edit_and_evaluate(chunk, store)?;
            let place = edit.as_ref().and_then(Edit::whole_state_place);
            if let Some(edit) = &edit {
                store.save_edit(chunk[0], edit)?;
            }
            self.put_all(store, records)?;
            // Only once this call's records are written does its edit stand for the
            // earlier one of its place (a run killed before resumes from the earlier).
            if let Some(place) = place {
                if let Some((earlier, _)) = held.take().filter(|(_, p)| *p == place) {
                    store.remove_edit(earlier)?;
                }
                held = Some((chunk[0], place));
            }
        }
        let rest: Vec<usize> = (0..n)
            .filter(|i| !store.after_all.contains_key(i))
            .collect();
        if !rest.is_empty() {
            self.progress
                .phase("evaluation after all edits", n, n - rest.len());
            for chunk in rest.chunks(PRE_CHUNK) {
                let reqs: Vec<&EditRequest> = chunk.iter().map(|&i| &self.requests[i]).collect();
                let pre: Vec<&Metrics> = chunk.iter().map(|i| &store.pre[i]).collect();
                let posts = evaluate(&*self.editor, &reqs, Some(&pre), &self.opts.metrics)?;
                for (&i, m) in chunk.iter().zip(posts) {
                    store.put_after_all(i, &self.requests[i].case_id, m)?;
                }
                self.progress.advance(chunk.len());
            }
        }
        Ok(())
    }
}
