//! Maps of GeoLifeCLEF surveys over Europe, as PNG (and optionally SVG): the train / validation
//! / test split of a run, per-survey samples-F1 of a score file, species richness, one species'
//! predicted probability, and the density of presence-only records.
//!
//! Every map is lon/lat with a cos(mean latitude) aspect; every survey of the coordinate
//! source is drawn as a faint grey base layer that outlines the continent; data are binned to
//! the image grid (mean per cell) before drawing, so full-size splits draw in seconds. Each map
//! has a title, its count of surveys (or records), axes in degrees and a colour bar or legend.
//! No tensor library: the metric code of `geolife-metrics` computes F1 and the selections.
//!
//! Use: build a [`MapRequest`] and call [`render`]; see its docs for how the pipeline and the
//! demo call it.

mod draw;
mod kinds;
pub mod raster;
pub mod sites;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use geolife_metrics::{MetricsError, Solution};
use serde::Serialize;

pub use draw::{ColourBar, Layout, LegendKey};
pub use sites::{SiteSet, Sites};

/// Anything that stops a map from being drawn; every variant names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The operating system refused a read (the cause, printed after the path, says why).
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An input is not what the map needs (unknown species, surveys without coordinates or
    /// labels, a folder that is no run, cache or dataset, ...).
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    /// A score, solution or policy file could not be read.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A dataset file could not be read.
    #[error(transparent)]
    Data(#[from] geolife_data::DataError),
    /// A packed cache could not be opened.
    #[error(transparent)]
    Cache(#[from] geolife_data::cache::CacheError),
    /// Drawing or writing the image failed (no file is left under the target name).
    #[error("{path}: cannot draw the map: {message}")]
    Draw { path: PathBuf, message: String },
}

impl MapError {
    pub(crate) fn input(path: &Path, message: String) -> Self {
        MapError::Input {
            path: path.to_path_buf(),
            message,
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        MapError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Which map to draw, and from which files.
#[derive(Debug, Clone)]
pub enum MapRequest {
    Split(SplitMap),
    F1(F1Map),
    Richness(RichnessMap),
    Species(SpeciesMap),
    Po(PoMap),
}

/// Train, validation and test surveys. From a run folder (from `geolife train`): its
/// validation surveys (`run.json`) and, for a spatial split, the validation blocks
/// (`validation.block_arcmin` of its `config.toml`), over the data its config names. From a
/// packed cache or dataset root: train and test surveys only.
#[derive(Debug, Clone)]
pub struct SplitMap {
    pub from: PathBuf,
}

/// Where the labels of an F1 map come from.
#[derive(Debug, Clone)]
pub enum Labels {
    /// A solution CSV (`surveyId,predictions`), e.g. a run's `val_labels.csv`.
    Solution(PathBuf),
    /// Labels already read; `origin` names them in messages.
    Loaded { origin: PathBuf, solution: Solution },
    /// The train labels of the coordinate source (a cache's or dataset's train surveys).
    Train,
}

/// Per-survey samples-F1 of a score file after its selection policy.
#[derive(Debug, Clone)]
pub struct F1Map {
    /// A score file (geolife safetensors, Kaggle or malpolon CSV).
    pub scores: PathBuf,
    pub labels: Labels,
    /// Policy TOML (from `geolife calibrate`); default as `geolife evaluate`: top-25 of dense
    /// scores, every listed species otherwise.
    pub policy: Option<PathBuf>,
    /// Coordinate source: a packed cache, a dataset root or a run folder.
    pub coords: PathBuf,
}

/// Number of species the policy selects per survey, or the expected number (the sum of the
/// survey's probabilities).
#[derive(Debug, Clone)]
pub struct RichnessMap {
    pub scores: PathBuf,
    pub policy: Option<PathBuf>,
    pub expected: bool,
    pub coords: PathBuf,
}

/// One species' score at every survey (a model's or a prior's score file), with the train
/// surveys of the coordinate source holding the species ringed (above 2,000 of them, marked by
/// a red pixel in the corner of their cell instead, so the scores stay visible).
#[derive(Debug, Clone)]
pub struct SpeciesMap {
    pub species: u32,
    pub scores: PathBuf,
    pub coords: PathBuf,
}

/// Density of presence-only records on the image grid (log colour scale), optionally of one
/// species. `data` is a dataset root (its PA surveys form the base layer) or the PO CSV.
#[derive(Debug, Clone)]
pub struct PoMap {
    pub data: PathBuf,
    pub species: Option<u32>,
}

/// How a map is written.
#[derive(Debug, Clone)]
pub struct MapOptions {
    /// Also write an SVG beside the PNG (same name, `.svg`).
    pub svg: bool,
    /// Replaces the default title.
    pub title: Option<String>,
    /// Longer side of the plot area in pixels.
    pub size: u32,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            svg: false,
            title: None,
            size: 900,
        }
    }
}

/// What was drawn.
#[derive(Debug, Clone, Serialize)]
pub struct MapSummary {
    /// `split`, `f1`, `richness`, `species` or `po`.
    pub kind: &'static str,
    pub title: String,
    /// The PNG, then the SVG when asked for.
    pub files: Vec<PathBuf>,
    /// Surveys (or presence-only records) drawn as data.
    pub points: usize,
    /// Named counts: `train`/`validation`/`test`/`blocks` of a split map, `presences` of a
    /// species map, `cells` of a density map, `base` (grey base-layer surveys) of all.
    pub counts: BTreeMap<String, usize>,
    /// Mean of the per-survey values (F1, richness, probability); none for split and PO maps.
    pub mean: Option<f64>,
    pub layout: Layout,
}

/// Draws the map `request` asks for to `out` (a PNG; with `options.svg` also `out` with the
/// extension `.svg`), atomically: on any error no file is left under those names.
///
/// How the pipeline and the demo call it (one call per map, into the run's `maps/` folder):
/// ```no_run
/// use geolife_maps::*;
/// # fn f(run: &std::path::Path, member: &std::path::Path, cache: &std::path::Path) -> Result<(), MapError> {
/// let maps = run.join("maps");
/// std::fs::create_dir_all(&maps).map_err(|e| MapError::Io { path: maps.clone(), source: e })?;
/// let opts = MapOptions::default();
/// // The split of one trained member (a run folder from `geolife train`).
/// render(&MapRequest::Split(SplitMap { from: member.into() }), &maps.join("split.png"), &opts)?;
/// // Per-survey F1 of the ensemble on validation, with the member's validation labels.
/// render(
///     &MapRequest::F1(F1Map {
///         scores: run.join("val_scores.safetensors"),
///         labels: Labels::Solution(member.join("val_labels.csv")),
///         policy: Some(run.join("policy.toml")),
///         coords: cache.into(),
///     }),
///     &maps.join("val_f1.png"),
///     &opts,
/// )?;
/// // Richness on test, after the fitted policy.
/// render(
///     &MapRequest::Richness(RichnessMap {
///         scores: run.join("test_scores.safetensors"),
///         policy: Some(run.join("policy.toml")),
///         expected: false,
///         coords: cache.into(),
///     }),
///     &maps.join("test_richness.png"),
///     &opts,
/// )?;
/// # Ok(()) }
/// ```
/// A prior's map is a [`SpeciesMap`] over the prior's score file; the file names above are
/// placeholders for whatever the pipeline writes. The returned summary holds the files written
/// and the survey count, for the caller to print.
pub fn render(
    request: &MapRequest,
    out: &Path,
    options: &MapOptions,
) -> Result<MapSummary, MapError> {
    if !out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
    {
        return Err(MapError::input(
            out,
            "expected a .png path (with --svg the SVG is written beside it)".into(),
        ));
    }
    let (kind, built) = match request {
        MapRequest::Split(m) => ("split", kinds::split(m, options)?),
        MapRequest::F1(m) => ("f1", kinds::f1(m, options)?),
        MapRequest::Richness(m) => ("richness", kinds::richness(m, options)?),
        MapRequest::Species(m) => ("species", kinds::species(m, options)?),
        MapRequest::Po(m) => ("po", kinds::po(m, options)?),
    };
    let mut pic = built.picture;
    if let Some(t) = &options.title {
        pic.title = t.clone();
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(MapError::input(
            out,
            format!("the folder {} does not exist", dir.display()),
        ));
    }
    let (files, layout) = draw::write(&pic, out, options.svg)?;
    Ok(MapSummary {
        kind,
        title: pic.title,
        files,
        points: built.points,
        counts: built.counts,
        mean: built.mean,
        layout,
    })
}

#[cfg(test)]
mod tests;
