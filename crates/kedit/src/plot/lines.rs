//! A line-plot panel: one line per named series over integer x (layers), with a legend.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::plot::fonts::FAMILY;
use crate::plot::{draw_err, DrawResult};

pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// (name, y at x = x_start, x_start + x_step, …)
    pub series: Vec<(String, Vec<f64>)>,
    pub x_start: f64,
    pub x_step: f64,
}

/// Distinct colours for up to eight series (then they repeat).
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

impl LinePlot {
    fn y_range(&self) -> (f64, f64) {
        let values = self
            .series
            .iter()
            .flat_map(|(_, v)| v)
            .filter(|v| v.is_finite());
        let (lo, hi) = values.fold((0f64, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let pad = ((hi - lo) * 0.05).max(1e-6);
        (lo - pad, hi + pad)
    }

    pub(crate) fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        text: bool,
    ) -> DrawResult {
        let n = self.series.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        if n == 0 {
            return Ok(());
        }
        let (lo, hi) = self.y_range();
        let mut builder = ChartBuilder::on(area);
        builder.margin(10);
        if text {
            builder
                .caption(&self.title, (FAMILY, 15))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = builder
            .build_cartesian_2d(
                self.x_start..self.x_start + self.x_step * (n - 1).max(1) as f64,
                lo..hi,
            )
            .map_err(draw_err)?;
        if text {
            chart
                .configure_mesh()
                .x_desc(&self.x_label)
                .y_desc(&self.y_label)
                .x_labels(n.min(16))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.3}"))
                .label_style((FAMILY, 12))
                .axis_desc_style((FAMILY, 13))
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(draw_err)?;
        }
        for (i, (name, ys)) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let points = ys.iter().enumerate().filter(|(_, y)| y.is_finite());
            let line = chart
                .draw_series(LineSeries::new(
                    points.map(|(x, &y)| (self.x_start + self.x_step * x as f64, y)),
                    colour.stroke_width(2),
                ))
                .map_err(draw_err)?;
            if text {
                line.label(name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            }
        }
        if text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font((FAMILY, 12))
                .draw()
                .map_err(draw_err)?;
        }
        Ok(())
    }
}
