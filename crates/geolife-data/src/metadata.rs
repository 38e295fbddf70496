//! PA metadata (train and test): one record per survey (de-duplicated, sorted by id) and, for
//! train, the SET of species of each survey built from all rows before de-duplication.

use std::collections::HashMap;
use std::path::Path;

use crate::csvutil::{CsvFile, Row, csv_err, survey_of};
use crate::{DataError, Result, Split};

/// One PA survey as described by its first metadata row.
#[derive(Debug, Clone, PartialEq)]
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
    let c_species = match split {
        Split::Train => Some(csv.column("speciesId")?),
        Split::Test => csv.find("speciesId"),
    };

    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut surveys: Vec<SurveyMeta> = Vec::new();
    let mut labels: Vec<Vec<u32>> = Vec::new();
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
            Some(&i) => i,
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
    Ok(PaMetadata {
        surveys,
        labels: c_species.map(|_| sorted_labels),
        rows,
        duplicate_rows,
    })
}
