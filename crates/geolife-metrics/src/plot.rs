//! PNG plot of an F1@K curve with plotters' bitmap backend. Text needs a TrueType font: a
//! DejaVu/Liberation font is loaded from the usual system folders if present; without one the
//! curve is drawn without labels rather than failing.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::MetricsError;

/// Font family name registered with plotters by [`font_available`]; every geolife plot draws
/// its text in it.
pub const FAMILY: &str = "geolife-sans";

/// Candidate font files (first found wins).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a system font as [`FAMILY`] once (the first of the usual DejaVu/Liberation/Arial
/// files found); true when text can be drawn.
pub fn font_available() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws `curve[k-1]` = samples-F1 of top-k against k, marking the best K, to a PNG.
/// `title` is shown when a font is available. Writes atomically (temp file, then rename).
pub fn plot_f1_at_k(path: &Path, curve: &[f64], title: &str) -> Result<(), MetricsError> {
    if curve.is_empty() {
        return Err(MetricsError::Plot {
            path: path.to_path_buf(),
            message: "empty F1@K curve".into(),
        });
    }
    geolife_io::atomic::write_via_path(path, ".png", |tmp| draw(tmp, curve, title)).map_err(
        |message| MetricsError::Plot {
            path: path.to_path_buf(),
            message,
        },
    )
}

fn draw(path: &Path, curve: &[f64], title: &str) -> Result<(), String> {
    let text = font_available();
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let k_max = curve.len() as f64;
    let y_max = curve.iter().cloned().fold(0.0f64, f64::max).max(1e-3) * 1.1;
    let (best_k, best_f) = crate::f1::best_k(curve);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(title, (FAMILY, 22))
            .x_label_area_size(40)
            .y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d(0.5f64..k_max + 0.5, 0f64..y_max)
        .map_err(|e| e.to_string())?;
    if text {
        chart
            .configure_mesh()
            .x_desc("K (species kept per survey)")
            .y_desc("samples-F1")
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .draw()
            .map_err(|e| e.to_string())?;
    } else {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_y_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    chart
        .draw_series(LineSeries::new(
            curve.iter().enumerate().map(|(j, &f)| ((j + 1) as f64, f)),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(std::iter::once(Circle::new(
            (best_k as f64, best_f),
            5,
            RED.filled(),
        )))
        .map_err(|e| e.to_string())?;
    if text {
        chart
            .draw_series(std::iter::once(Text::new(
                format!("best K = {best_k}: {best_f:.4}"),
                (best_k as f64 + 0.8, best_f),
                (FAMILY, 15),
            )))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
