//! PNG of the training curves (train / validation loss and validation F1 per epoch), drawn with
//! plotters; axis text appears when a system font is found (`geolife_metrics::plot`), otherwise
//! lines only.

use std::path::Path;

use geolife_metrics::plot::{FAMILY, font_available};
use plotters::prelude::*;

use crate::checkpoint::EpochMetrics;

/// Two panels: losses (train blue, validation red) and validation F1@best-K (green), by epoch.
/// Written to a temporary name and renamed.
pub fn plot_curves(path: &Path, history: &[EpochMetrics]) -> Result<(), String> {
    if history.is_empty() {
        return Err("no epochs to plot".into());
    }
    geolife_io::atomic::write_via_path(path, ".png", |tmp| draw(tmp, history))
}

#[allow(clippy::type_complexity)]
fn draw(path: &Path, h: &[EpochMetrics]) -> Result<(), String> {
    let text = font_available();
    let root = BitMapBackend::new(path, (1000, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(500);
    let x_max = h.len() as f64 + 0.5;
    let losses = h.iter().flat_map(|r| [r.train_loss, r.val_loss]);
    let l_max = losses.filter(|v| v.is_finite()).fold(1e-6, f64::max) * 1.1;
    let f_max = h
        .iter()
        .map(|r| r.val_f1)
        .filter(|v| v.is_finite())
        .fold(1e-3, f64::max)
        * 1.1;
    let panels: [(&DrawingArea<_, _>, &str, f64, Vec<(Vec<f64>, RGBColor)>); 2] = [
        (
            &left,
            "loss (train blue, val red)",
            l_max,
            vec![
                (h.iter().map(|r| r.train_loss).collect(), BLUE),
                (h.iter().map(|r| r.val_loss).collect(), RED),
            ],
        ),
        (
            &right,
            "validation samples-F1 @ best K",
            f_max,
            vec![(h.iter().map(|r| r.val_f1).collect(), GREEN)],
        ),
    ];
    for (area, title, y_max, series) in panels {
        let mut b = ChartBuilder::on(area);
        b.margin(15);
        if text {
            b.caption(title, (FAMILY, 18))
                .x_label_area_size(30)
                .y_label_area_size(50);
        }
        let mut chart = b
            .build_cartesian_2d(0.5f64..x_max, 0f64..y_max)
            .map_err(|e| e.to_string())?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("epoch").label_style((FAMILY, 12));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| e.to_string())?;
        for (ys, color) in series {
            let pts: Vec<(f64, f64)> = ys
                .iter()
                .enumerate()
                .map(|(i, &y)| ((i + 1) as f64, y))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}

/// Grouped bars: one group per label, one bar per series (`(name, colour, values)`; a `None`
/// value draws no bar). For the pipeline's comparison of members and their ensemble.
pub fn plot_bars(
    path: &Path,
    title: &str,
    labels: &[String],
    series: &[(&str, RGBColor, Vec<Option<f64>>)],
) -> Result<(), String> {
    if labels.is_empty() || series.is_empty() {
        return Err("nothing to plot".into());
    }
    geolife_io::atomic::write_via_path(path, ".png", |tmp| draw_bars(tmp, title, labels, series))
}

fn draw_bars(
    path: &Path,
    title: &str,
    labels: &[String],
    series: &[(&str, RGBColor, Vec<Option<f64>>)],
) -> Result<(), String> {
    let text = font_available();
    let width = (160 * labels.len() as u32).clamp(480, 1600);
    let root = BitMapBackend::new(path, (width, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let y_max = series
        .iter()
        .flat_map(|s| s.2.iter().flatten())
        .filter(|v| v.is_finite())
        .fold(1e-3f64, |a, &b| a.max(b))
        * 1.15;
    let mut b = ChartBuilder::on(&root);
    b.margin(15);
    if text {
        b.caption(title, (FAMILY, 18))
            .x_label_area_size(40)
            .y_label_area_size(50);
    }
    let n = labels.len() as f64;
    let mut chart = b
        .build_cartesian_2d(0f64..n, 0f64..y_max)
        .map_err(|e| e.to_string())?;
    // Group i spans [i, i + 1): its label sits at the tick i + 0.5.
    let label_at = |x: &f64| {
        let i = x.floor() as usize;
        if (x - i as f64 - 0.5).abs() < 1e-6 && i < labels.len() {
            labels[i].clone()
        } else {
            String::new()
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh();
    if text {
        mesh.x_labels(2 * labels.len() + 1)
            .x_label_formatter(&label_at)
            .label_style((FAMILY, 12));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| e.to_string())?;
    let k = series.len() as f64;
    let bar = 0.8 / k;
    for (j, (name, colour, values)) in series.iter().enumerate() {
        let bars = values.iter().enumerate().filter_map(|(i, v)| {
            v.filter(|v| v.is_finite()).map(|v| {
                let x0 = i as f64 + 0.1 + j as f64 * bar;
                Rectangle::new([(x0, 0.0), (x0 + bar * 0.95, v)], colour.filled())
            })
        });
        let drawn = chart.draw_series(bars).map_err(|e| e.to_string())?;
        if text {
            drawn.label(*name).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FAMILY, 12))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}
