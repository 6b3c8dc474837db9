//! The loop every trainer here runs: steps until `max_iters` or until validation has not
//! improved for `patience` validations; a validation every `val_every` steps and at the last
//! step, each given the mean training loss since the one before and the seconds this sitting
//! has run (a resumed run adds them to the seconds it had before).

use std::time::Instant;

use crate::error::Result;
use crate::progress::Progress;

/// When a trainer validates and when it stops.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub max_iters: usize,
    pub val_every: usize,
    pub patience: usize,
}

/// What one validation reports: the progress bar's status and the log's line.
pub(crate) struct Report {
    pub status: String,
    pub log: String,
}

/// Runs `trainer` to the end of `schedule`. `counts` gives (steps done, staleness in the
/// unit `patience` counts); `step` runs one step and counts it; `validate` validates,
/// records the result (and checkpoints) and says what to show.
pub(crate) fn run<T: ?Sized>(
    trainer: &mut T,
    schedule: Schedule,
    progress: &mut dyn Progress,
    counts: impl Fn(&T) -> (usize, usize),
    mut step: impl FnMut(&mut T) -> Result<f64>,
    mut validate: impl FnMut(&mut T, f64, f64) -> Result<Report>,
) -> Result<()> {
    let started = Instant::now();
    let mut losses = Vec::new();
    loop {
        let (done, stale) = counts(trainer);
        if done >= schedule.max_iters || stale >= schedule.patience {
            return Ok(());
        }
        losses.push(step(trainer)?);
        progress.advance(1);
        let done = counts(trainer).0;
        if done % schedule.val_every == 0 || done == schedule.max_iters {
            let train_loss = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
            losses.clear();
            let report = validate(trainer, train_loss, started.elapsed().as_secs_f64())?;
            progress.status(&report.status);
            progress.log(&report.log);
        }
    }
}
