//! The five kinds of map: each gathers its values (through the metric and data crates) and
//! returns a [`Picture`] to draw.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use geolife_data::Split;
use geolife_data::layout::PO_METADATA_TRAIN;
use geolife_data::po::PoReader;
use geolife_data::split::block_of;
use geolife_metrics::f1::counts;
use geolife_metrics::{Policy, ScoreFile, Scores, read_solution};
use plotters::style::RGBColor;

use crate::draw::{Key, Picture, RING};
use crate::raster::{BASE_GREY, Frame, Raster, Scale, cell_size, colour};
use crate::sites::{Sites, run_config, run_files};
use crate::{F1Map, Labels, MapError, MapOptions, PoMap, RichnessMap, SpeciesMap, SplitMap};

/// Colours of the split map (train, validation, test, validation blocks).
pub const TRAIN: RGBColor = RGBColor(31, 119, 180);
pub const VALIDATION: RGBColor = RGBColor(255, 127, 14);
pub const TEST: RGBColor = RGBColor(44, 160, 44);
pub const BLOCK: RGBColor = RGBColor(253, 214, 170);

/// Presences drawn as rings up to this many; above it, as one red pixel in the corner of each
/// cell holding one (thousands of rings would hide the scores beneath).
const MAX_RINGS: usize = 2_000;

/// Block side of a run whose config does not say (the trainer's default).
const DEFAULT_BLOCK_ARCMIN: f64 = 10.0;

/// A picture plus what the summary reports.
pub struct Built {
    pub picture: Picture,
    pub points: usize,
    pub counts: BTreeMap<String, usize>,
    pub mean: Option<f64>,
}

/// The frame of `base` and `data` points together.
fn frame(
    base: impl Iterator<Item = (f64, f64)>,
    data: impl Iterator<Item = (f64, f64)>,
    opts: &MapOptions,
    what: &Path,
) -> Result<Frame, MapError> {
    Frame::fit(base.chain(data), opts.size)
        .ok_or_else(|| MapError::input(what, "no survey with finite coordinates to draw".into()))
}

/// What the run folder records about its split: validation survey ids and block side (for
/// a spatial split).
fn run_split(run: &Path) -> Result<(Vec<u64>, Option<f64>), MapError> {
    #[derive(serde::Deserialize)]
    struct RunJson {
        val_survey_ids: Vec<u64>,
    }
    let path = run.join(run_files::RUN_JSON);
    let text = std::fs::read_to_string(&path).map_err(|e| MapError::io(&path, e))?;
    let info: RunJson = serde_json::from_str(&text).map_err(|e| {
        MapError::input(
            &path,
            format!("expected a run.json from `geolife train` with val_survey_ids: {e}"),
        )
    })?;
    let cfg = run_config(run)?;
    let v = cfg.get("validation");
    let spatial = v
        .and_then(|v| v.get("split"))
        .and_then(|s| s.as_str())
        .is_none_or(|s| s == "spatial");
    let arcmin = v
        .and_then(|v| v.get("block_arcmin"))
        .and_then(|b| b.as_float().or_else(|| b.as_integer().map(|i| i as f64)))
        .unwrap_or(DEFAULT_BLOCK_ARCMIN);
    Ok((info.val_survey_ids, spatial.then_some(arcmin)))
}

pub fn split(m: &SplitMap, opts: &MapOptions) -> Result<Built, MapError> {
    let sites = Sites::load(&m.from)?;
    let is_run = m.from.join(run_files::RUN_JSON).is_file();
    let (val_ids, block) = if is_run {
        run_split(&m.from)?
    } else {
        (Vec::new(), None)
    };
    let val: HashSet<u64> = val_ids.iter().copied().collect();
    if let Some(&id) = val_ids
        .iter()
        .find(|&&id| sites.train.index_of(id).is_none())
    {
        return Err(MapError::input(
            &m.from.join(run_files::RUN_JSON),
            format!(
                "validation survey {id} is not a train survey of the data at {} ({} train \
                 surveys): the run was trained on other data",
                sites.data.display(),
                sites.train.len()
            ),
        ));
    }
    let train = &sites.train;
    let pts = |keep: &dyn Fn(u64) -> bool| -> Vec<(f64, f64)> {
        train
            .ids
            .iter()
            .zip(&train.lon_lat)
            .filter(|(id, _)| keep(**id))
            .map(|(_, &p)| p)
            .collect()
    };
    let train_pts = pts(&|id| !val.contains(&id));
    let val_pts = pts(&|id| val.contains(&id));
    let test_pts = sites.test.lon_lat.clone();
    let n = sites.train.len() + sites.test.len();
    let f = frame(sites.all_lon_lat(), std::iter::empty(), opts, &m.from)?;
    let mut r = Raster::new(f, cell_size(n));
    let mut legend = vec![
        (format!("train ({})", train_pts.len()), TRAIN),
        (format!("validation ({})", val_pts.len()), VALIDATION),
        (format!("test ({})", test_pts.len()), TEST),
    ];
    let mut counts = BTreeMap::from([
        ("train".to_string(), train_pts.len()),
        ("validation".to_string(), val_pts.len()),
        ("test".to_string(), test_pts.len()),
    ]);
    if let Some(arcmin) = block {
        let side = arcmin / 60.0;
        let blocks: BTreeSet<(i64, i64)> = val_pts
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| block_of(x, y, arcmin))
            .collect();
        for &(bx, by) in &blocks {
            let lon0 = bx as f64 * side;
            let lat0 = by as f64 * side;
            r.fill_box((lon0, lon0 + side), (lat0, lat0 + side), BLOCK);
        }
        legend.push((
            format!("validation blocks ({}, {arcmin}′)", blocks.len()),
            BLOCK,
        ));
        counts.insert("blocks".into(), blocks.len());
    }
    r.paint_points(train_pts.iter().copied(), TRAIN);
    r.paint_points(val_pts.iter().copied(), VALIDATION);
    r.paint_points(test_pts.iter().copied(), TEST);
    let source = if is_run { "run" } else { "data" };
    Ok(Built {
        picture: Picture {
            title: format!("Split of {source} {}", m.from.display()),
            subtitle: format!(
                "{n} surveys: {} train, {} validation, {} test",
                train_pts.len(),
                val_pts.len(),
                test_pts.len()
            ),
            raster: r,
            key: Key::Legend(legend),
            rings: Vec::new(),
        },
        points: n,
        counts,
        mean: None,
    })
}

/// A score file, the coordinate source, and each score row's coordinates (an error names the
/// first survey without them).
struct Located {
    sf: ScoreFile,
    sites: Sites,
    lon_lat: Vec<(f64, f64)>,
}

fn locate(scores: &Path, coords: &Path) -> Result<Located, MapError> {
    let sf = ScoreFile::read(scores)?;
    if sf.is_empty() {
        return Err(MapError::input(
            scores,
            "the score file holds no survey".into(),
        ));
    }
    let sites = Sites::load(coords)?;
    let prefer = if sf.split == Split::Test.as_str() {
        Split::Test
    } else {
        Split::Train
    };
    let mut lon_lat = Vec::with_capacity(sf.len());
    let mut missing = Vec::new();
    for &id in &sf.survey_ids {
        match sites.lon_lat(id, prefer) {
            Some(p) => lon_lat.push(p),
            None => missing.push(id),
        }
    }
    if let Some(first) = missing.first() {
        return Err(MapError::input(
            scores,
            format!(
                "survey {first} has no coordinates in {} ({} of {} surveys missing; it holds {} \
                 train and {} test surveys): give the cache or dataset the scores were made from",
                coords.display(),
                missing.len(),
                sf.len(),
                sites.train.len(),
                sites.test.len()
            ),
        ));
    }
    Ok(Located { sf, sites, lon_lat })
}

/// The policy file's policy, or `geolife evaluate`'s default (top-25 of dense scores, every
/// listed species otherwise), with its description.
fn policy_of(path: Option<&PathBuf>, sf: &ScoreFile) -> Result<(Policy, String), MapError> {
    let policy = match path {
        Some(p) => Policy::load(p)?,
        None if matches!(sf.scores, Scores::Dense { .. }) => Policy::TopK { k: 25 },
        None => {
            return Ok((
                Policy::TopK { k: usize::MAX },
                "every listed species".into(),
            ));
        }
    };
    let text = policy.describe();
    Ok((policy, text))
}

/// "N surveys" with the score file's split name when it has one.
fn surveys(sf: &ScoreFile) -> String {
    if sf.split.is_empty() {
        format!("{} surveys", sf.len())
    } else {
        format!("{} {} surveys", sf.len(), sf.split)
    }
}

/// Mean value per cell over the surveys, linear colour bar.
fn value_picture(
    loc: &Located,
    values: &[f64],
    scale: Scale,
    opts: &MapOptions,
    origin: &Path,
) -> Result<Raster, MapError> {
    let f = frame(
        loc.sites.all_lon_lat(),
        loc.lon_lat.iter().copied(),
        opts,
        origin,
    )?;
    let mut r = Raster::new(f, cell_size(values.len()));
    r.paint_points(loc.sites.all_lon_lat(), BASE_GREY);
    let mut bins = r.bins();
    for (&(lon, lat), &v) in loc.lon_lat.iter().zip(values) {
        if let Some(c) = r.cell_of(lon, lat) {
            bins.add(c, v);
        }
    }
    r.paint_bins(&bins, |sum, n| colour(scale.t(sum / n as f64)));
    Ok(r)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn base_count(sites: &Sites) -> BTreeMap<String, usize> {
    BTreeMap::from([("base".to_string(), sites.train.len() + sites.test.len())])
}

pub fn f1(m: &F1Map, opts: &MapOptions) -> Result<Built, MapError> {
    let loc = locate(&m.scores, &m.coords)?;
    let sf = &loc.sf;
    let truth: Vec<Vec<u32>> =
        match &m.labels {
            Labels::Train => {
                let train = &loc.sites.train;
                let labels = train.labels.as_ref().ok_or_else(|| {
                    MapError::input(&m.coords, "its train surveys carry no labels".into())
                })?;
                sf.survey_ids
                    .iter()
                    .map(|&id| {
                        train.index_of(id).map(|i| labels[i].clone()).ok_or_else(|| {
                        MapError::input(
                            &m.scores,
                            format!(
                                "survey {id} is not a train survey of {} (it holds the labels \
                                 of {} train surveys; test surveys have none): give its labels \
                                 as a solution CSV",
                                m.coords.display(),
                                train.len()
                            ),
                        )
                    })
                    })
                    .collect::<Result<_, _>>()?
            }
            Labels::Solution(path) => aligned(&m.scores, sf, path, &read_solution(path)?)?,
            Labels::Loaded { origin, solution } => aligned(&m.scores, sf, origin, solution)?,
        };
    let (policy, how) = policy_of(m.policy.as_ref(), sf)?;
    let pred = policy.try_select(sf)?;
    let values: Vec<f64> = pred
        .iter()
        .zip(&truth)
        .map(|(p, t)| counts(p, t).f1())
        .collect();
    let scale = Scale::Linear { min: 0.0, max: 1.0 };
    let raster = value_picture(&loc, &values, scale, opts, &m.scores)?;
    let mean = mean(&values);
    Ok(Built {
        picture: Picture {
            title: format!("Per-survey samples-F1 of {}", name(sf, &m.scores)),
            subtitle: format!("{}, {how}: mean F1 {mean:.4}", surveys(sf)),
            raster,
            key: Key::Bar {
                label: "samples-F1 (cell mean)".into(),
                scale,
            },
            rings: Vec::new(),
        },
        points: sf.len(),
        counts: base_count(&loc.sites),
        mean: Some(mean),
    })
}

/// The truth of every score row; a survey the solution lacks is an error.
fn aligned(
    scores: &Path,
    sf: &ScoreFile,
    origin: &Path,
    sol: &geolife_metrics::Solution,
) -> Result<Vec<Vec<u32>>, MapError> {
    let al = sol.align(&sf.survey_ids);
    if let Some(first) = al.unknown_ids.first() {
        return Err(MapError::input(
            scores,
            format!(
                "survey {first} has no labels in {} ({} of {} scored surveys unknown to it): the \
                 labels must cover every scored survey",
                origin.display(),
                al.unknown_ids.len(),
                sf.len()
            ),
        ));
    }
    Ok(al.truth)
}

/// The model name of a score file, else its file name.
fn name(sf: &ScoreFile, path: &Path) -> String {
    if sf.model.is_empty() {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        sf.model.clone()
    }
}

/// The score of column `col` in row `i` (0 when a sparse row does not list it); `None` for
/// ranked-only files.
fn score_at(sf: &ScoreFile, i: usize, col: u32) -> Option<f64> {
    let v = sf.species.len();
    match &sf.scores {
        Scores::Dense { data } => Some(data[i * v + col as usize] as f64),
        Scores::Sparse { rows } => Some(
            rows[i]
                .iter()
                .find(|&&(c, _)| c == col)
                .map_or(0.0, |&(_, x)| x as f64),
        ),
        Scores::Ranked { .. } => None,
    }
}

/// The sum of row `i`'s scores; `None` for ranked-only files.
fn row_sum(sf: &ScoreFile, i: usize) -> Option<f64> {
    let v = sf.species.len();
    match &sf.scores {
        Scores::Dense { data } => Some(data[i * v..(i + 1) * v].iter().map(|&x| x as f64).sum()),
        Scores::Sparse { rows } => Some(rows[i].iter().map(|&(_, x)| x as f64).sum()),
        Scores::Ranked { .. } => None,
    }
}

fn needs_probabilities(path: &Path, what: &str) -> MapError {
    MapError::input(
        path,
        format!("{what} needs probabilities, but the file only ranks species (a submission?)"),
    )
}

pub fn richness(m: &RichnessMap, opts: &MapOptions) -> Result<Built, MapError> {
    let loc = locate(&m.scores, &m.coords)?;
    let sf = &loc.sf;
    let (values, label, how): (Vec<f64>, &str, String) = if m.expected {
        if !sf.has_scores() {
            return Err(needs_probabilities(&m.scores, "the expected richness"));
        }
        let v = (0..sf.len())
            .map(|i| row_sum(sf, i).unwrap_or(0.0))
            .collect();
        (v, "expected species", "sum of probabilities".into())
    } else {
        let (policy, how) = policy_of(m.policy.as_ref(), sf)?;
        let v = policy
            .try_select(sf)?
            .iter()
            .map(|p| p.len() as f64)
            .collect();
        (v, "species selected", how)
    };
    let scale = Scale::zero_to_max(values.iter().copied());
    let raster = value_picture(&loc, &values, scale, opts, &m.scores)?;
    let mean = mean(&values);
    let title = if m.expected {
        "Expected species per survey"
    } else {
        "Species selected per survey"
    };
    Ok(Built {
        picture: Picture {
            title: format!("{title}: {}", name(sf, &m.scores)),
            subtitle: format!("{}, {how}: mean {mean:.2}", surveys(sf)),
            raster,
            key: Key::Bar {
                label: format!("{label} (cell mean)"),
                scale,
            },
            rings: Vec::new(),
        },
        points: sf.len(),
        counts: base_count(&loc.sites),
        mean: Some(mean),
    })
}

pub fn species(m: &SpeciesMap, opts: &MapOptions) -> Result<Built, MapError> {
    let loc = locate(&m.scores, &m.coords)?;
    let sf = &loc.sf;
    let col = sf
        .species
        .iter()
        .position(|&s| s == m.species)
        .ok_or_else(|| {
            let (lo, hi) = (sf.species.iter().min(), sf.species.iter().max());
            MapError::input(
                &m.scores,
                format!(
                    "species {} is not in the score file's vocabulary ({} species, ids {} to {})",
                    m.species,
                    sf.species.len(),
                    lo.map_or("-".into(), u32::to_string),
                    hi.map_or("-".into(), u32::to_string)
                ),
            )
        })? as u32;
    if !sf.has_scores() {
        return Err(needs_probabilities(&m.scores, "a species map"));
    }
    let values: Vec<f64> = (0..sf.len())
        .map(|i| score_at(sf, i, col).unwrap_or(0.0))
        .collect();
    let scale = Scale::zero_to_max(values.iter().copied());
    let mut raster = value_picture(&loc, &values, scale, opts, &m.scores)?;
    let train = &loc.sites.train;
    let mut rings: Vec<(f64, f64)> = match &train.labels {
        Some(labels) => labels
            .iter()
            .zip(&train.lon_lat)
            .filter(|(l, _)| l.binary_search(&m.species).is_ok())
            .map(|(_, &p)| p)
            .collect(),
        None => Vec::new(),
    };
    let mut counts = base_count(&loc.sites);
    counts.insert("presences".into(), rings.len());
    let marks = if rings.len() > MAX_RINGS {
        raster.mark_cells(rings.drain(..), RING);
        format!(
            "red corner pixels: {} train surveys holding it",
            counts["presences"]
        )
    } else {
        format!("red rings: {} train surveys holding it", rings.len())
    };
    let mean = mean(&values);
    Ok(Built {
        picture: Picture {
            title: format!("Species {}: score of {}", m.species, name(sf, &m.scores)),
            subtitle: format!("{}; {marks}", surveys(sf)),
            raster,
            key: Key::Bar {
                label: "probability (cell mean)".into(),
                scale,
            },
            rings,
        },
        points: sf.len(),
        counts,
        mean: Some(mean),
    })
}

pub fn po(m: &PoMap, opts: &MapOptions) -> Result<Built, MapError> {
    let (csv, base) = if m.data.is_dir() {
        let csv = m.data.join(PO_METADATA_TRAIN);
        if !csv.is_file() {
            return Err(MapError::input(
                &m.data,
                format!(
                    "no {PO_METADATA_TRAIN} in this folder: give a dataset root holding the \
                     presence-only metadata, or the CSV itself"
                ),
            ));
        }
        // The PA surveys outline the continent when the folder has them; a PO-only folder (or
        // unreadable PA metadata) still draws, without the base layer.
        let base = match Sites::load(&m.data) {
            Ok(s) => s.all_lon_lat().collect(),
            Err(_) => Vec::new(),
        };
        (csv, base)
    } else {
        (m.data.clone(), Vec::new())
    };
    let mut pts: Vec<(f32, f32)> = Vec::new();
    let mut total = 0usize;
    for rec in PoReader::open(&csv, false)? {
        let rec = rec?;
        total += 1;
        if m.species.is_none_or(|s| s == rec.species_id) {
            pts.push((rec.lon as f32, rec.lat as f32));
        }
    }
    if pts.is_empty() {
        let what = match m.species {
            Some(s) => format!("no presence-only record of species {s} ({total} records)"),
            None => "no presence-only record".into(),
        };
        return Err(MapError::input(&csv, what));
    }
    let as_f64 = |&(x, y): &(f32, f32)| (x as f64, y as f64);
    let f = frame(base.iter().copied(), pts.iter().map(as_f64), opts, &csv)?;
    let mut r = Raster::new(f, cell_size(pts.len()));
    r.paint_points(base.iter().copied(), BASE_GREY);
    let mut bins = r.bins();
    for p in &pts {
        let (lon, lat) = as_f64(p);
        if let Some(c) = r.cell_of(lon, lat) {
            bins.add(c, 1.0);
        }
    }
    let scale = Scale::Log {
        max: bins.max_count().max(1) as f64,
    };
    r.paint_bins(&bins, |_, n| colour(scale.t(n as f64)));
    let of = m
        .species
        .map_or(String::new(), |s| format!(" of species {s}"));
    let counts = BTreeMap::from([
        ("cells".to_string(), bins.occupied()),
        ("base".to_string(), base.len()),
    ]);
    Ok(Built {
        picture: Picture {
            title: format!("Presence-only records{of}"),
            subtitle: format!(
                "{} records in {} cells of {} px",
                pts.len(),
                bins.occupied(),
                r.cell
            ),
            raster: r,
            key: Key::Bar {
                label: "records per cell (log)".into(),
                scale,
            },
            rings: Vec::new(),
        },
        points: pts.len(),
        counts,
        mean: None,
    })
}
