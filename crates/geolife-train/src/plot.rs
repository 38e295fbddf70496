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
    geolife_data::atomic::write_via_path(path, ".png", |tmp| draw(tmp, history))
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
