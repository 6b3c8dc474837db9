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
//! kept in the store. A refused edit (an error from `compute` or `apply`) is recorded on
//! its cases; the editor leaves the model as it was.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::editor::{Editor, WeightEdit};
use crate::error::{Error, Result};
use crate::evaluate::metrics::{evaluate, MetricOptions, Metrics};
use crate::experiment::efficiency::{peak_rss_bytes, reset_peak_rss};
use crate::experiment::store::{CaseRecord, EditOutcome, RunStore};
use crate::methods::{EditContext, EditMethod};
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

/// Cases evaluated together before any edit (bounded so progress shows and memory stays
/// small; the forwards inside are chunked by tokens anyway).
const PRE_CHUNK: usize = 16;

/// Progress callbacks (the command line draws a bar).
pub trait Observer {
    /// A phase starts with `total` steps.
    fn phase(&mut self, _name: &str, _total: usize) {}
    /// `steps` more steps of the current phase are done; `record` when a case finished.
    fn advance(&mut self, _steps: usize, _record: Option<&CaseRecord>) {}
}

impl Observer for () {}

/// Runs every case of `requests` not yet in `store`. The editor's model must be the
/// original one; it is the original again when this returns.
pub fn run(
    editor: &mut Editor,
    method: &dyn EditMethod,
    ctx: &mut EditContext,
    requests: &[EditRequest],
    opts: &RunOptions,
    store: &mut RunStore,
    obs: &mut dyn Observer,
) -> Result<()> {
    ensure_pristine(editor, "before the run")?;
    method.prepare(editor.model(), ctx)?;
    pre_edit(editor, requests, opts, store, obs)?;
    match opts.mode {
        Mode::Single => single(editor, method, ctx, requests, opts, store, obs)?,
        Mode::Sequential => sequential(editor, method, ctx, requests, opts, store, obs)?,
        Mode::Batch => batch(editor, method, ctx, requests, opts, store, obs)?,
    }
    editor.revert_all();
    ensure_pristine(editor, "after the run")
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
    obs: &mut dyn Observer,
) -> Result<()> {
    let todo: Vec<usize> = (0..requests.len())
        .filter(|i| !store.pre.contains_key(i))
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    obs.phase("pre-edit metrics", todo.len());
    for chunk in todo.chunks(PRE_CHUNK) {
        let reqs: Vec<&EditRequest> = chunk.iter().map(|&i| &requests[i]).collect();
        let metrics = evaluate(editor.model(), &reqs, None, &opts.metrics)?;
        for (&i, m) in chunk.iter().zip(metrics) {
            store.put_pre(i, &requests[i].case_id, m)?;
        }
        obs.advance(chunk.len(), None);
    }
    Ok(())
}

/// Computes and applies one edit of `indices`, then evaluates those cases on the edited
/// model. Returns the edit (when applied) and one record per case.
fn edit_and_evaluate(
    editor: &mut Editor,
    method: &dyn EditMethod,
    ctx: &mut EditContext,
    requests: &[EditRequest],
    indices: &[usize],
    opts: &RunOptions,
    store: &RunStore,
) -> Result<(Option<WeightEdit>, Vec<CaseRecord>)> {
    let batch: Vec<EditRequest> = indices.iter().map(|&i| requests[i].clone()).collect();
    reset_peak_rss();
    let start = Instant::now();
    let applied = method
        .compute(editor.model(), &batch, ctx)
        .and_then(|edit| editor.apply(&edit).map(|_| edit));
    let mut outcome = EditOutcome {
        seconds: start.elapsed().as_secs_f64(),
        batch_size: indices.len(),
        peak_rss_bytes: peak_rss_bytes(),
        phases: ctx.timings.clone(),
        notes: ctx.notes.clone(),
        ..Default::default()
    };
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
            let posts = evaluate(editor.model(), &reqs, Some(&pre), &opts.metrics)?;
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

fn put_all(store: &mut RunStore, records: Vec<CaseRecord>, obs: &mut dyn Observer) -> Result<()> {
    for rec in records {
        if store.cases.contains_key(&rec.index) {
            continue;
        }
        obs.advance(1, Some(&rec));
        store.put_case(rec)?;
    }
    Ok(())
}

fn single(
    editor: &mut Editor,
    method: &dyn EditMethod,
    ctx: &mut EditContext,
    requests: &[EditRequest],
    opts: &RunOptions,
    store: &mut RunStore,
    obs: &mut dyn Observer,
) -> Result<()> {
    let todo: Vec<usize> = (0..requests.len())
        .filter(|i| !store.cases.contains_key(i))
        .collect();
    obs.phase("edits (single)", todo.len());
    for i in todo {
        let (_, records) = edit_and_evaluate(editor, method, ctx, requests, &[i], opts, store)?;
        editor.revert_all();
        ensure_pristine(editor, &format!("after reverting case {i}"))?;
        put_all(store, records, obs)?;
    }
    Ok(())
}

fn batch(
    editor: &mut Editor,
    method: &dyn EditMethod,
    ctx: &mut EditContext,
    requests: &[EditRequest],
    opts: &RunOptions,
    store: &mut RunStore,
    obs: &mut dyn Observer,
) -> Result<()> {
    if opts.batch_size == 0 {
        return Err(Error::config("--batch-size must be at least 1"));
    }
    if let Some(max) = method.max_batch() {
        if opts.batch_size > max {
            return Err(Error::config(format!(
                "{} edits at most {max} request(s) per call; --batch-size {} is too large",
                method.name(),
                opts.batch_size
            )));
        }
    }
    let all: Vec<usize> = (0..requests.len()).collect();
    let todo = all.iter().filter(|i| !store.cases.contains_key(i)).count();
    obs.phase("edits (batch)", todo);
    // Whole chunks are redone when any of their cases is missing: the edit depends on
    // every request of the chunk.
    for chunk in all.chunks(opts.batch_size) {
        if chunk.iter().all(|i| store.cases.contains_key(i)) {
            continue;
        }
        let (_, records) = edit_and_evaluate(editor, method, ctx, requests, chunk, opts, store)?;
        editor.revert_all();
        ensure_pristine(
            editor,
            &format!("after reverting the batch from case {}", chunk[0]),
        )?;
        put_all(store, records, obs)?;
    }
    Ok(())
}

fn sequential(
    editor: &mut Editor,
    method: &dyn EditMethod,
    ctx: &mut EditContext,
    requests: &[EditRequest],
    opts: &RunOptions,
    store: &mut RunStore,
    obs: &mut dyn Observer,
) -> Result<()> {
    // Resume: rebuild the accumulated model from the edits of the cases already done.
    let done: Vec<usize> = store.cases.keys().copied().collect();
    for &i in &done {
        let refused = store.cases[&i].edit.error.is_some();
        match store.load_edit(i)? {
            Some(edit) if !refused => {
                editor.apply(&edit)?;
            }
            None if refused => {}
            _ => {
                return Err(Error::invalid(format!(
                    "cannot resume this sequential run: the saved edit of case {i} is missing or \
                     inconsistent with its record; start a new run"
                )))
            }
        }
    }
    let todo: Vec<usize> = (0..requests.len())
        .filter(|i| !store.cases.contains_key(i))
        .collect();
    if !todo.is_empty() {
        // New edits change the final model: every after-all value is stale. (Re-written
        // lines are appended; the last line of a case wins when a run is reopened.)
        store.after_all.clear();
    }
    obs.phase("edits (sequential)", todo.len());
    for i in todo {
        let (edit, records) = edit_and_evaluate(editor, method, ctx, requests, &[i], opts, store)?;
        if let Some(edit) = edit {
            store.save_edit(i, &edit)?;
        }
        put_all(store, records, obs)?;
    }
    let rest: Vec<usize> = (0..requests.len())
        .filter(|i| !store.after_all.contains_key(i))
        .collect();
    if !rest.is_empty() {
        obs.phase("evaluation after all edits", rest.len());
        for chunk in rest.chunks(PRE_CHUNK) {
            let reqs: Vec<&EditRequest> = chunk.iter().map(|&i| &requests[i]).collect();
            let pre: Vec<&Metrics> = chunk.iter().map(|i| &store.pre[i]).collect();
            let posts = evaluate(editor.model(), &reqs, Some(&pre), &opts.metrics)?;
            for (&i, m) in chunk.iter().zip(posts) {
                store.put_after_all(i, &requests[i].case_id, m)?;
            }
            obs.advance(chunk.len(), None);
        }
    }
    Ok(())
}
