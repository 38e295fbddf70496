//! Presence-only records of the synthetic dataset (`GLC24_P0_metadata_train.csv`, with a zero),
//! biased the way real PO data is, yet drawn from the same occurrence model as the PA labels.
//!
//! # Generative process
//! All draws come from the [`Stream::Po`] generators, so every other file of the dataset is
//! byte-identical whatever the number of PO records (and none is written for 0).
//! 1. Observer effort: `H = max(2, clusters / 10)` hotspot clusters, each with a hotspot point
//!    placed like a survey site. A record comes from a hotspot with probability 0.7 (hotspot
//!    `h` of `H` chosen with weight `1 / (h + 1)`: a few places get most records), otherwise
//!    from a uniformly chosen cluster.
//! 2. True position: the hotspot point plus N(0, 0.05 degrees) per axis for a hotspot record;
//!    a survey-like site of the cluster (centre plus N(0, 0.3) lon, N(0, 0.2) lat) otherwise.
//! 3. Species, one per record: the cluster's occurrence model (the PA model of step 4 of the
//!    dataset: `p_s = sigmoid(b_s + w_s . z + u_{cluster,s})`) at one of 64 virtual sites of
//!    the cluster (factors drawn like a survey's), reported with weight `p_s^1.5 * showy_s`:
//!    common species are over-reported (power 1.5) and so are showy ones (`showy_s =
//!    exp(N(0, 1))`, fixed per species). So where a species is reported says where it lives,
//!    and how often it is reported does not say how common it is.
//! 4. Reported coordinates: the true position plus Gaussian jitter of standard deviation
//!    `geoUncertaintyInM / 2` metres per axis, with `geoUncertaintyInM` drawn from 50-1000 m
//!    (mostly a few hundred metres) and written in its column.
//! 5. The rest: year 2017-2021, a day of the growing season (day 60-300, with the matching
//!    `month`, `day` and `date`), a publisher from a short list, `taxonRank` SPECIES, and one
//!    `surveyId` per record: `FIRST_SURVEY_ID` + row (PA ids stay below 4,000,000).
//!
//! Records are written cluster by cluster (clusters in order, each cluster's records in the
//! order drawn); each cluster draws from its own generator, so the file is identical for a
//! seed whatever the thread count.

use std::io::Write;
use std::path::Path;

use rand::Rng;
use rayon::prelude::*;

use super::world::{self, Stream, World};
use super::{SynthConfig, create, file_len, fmt_f, pick};
use crate::layout::PO_METADATA_TRAIN;
use crate::{DataError, Result};

/// Records per PA train survey when `po_records` is not set.
pub const PER_TRAIN_SURVEY: usize = 10;
/// `surveyId` of the first record.
pub const FIRST_SURVEY_ID: u64 = 4_000_001;
/// Header of the file: the official columns in the official order.
pub const HEADER: &str = "publisher,year,month,day,lat,lon,geoUncertaintyInM,taxonRank,date,dayOfYear,surveyId,speciesId";

const HOTSPOT_SHARE: f64 = 0.7;
const HOTSPOT_SD_DEG: f64 = 0.05;
const VIRTUAL_SITES: usize = 64;
const COMMON_POWER: f64 = 1.5;
const SHOWY_SD: f64 = 1.0;
/// `geoUncertaintyInM` values; repeats weight the draw towards a few hundred metres.
const UNCERTAINTY_M: [f64; 10] = [
    50.0, 100.0, 200.0, 250.0, 250.0, 300.0, 400.0, 500.0, 500.0, 1000.0,
];
const PUBLISHERS: [&str; 4] = ["iNaturalist", "Pl@ntNet", "Observation.org", "Artportalen"];
/// Metres per degree of latitude.
const M_PER_DEG: f64 = 111_320.0;
/// Clusters rendered per parallel batch (bounds the text held in memory).
const CHUNK: usize = 16;

/// Who observes where: the per-cluster record counts and the species' showiness.
struct Effort {
    /// Hotspot point of each cluster that has one.
    hotspot: Vec<Option<(f64, f64)>>,
    /// Per cluster: (hotspot records, background records).
    counts: Vec<(usize, usize)>,
    /// Per species: reporting weight multiplier.
    showy: Vec<f64>,
}

impl Effort {
    fn new(cfg: &SynthConfig, world: &World, n: usize) -> Effort {
        let mut rng = world::rng_for(cfg.seed, Stream::Po, 0);
        let nc = world.clusters.len();
        let h = (nc / 10).clamp(2.min(nc), nc);
        let mut order: Vec<usize> = (0..nc).collect();
        for i in 0..h {
            let j = rng.random_range(i..nc);
            order.swap(i, j);
        }
        let mut hotspot = vec![None; nc];
        for &c in &order[..h] {
            hotspot[c] = Some(world.site_position(c, &mut rng));
        }
        let mut cumulative = Vec::with_capacity(h);
        let mut total = 0.0;
        for i in 0..h {
            total += 1.0 / (i as f64 + 1.0);
            cumulative.push(total);
        }
        let showy = (0..world.species_ids.len())
            .map(|_| (SHOWY_SD * world::normal(&mut rng)).exp())
            .collect();
        let mut counts = vec![(0, 0); nc];
        for _ in 0..n {
            if rng.random::<f64>() < HOTSPOT_SHARE {
                let u = rng.random::<f64>() * total;
                let i = cumulative.partition_point(|&x| x < u).min(h - 1);
                counts[order[i]].0 += 1;
            } else {
                counts[rng.random_range(0..nc)].1 += 1;
            }
        }
        Effort {
            hotspot,
            counts,
            showy,
        }
    }
}

/// Writes `GLC24_P0_metadata_train.csv` with `n` records into `root`; returns its size in
/// bytes. Writes nothing for `n = 0`.
pub(super) fn write_po(root: &Path, cfg: &SynthConfig, world: &World, n: usize) -> Result<u64> {
    if n == 0 {
        return Ok(0);
    }
    let effort = Effort::new(cfg, world, n);
    let mut first_id = Vec::with_capacity(effort.counts.len());
    let mut next = FIRST_SURVEY_ID;
    for &(a, b) in &effort.counts {
        first_id.push(next);
        next += (a + b) as u64;
    }
    let path = root.join(PO_METADATA_TRAIN);
    let mut w = create(&path)?;
    writeln!(w, "{HEADER}").map_err(|e| DataError::io(&path, None, e))?;
    let clusters: Vec<usize> = (0..effort.counts.len()).collect();
    for chunk in clusters.chunks(CHUNK) {
        let texts: Vec<String> = chunk
            .par_iter()
            .map(|&c| cluster_records(cfg, world, &effort, c, first_id[c]))
            .collect();
        for t in texts {
            w.write_all(t.as_bytes())
                .map_err(|e| DataError::io(&path, None, e))?;
        }
    }
    w.flush().map_err(|e| DataError::io(&path, None, e))?;
    file_len(&path)
}

/// The CSV rows of cluster `c`'s records.
fn cluster_records(
    cfg: &SynthConfig,
    world: &World,
    effort: &Effort,
    c: usize,
    first_id: u64,
) -> String {
    let (n_hot, n_bg) = effort.counts[c];
    if n_hot + n_bg == 0 {
        return String::new();
    }
    let mut rng = world::rng_for(cfg.seed, Stream::Po, 1 + c as u64);
    // Cumulative reporting weights of the species at each virtual site.
    let sites: Vec<Vec<f64>> = (0..VIRTUAL_SITES)
        .map(|_| {
            let z = world.factors(c, &mut rng);
            let mut total = 0.0;
            world
                .logits(c, &z)
                .zip(&effort.showy)
                .map(|(logit, showy)| {
                    let p = 1.0 / (1.0 + (-logit).exp());
                    total += p.powf(COMMON_POWER) * showy;
                    total
                })
                .collect()
        })
        .collect();
    let mut out = String::with_capacity((n_hot + n_bg) * 96);
    for r in 0..n_hot + n_bg {
        let (lon, lat) = match effort.hotspot[c] {
            Some((hx, hy)) if r < n_hot => (
                hx + HOTSPOT_SD_DEG * world::normal(&mut rng),
                hy + HOTSPOT_SD_DEG * world::normal(&mut rng),
            ),
            _ => world.site_position(c, &mut rng),
        };
        let cumulative = &sites[rng.random_range(0..VIRTUAL_SITES)];
        let total = cumulative.last().copied().unwrap_or(0.0);
        let u = rng.random::<f64>() * total;
        let s = cumulative
            .partition_point(|&x| x < u)
            .min(cumulative.len() - 1);
        let unc = *pick(&mut rng, &UNCERTAINTY_M);
        let lat = (lat + 0.5 * unc * world::normal(&mut rng) / M_PER_DEG).clamp(-90.0, 90.0);
        let lon = lon + 0.5 * unc * world::normal(&mut rng) / (M_PER_DEG * lat.to_radians().cos());
        let year: i32 = rng.random_range(2017..=2021);
        let doy: u32 = rng.random_range(60..=300);
        let (month, day) = month_day(year, doy);
        let publisher = pick(&mut rng, &PUBLISHERS);
        let id = first_id + r as u64;
        let sid = world.species_ids[s];
        out.push_str(&format!(
            "{publisher},{year},{month},{day},{lat:.5},{lon:.5},{},SPECIES,{year}-{month:02}-{day:02},{doy},{id},{sid}.0\n",
            fmt_f(unc)
        ));
    }
    out
}

/// Month and day of month (both 1-based) of day `doy` (1-based) of `year`.
fn month_day(year: i32, doy: u32) -> (u32, u32) {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let lengths = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut d = doy;
    for (m, len) in lengths.into_iter().enumerate() {
        if d <= len {
            return (m as u32 + 1, d);
        }
        d -= len;
    }
    (12, 31)
}

#[cfg(test)]
mod tests {
    use super::month_day;

    #[test]
    fn days_of_year_map_to_calendar_dates() {
        assert_eq!(month_day(2019, 1), (1, 1));
        assert_eq!(month_day(2019, 60), (3, 1));
        assert_eq!(month_day(2020, 60), (2, 29));
        assert_eq!(month_day(2019, 163), (6, 12));
        assert_eq!(month_day(2019, 365), (12, 31));
    }
}
