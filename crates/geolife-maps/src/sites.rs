//! Where surveys are: coordinates (and train labels) of the PA surveys from a packed cache, a
//! dataset root, or a run folder (through the data its `config.toml` names). Score files hold
//! survey ids only; every map looks their coordinates up here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use geolife_data::Split;
use geolife_data::cache::{PackedSplit, files};
use geolife_data::layout::{PA_METADATA_TRAIN, metadata_csv};
use geolife_data::metadata::read_pa_metadata;

use crate::MapError;

/// File names of a run folder written by `geolife train` (this crate builds without
/// geolife-train).
pub mod run_files {
    pub const RUN_JSON: &str = "run.json";
    pub const CONFIG: &str = "config.toml";
    pub const VAL_LABELS: &str = "val_labels.csv";
}

/// The surveys of one PA split: ids, coordinates and (train) label sets, aligned.
#[derive(Debug, Clone, Default)]
pub struct SiteSet {
    pub ids: Vec<u64>,
    /// `(lon, lat)` in degrees.
    pub lon_lat: Vec<(f64, f64)>,
    /// Sorted species ids per survey; `None` for a split without labels (test).
    pub labels: Option<Vec<Vec<u32>>>,
    index: HashMap<u64, usize>,
}

impl SiteSet {
    fn new(ids: Vec<u64>, lon_lat: Vec<(f64, f64)>, labels: Option<Vec<Vec<u32>>>) -> Self {
        let index = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        SiteSet {
            ids,
            lon_lat,
            labels,
            index,
        }
    }

    /// Number of surveys.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True without surveys.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Row of a survey id.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.index.get(&id).copied()
    }
}

/// The PA surveys of a coordinate source, both splits (an absent split is empty).
#[derive(Debug, Clone)]
pub struct Sites {
    /// The path given (a cache, a dataset root or a run folder), for messages.
    pub origin: PathBuf,
    /// The cache or dataset root the surveys were read from.
    pub data: PathBuf,
    pub train: SiteSet,
    pub test: SiteSet,
}

/// What a coordinate source may be, for error messages.
pub const EXPECTED_SOURCE: &str = "expected a packed cache (from `geolife prepare`), a dataset \
    root (holding GLC24_PA_metadata_train.csv) or a run folder (from `geolife train`)";

impl Sites {
    /// Reads the surveys of a packed cache (or one of its split folders), a dataset root, or a
    /// run folder (the cache or dataset root `data.path` of its `config.toml`).
    pub fn load(path: &Path) -> Result<Sites, MapError> {
        let data = data_of(path)?;
        let (train, test) = if is_cache(&data) {
            read_cache(&data)?
        } else {
            read_dataset(&data)?
        };
        Ok(Sites {
            origin: path.to_path_buf(),
            data,
            train,
            test,
        })
    }

    /// Coordinates of a survey, looked up in `prefer` first (score files name their split).
    pub fn lon_lat(&self, id: u64, prefer: Split) -> Option<(f64, f64)> {
        let (a, b) = match prefer {
            Split::Train => (&self.train, &self.test),
            Split::Test => (&self.test, &self.train),
        };
        a.index_of(id)
            .map(|i| a.lon_lat[i])
            .or_else(|| b.index_of(id).map(|i| b.lon_lat[i]))
    }

    /// Every survey's coordinates (the faint base layer that outlines the continent).
    pub fn all_lon_lat(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.train.lon_lat.iter().chain(&self.test.lon_lat).copied()
    }
}

/// The data folder behind `path`: itself, or a run folder's `data.path`.
pub fn data_of(path: &Path) -> Result<PathBuf, MapError> {
    if !path.is_dir() {
        return Err(MapError::input(
            path,
            format!("not a folder; {EXPECTED_SOURCE}"),
        ));
    }
    if is_cache(path) || path.join(PA_METADATA_TRAIN).is_file() {
        return Ok(path.to_path_buf());
    }
    if path.join(run_files::RUN_JSON).is_file() {
        let data = run_data_path(path)?;
        if is_cache(&data) || data.join(PA_METADATA_TRAIN).is_file() {
            return Ok(data);
        }
        return Err(MapError::input(
            path,
            format!(
                "data.path {} of its {} is neither a packed cache nor a dataset root",
                data.display(),
                run_files::CONFIG
            ),
        ));
    }
    Err(MapError::input(
        path,
        format!("neither a packed cache, a dataset root nor a run folder; {EXPECTED_SOURCE}"),
    ))
}

/// A cache root or a cache split folder (told by a split manifest).
fn is_cache(dir: &Path) -> bool {
    dir.join(files::MANIFEST).is_file()
        || Split::ALL
            .iter()
            .any(|s| dir.join(s.as_str()).join(files::MANIFEST).is_file())
}

/// Parsed `config.toml` of a run folder.
pub(crate) fn run_config(run: &Path) -> Result<toml::Value, MapError> {
    let path = run.join(run_files::CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| MapError::io(&path, e))?;
    toml::from_str(&text).map_err(|e| MapError::input(&path, format!("does not parse: {e}")))
}

/// `data.path` of a run's config.
fn run_data_path(run: &Path) -> Result<PathBuf, MapError> {
    let cfg = run_config(run)?;
    cfg.get("data")
        .and_then(|d| d.get("path"))
        .and_then(|p| p.as_str())
        .map(PathBuf::from)
        .ok_or_else(|| {
            MapError::input(
                &run.join(run_files::CONFIG),
                "names no data.path (the cache or dataset root the run was trained on)".into(),
            )
        })
}

fn read_cache(dir: &Path) -> Result<(SiteSet, SiteSet), MapError> {
    // A split folder given directly holds one split.
    if dir.join(files::MANIFEST).is_file() {
        let split = if dir.file_name().and_then(|n| n.to_str()) == Some(Split::Test.as_str()) {
            Split::Test
        } else {
            Split::Train
        };
        let set = cache_split(dir, split)?;
        return Ok(match split {
            Split::Train => (set, SiteSet::default()),
            Split::Test => (SiteSet::default(), set),
        });
    }
    let mut out = [SiteSet::default(), SiteSet::default()];
    for (k, split) in Split::ALL.into_iter().enumerate() {
        let d = dir.join(split.as_str());
        if d.join(files::MANIFEST).is_file() {
            out[k] = cache_split(&d, split)?;
        }
    }
    let [train, test] = out;
    Ok((train, test))
}

fn cache_split(dir: &Path, split: Split) -> Result<SiteSet, MapError> {
    let s = PackedSplit::open_dir(dir, split)?;
    let ids = s.survey_ids().to_vec();
    let lon_lat = (0..s.len()).map(|i| s.lon_lat(i)).collect();
    let labels = s
        .has_labels()
        .then(|| (0..s.len()).map(|i| s.labels(i).to_vec()).collect());
    Ok(SiteSet::new(ids, lon_lat, labels))
}

fn read_dataset(root: &Path) -> Result<(SiteSet, SiteSet), MapError> {
    let mut out = [SiteSet::default(), SiteSet::default()];
    for (k, split) in Split::ALL.into_iter().enumerate() {
        let path = root.join(metadata_csv(split));
        if !path.is_file() {
            continue;
        }
        let meta = read_pa_metadata(&path, split)?;
        let ids = meta.surveys.iter().map(|s| s.survey_id).collect();
        let lon_lat = meta.surveys.iter().map(|s| (s.lon, s.lat)).collect();
        out[k] = SiteSet::new(ids, lon_lat, meta.labels);
    }
    let [train, test] = out;
    Ok((train, test))
}
