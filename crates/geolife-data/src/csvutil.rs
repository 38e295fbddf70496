//! Small CSV helpers shared by the readers: open with a header, find columns by name, parse
//! fields with errors that name the file, the line, the survey and the column.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::{DataError, Result, SurveyTag};

/// A CSV reader plus its path, for error messages.
pub struct CsvFile {
    pub path: PathBuf,
    pub reader: csv::Reader<BufReader<File>>,
    pub headers: csv::ByteRecord,
}

impl CsvFile {
    /// Opens `path` (missing -> [`DataError::Missing`] with `what`).
    pub fn open(path: &Path, what: &str) -> Result<CsvFile> {
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                DataError::Missing {
                    path: path.to_path_buf(),
                    survey: None.into(),
                    what: what.into(),
                    hint: "check the dataset root and that the archive is fully unzipped".into(),
                }
            } else {
                DataError::io(path, None, e)
            }
        })?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .buffer_capacity(1 << 20)
            .from_reader(BufReader::with_capacity(1 << 20, file));
        let headers = reader
            .byte_headers()
            .map_err(|e| csv_err(path, 1, None, e))?
            .clone();
        Ok(CsvFile {
            path: path.to_path_buf(),
            reader,
            headers,
        })
    }

    /// Index of column `name` (exact match after trimming whitespace and a BOM).
    pub fn column(&self, name: &str) -> Result<usize> {
        self.find(name).ok_or_else(|| DataError::MissingColumn {
            path: self.path.clone(),
            column: name.into(),
            header: self.header_text(),
        })
    }

    /// Index of column `name`, if present.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.headers
            .iter()
            .position(|h| clean_header(h) == name.as_bytes())
    }

    /// The header as text, for messages.
    pub fn header_text(&self) -> String {
        let names: Vec<String> = self
            .headers
            .iter()
            .map(|h| String::from_utf8_lossy(clean_header(h)).into_owned())
            .collect();
        let mut s = names.join(",");
        if s.len() > 300 {
            // Cut at a character boundary: a header may hold multi-byte UTF-8.
            let cut = (0..=300)
                .rev()
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(0);
            s.truncate(cut);
            s.push_str("...");
        }
        s
    }

    /// Column names (cleaned) in header order.
    pub fn header_names(&self) -> Vec<String> {
        self.headers
            .iter()
            .map(|h| String::from_utf8_lossy(clean_header(h)).into_owned())
            .collect()
    }
}

fn clean_header(h: &[u8]) -> &[u8] {
    let h = h.strip_prefix(b"\xef\xbb\xbf").unwrap_or(h);
    h.trim_ascii()
}

/// A CSV-level error (bad quoting, wrong field count, ...).
pub fn csv_err(path: &Path, line: u64, survey: Option<u64>, e: csv::Error) -> DataError {
    let line = e.position().map(|p| p.line()).unwrap_or(line);
    DataError::Csv {
        path: path.to_path_buf(),
        line,
        survey: survey.into(),
        reason: e.to_string(),
    }
}

/// Parse context of one record.
pub struct Row<'a> {
    pub path: &'a Path,
    pub line: u64,
    pub survey: SurveyTag,
}

impl Row<'_> {
    /// An error for `column` with `reason`.
    pub fn err(&self, column: &str, reason: impl std::fmt::Display) -> DataError {
        DataError::Csv {
            path: self.path.to_path_buf(),
            line: self.line,
            survey: self.survey,
            reason: format!("column `{column}`: {reason}"),
        }
    }

    /// A field as trimmed UTF-8 text.
    pub fn text<'r>(&self, rec: &'r csv::ByteRecord, i: usize, column: &str) -> Result<&'r str> {
        let raw = rec
            .get(i)
            .ok_or_else(|| self.err(column, "field missing"))?;
        std::str::from_utf8(raw)
            .map(str::trim)
            .map_err(|_| self.err(column, "not valid UTF-8"))
    }

    /// A required float (`inf`, `-inf`, `nan` accepted and kept).
    pub fn f64(&self, rec: &csv::ByteRecord, i: usize, column: &str) -> Result<f64> {
        let t = self.text(rec, i, column)?;
        t.parse::<f64>()
            .map_err(|_| self.err(column, format!("expected a number, found `{t}`")))
    }

    /// An optional float: empty -> `None`.
    pub fn opt_f64(&self, rec: &csv::ByteRecord, i: usize, column: &str) -> Result<Option<f64>> {
        let t = self.text(rec, i, column)?;
        if t.is_empty() {
            return Ok(None);
        }
        t.parse::<f64>()
            .map(Some)
            .map_err(|_| self.err(column, format!("expected a number or nothing, found `{t}`")))
    }

    /// An f32 value as read: empty -> NaN, `inf`/`nan` kept; parsed directly as f32 so a
    /// decimal rounds once.
    pub fn f32_raw(&self, rec: &csv::ByteRecord, i: usize, column: &str) -> Result<f32> {
        let t = self.text(rec, i, column)?;
        if t.is_empty() {
            return Ok(f32::NAN);
        }
        t.parse::<f32>()
            .map_err(|_| self.err(column, format!("expected a number, found `{t}`")))
    }

    /// An integer id, accepting float formatting with a zero fraction (`6874.0`).
    pub fn id(&self, rec: &csv::ByteRecord, i: usize, column: &str, max: u64) -> Result<u64> {
        let t = self.text(rec, i, column)?;
        parse_id(t, max).ok_or_else(|| {
            self.err(
                column,
                format!("expected a non-negative integer id (<= {max}), found `{t}`"),
            )
        })
    }
}

/// Parses `123`, `123.0`, `123.`, `1.23e2` as an integer id in `0..=max`.
pub fn parse_id(t: &str, max: u64) -> Option<u64> {
    if let Ok(v) = t.parse::<u64>() {
        return (v <= max).then_some(v);
    }
    let f = t.parse::<f64>().ok()?;
    if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= max as f64 {
        Some(f as u64)
    } else {
        None
    }
}

/// The survey id of a record, if its `surveyId` field parses (for error tagging).
pub fn survey_of(rec: &csv::ByteRecord, i: usize) -> Option<u64> {
    let t = std::str::from_utf8(rec.get(i)?).ok()?.trim();
    parse_id(t, u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_formatted_ids_parse() {
        assert_eq!(parse_id("6874.0", u64::MAX), Some(6874));
        assert_eq!(parse_id("212", u64::MAX), Some(212));
        assert_eq!(parse_id("5.5", u64::MAX), None);
        assert_eq!(parse_id("-1", u64::MAX), None);
        assert_eq!(parse_id("inf", u64::MAX), None);
        assert_eq!(parse_id("", u64::MAX), None);
        assert_eq!(parse_id("70000", 65535), None);
    }
}
