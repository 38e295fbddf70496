//! `geolife synth`: writes a complete, seeded synthetic GLC24 dataset in the official Kaggle
//! layout (metadata, environmental CSVs, real-format `.pt` cubes, JPEG patches, solution file)
//! whose species labels depend on signals planted in every modality.
//!
//! # Generative process
//! 1. Sites: spatial clusters with centres in Europe (lon -8..28, lat 38..68); each survey
//!    lies within ~0.3 degrees of its cluster's centre. Train and test share the clusters.
//! 2. Latent factors: each survey has 8 factors `z`, two per modality, each
//!    `sqrt(0.35) * cluster mean + sqrt(0.65) * N(0,1)` (spatially autocorrelated).
//! 3. Modalities show only their own pair of factors (plus noise):
//!    - environment CSVs: temperature (Bio1-11, elevation) and moisture (Bio12-19, soils,
//!      land cover); human footprint is uninformative noise;
//!    - Landsat cube: NIR summer-minus-winter amplitude and the 21-year trend;
//!    - bioclimatic cube: precipitation seasonal shape (winter vs summer, spring vs autumn);
//!      the monthly climate CSV (an optional reader group) repeats the cube's 912 values;
//!    - Sentinel patch: vegetation colour (RGB and NIR) and stripe orientation.
//! 4. Species `s` is present with probability `sigmoid(b_s + w_s . z + u_{cluster,s})`:
//!    `b_s` gives long-tailed (Zipf) prevalences averaging `mean_species_per_survey`,
//!    `w_s ~ N(0, signal_strength^2 / 8)` spreads each species' response over all modalities
//!    (each alone helps, fusion helps most), and the hidden per-cluster effect `u` (sd
//!    `cluster_effect`) is visible only through location, so spatial validation matters.
//! 5. Presence-only records (`GLC24_P0_metadata_train.csv`, 10 per train survey unless
//!    `po_records` says otherwise): observer hotspots, over-reported common and showy species,
//!    a few hundred metres of coordinate jitter, species drawn from the model of step 4 at the
//!    record's place; see [`po`] for the exact process.
//!
//! Every survey draws from its own seeded generator, so output is byte-identical for a seed
//! whatever the thread count. The dataset is written under `<out>.tmp-<pid>` and renamed.

pub mod layout;
pub mod po;
pub mod torch_pt;
pub mod world;

use std::collections::HashSet;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::Rng;
use rand::rngs::StdRng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::{DataError, Split};
use layout::{EnvTable, PatchKind};
use world::{FACTORS, Stream, World};

/// File (in the dataset root) with the config and summary of the run.
pub const MANIFEST_FILE: &str = "geolife_synth.json";
/// File (in the dataset root) with every survey's latent factors: the oracle, for analysis.
pub const LATENTS_FILE: &str = "geolife_synth_latents.csv";

/// Options of the synthetic dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    /// Number of PA train surveys.
    pub train_surveys: usize,
    /// Number of PA test surveys.
    pub test_surveys: usize,
    /// Number of species.
    pub species: usize,
    /// Seed of every random draw.
    pub seed: u64,
    /// Expected species per survey (the real PA train has 16.7).
    pub mean_species_per_survey: f64,
    /// Standard deviation of the planted logit signal `w . z` (higher = easier).
    pub signal_strength: f64,
    /// Standard deviation of the hidden per-(cluster, species) logit effect.
    pub cluster_effect: f64,
    /// Average surveys per spatial cluster.
    pub surveys_per_cluster: usize,
    /// JPEG quality of the patches (1-100).
    pub jpeg_quality: u8,
    /// Fraction of surveys with a missing value (NaN/inf) in some CSV or cube.
    pub missing_rate: f64,
    /// Fraction of metadata rows written twice (the real data repeats rows).
    pub duplicate_row_rate: f64,
    /// Presence-only records written to `GLC24_P0_metadata_train.csv` (see [`po`]); unset:
    /// [`po::PER_TRAIN_SURVEY`] per train survey; 0: no PO file.
    pub po_records: Option<usize>,
    /// Show a progress bar on stderr (not part of the saved config).
    #[serde(skip)]
    pub progress: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            train_surveys: 3000,
            test_surveys: 300,
            species: 200,
            seed: 42,
            mean_species_per_survey: 17.0,
            signal_strength: 2.5,
            cluster_effect: 0.6,
            surveys_per_cluster: 50,
            jpeg_quality: 90,
            missing_rate: 0.02,
            duplicate_row_rate: 0.01,
            po_records: None,
            progress: false,
        }
    }
}

impl SynthConfig {
    /// Number of presence-only records to write (`po_records`, or its default).
    pub fn po_record_count(&self) -> usize {
        self.po_records
            .unwrap_or(po::PER_TRAIN_SURVEY.saturating_mul(self.train_surveys))
    }

    /// Rejects impossible values with a message naming the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DataError::Invalid(m));
        if self.train_surveys == 0 {
            return bad("train_surveys must be at least 1".into());
        }
        if self.train_surveys + self.test_surveys > 3_000_000 {
            return bad("train_surveys + test_surveys must be at most 3,000,000".into());
        }
        if self.species == 0 || self.species > 11253 {
            return bad(format!(
                "species = {}: expected 1..=11253 (the real id range 2..=11254)",
                self.species
            ));
        }
        let max_mean = 0.7 * self.species as f64;
        if !(self.mean_species_per_survey > 0.0 && self.mean_species_per_survey <= max_mean) {
            return bad(format!(
                "mean_species_per_survey = {}: expected in (0, {max_mean}] (0.7 x species)",
                self.mean_species_per_survey
            ));
        }
        for (name, v) in [
            ("signal_strength", self.signal_strength),
            ("cluster_effect", self.cluster_effect),
        ] {
            if !(v.is_finite() && (0.0..=20.0).contains(&v)) {
                return bad(format!("{name} = {v}: expected a number in 0..=20"));
            }
        }
        for (name, v) in [
            ("missing_rate", self.missing_rate),
            ("duplicate_row_rate", self.duplicate_row_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} = {v}: expected a fraction in 0..=1"));
            }
        }
        if self.po_record_count() > 50_000_000 {
            return bad(format!(
                "po_records = {}: expected at most 50,000,000",
                self.po_record_count()
            ));
        }
        if self.surveys_per_cluster == 0 {
            return bad("surveys_per_cluster must be at least 1".into());
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return bad(format!(
                "jpeg_quality = {}: expected 1..=100",
                self.jpeg_quality
            ));
        }
        Ok(())
    }
}

/// What `write_dataset` produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthSummary {
    /// The dataset root (final location).
    pub root: PathBuf,
    pub train_surveys: usize,
    pub test_surveys: usize,
    pub species: usize,
    /// Distinct species present in the train split.
    pub train_species_seen: usize,
    /// Rows of `GLC24_PA_metadata_train.csv` (repeats included).
    pub train_rows: usize,
    /// Mean distinct species per train survey.
    pub mean_species_per_train_survey: f64,
    /// Mean distinct species per test survey (from the solution file).
    pub mean_species_per_test_survey: f64,
    /// Rows of `GLC24_P0_metadata_train.csv` (0: not written).
    #[serde(default)]
    pub po_records: usize,
    /// Files written, and their total size in bytes.
    pub files: usize,
    pub bytes: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// One survey's place in the dataset.
#[derive(Debug, Clone, Copy)]
struct Site {
    id: u64,
    cluster: usize,
    /// Index of the survey in the generation order (seeds its generator).
    index: u64,
}

/// Text and counts produced by one survey, appended in order by the writer thread.
struct SurveyOut {
    id: u64,
    meta: String,
    env: [String; 5],
    /// Row of the monthly climate CSV (the bioclimatic cube's values).
    monthly: String,
    latents: String,
    species_ids: Vec<u32>,
    rows: usize,
    files: usize,
    bytes: u64,
}

/// Writes a complete synthetic dataset at `out` (which must not exist, or be an empty
/// folder) and returns a summary. Atomic: nothing appears at `out` unless all succeeded.
pub fn write_dataset(out: &Path, cfg: &SynthConfig) -> Result<SynthSummary> {
    cfg.validate()?;
    let start = Instant::now();
    if out.exists() {
        let empty = fs::read_dir(out)
            .map_err(|e| DataError::io(out, None, e))?
            .next()
            .is_none();
        if !empty {
            return Err(DataError::Invalid(format!(
                "output folder {} already exists and is not empty: choose another --out or remove it",
                out.display()
            )));
        }
    }
    let name = out
        .file_name()
        .ok_or_else(|| DataError::Invalid(format!("--out {} has no folder name", out.display())))?;
    let tmp = out.with_file_name(format!(
        "{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| DataError::io(&tmp, None, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, None, e))?;
    let result = write_into(&tmp, cfg).and_then(|s| {
        // Manifest without the run-dependent fields, so that a seed gives identical files.
        let mut fixed = s.clone();
        fixed.root = PathBuf::new();
        fixed.seconds = 0.0;
        let manifest = serde_json::json!({ "config": cfg, "summary": fixed });
        let text = serde_json::to_string_pretty(&manifest)
            .map_err(|e| DataError::Invalid(format!("cannot serialise the manifest: {e}")))?;
        let path = tmp.join(MANIFEST_FILE);
        fs::write(&path, text + "\n").map_err(|e| DataError::io(&path, None, e))?;
        Ok(s)
    });
    let mut summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out.exists() {
        fs::remove_dir(out).map_err(|e| DataError::io(out, None, e))?;
    }
    fs::rename(&tmp, out).map_err(|e| DataError::io(out, None, e))?;
    summary.root = out.to_path_buf();
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

fn write_into(root: &Path, cfg: &SynthConfig) -> Result<SynthSummary> {
    let plan = SynthPlan::new(cfg)?;
    let (world, train, test) = (&plan.world, &plan.train, &plan.test);
    let bar = progress_bar(cfg, (train.len() + test.len()) as u64);
    let mut summary = SynthSummary {
        root: root.to_path_buf(),
        train_surveys: train.len(),
        test_surveys: test.len(),
        species: cfg.species,
        train_species_seen: 0,
        train_rows: 0,
        mean_species_per_train_survey: 0.0,
        mean_species_per_test_survey: 0.0,
        po_records: 0,
        files: 0,
        bytes: 0,
        seconds: 0.0,
    };
    let latents_path = root.join(LATENTS_FILE);
    let mut latents = create(&latents_path)?;
    let header = (0..FACTORS).map(|k| format!(",z{k}")).collect::<String>();
    writeln!(latents, "surveyId,split{header}")
        .map_err(|e| DataError::io(&latents_path, None, e))?;
    for (split, sites) in [(Split::Train, train), (Split::Test, test)] {
        let stats = write_split(root, cfg, world, split, sites, &mut latents, &bar)?;
        summary.files += stats.files;
        summary.bytes += stats.bytes;
        match split {
            Split::Train => {
                summary.train_rows = stats.rows;
                summary.train_species_seen = stats.species_seen;
                summary.mean_species_per_train_survey = stats.mean_species;
            }
            Split::Test => summary.mean_species_per_test_survey = stats.mean_species,
        }
    }
    latents
        .flush()
        .map_err(|e| DataError::io(&latents_path, None, e))?;
    summary.po_records = cfg.po_record_count();
    if summary.po_records > 0 {
        bar.set_message("presence-only records");
        summary.bytes += po::write_po(root, cfg, world, summary.po_records)?;
        summary.files += 1;
    }
    bar.finish_and_clear();
    Ok(summary)
}

/// The deterministic plan of a synthetic dataset (world, survey ids, clusters): regenerates
/// any survey's exact values in memory without touching the files.
pub struct SynthPlan {
    cfg: SynthConfig,
    world: World,
    train: Vec<Site>,
    test: Vec<Site>,
}

impl SynthPlan {
    /// Builds the plan `write_dataset(_, cfg)` follows.
    pub fn new(cfg: &SynthConfig) -> Result<SynthPlan> {
        cfg.validate()?;
        let world = World::new(cfg);
        let (train, test) = assign_sites(cfg, &world);
        Ok(SynthPlan {
            cfg: cfg.clone(),
            world,
            train,
            test,
        })
    }

    /// Survey ids of a split, ascending (the order of the CSV rows).
    pub fn survey_ids(&self, split: Split) -> Vec<u64> {
        self.sites(split).iter().map(|s| s.id).collect()
    }

    /// Species ids of the world, ascending.
    pub fn species_ids(&self) -> &[u32] {
        &self.world.species_ids
    }

    /// Every value of survey `id` of `split`, identical to what `write_dataset` writes.
    pub fn survey(&self, split: Split, id: u64) -> Option<SyntheticSurvey> {
        let sites = self.sites(split);
        let i = sites.binary_search_by_key(&id, |s| s.id).ok()?;
        Some(generate(&self.cfg, &self.world, split, &sites[i]).survey)
    }

    fn sites(&self, split: Split) -> &[Site] {
        match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        }
    }
}

fn progress_bar(cfg: &SynthConfig, n: u64) -> indicatif::ProgressBar {
    if !cfg.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(n);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "synth {bar:40} {pos}/{len} surveys [{elapsed_precise} < {eta}] {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Distinct survey ids (a few short ones, the rest spread over 1e4..4e6 like the real ids)
/// and cluster memberships; each split sorted by id.
fn assign_sites(cfg: &SynthConfig, world: &World) -> (Vec<Site>, Vec<Site>) {
    let mut rng = world::rng_for(cfg.seed, Stream::Ids, 0);
    let total = cfg.train_surveys + cfg.test_surveys;
    let mut used = HashSet::with_capacity(total);
    let mut sites = Vec::with_capacity(total);
    for index in 0..total {
        // Short ids exercise the patch path rule: 1, 2 and 3 digits first in each split.
        let short = [index, index.wrapping_sub(cfg.train_surveys)]
            .into_iter()
            .find(|&i| i < 3);
        let id = loop {
            let candidate: u64 = match short {
                Some(0) => rng.random_range(1..10),
                Some(1) => rng.random_range(10..100),
                Some(2) => rng.random_range(100..1000),
                _ if rng.random::<f64>() < 0.01 => rng.random_range(1000..10_000),
                _ => rng.random_range(10_000..4_000_000),
            };
            if used.insert(candidate) {
                break candidate;
            }
        };
        let cluster = rng.random_range(0..world.clusters.len());
        sites.push(Site {
            id,
            cluster,
            index: index as u64,
        });
    }
    let mut test = sites.split_off(cfg.train_surveys);
    sites.sort_by_key(|s| s.id);
    test.sort_by_key(|s| s.id);
    (sites, test)
}

/// Counts of one split.
struct SplitStats {
    rows: usize,
    species_seen: usize,
    mean_species: f64,
    files: usize,
    bytes: u64,
}

fn create(path: &Path) -> Result<BufWriter<fs::File>> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| DataError::io(parent, None, e))?;
    }
    let f = fs::File::create(path).map_err(|e| DataError::io(path, None, e))?;
    Ok(BufWriter::with_capacity(1 << 20, f))
}

const META_HEADER_TRAIN: &str =
    "lon,lat,year,geoUncertaintyInM,areaInM2,region,country,speciesId,surveyId";
const META_HEADER_TEST: &str = "lon,lat,year,geoUncertaintyInM,areaInM2,region,country,surveyId";

fn write_split(
    root: &Path,
    cfg: &SynthConfig,
    world: &World,
    split: Split,
    sites: &[Site],
    latents: &mut BufWriter<fs::File>,
    bar: &indicatif::ProgressBar,
) -> Result<SplitStats> {
    let meta_path = root.join(layout::metadata_csv(split));
    let mut meta = create(&meta_path)?;
    let header = match split {
        Split::Train => META_HEADER_TRAIN,
        Split::Test => META_HEADER_TEST,
    };
    writeln!(meta, "{header}").map_err(|e| DataError::io(&meta_path, None, e))?;
    let mut env = Vec::new();
    for table in EnvTable::ALL {
        let path = root.join(table.csv(split));
        let mut w = create(&path)?;
        writeln!(w, "surveyId,{}", table.columns().join(","))
            .map_err(|e| DataError::io(&path, None, e))?;
        env.push((path, w));
    }
    let monthly_path = root.join(layout::monthly_climate_csv(split));
    let mut monthly = create(&monthly_path)?;
    writeln!(
        monthly,
        "surveyId,{}",
        layout::monthly_climate_columns().join(",")
    )
    .map_err(|e| DataError::io(&monthly_path, None, e))?;
    let solution_path = root.join(layout::SOLUTION_CSV);
    let mut solution = match split {
        Split::Test => {
            let mut w = create(&solution_path)?;
            writeln!(w, "surveyId,predictions")
                .map_err(|e| DataError::io(&solution_path, None, e))?;
            Some(w)
        }
        Split::Train => None,
    };
    for dir in [
        layout::landsat_cube(split, 0),
        layout::bioclim_cube(split, 0),
        layout::patch(split, PatchKind::Rgb, 0),
        layout::patch(split, PatchKind::Nir, 0),
    ] {
        // Parents of the cube folders and the patch roots: present even for empty splits.
        let mut d = dir;
        d.pop();
        if d.ends_with("0") {
            d.pop();
        }
        let full = root.join(&d);
        fs::create_dir_all(&full).map_err(|e| DataError::io(&full, None, e))?;
    }

    let mut stats = SplitStats {
        rows: 0,
        species_seen: 0,
        mean_species: 0.0,
        // Five seed env CSVs, the monthly climate CSV, the solution file (test only).
        files: 6 + usize::from(split == Split::Test),
        bytes: 0,
    };
    let mut seen = vec![false; world.species_ids.len()];
    let mut species_total = 0usize;
    const CHUNK: usize = 512;
    for chunk in sites.chunks(CHUNK) {
        let outs: Vec<Result<SurveyOut>> = chunk
            .par_iter()
            .map(|site| render_survey(root, cfg, world, split, site))
            .collect();
        for out in outs {
            let out = out?;
            meta.write_all(out.meta.as_bytes())
                .map_err(|e| DataError::io(&meta_path, None, e))?;
            for ((path, w), text) in env.iter_mut().zip(&out.env) {
                w.write_all(text.as_bytes())
                    .map_err(|e| DataError::io(&*path, None, e))?;
            }
            monthly
                .write_all(out.monthly.as_bytes())
                .map_err(|e| DataError::io(&monthly_path, None, e))?;
            latents
                .write_all(out.latents.as_bytes())
                .map_err(|e| DataError::io(root.join(LATENTS_FILE), None, e))?;
            stats.rows += out.rows;
            stats.files += out.files;
            stats.bytes += out.bytes;
            species_total += out.species_ids.len();
            for &s in &out.species_ids {
                seen[s as usize] = true;
            }
            if let Some(w) = solution.as_mut() {
                let ids: Vec<String> = out
                    .species_ids
                    .iter()
                    .map(|&s| world.species_ids[s as usize].to_string())
                    .collect();
                writeln!(w, "{},{}", out.id, ids.join(" "))
                    .map_err(|e| DataError::io(&solution_path, None, e))?;
            }
        }
        bar.inc(chunk.len() as u64);
    }
    meta.flush()
        .map_err(|e| DataError::io(&meta_path, None, e))?;
    stats.bytes += file_len(&meta_path)?;
    for (path, mut w) in env {
        w.flush().map_err(|e| DataError::io(&path, None, e))?;
        stats.bytes += file_len(&path)?;
    }
    monthly
        .flush()
        .map_err(|e| DataError::io(&monthly_path, None, e))?;
    stats.bytes += file_len(&monthly_path)?;
    if let Some(mut w) = solution {
        w.flush()
            .map_err(|e| DataError::io(&solution_path, None, e))?;
        stats.bytes += file_len(&solution_path)?;
    }
    stats.species_seen = seen.iter().filter(|&&b| b).count();
    stats.mean_species = species_total as f64 / sites.len().max(1) as f64;
    Ok(stats)
}

fn file_len(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)
        .map_err(|e| DataError::io(path, None, e))?
        .len())
}

/// Every value of one synthetic survey, as written to the files (before JPEG compression
/// for the patches): the ground truth for round-trip tests of readers and caches.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSurvey {
    pub survey_id: u64,
    pub split: Split,
    pub lon: f64,
    pub lat: f64,
    /// Distinct species ids present, ascending.
    pub species: Vec<u32>,
    /// The latent factors (see the module doc; two per modality).
    pub factors: [f64; FACTORS],
    /// The 46 tabular columns `(name, value)` as written: NaN for an empty cell.
    pub tabular: Vec<(String, f64)>,
    /// Landsat cube in C order of (6, 4, 21); NaN where the file holds NaN.
    pub landsat: Vec<f32>,
    /// Bioclimatic cube in C order of (4, 19, 12); also the row of the monthly climate CSV.
    pub bioclim: Vec<f32>,
    /// RGB patch, 128x128x3 interleaved, before JPEG encoding.
    pub rgb: Vec<u8>,
    /// NIR patch, 128x128, before JPEG encoding.
    pub nir: Vec<u8>,
}

/// A survey's values plus the text rows and random draws the writer needs.
struct Generated {
    survey: SyntheticSurvey,
    species_idx: Vec<u32>,
    meta: String,
    env: [String; 5],
    rows: usize,
    sid_draws: [u64; 2],
}

/// Parses a written cell back to the value a reader sees (empty -> NaN).
fn cell_value(text: &str) -> f64 {
    text.parse().unwrap_or(f64::NAN)
}

/// Generates every value of one survey (no I/O).
fn generate(cfg: &SynthConfig, world: &World, split: Split, site: &Site) -> Generated {
    let mut rng = world::rng_for(cfg.seed, Stream::Survey, site.index);
    let z = world.factors(site.cluster, &mut rng);
    let species_idx = world.sample_species(site.cluster, &z, &mut rng);
    let (lon, lat) = world.site_position(site.cluster, &mut rng);

    // Metadata rows.
    let year = rng.random_range(2017..=2021);
    let unc = if rng.random::<f64>() < 0.05 {
        String::new()
    } else {
        fmt_f(*pick(&mut rng, &[5.0, 10.0, 11.0, 25.0, 50.0, 100.0]))
    };
    let area = match rng.random::<f64>() {
        u if u < 0.03 => "inf".to_string(),
        u if u < 0.035 => "-inf".to_string(),
        u if u < 0.055 => String::new(),
        _ => fmt_f(*pick(
            &mut rng,
            &[1.0, 4.0, 10.0, 25.0, 100.0, 150.0, 400.0],
        )),
    };
    let (region, country) = (region(lon, lat), country(lon, lat));
    let prefix = format!("{lon:.6},{lat:.6},{year},{unc},{area},{region},{country}");
    let mut meta = String::new();
    let mut rows = 0;
    match split {
        Split::Train => {
            for &s in &species_idx {
                let sid = world.species_ids[s as usize];
                let reps = 1 + usize::from(rng.random::<f64>() < cfg.duplicate_row_rate);
                for _ in 0..reps {
                    meta.push_str(&format!("{prefix},{sid}.0,{}\n", site.id));
                    rows += 1;
                }
            }
        }
        Split::Test => {
            meta.push_str(&format!("{prefix},{}\n", site.id));
            rows = 1;
        }
    }

    // Environmental rows, with occasional missing values like the real files.
    let e = world::render_env(&z, &mut rng);
    let missing = rng.random::<f64>() < cfg.missing_rate;
    let missing_kind = rng.random_range(0..4);
    let mut bio: Vec<String> = e.bio.iter().map(|&v| fmt_f(v)).collect();
    let mut elevation = fmt_f(e.elevation);
    let mut soil: Vec<String> = e.soil.iter().map(|&v| fmt_f(v)).collect();
    let mut footprint: Vec<String> = e.footprint.iter().map(|&v| fmt_f(v)).collect();
    if missing {
        match missing_kind {
            0 => elevation = String::new(),
            1 => soil.iter_mut().for_each(|v| v.clear()),
            2 => bio[rng.random_range(0..19)] = "inf".into(),
            _ => footprint[rng.random_range(0..16)] = "128.0".into(),
        }
    }
    if rng.random::<f64>() < 0.01 {
        // "No data" codes in human footprint (negative or >100).
        footprint[rng.random_range(0..16)] = "-1.0".into();
    }
    let landcover = fmt_f(e.landcover);
    let id = site.id;
    let env = [
        format!("{id},{}\n", bio.join(",")),
        format!("{id},{elevation}\n"),
        format!("{id},{}\n", footprint.join(",")),
        format!("{id},{landcover}\n"),
        format!("{id},{}\n", soil.join(",")),
    ];
    let mut tabular = Vec::with_capacity(46);
    for (table, cells) in
        EnvTable::ALL
            .into_iter()
            .zip([bio, vec![elevation], footprint, vec![landcover], soil])
    {
        for (name, cell) in table.columns().into_iter().zip(cells) {
            tabular.push((name, cell_value(&cell)));
        }
    }

    // Cubes: NaN in the most recent Landsat years for a few surveys.
    let nan_years = if rng.random::<f64>() < 2.0 * cfg.missing_rate {
        rng.random_range(1..=2)
    } else {
        0
    };
    let landsat = world::render_landsat(&z, &mut rng, nan_years);
    let bioclim = world::render_bioclim(&z, e.bio[0], &mut rng);
    let (rgb, nir) = world::render_patch(&z, &mut rng);
    let sid_draws = [
        rng.random_range(0..10_000_000_000_000_000_000),
        rng.random_range(0..10_000_000_000_000_000_000),
    ];
    let mut species: Vec<u32> = species_idx
        .iter()
        .map(|&s| world.species_ids[s as usize])
        .collect();
    species.sort_unstable();
    Generated {
        survey: SyntheticSurvey {
            survey_id: id,
            split,
            lon,
            lat,
            species,
            factors: z,
            tabular,
            landsat,
            bioclim,
            rgb,
            nir,
        },
        species_idx,
        meta,
        env,
        rows,
        sid_draws,
    }
}

/// Generates one survey, writes its cubes and patches, and returns its text rows.
fn render_survey(
    root: &Path,
    cfg: &SynthConfig,
    world: &World,
    split: Split,
    site: &Site,
) -> Result<SurveyOut> {
    let g = generate(cfg, world, split, site);
    let id = site.id;
    let sv = &g.survey;
    let mut bytes = 0u64;
    for (rel, stem, values, size, stride, draw) in [
        (
            layout::landsat_cube(split, id),
            layout::landsat_stem(split, id),
            &sv.landsat,
            world::LANDSAT_SIZE,
            world::LANDSAT_STRIDE,
            g.sid_draws[0],
        ),
        (
            layout::bioclim_cube(split, id),
            layout::bioclim_stem(split, id),
            &sv.bioclim,
            world::BIOCLIM_SIZE,
            world::BIOCLIM_STRIDE,
            g.sid_draws[1],
        ),
    ] {
        let storage = world::to_storage(values, size, stride);
        let sid = torch_pt::serialization_id(
            draw,
            u64::from(torch_pt::crc32(bytemuck::cast_slice(&storage))),
        );
        let data = torch_pt::encode_pt(
            &stem,
            torch_pt::PtTensor {
                size: &size,
                stride: &stride,
                offset: 0,
                storage: &storage,
            },
            &sid,
        );
        bytes += write_file(&root.join(rel), &data, id)?;
    }

    for (kind, pixels, color) in [
        (PatchKind::Rgb, &sv.rgb, image::ExtendedColorType::Rgb8),
        (PatchKind::Nir, &sv.nir, image::ExtendedColorType::L8),
    ] {
        let mut jpeg = Vec::with_capacity(8192);
        let side = world::PATCH as u32;
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, cfg.jpeg_quality)
            .encode(pixels, side, side, color)
            .map_err(|err| DataError::Image {
                path: root.join(layout::patch(split, kind, id)),
                survey: id.into(),
                reason: format!("JPEG encoding failed: {err}"),
            })?;
        bytes += write_file(&root.join(layout::patch(split, kind, id)), &jpeg, id)?;
    }

    // The monthly climate CSV row: the cube's values in C order (see
    // `layout::monthly_climate_columns`); NaN as an empty cell, like pandas writes it.
    let mut monthly = String::with_capacity(8 * sv.bioclim.len() + 16);
    monthly.push_str(&id.to_string());
    for &v in &sv.bioclim {
        monthly.push(',');
        if !v.is_nan() {
            monthly.push_str(&fmt_f(f64::from(v)));
        }
    }
    monthly.push('\n');

    let latents = format!(
        "{id},{split}{}\n",
        sv.factors
            .iter()
            .map(|v| format!(",{v:.5}"))
            .collect::<String>()
    );
    Ok(SurveyOut {
        id,
        meta: g.meta,
        env: g.env,
        monthly,
        latents,
        species_ids: g.species_idx,
        rows: g.rows,
        files: 4,
        bytes,
    })
}

fn write_file(path: &Path, data: &[u8], id: u64) -> Result<u64> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| DataError::io(parent, id, e))?;
    }
    fs::write(path, data).map_err(|e| DataError::io(path, id, e))?;
    Ok(data.len() as u64)
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Formats a value like pandas writes floats (`5335.0`, `12.5`).
fn fmt_f(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Biogeographic region name from a crude lon/lat rule (as in the `region` column).
fn region(lon: f64, lat: f64) -> &'static str {
    if lat > 60.0 {
        "BOREAL"
    } else if (44.5..48.0).contains(&lat) && (6.0..16.0).contains(&lon) {
        "ALPINE"
    } else if (45.5..48.5).contains(&lat) && (16.5..22.5).contains(&lon) {
        "PANNONIAN"
    } else if lat < 43.5 {
        "MEDITERRANEAN"
    } else if lon < 3.0 {
        "ATLANTIC"
    } else {
        "CONTINENTAL"
    }
}

/// Country name of the nearest approximate country centre.
fn country(lon: f64, lat: f64) -> &'static str {
    const CENTRES: [(&str, f64, f64); 24] = [
        ("France", 2.5, 46.5),
        ("Spain", -3.7, 40.2),
        ("Portugal", -8.0, 39.6),
        ("Italy", 12.5, 42.8),
        ("Germany", 10.4, 51.1),
        ("Poland", 19.4, 52.1),
        ("United Kingdom", -2.0, 53.5),
        ("Ireland", -8.0, 53.2),
        ("Netherlands", 5.3, 52.1),
        ("Belgium", 4.5, 50.6),
        ("Switzerland", 8.2, 46.8),
        ("Austria", 14.5, 47.5),
        ("Czech Republic", 15.3, 49.8),
        ("Hungary", 19.5, 47.2),
        ("Denmark", 9.5, 56.0),
        ("Sweden", 15.5, 62.0),
        ("Norway", 9.0, 61.5),
        ("Finland", 26.0, 63.5),
        ("Romania", 25.0, 45.9),
        ("Greece", 22.0, 39.5),
        ("Croatia", 16.0, 45.1),
        ("Slovakia", 19.7, 48.7),
        ("Bulgaria", 25.5, 42.7),
        ("Estonia", 25.5, 58.7),
    ];
    let d = |&(_, x, y): &(&str, f64, f64)| (x - lon).powi(2) + (y - lat).powi(2);
    CENTRES
        .iter()
        .min_by(|a, b| d(a).total_cmp(&d(b)))
        .map_or("France", |c| c.0)
}
