//! Editing modes: how edits and evaluations interleave.
//!
//! - **single**: per case, edit → evaluate → revert; the weights are checked bit-identical
//!   to the original after every case (a failed check stops the run: every later number
//!   would be wrong).
//! - **sequential**: edits accumulate; each case is evaluated right after its own edit
//!   (EasyEdit since 2026-06, `post`) and every case again after all edits (the older
//!   papers' protocol, `after_all`). The model is reverted and checked at the end.
//! - **batch**: one method call per `batch_size` requests, evaluated together, reverted.
//!
//! Pre-edit metrics are computed once per case (batched across cases) before any edit and
//! kept in the store. A refused edit (a request the method's `check_request` refuses, an
//! error from `compute`, or an edit `apply` refuses, such as one that changes no weight) is
//! recorded on its cases; the editor leaves the model as it was.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::edit::Edit;
use crate::editor::Editor;
use crate::error::{Error, Result};
use crate::evaluate::metrics::{evaluate, MetricOptions, Metrics};
use crate::experiment::efficiency::{peak_rss_bytes, reset_peak_rss};
use crate::experiment::store::{CaseRecord, EditOutcome, RunStore};
use crate::methods::{EditContext, EditMethod};
use crate::progress::Progress;
use crate::request::EditRequest;

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
    /// Requests per method call in batch mode.
    pub batch_size: usize,
    pub metrics: MetricOptions,
}

impl RunOptions {
    /// Refuses options that cannot run, before any work (callers that keep a run
    /// directory call it before opening one, so that nothing is written for them).
    pub fn check(&self, method: Option<&dyn EditMethod>) -> Result<()> {
        if self.mode != Mode::Batch {
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
        .filter(|i| !store.pre.contains_key(i))
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
        let batch: Vec<EditRequest> = indices.iter().map(|&i| requests[i].clone()).collect();
        reset_peak_rss();
        let start = Instant::now();
        // Requests the method cannot edit are refused before any work.
        let computed = batch
            .iter()
            .try_for_each(|r| self.method.check_request(self.editor.model(), r))
            .and_then(|()| self.method.compute(self.editor, &batch, self.ctx));
        let mut outcome = EditOutcome {
            batch_size: indices.len(),
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
                let reqs: Vec<&EditRequest> = batch.iter().collect();
                let posts = evaluate(&*self.editor, &reqs, Some(&pre), &self.opts.metrics)?;
                outcome.eval_seconds = start.elapsed().as_secs_f64();
                (Some(edit), posts.into_iter().map(Some).collect())
            }
            Err(e) => {
                outcome.error = Some(e.to_string());
                (None, vec![None; indices.len()])
            }
        };
        let records = indices
            .iter()
            .zip(posts)
            .zip(pre)
            .map(|((&i, post), pre)| CaseRecord {
                index: i,
                case_id: requests[i].case_id.clone(),
                prompt: requests[i].prompt.clone(),
                target_new: requests[i].target_new.clone(),
                pre: pre.clone(),
                post,
                edit: outcome.clone(),
            })
            .collect();
        Ok((edit, records))
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
        let todo: Vec<usize> = (0..self.requests.len())
            .filter(|i| !store.cases.contains_key(i))
            .collect();
        self.progress.phase(
            "edits (single)",
            self.requests.len(),
            self.requests.len() - todo.len(),
        );
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
        let done = all.iter().filter(|i| store.cases.contains_key(i)).count();
        self.progress.phase("edits (batch)", all.len(), done);
        // Whole chunks are redone when any of their cases is missing: the edit depends on
        // every request of the chunk.
        for chunk in all.chunks(size) {
            if chunk.iter().all(|i| store.cases.contains_key(i)) {
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
        // Resume: rebuild the accumulated system from the edits of the cases already done.
        let done: Vec<usize> = store.cases.keys().copied().collect();
        for &i in &done {
            let refused = store.cases[&i].edit.error.is_some();
            match store.load_edit(i)? {
                Some(edit) if !refused => {
                    self.editor.apply(&edit)?;
                }
                None if refused => {}
                _ => {
                    return Err(Error::invalid(format!(
                        "cannot resume this sequential run: the saved edit of case {i} is \
                         missing or inconsistent with its record; start a new run"
                    )))
                }
            }
        }
        let n = self.requests.len();
        let todo: Vec<usize> = (0..n).filter(|i| !store.cases.contains_key(i)).collect();
        if !todo.is_empty() {
            // New edits change the final system: every after-all value is stale.
            // (Re-written lines are appended; the last line of a case wins when a run is
            // reopened.)
            store.after_all.clear();
        }
        self.progress.phase("edits (sequential)", n, n - todo.len());
        for i in todo {
            let (edit, records) = self.edit_and_evaluate(&[i], store)?;
            if let Some(edit) = edit {
                store.save_edit(i, &edit)?;
            }
            self.put_all(store, records)?;
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
