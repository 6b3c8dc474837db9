//! A heatmap panel: rows labelled (tokens, top to bottom), columns numbered (layers),
//! colour by value, with a colour bar — the layout of ROME's causal-tracing figures.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::plot::fonts::FAMILY;
use crate::plot::{draw_err, DrawResult};

/// Sequential colour maps after matplotlib's (ROME: hidden Purples, MLP Greens, attention
/// Reds), as three stops interpolated linearly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Palette {
    Purples,
    Greens,
    Reds,
}

impl Palette {
    fn stops(self) -> [(u8, u8, u8); 3] {
        match self {
            Palette::Purples => [(252, 251, 253), (158, 154, 200), (63, 0, 125)],
            Palette::Greens => [(247, 252, 245), (116, 196, 118), (0, 68, 27)],
            Palette::Reds => [(255, 245, 240), (251, 106, 74), (103, 0, 13)],
        }
    }

    /// The colour at `x` ∈ [0, 1] (clamped).
    pub fn colour(self, x: f64) -> RGBColor {
        let x = if x.is_finite() {
            x.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let [a, b, c] = self.stops();
        let (from, to, f) = if x < 0.5 {
            (a, b, x * 2.0)
        } else {
            (b, c, x * 2.0 - 1.0)
        };
        let mix = |p: u8, q: u8| (p as f64 + (q as f64 - p as f64) * f).round() as u8;
        RGBColor(mix(from.0, to.0), mix(from.1, to.1), mix(from.2, to.2))
    }
}

pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    /// Shown under the colour bar ("p(Paris)").
    pub value_label: String,
    pub row_labels: Vec<String>,
    /// `[rows][columns]`.
    pub values: Vec<Vec<f64>>,
    pub palette: Palette,
    /// The value range the colours span (ROME: from the corrupted score to the maximum).
    pub range: (f64, f64),
    /// Label every `x_tick_every`-th column.
    pub x_tick_every: usize,
}

const BAR_WIDTH: u32 = 90;

impl Heatmap {
    fn scaled(&self, v: f64) -> f64 {
        let (lo, hi) = self.range;
        if hi > lo {
            (v - lo) / (hi - lo)
        } else {
            0.0
        }
    }

    pub(crate) fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        text: bool,
    ) -> DrawResult {
        let rows = self.values.len();
        let cols = self.values.first().map_or(0, Vec::len);
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let (w, _) = area.dim_in_pixel();
        let (main, bar) = area.split_horizontally(w.saturating_sub(BAR_WIDTH));
        let label_width = if text {
            let longest = self
                .row_labels
                .iter()
                .map(|l| l.chars().count())
                .max()
                .unwrap_or(0);
            (longest as u32 * 8 + 14).min(w / 3)
        } else {
            4
        };
        let mut builder = ChartBuilder::on(&main);
        builder.margin(6).margin_top(if text { 6 } else { 12 });
        if text {
            builder
                .caption(&self.title, (FAMILY, 15))
                .x_label_area_size(38)
                .y_label_area_size(label_width);
        }
        // Cells are centred on integers; the y axis runs top to bottom.
        let x_range = -0.5..cols as f64 - 0.5;
        let y_range = rows as f64 - 0.5..-0.5;
        let mut chart = builder
            .build_cartesian_2d(x_range, y_range)
            .map_err(draw_err)?;
        chart
            .draw_series(self.values.iter().enumerate().flat_map(|(r, row)| {
                row.iter().enumerate().map(move |(c, &v)| {
                    let (x, y) = (c as f64, r as f64);
                    Rectangle::new(
                        [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                        self.palette.colour(self.scaled(v)).filled(),
                    )
                })
            }))
            .map_err(draw_err)?;
        if text {
            let every = self.x_tick_every.max(1);
            chart
                .configure_mesh()
                .disable_mesh()
                .disable_y_axis()
                .x_labels(cols)
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) % every == 0 {
                        format!("{i:.0}")
                    } else {
                        String::new()
                    }
                })
                .x_desc(&self.x_label)
                .label_style((FAMILY, 12))
                .axis_desc_style((FAMILY, 13))
                .draw()
                .map_err(draw_err)?;
            let style = TextStyle::from((FAMILY, 13).into_font())
                .pos(Pos::new(HPos::Right, VPos::Center))
                .color(&BLACK);
            // backend_coord is absolute; draw in absolute coordinates too.
            let screen = main.use_screen_coord();
            for (r, label) in self.row_labels.iter().enumerate() {
                let (x, y) = chart.backend_coord(&(-0.5, r as f64));
                screen
                    .draw(&Text::new(label.clone(), (x - 6, y), style.clone()))
                    .map_err(draw_err)?;
            }
        }
        self.draw_bar(&bar, text)
    }

    fn draw_bar<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        text: bool,
    ) -> DrawResult {
        let (lo, hi) = self.range;
        let hi = if hi > lo { hi } else { lo + 1e-9 };
        let mut builder = ChartBuilder::on(area);
        builder
            .margin_top(if text { 30 } else { 12 })
            .margin_bottom(if text { 44 } else { 12 });
        builder.margin_left(10).margin_right(4);
        if text {
            builder.right_y_label_area_size(44);
        }
        let mut chart = builder
            .build_cartesian_2d(0f64..1f64, lo..hi)
            .map_err(draw_err)?;
        let steps = 100;
        chart
            .draw_series((0..steps).map(|i| {
                let a = lo + (hi - lo) * i as f64 / steps as f64;
                let b = lo + (hi - lo) * (i + 1) as f64 / steps as f64;
                Rectangle::new(
                    [(0.0, a), (1.0, b)],
                    self.palette
                        .colour((i as f64 + 0.5) / steps as f64)
                        .filled(),
                )
            }))
            .map_err(draw_err)?;
        if text {
            chart
                .configure_mesh()
                .disable_mesh()
                .disable_x_axis()
                .y_labels(5)
                .y_label_formatter(&|v| format!("{v:.2}"))
                .label_style((FAMILY, 11))
                .draw()
                .map_err(draw_err)?;
            let (x, y) = chart.backend_coord(&(0.5, lo));
            let style = TextStyle::from((FAMILY, 13).into_font())
                .pos(Pos::new(HPos::Center, VPos::Top))
                .color(&BLACK);
            area.use_screen_coord()
                .draw(&Text::new(self.value_label.clone(), (x, y + 10), style))
                .map_err(draw_err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_spans_light_to_dark() {
        let light = Palette::Greens.colour(0.0);
        let dark = Palette::Greens.colour(1.0);
        assert_eq!((light.0, light.1, light.2), (247, 252, 245));
        assert_eq!((dark.0, dark.1, dark.2), (0, 68, 27));
        let nan = Palette::Reds.colour(f64::NAN);
        assert_eq!((nan.0, nan.1, nan.2), (255, 245, 240));
    }
}
