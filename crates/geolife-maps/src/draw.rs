//! Draws a [`Picture`] (raster layer, title, axes in degrees, colour bar or legend, optional
//! rings) with plotters, to PNG and optionally SVG, each written atomically. Text needs a system
//! font ([`geolife_metrics::plot::font_available`]); without one the map is drawn without text.

use std::path::{Path, PathBuf};

use geolife_metrics::plot::{FAMILY, font_available};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

use crate::MapError;
use crate::raster::{Raster, Scale, colour};

/// Left margin (y labels), top (title and subtitle), right (key) and bottom (x labels), pixels.
const LEFT: u32 = 80;
const TOP: u32 = 76;
const RIGHT: u32 = 230;
const BOTTOM: u32 = 60;
/// Colour of the rings marking known presences.
pub const RING: RGBColor = RGBColor(228, 26, 28);

/// The key of a map.
#[derive(Debug, Clone)]
pub enum Key {
    /// A colour bar for a continuous value.
    Bar { label: String, scale: Scale },
    /// Categories and their colours.
    Legend(Vec<(String, RGBColor)>),
}

/// Everything a map shows.
pub struct Picture {
    pub title: String,
    /// Second line: the survey count and what the map summarises.
    pub subtitle: String,
    pub raster: Raster,
    pub key: Key,
    /// Hollow circles over the raster (lon, lat): known presences of a species.
    pub rings: Vec<(f64, f64)>,
}

/// Where things landed in the image, in pixels from its top-left corner: lets a caller (and
/// the tests) find a survey's pixel and the colour of a value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Layout {
    /// Image width and height.
    pub image: [u32; 2],
    /// Plot area `[x0, y0, x1, y1]`, end exclusive: longitude `extent[0]` is at x0, latitude
    /// `extent[3]` at y0; a point falls at `x0 + floor((lon - lon_min) / (lon_max - lon_min) *
    /// (x1 - x0))` and likewise for y from the top.
    pub plot: [i32; 4],
    /// `[lon_min, lon_max, lat_min, lat_max]`, degrees.
    pub extent: [f64; 4],
    /// Cells of the raster are `cell_px` square pixels, counted from the plot area's corner.
    pub cell_px: u32,
    /// The colour bar of a continuous map.
    pub colour_bar: Option<ColourBar>,
    /// The swatches of a categorical map.
    pub legend: Vec<LegendKey>,
}

/// A colour bar: its top row has the colour of `max`, its bottom row that of `min`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ColourBar {
    /// `[x0, y0, x1, y1]`, end exclusive.
    pub rect: [i32; 4],
    pub min: f64,
    pub max: f64,
    /// Logarithmic (`ln(1 + v)`) rather than linear.
    pub log: bool,
    pub label: String,
}

/// One swatch of a legend.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LegendKey {
    pub label: String,
    pub rgb: [u8; 3],
    /// Centre of the swatch.
    pub at: [i32; 2],
}

/// Writes `pic` to `png` and, with `svg`, to the same name ending in `.svg`; returns the files
/// written and the layout.
pub fn write(pic: &Picture, png: &Path, svg: bool) -> Result<(Vec<PathBuf>, Layout), MapError> {
    let size = image_size(pic);
    let mut layout = None;
    geolife_io::atomic::write_via_path(png, ".png", |tmp| {
        let root = BitMapBackend::new(tmp, size).into_drawing_area();
        layout = Some(draw(&root, pic)?);
        root.present().map_err(|e| e.to_string())
    })
    .map_err(|message| MapError::Draw {
        path: png.to_path_buf(),
        message,
    })?;
    let mut files = vec![png.to_path_buf()];
    if svg {
        let path = png.with_extension("svg");
        geolife_io::atomic::write_via_path(&path, ".svg", |tmp| {
            let root = SVGBackend::new(tmp, size).into_drawing_area();
            draw(&root, pic)?;
            root.present().map_err(|e| e.to_string())
        })
        .map_err(|message| MapError::Draw {
            path: path.clone(),
            message,
        })?;
        files.push(path);
    }
    let layout = layout.ok_or_else(|| MapError::Draw {
        path: png.to_path_buf(),
        message: "nothing was drawn".into(),
    })?;
    Ok((files, layout))
}

fn image_size(pic: &Picture) -> (u32, u32) {
    let f = pic.raster.frame;
    let legend_rows = match &pic.key {
        Key::Legend(items) => items.len() as u32 * 24 + 40,
        Key::Bar { .. } => 0,
    };
    (
        LEFT + f.width + RIGHT,
        TOP + f.height.max(legend_rows).max(160) + BOTTOM,
    )
}

fn e2s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    pic: &Picture,
) -> Result<Layout, String> {
    let text = font_available();
    let f = pic.raster.frame;
    let (iw, ih) = root.dim_in_pixel();
    root.fill(&WHITE).map_err(e2s)?;
    // The plot area: exactly the raster's size, below the title and left of the key.
    let mut builder = ChartBuilder::on(root);
    builder
        .margin_left(10)
        .margin_top(TOP)
        .margin_right(RIGHT)
        .margin_bottom(ih.saturating_sub(TOP + f.height + BOTTOM) + 10)
        .x_label_area_size(BOTTOM - 10)
        .y_label_area_size(LEFT - 10);
    let mut chart = builder
        .build_cartesian_2d(f.lon.0..f.lon.1, f.lat.0..f.lat.1)
        .map_err(e2s)?;
    let degrees = |v: &f64| format!("{v:.0}°");
    let mut mesh = chart.configure_mesh();
    mesh.disable_mesh();
    if text {
        mesh.x_desc("longitude (°E)")
            .y_desc("latitude (°N)")
            .x_label_formatter(&degrees)
            .y_label_formatter(&degrees)
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 15));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(e2s)?;
    let (xr, yr) = chart.plotting_area().get_pixel_range();
    let (x0, y0) = (xr.start, yr.start);
    let (w, h) = (pic.raster.frame.width, pic.raster.frame.height);
    if (xr.end - xr.start, yr.end - yr.start) != (w as i32, h as i32) {
        return Err(format!(
            "plot area {}x{} differs from the raster {w}x{h}",
            xr.end - xr.start,
            yr.end - yr.start
        ));
    }
    let bitmap = BitMapElement::with_owned_buffer((x0, y0), (w, h), pic.raster.rgb.clone())
        .ok_or("raster buffer of the wrong size")?;
    root.draw(&bitmap).map_err(e2s)?;
    // A frame around the plot area (the raster covers the axis lines' inner pixels).
    root.draw(&Rectangle::new(
        [(x0 - 1, y0 - 1), (x0 + w as i32, y0 + h as i32)],
        BLACK.stroke_width(1),
    ))
    .map_err(e2s)?;
    let radius = pic.raster.cell as i32 + 2;
    chart
        .draw_series(
            pic.rings
                .iter()
                .map(|&(lon, lat)| Circle::new((lon, lat), radius, RING.stroke_width(1))),
        )
        .map_err(e2s)?;
    if text {
        root.draw(&Text::new(
            pic.title.clone(),
            (LEFT as i32, 12),
            (FAMILY, 21).into_font(),
        ))
        .map_err(e2s)?;
        root.draw(&Text::new(
            pic.subtitle.clone(),
            (LEFT as i32, 42),
            (FAMILY, 15).into_font(),
        ))
        .map_err(e2s)?;
    }
    let kx = x0 + w as i32 + 30;
    let mut layout = Layout {
        image: [iw, ih],
        plot: [x0, y0, x0 + w as i32, y0 + h as i32],
        extent: [f.lon.0, f.lon.1, f.lat.0, f.lat.1],
        cell_px: pic.raster.cell,
        colour_bar: None,
        legend: Vec::new(),
    };
    match &pic.key {
        Key::Bar { label, scale } => {
            let top = y0 + 26;
            let bottom = (y0 + h as i32 - 10).max(top + 100);
            // One row of the bar per pixel, top = 1, bottom = 0.
            for y in top..bottom {
                let t = (bottom - 1 - y) as f64 / (bottom - 1 - top).max(1) as f64;
                root.draw(&Rectangle::new(
                    [(kx, y), (kx + 22, y + 1)],
                    colour(t).filled(),
                ))
                .map_err(e2s)?;
            }
            root.draw(&Rectangle::new(
                [(kx - 1, top - 1), (kx + 22, bottom)],
                BLACK.stroke_width(1),
            ))
            .map_err(e2s)?;
            if text {
                root.draw(&Text::new(
                    label.clone(),
                    (kx - 4, y0),
                    (FAMILY, 14).into_font(),
                ))
                .map_err(e2s)?;
                for k in 0..=4 {
                    let t = k as f64 / 4.0;
                    let y = bottom - 1 - (t * (bottom - 1 - top) as f64).round() as i32;
                    root.draw(&Text::new(
                        fmt_value(scale.value_at(t), scale),
                        (kx + 28, y - 6),
                        (FAMILY, 12).into_font(),
                    ))
                    .map_err(e2s)?;
                }
            }
            let (min, max) = scale.range();
            layout.colour_bar = Some(ColourBar {
                rect: [kx, top, kx + 22, bottom],
                min,
                max,
                log: matches!(scale, Scale::Log { .. }),
                label: label.clone(),
            });
        }
        Key::Legend(items) => {
            for (i, (label, c)) in items.iter().enumerate() {
                let y = y0 + 10 + 24 * i as i32;
                root.draw(&Rectangle::new([(kx, y), (kx + 16, y + 16)], c.filled()))
                    .map_err(e2s)?;
                if text {
                    root.draw(&Text::new(
                        label.clone(),
                        (kx + 24, y + 1),
                        (FAMILY, 13).into_font(),
                    ))
                    .map_err(e2s)?;
                }
                layout.legend.push(LegendKey {
                    label: label.clone(),
                    rgb: [c.0, c.1, c.2],
                    at: [kx + 8, y + 8],
                });
            }
        }
    }
    Ok(layout)
}

/// A colour bar label: integers for counts and large values, two decimals otherwise.
fn fmt_value(v: f64, scale: &Scale) -> String {
    let (_, max) = scale.range();
    if matches!(scale, Scale::Log { .. }) || max >= 20.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
