//! A sequential stream of edits seen call by call: each call's cases scored right after
//! its edit, against the number of edits made so far — the "collapse curve" of lifelong
//! editing (AlphaEdit's figures), as JSON and as a picture.

use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::evaluate::metrics::Metrics;
use crate::experiment::summary::{mean, summarize, Scores};
use crate::experiment::RunStore;
use crate::plot::{Figure, LinePlot, Panel, Written};

/// The scores of one call's cases after its edit.
#[derive(Clone, Debug, Serialize)]
pub struct StreamPoint {
    /// Edits made so far, this call's included.
    pub edits: usize,
    pub scores: Scores,
}

/// One point per call of `batch_size` cases, in the stream's order, for the calls whose
/// cases are all recorded; refused cases count as edits asked for but add no score.
pub fn stream_points(store: &RunStore, cases: usize, batch_size: usize) -> Vec<StreamPoint> {
    let all: Vec<usize> = (0..cases).collect();
    let mut points = Vec::new();
    for chunk in all.chunks(batch_size.max(1)) {
        let Some(records) = chunk
            .iter()
            .map(|i| store.cases.get(i))
            .collect::<Option<Vec<_>>>()
        else {
            break;
        };
        let posts: Vec<&Metrics> = records.iter().filter_map(|r| r.post.as_ref()).collect();
        points.push(StreamPoint {
            edits: chunk[chunk.len() - 1] + 1,
            scores: summarize(&posts),
        });
    }
    points
}

/// Most points a line of the picture gets. A stream of one-edit calls has a point per edit,
/// each a single case scoring 0 or 1: drawn as it is, a thousand of them are a solid band
/// (and the thick strokes' sharp turns spike out of the chart), so consecutive calls are
/// averaged in windows. `stream.json` keeps every call.
const MAX_DRAWN: usize = 50;

/// The series worth drawing: CounterFact's scores when the data has them, else the
/// EasyEdit metrics; fluency in a panel of its own (another scale). With more than
/// [`MAX_DRAWN`] calls, each drawn point is the mean of `window` consecutive calls, and a
/// last, incomplete window is left out.
pub fn stream_figure(title: &str, points: &[StreamPoint]) -> Option<Figure> {
    let first = points.first()?;
    let window = points.len().div_ceil(MAX_DRAWN).max(1);
    let drawn = points.len() / window;
    let step = first.edits as f64 * window as f64;
    let pick = |f: &dyn Fn(&Scores) -> Option<f64>| -> Vec<f64> {
        points[..drawn * window]
            .chunks(window)
            .map(|calls| mean(calls.iter().filter_map(|p| f(&p.scores))).unwrap_or(f64::NAN))
            .collect()
    };
    let title = if window == 1 {
        format!("{title}: each call's cases right after its edit")
    } else {
        format!("{title}: right after each edit, mean of every {window} calls")
    };
    let series: Vec<(String, Vec<f64>)> = if first.scores.counterfact.is_some() {
        let cf = |g: fn(&crate::experiment::summary::CounterFactScores) -> Option<f64>| {
            pick(&move |s: &Scores| s.counterfact.as_ref().and_then(g))
        };
        vec![
            ("efficacy".into(), cf(|c| c.efficacy)),
            ("generalization".into(), cf(|c| c.paraphrase)),
            ("specificity".into(), cf(|c| c.neighborhood)),
        ]
    } else {
        vec![
            ("reliability".into(), pick(&|s| s.reliability)),
            ("generalization".into(), pick(&|s| s.generalization)),
            ("locality".into(), pick(&|s| s.locality)),
        ]
    };
    let mut panels = vec![Panel::Lines(LinePlot {
        title,
        x_label: "edits made".into(),
        y_label: "score".into(),
        series,
        x_start: step,
        x_step: step,
    })];
    let fluency = pick(&|s| s.fluency);
    if fluency.iter().any(|f| f.is_finite()) {
        panels.push(Panel::Lines(LinePlot {
            title: "fluency (n-gram entropy)".into(),
            x_label: "edits made".into(),
            y_label: "bits".into(),
            series: vec![("fluency".into(), fluency)],
            x_start: step,
            x_step: step,
        }));
    }
    Some(Figure {
        columns: panels.len(),
        panels,
        panel_size: (640, 420),
    })
}

/// Writes `stream.json` and `stream.png`/`stream.svg` into `dir`.
pub fn write_stream(dir: &Path, title: &str, points: &[StreamPoint]) -> Result<Option<Written>> {
    crate::fsio::write_atomic(
        &dir.join("stream.json"),
        serde_json::to_string_pretty(points)
            .map_err(|e| crate::error::Error::invalid(e.to_string()))?
            .as_bytes(),
    )?;
    match stream_figure(title, points) {
        Some(fig) => fig.write(&dir.join("stream")).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::{CaseRecord, EditOutcome};

    fn record(index: usize, acc: f64) -> CaseRecord {
        let post = Metrics {
            rewrite_acc: vec![acc],
            ..Default::default()
        };
        CaseRecord {
            index,
            case_id: index.to_string(),
            prompt: String::new(),
            target_new: String::new(),
            pre: Metrics::default(),
            post: Some(post),
            edit: EditOutcome::default(),
            same_subject: Vec::new(),
        }
    }

    #[test]
    fn points_follow_the_calls_and_stop_at_the_first_unfinished_one() {
        let mut store = RunStore::in_memory();
        for (i, acc) in [1.0, 0.5, 0.0, 1.0, 1.0].into_iter().enumerate() {
            if i != 4 {
                store.put_case(record(i, acc)).unwrap();
            }
        }
        let points = stream_points(&store, 6, 2);
        let edits: Vec<usize> = points.iter().map(|p| p.edits).collect();
        assert_eq!(edits, vec![2, 4]);
        assert_eq!(points[0].scores.reliability, Some(0.75));
        assert_eq!(points[1].scores.reliability, Some(0.5));
        let fig = stream_figure("test", &points).unwrap();
        assert_eq!(fig.panels.len(), 1, "no fluency, no fluency panel");
    }

    #[test]
    fn a_long_stream_of_single_edits_is_drawn_as_window_means() {
        let mut store = RunStore::in_memory();
        // 1,010 one-edit calls: reliability 1 for the first 500, then 0.
        for i in 0..1010 {
            store
                .put_case(record(i, if i < 500 { 1.0 } else { 0.0 }))
                .unwrap();
        }
        let points = stream_points(&store, 1010, 1);
        assert_eq!(points.len(), 1010);
        let fig = stream_figure("test", &points).unwrap();
        let Panel::Lines(plot) = &fig.panels[0] else {
            panic!("a line panel");
        };
        // Windows of 21 calls: 48 whole ones drawn, the last 2 calls left out.
        assert_eq!(plot.x_start, 21.0);
        assert_eq!(plot.x_step, 21.0);
        let reliability = &plot.series[0].1;
        assert_eq!(reliability.len(), 48);
        assert_eq!(reliability[0], 1.0);
        // Window 23 holds calls 483..504: 17 of them before call 500.
        assert!((reliability[23] - 17.0 / 21.0).abs() < 1e-12);
        assert_eq!(reliability[47], 0.0);
        assert!(plot.title.contains("mean of every 21 calls"));
    }
}
