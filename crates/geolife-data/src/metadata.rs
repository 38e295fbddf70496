//! PA metadata (train and test): one record per survey (de-duplicated, sorted by id) and, for
//! train, the SET of species of each survey built from all rows before de-duplication. Rows of
//! one survey that disagree on a survey field are listed in [`PaMetadata::conflicts`].

use std::collections::HashMap;
use std::path::Path;

use crate::csvutil::{CsvFile, Row, csv_err, survey_of};
use crate::error::RowConflict;
use crate::{DataError, Result, Split};

/// One PA survey as described by its first metadata row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SurveyMeta {
    pub survey_id: u64,
    pub lon: f64,
    pub lat: f64,
    pub year: i32,
    /// `geoUncertaintyInM`; empty -> `None`.
    pub geo_uncertainty_m: Option<f64>,
    /// `areaInM2`; empty -> `None`, `inf`/`-inf` kept as read.
    pub area_m2: Option<f64>,
    pub region: String,
    pub country: String,
}

/// A parsed PA metadata file.
#[derive(Debug, Clone, Default)]
pub struct PaMetadata {
    /// One entry per survey, sorted by `survey_id`.
    pub surveys: Vec<SurveyMeta>,
    /// Sorted distinct species per survey, aligned with `surveys`; `None` without `speciesId`.
    pub labels: Option<Vec<Vec<u32>>>,
    /// Data rows in the file.
    pub rows: usize,
    /// Rows that repeat an earlier (survey, species) pair.
    pub duplicate_rows: usize,
    /// Surveys whose rows disagree on a survey field (lon, lat, year, geoUncertaintyInM,
    /// areaInM2, region, country): the first row describes the survey, the survey is listed
    /// here (one entry per survey, by id) for the caller to refuse or skip.
    pub conflicts: Vec<RowConflict>,
}

impl PaMetadata {
    /// Index of `survey_id` in `surveys`.
    pub fn index_of(&self, survey_id: u64) -> Option<usize> {
        self.surveys
            .binary_search_by_key(&survey_id, |s| s.survey_id)
            .ok()
    }

    /// Number of distinct species over all labels.
    pub fn n_species(&self) -> usize {
        let mut all: Vec<u32> = self.labels.iter().flatten().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    }
}

/// Reads a PA metadata CSV. Columns are found by header name; `speciesId` is required for
/// train, ignored when absent (test).
pub fn read_pa_metadata(path: &Path, split: Split) -> Result<PaMetadata> {
    let mut csv = CsvFile::open(path, &format!("PA {split} metadata"))?;
    let c_id = csv.column("surveyId")?;
    let c_lon = csv.column("lon")?;
    let c_lat = csv.column("lat")?;
    let c_year = csv.column("year")?;
    let c_unc = csv.column("geoUncertaintyInM")?;
    let c_area = csv.column("areaInM2")?;
    let c_region = csv.column("region")?;
    let c_country = csv.column("country")?;
    let cols = SurveyColumns {
        lon: c_lon,
        lat: c_lat,
        year: c_year,
        unc: c_unc,
        area: c_area,
        region: c_region,
        country: c_country,
    };
    let c_species = match split {
        Split::Train => Some(csv.column("speciesId")?),
        Split::Test => csv.find("speciesId"),
    };

    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut surveys: Vec<SurveyMeta> = Vec::new();
    let mut labels: Vec<Vec<u32>> = Vec::new();
    let mut first_lines: Vec<u64> = Vec::new();
    let mut conflicts: Vec<RowConflict> = Vec::new();
    let mut conflicted: std::collections::HashSet<u64> = std::collections::HashSet::new();
    let mut rows = 0usize;
    let mut rec = csv::ByteRecord::new();
    let mut line = 1u64;
    loop {
        match csv.reader.read_byte_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_err(&csv.path, line + 1, None, e)),
        }
        line = rec.position().map(|p| p.line()).unwrap_or(line + 1);
        rows += 1;
        let row = Row {
            path: &csv.path,
            line,
            survey: survey_of(&rec, c_id).into(),
        };
        let id = row.id(&rec, c_id, "surveyId", u64::MAX)?;
        let species = match c_species {
            Some(c) => Some(row.id(&rec, c, "speciesId", u32::MAX as u64)? as u32),
            None => None,
        };
        let i = match index.get(&id) {
            Some(&i) => {
                if !conflicted.contains(&id)
                    && let Some((column, first, other)) =
                        survey_difference(&row, &rec, &surveys[i], cols)?
                {
                    conflicted.insert(id);
                    conflicts.push(RowConflict {
                        survey_id: id,
                        first_line: first_lines[i],
                        line,
                        column: column.into(),
                        first,
                        other,
                    });
                }
                i
            }
            None => {
                let year = row.f64(&rec, c_year, "year")?;
                if !(year.fract() == 0.0 && (0.0..=9999.0).contains(&year)) {
                    return Err(row.err("year", format!("expected a year, found {year}")));
                }
                let year = year as i32;
                let lon = row.f64(&rec, c_lon, "lon")?;
                let lat = row.f64(&rec, c_lat, "lat")?;
                if !(lon.is_finite() && lat.is_finite()) {
                    return Err(DataError::NonFinite {
                        path: csv.path.clone(),
                        survey: id.into(),
                        what: format!("coordinates lon={lon}, lat={lat} (line {line})"),
                    });
                }
                surveys.push(SurveyMeta {
                    survey_id: id,
                    lon,
                    lat,
                    year,
                    geo_uncertainty_m: row.opt_f64(&rec, c_unc, "geoUncertaintyInM")?,
                    area_m2: row.opt_f64(&rec, c_area, "areaInM2")?,
                    region: row.text(&rec, c_region, "region")?.to_owned(),
                    country: row.text(&rec, c_country, "country")?.to_owned(),
                });
                labels.push(Vec::new());
                first_lines.push(line);
                index.insert(id, surveys.len() - 1);
                surveys.len() - 1
            }
        };
        if let Some(s) = species {
            labels[i].push(s);
        }
    }

    // Sort surveys by id, carrying labels along.
    let mut order: Vec<usize> = (0..surveys.len()).collect();
    order.sort_unstable_by_key(|&i| surveys[i].survey_id);
    let mut duplicate_rows = 0;
    let mut sorted_labels = Vec::with_capacity(order.len());
    for &i in &order {
        let mut l = std::mem::take(&mut labels[i]);
        let before = l.len();
        l.sort_unstable();
        l.dedup();
        duplicate_rows += before - l.len();
        sorted_labels.push(l);
    }
    let surveys = order.iter().map(|&i| surveys[i].clone()).collect();
    conflicts.sort_by_key(|c| c.survey_id);
    Ok(PaMetadata {
        surveys,
        labels: c_species.map(|_| sorted_labels),
        rows,
        duplicate_rows,
        conflicts,
    })
}

/// Column indices of the per-survey fields.
#[derive(Clone, Copy)]
struct SurveyColumns {
    lon: usize,
    lat: usize,
    year: usize,
    unc: usize,
    area: usize,
    region: usize,
    country: usize,
}

/// The first survey field in which a later row of a survey differs from its first row, as
/// (column, first value, this row's value). Numbers compare by value (`5.0` = `5`; NaN =
/// NaN; empty = empty).
fn survey_difference(
    row: &Row<'_>,
    rec: &csv::ByteRecord,
    first: &SurveyMeta,
    c: SurveyColumns,
) -> Result<Option<(&'static str, String, String)>> {
    let same = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan());
    let show = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    let opt_same = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => same(a, b),
        (None, None) => true,
        _ => false,
    };
    for (name, a, b) in [
        ("lon", first.lon, row.f64(rec, c.lon, "lon")?),
        ("lat", first.lat, row.f64(rec, c.lat, "lat")?),
        ("year", f64::from(first.year), row.f64(rec, c.year, "year")?),
    ] {
        if !same(a, b) {
            return Ok(Some((name, a.to_string(), b.to_string())));
        }
    }
    for (name, a, b) in [
        (
            "geoUncertaintyInM",
            first.geo_uncertainty_m,
            row.opt_f64(rec, c.unc, "geoUncertaintyInM")?,
        ),
        (
            "areaInM2",
            first.area_m2,
            row.opt_f64(rec, c.area, "areaInM2")?,
        ),
    ] {
        if !opt_same(a, b) {
            return Ok(Some((name, show(a), show(b))));
        }
    }
    for (name, a, b) in [
        ("region", &first.region, row.text(rec, c.region, "region")?),
        (
            "country",
            &first.country,
            row.text(rec, c.country, "country")?,
        ),
    ] {
        if a != b {
            return Ok(Some((name, a.clone(), b.to_string())));
        }
    }
    Ok(None)
}
