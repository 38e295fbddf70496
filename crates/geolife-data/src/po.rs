//! Streaming reader of the presence-only metadata (`GLC24_P0_metadata_train.csv`, ~5M rows):
//! an iterator of typed records with one reused buffer, columns found by header name.

use std::path::Path;

use crate::csvutil::{CsvFile, Row, csv_err, survey_of};
use crate::{DataError, Result};

/// One presence-only occurrence (single species).
#[derive(Debug, Clone, PartialEq)]
pub struct PoRecord {
    pub survey_id: u64,
    pub species_id: u32,
    pub lon: f64,
    pub lat: f64,
    /// Empty -> `None` (as for all optional fields).
    pub year: Option<i32>,
    pub month: Option<u8>,
    pub day: Option<u8>,
    pub day_of_year: Option<u16>,
    pub geo_uncertainty_m: Option<f64>,
}

/// Iterator over the PO file. With `skip_bad`, rows that do not parse are counted in
/// [`PoReader::skipped`] instead of ending the iteration with an error.
pub struct PoReader {
    csv: CsvFile,
    cols: [usize; 5],
    opt: [Option<usize>; 5],
    rec: csv::ByteRecord,
    skip_bad: bool,
    skipped: usize,
    first_error: Option<DataError>,
    done: bool,
}

impl PoReader {
    /// Opens the file and resolves its columns.
    pub fn open(path: &Path, skip_bad: bool) -> Result<PoReader> {
        let csv = CsvFile::open(path, "presence-only metadata")?;
        let cols = [
            csv.column("surveyId")?,
            csv.column("speciesId")?,
            csv.column("lon")?,
            csv.column("lat")?,
            csv.column("year")?,
        ];
        let opt = [
            csv.find("month"),
            csv.find("day"),
            csv.find("dayOfYear"),
            csv.find("geoUncertaintyInM"),
            None,
        ];
        Ok(PoReader {
            csv,
            cols,
            opt,
            rec: csv::ByteRecord::new(),
            skip_bad,
            skipped: 0,
            first_error: None,
            done: false,
        })
    }

    /// Rows skipped so far (only with `skip_bad`).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The first skipped row's error, for the report.
    pub fn first_error(&self) -> Option<&DataError> {
        self.first_error.as_ref()
    }

    fn parse(&self, line: u64) -> Result<PoRecord> {
        let rec = &self.rec;
        let [c_id, c_sp, c_lon, c_lat, c_year] = self.cols;
        let row = Row {
            path: &self.csv.path,
            line,
            survey: survey_of(rec, c_id).into(),
        };
        let small = |c: Option<usize>, name: &str, max: u64| -> Result<Option<u64>> {
            let Some(c) = c else { return Ok(None) };
            let t = row.text(rec, c, name)?;
            if t.is_empty() {
                return Ok(None);
            }
            crate::csvutil::parse_id(t, max)
                .map(Some)
                .ok_or_else(|| row.err(name, format!("expected an integer <= {max}, found `{t}`")))
        };
        Ok(PoRecord {
            survey_id: row.id(rec, c_id, "surveyId", u64::MAX)?,
            species_id: row.id(rec, c_sp, "speciesId", u32::MAX as u64)? as u32,
            lon: row.f64(rec, c_lon, "lon")?,
            lat: row.f64(rec, c_lat, "lat")?,
            year: small(Some(c_year), "year", 9999)?.map(|v| v as i32),
            month: small(self.opt[0], "month", 12)?.map(|v| v as u8),
            day: small(self.opt[1], "day", 31)?.map(|v| v as u8),
            day_of_year: small(self.opt[2], "dayOfYear", 366)?.map(|v| v as u16),
            geo_uncertainty_m: match self.opt[3] {
                Some(c) => row.opt_f64(rec, c, "geoUncertaintyInM")?,
                None => None,
            },
        })
    }
}

impl Iterator for PoReader {
    type Item = Result<PoRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let line = match self.csv.reader.read_byte_record(&mut self.rec) {
                Ok(true) => self.rec.position().map(|p| p.line()).unwrap_or(0),
                Ok(false) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    let err = csv_err(&self.csv.path, 0, None, e);
                    if self.skip_bad {
                        self.skipped += 1;
                        self.first_error.get_or_insert(err);
                        continue;
                    }
                    self.done = true;
                    return Some(Err(err));
                }
            };
            match self.parse(line) {
                Ok(r) => return Some(Ok(r)),
                Err(e) if self.skip_bad => {
                    self.skipped += 1;
                    self.first_error.get_or_insert(e);
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// Groups PO records into per-survey species SETS (sorted distinct ids), sorted by survey id:
/// the same label convention as the PA metadata.
pub fn po_labels(path: &Path, skip_bad: bool) -> Result<(Vec<u64>, Vec<Vec<u32>>, usize)> {
    let mut reader = PoReader::open(path, skip_bad)?;
    let mut pairs: Vec<(u64, u32)> = Vec::new();
    for r in reader.by_ref() {
        let r = r?;
        pairs.push((r.survey_id, r.species_id));
    }
    pairs.sort_unstable();
    pairs.dedup();
    let mut ids = Vec::new();
    let mut labels: Vec<Vec<u32>> = Vec::new();
    for (s, sp) in pairs {
        if ids.last() != Some(&s) {
            ids.push(s);
            labels.push(Vec::new());
        }
        if let Some(l) = labels.last_mut() {
            l.push(sp);
        }
    }
    Ok((ids, labels, reader.skipped()))
}
