//! Pictures of traces (ROME's Figure 1 heatmaps) and of locate runs (Figure 2 curves).

use std::path::Path;

use crate::error::{Error, Result};
use crate::plot::{Figure, Heatmap, LinePlot, Palette, Panel, Written};
use crate::trace::locate::LocateResult;
use crate::trace::{Kind, TraceResult};

fn heatmap(result: &TraceResult, kind: Kind) -> Heatmap {
    let grid = result.grid(kind);
    let top = grid
        .iter()
        .flatten()
        .copied()
        .fold(result.corrupted_prob, f64::max);
    let w = result.options.window;
    let (title, x_label, palette) = match kind {
        Kind::Hidden => (
            "Impact of restoring state after corrupted input".to_string(),
            format!("single restored layer within {}", result.model),
            Palette::Purples,
        ),
        Kind::Mlp => (
            "Impact of restoring MLP after corrupted input".to_string(),
            format!("center of interval of {w} restored MLP layers"),
            Palette::Greens,
        ),
        Kind::Attn => (
            "Impact of restoring Attn after corrupted input".to_string(),
            format!("center of interval of {w} restored Attn layers"),
            Palette::Reds,
        ),
    };
    Heatmap {
        title,
        x_label,
        value_label: format!("p({})", result.answer.trim()),
        row_labels: result.labels(),
        values: grid.clone(),
        palette,
        range: (result.corrupted_prob, top),
        x_tick_every: 5,
    }
}

fn heatmap_size(result: &TraceResult) -> (u32, u32) {
    (600, 110 + 24 * result.tokens.len() as u32)
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Writes `hidden`, `mlp`, `attn` and `trace` (the three side by side) as PNG and SVG.
pub fn write_trace_pictures(result: &TraceResult, dir: &Path) -> Result<Vec<Written>> {
    create_dir(dir)?;
    let size = heatmap_size(result);
    let mut written = Vec::new();
    for kind in Kind::ALL {
        let fig = Figure::single(Panel::Heatmap(heatmap(result, kind)), size);
        written.push(fig.write(&dir.join(kind.name()))?);
    }
    let all = Figure {
        panels: Kind::ALL
            .iter()
            .map(|&k| Panel::Heatmap(heatmap(result, k)))
            .collect(),
        columns: 3,
        panel_size: size,
    };
    written.push(all.write(&dir.join("trace"))?);
    Ok(written)
}

fn curves(result: &LocateResult, kind: Kind) -> Option<LinePlot> {
    let effects = result.kind(kind)?;
    let what = match kind {
        Kind::Hidden => "hidden state (single layer)".to_string(),
        Kind::Mlp => format!("MLP ({} layers)", result.options.window),
        Kind::Attn => format!("attention ({} layers)", result.options.window),
    };
    Some(LinePlot {
        title: format!(
            "Average indirect effect of restoring {what}, {} facts",
            result.traced
        ),
        x_label: match kind {
            Kind::Hidden => "restored layer".into(),
            _ => "center of the restored interval".into(),
        },
        y_label: "AIE on p(answer)".into(),
        x_start: 0.0,
        x_step: 1.0,
        series: effects
            .classes
            .iter()
            .filter(|c| c.facts > 0)
            .map(|c| (c.label.clone(), c.aie.clone()))
            .collect(),
    })
}

/// Writes `locate` (hidden, MLP, attention side by side) and `locate_mlp` as PNG and SVG.
pub fn write_locate_pictures(result: &LocateResult, dir: &Path) -> Result<Vec<Written>> {
    create_dir(dir)?;
    let size = (640, 420);
    let mut written = Vec::new();
    if let Some(mlp) = curves(result, Kind::Mlp) {
        written.push(Figure::single(Panel::Lines(mlp), size).write(&dir.join("locate_mlp"))?);
    }
    let all = Figure {
        panels: Kind::ALL
            .iter()
            .filter_map(|&k| curves(result, k).map(Panel::Lines))
            .collect(),
        columns: 3,
        panel_size: size,
    };
    written.push(all.write(&dir.join("locate"))?);
    Ok(written)
}
