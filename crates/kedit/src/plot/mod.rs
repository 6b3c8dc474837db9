//! Pictures of results (causal-tracing heatmaps, locate curves) as PNG and SVG.
//!
//! A [`Figure`] is a grid of panels drawn with `plotters` onto any backend. Text needs a
//! font: DejaVu Sans is loaded from the system (see [`fonts`]). When no font can be loaded
//! or text rendering fails, the picture is still written, without text.

pub mod fonts;
pub mod heatmap;
pub mod lines;

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::fsio::write_atomic;
pub use heatmap::{Heatmap, Palette};
pub use lines::LinePlot;

pub enum Panel {
    Heatmap(Heatmap),
    Lines(LinePlot),
}

impl Panel {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, text: bool) -> DrawResult {
        match self {
            Panel::Heatmap(h) => h.draw(area, text),
            Panel::Lines(l) => l.draw(area, text),
        }
    }
}

/// Drawing errors carry a backend's type; they only decide whether to retry without text.
pub type DrawResult = std::result::Result<(), String>;

pub(crate) fn draw_err<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// Panels side by side (`columns` per row), each `panel_size` pixels.
pub struct Figure {
    pub panels: Vec<Panel>,
    pub columns: usize,
    pub panel_size: (u32, u32),
}

/// The files a figure was written to.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Written {
    pub png: PathBuf,
    pub svg: PathBuf,
    /// False when the picture had to be drawn without text.
    pub with_text: bool,
}

impl Figure {
    pub fn single(panel: Panel, size: (u32, u32)) -> Self {
        Figure {
            panels: vec![panel],
            columns: 1,
            panel_size: size,
        }
    }

    pub fn size(&self) -> (u32, u32) {
        let cols = self.columns.clamp(1, self.panels.len().max(1));
        let rows = self.panels.len().div_ceil(cols).max(1);
        (
            self.panel_size.0 * cols as u32,
            self.panel_size.1 * rows as u32,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, text: bool) -> DrawResult {
        root.fill(&WHITE).map_err(draw_err)?;
        let cols = self.columns.clamp(1, self.panels.len().max(1));
        let rows = self.panels.len().div_ceil(cols).max(1);
        let areas = root.split_evenly((rows, cols));
        for (panel, area) in self.panels.iter().zip(&areas) {
            panel.draw(area, text)?;
        }
        root.present().map_err(draw_err)
    }

    fn svg_drawn(&self, text: bool) -> std::result::Result<String, String> {
        let mut out = String::new();
        self.draw(
            &SVGBackend::with_string(&mut out, self.size()).into_drawing_area(),
            text,
        )?;
        Ok(out)
    }

    fn pixels_drawn(&self, text: bool) -> std::result::Result<Vec<u8>, String> {
        let size = self.size();
        let mut out = vec![255u8; size.0 as usize * size.1 as usize * 3];
        self.draw(
            &BitMapBackend::with_buffer(&mut out, size).into_drawing_area(),
            text,
        )?;
        Ok(out)
    }

    /// Drawn with text when a font is available, else (or if that fails) without; and
    /// whether it has text.
    fn drawn<T>(
        &self,
        draw: impl Fn(&Self, bool) -> std::result::Result<T, String>,
    ) -> std::result::Result<(T, bool), String> {
        if fonts::available() {
            if let Ok(with_text) = draw(self, true) {
                return Ok((with_text, true));
            }
        }
        Ok((draw(self, false)?, false))
    }

    /// Writes `<stem>.png` and `<stem>.svg` atomically.
    pub fn write(&self, stem: &Path) -> Result<Written> {
        let png = stem.with_extension("png");
        let svg = stem.with_extension("svg");
        let failed = |path: &Path, e: String| Error::model(path, format!("cannot draw: {e}"));
        let (svg_text, svg_with_text) = self.drawn(Self::svg_drawn).map_err(|e| failed(&svg, e))?;
        write_atomic(&svg, svg_text.as_bytes())?;
        let (pixels, png_with_text) = self
            .drawn(Self::pixels_drawn)
            .map_err(|e| failed(&png, e))?;
        let bytes = encode_png(&pixels, self.size()).map_err(|e| failed(&png, e))?;
        write_atomic(&png, &bytes)?;
        Ok(Written {
            png,
            svg,
            with_text: svg_with_text && png_with_text,
        })
    }
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure() -> Figure {
        let heatmap = Heatmap {
            title: "t".into(),
            x_label: "x".into(),
            value_label: "p".into(),
            row_labels: vec!["a".into(), "b*".into()],
            values: vec![vec![0.1, 0.5, 0.9], vec![0.2, 0.4, 0.0]],
            palette: Palette::Greens,
            range: (0.0, 0.9),
            x_tick_every: 1,
        };
        let lines = LinePlot {
            title: "t".into(),
            x_label: "layer".into(),
            y_label: "AIE".into(),
            x_start: 0.0,
            x_step: 1.0,
            series: vec![("one".into(), vec![0.0, 0.3, -0.1])],
        };
        Figure {
            panels: vec![Panel::Heatmap(heatmap), Panel::Lines(lines)],
            columns: 2,
            panel_size: (300, 200),
        }
    }

    #[test]
    fn pictures_without_text_are_still_drawn() {
        let fig = figure();
        assert_eq!(fig.size(), (600, 200));
        let svg = fig.svg_drawn(false).unwrap();
        assert!(svg.contains("<svg") && svg.contains("<rect") && !svg.contains("<text"));
        let pixels = fig.pixels_drawn(false).unwrap();
        assert_eq!(pixels.len(), 600 * 200 * 3);
        assert!(pixels.iter().any(|&p| p < 200), "something is drawn");
        let png = encode_png(&pixels, fig.size()).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
    }
}
