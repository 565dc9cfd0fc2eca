//! The training curves as a PNG: BYOL loss over steps and, when the kNN monitor ran, its top-1
//! accuracy. Drawn with plotters' bitmap backend into memory, encoded with `png`, written
//! atomically (a crash never leaves a half-written plot over the previous one).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::io::write_atomic;
use crate::metrics_log::StepLog;
use crate::{Error, Result};

/// DejaVu Sans Mono (Bitstream Vera licence, see assets/DejaVu-LICENSE.txt): plotters needs a
/// font for any label and the machine may have none.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
const FAMILY: &str = "sans-serif";
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 450;

fn ensure_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // The bundled bytes are a valid TTF; a failure here would only lose the labels.
        let _ = register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::encode("the training plot", e)
}

/// Draws the loss (left) and kNN top-1 (right, if any) of `logs` into `path` (PNG).
pub fn plot_training_curves(logs: &[StepLog], path: &Path) -> Result<()> {
    if logs.is_empty() {
        return Err(Error::Input("no training steps to plot".into()));
    }
    ensure_font();
    let mut rgb = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let knn: Vec<(u64, f64)> = logs
            .iter()
            .filter_map(|l| l.knn_top1.map(|a| (l.step, 100.0 * a)))
            .collect();
        let panels = if knn.is_empty() {
            vec![root]
        } else {
            root.split_evenly((1, 2))
        };
        let first = logs[0].step.saturating_sub(1);
        let last = logs[logs.len() - 1].step.max(first + 1);
        let loss: Vec<(u64, f64)> = logs
            .iter()
            .filter(|l| l.loss.is_finite())
            .map(|l| (l.step, l.loss))
            .collect();
        let (lo, hi) = bounds(loss.iter().map(|p| p.1));
        draw_series(&panels[0], "BYOL loss", "loss", &loss, first..last, lo..hi)?;
        if let Some(panel) = panels.get(1) {
            let (lo, hi) = bounds(knn.iter().map(|p| p.1));
            draw_series(
                panel,
                "kNN top-1 (held out)",
                "%",
                &knn,
                first..last,
                lo..hi,
            )?;
        }
        panels[0].present().map_err(plot_error)?;
    }
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, WIDTH, HEIGHT);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(plot_error)?;
        writer.write_image_data(&rgb).map_err(plot_error)?;
    }
    write_atomic(path, &bytes)
}

/// A value range with a margin; a flat series still gets a visible band.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let margin = ((hi - lo) * 0.05).max(1e-3);
    (lo - margin, hi + margin)
}

fn draw_series<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    points: &[(u64, f64)],
    x: std::ops::Range<u64>,
    y: std::ops::Range<f64>,
) -> Result<()> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x, y)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_label)
        .label_style((FAMILY, 14))
        .draw()
        .map_err(plot_error)?;
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            BLUE.stroke_width(2),
        ))
        .map_err(plot_error)?;
    if points.len() <= 50 {
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))
            .map_err(plot_error)?;
    }
    Ok(())
}
