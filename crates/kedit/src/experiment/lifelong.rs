//! The lifelong table (the WISE paper's shape): sequential runs of T = 1, 10, 100, 1000
//! edits, each evaluated after all its edits, collected from run directories named
//! `<method>-T<T>` — as JSON, a markdown table and one picture of the three metrics
//! against T.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::experiment::report::RunSummary;
use crate::experiment::summary::Scores;
use crate::fsio::write_atomic;
use crate::plot::{Figure, LinePlot, Panel, Written};

/// One run: a method after `t` sequential edits.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LifelongCell {
    pub method: String,
    pub t: usize,
    /// Every streamed case, evaluated after all `t` edits.
    pub after_all: Scores,
    pub refused: usize,
    pub seconds_per_edit: Option<f64>,
}

/// The finished runs under `dir` (sub-directories `<method>-T<T>` holding a
/// `summary.json` of a sequential run), by method, then T. Directories of another name or
/// without a summary are passed over; a summary that does not parse is an error.
pub fn collect(dir: &Path) -> Result<BTreeMap<String, Vec<LifelongCell>>> {
    let mut out: BTreeMap<String, Vec<LifelongCell>> = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((method, t)) = name
            .rsplit_once("-T")
            .and_then(|(m, t)| t.parse::<usize>().ok().map(|t| (m.to_string(), t)))
        else {
            continue;
        };
        let summary_path = path.join("summary.json");
        let Ok(text) = std::fs::read_to_string(&summary_path) else {
            continue;
        };
        let summary: RunSummary = serde_json::from_str(&text)
            .map_err(|e| Error::data(&summary_path, format!("not a run summary: {e}")))?;
        let Some(after_all) = summary.after_all_edits else {
            return Err(Error::data(
                &summary_path,
                "has no `after_all_edits`: not a sequential run",
            ));
        };
        out.entry(method.clone()).or_default().push(LifelongCell {
            method,
            t,
            after_all,
            refused: summary.refused,
            seconds_per_edit: summary.seconds_per_edit,
        });
    }
    for cells in out.values_mut() {
        cells.sort_by_key(|c| c.t);
    }
    Ok(out)
}

/// Adds the cells of an earlier table (`<stem>.json` as [`write`] wrote it) for which
/// `runs` has no run of the same method and T — a table whose runs were made on different
/// machines, or whose run directories are gone. Returns how many cells were kept.
pub fn keep(runs: &mut BTreeMap<String, Vec<LifelongCell>>, table: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(table).map_err(|e| Error::io(table, e))?;
    let earlier: BTreeMap<String, Vec<LifelongCell>> = serde_json::from_str(&text)
        .map_err(|e| Error::data(table, format!("not a lifelong table: {e}")))?;
    let mut kept = 0;
    for (method, cells) in earlier {
        for cell in cells {
            if cell.method != method {
                return Err(Error::data(
                    table,
                    format!("a cell of `{method}` names the method `{}`", cell.method),
                ));
            }
            let row = runs.entry(method.clone()).or_default();
            if row.iter().all(|c| c.t != cell.t) {
                row.push(cell);
                kept += 1;
            }
        }
    }
    for cells in runs.values_mut() {
        cells.sort_by_key(|c| c.t);
    }
    Ok(kept)
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{:.2}", v))
}

/// The table: a row per method, Rel / Gen / Loc (fractions, as the WISE paper prints them)
/// for each T that some method has.
pub fn markdown(runs: &BTreeMap<String, Vec<LifelongCell>>) -> String {
    let mut ts: Vec<usize> = runs.values().flatten().map(|c| c.t).collect();
    ts.sort_unstable();
    ts.dedup();
    let mut s = String::from("| method |");
    for t in &ts {
        s.push_str(&format!(" T = {t} Rel | Gen | Loc |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(3 * ts.len()));
    s.push('\n');
    for (method, cells) in runs {
        s.push_str(&format!("| {method} |"));
        for t in &ts {
            match cells.iter().find(|c| c.t == *t) {
                Some(c) => s.push_str(&format!(
                    " {} | {} | {} |",
                    pct(c.after_all.reliability),
                    pct(c.after_all.generalization),
                    pct(c.after_all.locality)
                )),
                None => s.push_str(" – | – | – |"),
            }
        }
        s.push('\n');
    }
    s
}

/// Three panels (reliability, generalization, locality) against log₁₀ T, a line per method.
pub fn figure(runs: &BTreeMap<String, Vec<LifelongCell>>) -> Option<Figure> {
    let max_t = runs.values().flatten().map(|c| c.t).max()?;
    let decades = (max_t as f64).log10().round() as usize;
    let metric = |f: fn(&Scores) -> Option<f64>| -> Vec<(String, Vec<f64>)> {
        runs.iter()
            .map(|(method, cells)| {
                let ys = (0..=decades)
                    .map(|d| {
                        cells
                            .iter()
                            .find(|c| c.t == 10usize.pow(d as u32))
                            .and_then(|c| f(&c.after_all))
                            .unwrap_or(f64::NAN)
                    })
                    .collect();
                (method.clone(), ys)
            })
            .collect()
    };
    let panel = |name: &str, f: fn(&Scores) -> Option<f64>| {
        Panel::Lines(LinePlot {
            title: format!("{name} after all T edits"),
            x_label: "log10 T (sequential edits)".into(),
            y_label: name.into(),
            series: metric(f),
            x_start: 0.0,
            x_step: 1.0,
        })
    };
    Some(Figure {
        panels: vec![
            panel("reliability", |s| s.reliability),
            panel("generalization", |s| s.generalization),
            panel("locality", |s| s.locality),
        ],
        columns: 3,
        panel_size: (520, 400),
    })
}

/// Writes `<stem>.json`, `<stem>.md` and the picture `<stem>.png`/`.svg`.
pub fn write(stem: &Path, runs: &BTreeMap<String, Vec<LifelongCell>>) -> Result<Option<Written>> {
    let json = serde_json::to_string_pretty(runs).expect("cells serialise");
    write_atomic(&stem.with_extension("json"), json.as_bytes())?;
    write_atomic(&stem.with_extension("md"), markdown(runs).as_bytes())?;
    match figure(runs) {
        Some(f) => f.write(stem).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(method: &str, t: usize, rel: f64) -> LifelongCell {
        LifelongCell {
            method: method.into(),
            t,
            after_all: Scores {
                reliability: Some(rel),
                generalization: Some(rel / 2.0),
                locality: Some(1.0),
                ..Default::default()
            },
            refused: 0,
            seconds_per_edit: None,
        }
    }

    #[test]
    fn an_earlier_table_fills_only_the_cells_no_run_here_has() {
        let dir = std::env::temp_dir().join(format!("kedit-lifelong-keep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let earlier = BTreeMap::from([
            (
                "rome".to_string(),
                vec![cell("rome", 1, 0.1), cell("rome", 100, 0.4)],
            ),
            ("wise".to_string(), vec![cell("wise", 10, 0.9)]),
        ]);
        write(&dir.join("t"), &earlier).unwrap();
        let mut runs = BTreeMap::from([("rome".to_string(), vec![cell("rome", 1, 1.0)])]);
        assert_eq!(keep(&mut runs, &dir.join("t.json")).unwrap(), 2);
        let rome: Vec<(usize, Option<f64>)> = runs["rome"]
            .iter()
            .map(|c| (c.t, c.after_all.reliability))
            .collect();
        assert_eq!(rome, vec![(1, Some(1.0)), (100, Some(0.4))]);
        assert_eq!(runs["wise"].len(), 1);

        std::fs::write(dir.join("bad.json"), "{\"rome\": 3}").unwrap();
        let err = keep(&mut runs, &dir.join("bad.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.json") && err.contains("not a lifelong table"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_table_has_a_row_per_method_and_a_dash_where_a_run_is_missing() {
        let runs = BTreeMap::from([
            (
                "grace".to_string(),
                vec![cell("grace", 1, 1.0), cell("grace", 10, 0.9)],
            ),
            ("rome".to_string(), vec![cell("rome", 1, 0.8)]),
        ]);
        let md = markdown(&runs);
        assert!(
            md.contains("| grace | 1.00 | 0.50 | 1.00 | 0.90 | 0.45 | 1.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| rome | 0.80 | 0.40 | 1.00 | – | – | – |"),
            "{md}"
        );
        let Some(Figure { panels, .. }) = figure(&runs) else {
            panic!("no figure")
        };
        let Panel::Lines(rel) = &panels[0] else {
            panic!()
        };
        assert_eq!(rel.series[1].1[0], 0.8);
        assert!(rel.series[1].1[1].is_nan());
    }
}
