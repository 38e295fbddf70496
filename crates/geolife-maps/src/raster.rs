//! The map's data layer: lon/lat -> pixel (plate carrée stretched by cos(mean latitude)) and
//! per-cell aggregates painted into one RGB buffer, so that 88,987 surveys or 5 M records draw
//! as a single image instead of millions of plot elements.

use plotters::prelude::*;

/// Light grey of the base layer (every survey of the source): it outlines the continent.
pub const BASE_GREY: RGBColor = RGBColor(222, 222, 222);

/// The area a map shows and its size in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    /// West and east edges, degrees.
    pub lon: (f64, f64),
    /// South and north edges, degrees.
    pub lat: (f64, f64),
    /// Plot area in pixels.
    pub width: u32,
    pub height: u32,
}

impl Frame {
    /// The extent of the finite `points` (lon, lat) padded by 4% (at least 1 degree wide and
    /// high), in pixels whose aspect makes a degree of longitude cos(mean latitude) times a
    /// degree of latitude; the longer side is `long_side` pixels. `None` without any point.
    pub fn fit(points: impl Iterator<Item = (f64, f64)>, long_side: u32) -> Option<Frame> {
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        let (mut lat_sum, mut n) = (0.0, 0usize);
        for (lon, lat) in points.filter(|(x, y)| x.is_finite() && y.is_finite()) {
            x0 = x0.min(lon);
            x1 = x1.max(lon);
            y0 = y0.min(lat);
            y1 = y1.max(lat);
            lat_sum += lat;
            n += 1;
        }
        if n == 0 {
            return None;
        }
        let pad = |a: f64, b: f64| {
            let span = (b - a).max(1.0);
            let mid = (a + b) / 2.0;
            (mid - span * 0.54, mid + span * 0.54)
        };
        let lon = pad(x0, x1);
        let lat = pad(y0, y1);
        let (lat, lon) = (
            (lat.0.max(-90.0), lat.1.min(90.0)),
            (lon.0.max(-180.0), lon.1.min(180.0)),
        );
        let aspect = (lat_sum / n as f64).to_radians().cos().max(0.05);
        let w = (lon.1 - lon.0) * aspect;
        let h = lat.1 - lat.0;
        let long = long_side.max(50) as f64;
        let (width, height) = if w >= h {
            (long, (long * h / w).max(120.0))
        } else {
            ((long * w / h).max(120.0), long)
        };
        Some(Frame {
            lon,
            lat,
            width: width.round() as u32,
            height: height.round() as u32,
        })
    }

    /// The same extent on a plot area of `width` x `height` pixels.
    pub fn resized(self, width: u32, height: u32) -> Frame {
        Frame {
            width: width.max(1),
            height: height.max(1),
            ..self
        }
    }

    /// Pixel `(x, y)` of a point, from the top-left corner of the plot area; `None` outside
    /// the extent or for non-finite coordinates.
    pub fn pixel(&self, lon: f64, lat: f64) -> Option<(u32, u32)> {
        let fx = (lon - self.lon.0) / (self.lon.1 - self.lon.0);
        let fy = (self.lat.1 - lat) / (self.lat.1 - self.lat.0);
        if !(0.0..=1.0).contains(&fx) || !(0.0..=1.0).contains(&fy) {
            return None;
        }
        let x = ((fx * self.width as f64) as u32).min(self.width - 1);
        let y = ((fy * self.height as f64) as u32).min(self.height - 1);
        Some((x, y))
    }
}

/// Side of an aggregation cell in pixels: large markers for a few points, fine cells for many.
pub fn cell_size(points: usize) -> u32 {
    match points {
        0..=5_000 => 6,
        5_001..=50_000 => 3,
        _ => 2,
    }
}

/// How a value becomes a position `t` in 0..=1 on the colour map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// `t = (v - min) / (max - min)`.
    Linear { min: f64, max: f64 },
    /// `t = ln(1 + v) / ln(1 + max)` (counts spanning orders of magnitude).
    Log { max: f64 },
}

impl Scale {
    /// A linear scale from 0 to the largest value (1 when every value is 0).
    pub fn zero_to_max(values: impl Iterator<Item = f64>) -> Scale {
        let max = values.fold(0.0f64, f64::max);
        Scale::Linear {
            min: 0.0,
            max: if max > 0.0 { max } else { 1.0 },
        }
    }

    /// Position of `v` on the colour map, clamped to 0..=1.
    pub fn t(&self, v: f64) -> f64 {
        let t = match *self {
            Scale::Linear { min, max } => (v - min) / (max - min),
            Scale::Log { max } => v.ln_1p() / max.ln_1p(),
        };
        if t.is_finite() {
            t.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// The value at position `t` (colour bar labels).
    pub fn value_at(&self, t: f64) -> f64 {
        match *self {
            Scale::Linear { min, max } => min + t * (max - min),
            Scale::Log { max } => (t * max.ln_1p()).exp_m1(),
        }
    }

    /// Lower and upper end.
    pub fn range(&self) -> (f64, f64) {
        (self.value_at(0.0), self.value_at(1.0))
    }
}

/// Colour of position `t` on the colour map (viridis: dark purple at 0, yellow at 1).
pub fn colour(t: f64) -> RGBColor {
    ViridisRGB::get_color(t.clamp(0.0, 1.0))
}

/// Per-cell sums and counts over a cell grid.
pub struct Bins {
    cols: u32,
    sum: Vec<f64>,
    count: Vec<u64>,
}

impl Bins {
    /// Adds `v` to the cell `(cx, cy)`.
    pub fn add(&mut self, (cx, cy): (u32, u32), v: f64) {
        let k = (cy * self.cols + cx) as usize;
        self.sum[k] += v;
        self.count[k] += 1;
    }

    /// Number of cells holding at least one point.
    pub fn occupied(&self) -> usize {
        self.count.iter().filter(|&&c| c > 0).count()
    }

    /// Largest count of a cell.
    pub fn max_count(&self) -> u64 {
        self.count.iter().copied().max().unwrap_or(0)
    }

    /// Means of the occupied cells.
    pub fn means(&self) -> impl Iterator<Item = f64> + '_ {
        self.sum
            .iter()
            .zip(&self.count)
            .filter(|(_, c)| **c > 0)
            .map(|(s, &c)| s / c as f64)
    }
}

/// An RGB image of the plot area, painted cell by cell.
pub struct Raster {
    pub frame: Frame,
    /// Cell side in pixels.
    pub cell: u32,
    cols: u32,
    rows: u32,
    /// Row-major RGB, `frame.width * frame.height * 3` bytes.
    pub rgb: Vec<u8>,
}

impl Raster {
    /// A white raster of the frame's plot area with cells of `cell` pixels.
    pub fn new(frame: Frame, cell: u32) -> Raster {
        let cell = cell.max(1);
        Raster {
            frame,
            cell,
            cols: frame.width.div_ceil(cell),
            rows: frame.height.div_ceil(cell),
            rgb: vec![255; (frame.width * frame.height * 3) as usize],
        }
    }

    /// The cell of a point; `None` outside the frame.
    pub fn cell_of(&self, lon: f64, lat: f64) -> Option<(u32, u32)> {
        self.frame
            .pixel(lon, lat)
            .map(|(x, y)| (x / self.cell, y / self.cell))
    }

    /// An empty grid of this raster's cells.
    pub fn bins(&self) -> Bins {
        let n = (self.cols * self.rows) as usize;
        Bins {
            cols: self.cols,
            sum: vec![0.0; n],
            count: vec![0; n],
        }
    }

    /// Fills pixels `x0..x1`, `y0..y1` (clipped to the raster).
    fn fill(&mut self, x0: u32, x1: u32, y0: u32, y1: u32, c: RGBColor) {
        let (w, h) = (self.frame.width, self.frame.height);
        for y in y0.min(h)..y1.min(h) {
            for x in x0.min(w)..x1.min(w) {
                let k = ((y * w + x) * 3) as usize;
                self.rgb[k..k + 3].copy_from_slice(&[c.0, c.1, c.2]);
            }
        }
    }

    fn fill_cell(&mut self, (cx, cy): (u32, u32), c: RGBColor) {
        let s = self.cell;
        self.fill(cx * s, (cx + 1) * s, cy * s, (cy + 1) * s, c);
    }

    /// Paints the cell of every point in one colour; returns the points inside the frame.
    pub fn paint_points(&mut self, points: impl Iterator<Item = (f64, f64)>, c: RGBColor) -> usize {
        let mut n = 0;
        for (lon, lat) in points {
            if let Some(cell) = self.cell_of(lon, lat) {
                self.fill_cell(cell, c);
                n += 1;
            }
        }
        n
    }

    /// Sets the top-left pixel of the cell of every point to `c` (a mark that leaves the rest of
    /// the cell's colour visible); returns the points inside the frame.
    pub fn mark_cells(&mut self, points: impl Iterator<Item = (f64, f64)>, c: RGBColor) -> usize {
        let mut n = 0;
        for (lon, lat) in points {
            if let Some((cx, cy)) = self.cell_of(lon, lat) {
                let s = self.cell;
                self.fill(cx * s, cx * s + 1, cy * s, cy * s + 1, c);
                n += 1;
            }
        }
        n
    }

    /// Paints every occupied cell in the colour `pick(sum, count)` gives it.
    pub fn paint_bins(&mut self, bins: &Bins, pick: impl Fn(f64, u64) -> RGBColor) {
        for k in 0..bins.count.len() {
            if bins.count[k] > 0 {
                let cell = (k as u32 % self.cols, k as u32 / self.cols);
                self.fill_cell(cell, pick(bins.sum[k], bins.count[k]));
            }
        }
    }

    /// Fills a lon/lat box (at least one pixel), clipped to the frame.
    pub fn fill_box(&mut self, lon: (f64, f64), lat: (f64, f64), c: RGBColor) {
        let f = self.frame;
        let px = |lon: f64| ((lon - f.lon.0) / (f.lon.1 - f.lon.0) * f.width as f64).floor();
        let py = |lat: f64| ((f.lat.1 - lat) / (f.lat.1 - f.lat.0) * f.height as f64).floor();
        let (x0, x1) = (px(lon.0), px(lon.1));
        let (y0, y1) = (py(lat.1), py(lat.0));
        if x1 < 0.0 || y1 < 0.0 || x0 >= f.width as f64 || y0 >= f.height as f64 {
            return;
        }
        let clip = |v: f64| v.max(0.0) as u32;
        let (x0, y0) = (clip(x0), clip(y0));
        self.fill(x0, clip(x1).max(x0 + 1), y0, clip(y1).max(y0 + 1), c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aspect_is_cos_of_the_mean_latitude() {
        // Points at latitude 60 (cos = 0.5), spanning 20 degrees of lon and 10 of lat: after
        // the same relative padding, width : height = 20 * 0.5 : 10 = 1.
        let pts = [(0.0, 55.0), (20.0, 65.0), (10.0, 60.0)];
        let f = Frame::fit(pts.into_iter(), 400).unwrap();
        assert_eq!((f.width, f.height), (400, 400));
        assert!((f.lon.0 - (10.0 - 20.0 * 0.54)).abs() < 1e-12);
        assert!((f.lat.1 - (60.0 + 10.0 * 0.54)).abs() < 1e-12);
    }

    #[test]
    fn pixels_follow_the_extent_and_cells_aggregate_means() {
        let f = Frame {
            lon: (0.0, 10.0),
            lat: (40.0, 50.0),
            width: 100,
            height: 100,
        };
        // 2.5 degrees east = 25 px; 47.5 N is 2.5 degrees below the top = 25 px.
        assert_eq!(f.pixel(2.5, 47.5), Some((25, 25)));
        assert_eq!(f.pixel(10.0, 40.0), Some((99, 99)));
        assert_eq!(f.pixel(-0.1, 45.0), None);
        assert_eq!(f.pixel(f64::NAN, 45.0), None);
        let r = Raster::new(f, 10);
        let mut bins = r.bins();
        bins.add(r.cell_of(2.5, 47.5).unwrap(), 1.0);
        bins.add(r.cell_of(2.9, 47.1).unwrap(), 0.0);
        bins.add(r.cell_of(8.0, 41.0).unwrap(), 0.25);
        let mut means: Vec<f64> = bins.means().collect();
        means.sort_by(f64::total_cmp);
        assert_eq!(means, vec![0.25, 0.5]);
        assert_eq!(bins.occupied(), 2);
        assert_eq!(bins.max_count(), 2);
    }

    #[test]
    fn marks_take_one_corner_pixel_of_a_cell() {
        let f = Frame {
            lon: (0.0, 10.0),
            lat: (40.0, 50.0),
            width: 100,
            height: 100,
        };
        let mut r = Raster::new(f, 4);
        let blue = RGBColor(0, 0, 255);
        let red = RGBColor(255, 0, 0);
        // (2.5, 47.5) is pixel (25, 25), in the cell whose corner is (24, 24).
        r.paint_points([(2.5, 47.5)].into_iter(), blue);
        assert_eq!(r.mark_cells([(2.5, 47.5), (20.0, 0.0)].into_iter(), red), 1);
        let px = |x: usize, y: usize| {
            let k = (y * 100 + x) * 3;
            [r.rgb[k], r.rgb[k + 1], r.rgb[k + 2]]
        };
        assert_eq!(px(24, 24), [255, 0, 0]);
        assert_eq!(px(25, 25), [0, 0, 255]);
        assert_eq!(px(27, 27), [0, 0, 255]);
        assert_eq!(px(28, 28), [255, 255, 255]);
    }

    #[test]
    fn scales_map_their_ends_to_the_ends_of_the_colour_map() {
        let s = Scale::Linear { min: 0.0, max: 4.0 };
        assert_eq!(s.t(1.0), 0.25);
        assert_eq!(s.t(9.0), 1.0);
        let l = Scale::Log { max: 99.0 };
        // ln(1 + 9) / ln(100) = 1/2.
        assert!((l.t(9.0) - 0.5).abs() < 1e-12);
        assert!((l.value_at(0.5) - 9.0).abs() < 1e-9);
        assert_ne!(colour(0.0), colour(1.0));
        assert_eq!(
            Scale::zero_to_max([0.0, 0.0].into_iter()),
            Scale::Linear { min: 0.0, max: 1.0 }
        );
    }
}
