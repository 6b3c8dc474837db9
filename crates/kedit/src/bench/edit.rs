//! How long a method takes per edit, phase by phase, and how much memory it peaks at.

use std::time::Instant;

use serde::Serialize;

use crate::bench::median;
use crate::editor::Editor;
use crate::error::Result;
use crate::experiment::efficiency::{peak_rss_bytes, reset_peak_rss};
use crate::methods::{EditContext, EditMethod};
use crate::request::EditRequest;

#[derive(Clone, Debug, Serialize)]
pub struct EditTiming {
    /// The call's first case (and how many more it edited, when more than one).
    pub case_id: String,
    pub requests: usize,
    pub seconds: f64,
    pub phases: Vec<(String, f64)>,
    pub notes: Vec<(String, String)>,
    pub peak_rss_bytes: Option<u64>,
    pub error: Option<String>,
    /// The method's step-by-step log (not saved).
    #[serde(skip)]
    pub log: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EditBench {
    pub method: String,
    /// Requests, edited `batch_size` to a method call.
    pub n: usize,
    pub batch_size: usize,
    /// Median over the edits after the first (the first also fills the caches); `None` with
    /// a single edit.
    pub median_seconds: Option<f64>,
    pub first_seconds: f64,
    /// Median seconds per phase, over the edits after the first.
    pub median_phases: Vec<(String, f64)>,
    pub max_peak_rss_bytes: Option<u64>,
    pub edits: Vec<EditTiming>,
}

/// Computes one edit per `batch_size` requests (the model is not changed) and times each.
pub fn edit_speed(
    system: &Editor,
    method: &dyn EditMethod,
    requests: &[EditRequest],
    batch_size: usize,
    ctx: &EditContext,
    mut progress: impl FnMut(&EditTiming),
) -> Result<EditBench> {
    let mut edits = Vec::new();
    for batch in requests.chunks(batch_size.max(1)) {
        reset_peak_rss();
        let t = Instant::now();
        let outcome = method.compute(system, batch, ctx);
        let seconds = t.elapsed().as_secs_f64();
        let (report, error) = match outcome {
            Ok(c) => (c.report, None),
            Err(e) => (Default::default(), Some(e.to_string())),
        };
        let timing = EditTiming {
            case_id: match batch.len() {
                1 => batch[0].case_id.clone(),
                n => format!("{} (+{})", batch[0].case_id, n - 1),
            },
            requests: batch.len(),
            seconds,
            phases: report.timings,
            notes: report.notes,
            peak_rss_bytes: peak_rss_bytes(),
            error,
            log: report.log,
        };
        progress(&timing);
        edits.push(timing);
    }
    // The first call also fills the caches; when it is the only one, it is all there is.
    let rest: Vec<&EditTiming> = match edits.len() {
        1 => edits.iter().collect(),
        _ => edits.iter().skip(1).collect(),
    };
    let mut names: Vec<String> = Vec::new();
    for e in &rest {
        for (p, _) in &e.phases {
            if !names.contains(p) {
                names.push(p.clone());
            }
        }
    }
    let median_phases = names
        .into_iter()
        .map(|p| {
            let v = rest
                .iter()
                .map(|e| {
                    e.phases
                        .iter()
                        .find(|(n, _)| *n == p)
                        .map_or(0.0, |(_, s)| *s)
                })
                .collect();
            (p, median(v).expect("a phase is named by some edit"))
        })
        .collect();
    Ok(EditBench {
        method: method.name().to_string(),
        n: requests.len(),
        batch_size: batch_size.max(1),
        median_seconds: median(
            rest.iter()
                .skip(usize::from(edits.len() == 1))
                .map(|e| e.seconds)
                .collect(),
        ),
        first_seconds: edits.first().map_or(f64::NAN, |e| e.seconds),
        median_phases,
        max_peak_rss_bytes: edits.iter().filter_map(|e| e.peak_rss_bytes).max(),
        edits,
    })
}
