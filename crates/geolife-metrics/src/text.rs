//! Reading score files ([`ScoreFile::read`]: the format sniffed from the bytes, the binary
//! one in `scores`), and the text formats: the Kaggle submission / solution CSV (`surveyId,
//! predictions`, species ids space-separated, ranked) and malpolon's `;`-separated top-N files
//! with probabilities. Columns are found by header name; every bad row is an error naming file
//! and line. `scores` (the type and its binary format) does not depend on this module.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::scores::{ScoreFile, Scores, looks_like_safetensors, read_safetensors};
use crate::{MetricsError, atomic::write_atomic};

impl ScoreFile {
    /// Reads a score file, sniffing its format: geolife safetensors, a Kaggle submission
    /// (`surveyId,predictions`, ranked, no scores) or a malpolon `;`-separated top-N file
    /// (`observation_id;...;predictions;probas`).
    pub fn read(path: &Path) -> Result<ScoreFile, MetricsError> {
        let bytes = std::fs::read(path).map_err(|e| MetricsError::io(path, e))?;
        ScoreFile::from_bytes(path, &bytes)
    }

    /// [`ScoreFile::read`] on the bytes of a score file already in memory (`origin` only
    /// names them in errors).
    pub fn from_bytes(origin: &Path, bytes: &[u8]) -> Result<ScoreFile, MetricsError> {
        let sf = if looks_like_safetensors(bytes) {
            read_safetensors(origin, bytes)?
        } else {
            read_text_scores(origin, bytes)?
        };
        sf.validate(origin)?;
        Ok(sf)
    }
}

/// Ground truth: the species present in each survey (sorted, de-duplicated).
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    /// Survey ids in file order; unique.
    pub survey_ids: Vec<u64>,
    /// Species of each survey, sorted ascending, duplicates removed.
    pub labels: Vec<Vec<u32>>,
    index: HashMap<u64, usize>,
}

/// Ground truth aligned to the rows of a score file.
#[derive(Debug, Clone)]
pub struct Alignment {
    /// Truth for each score row (empty where the survey is unknown to the solution).
    pub truth: Vec<Vec<u32>>,
    /// Whether each score row's survey is in the solution.
    pub known: Vec<bool>,
    /// Score rows whose survey is not in the solution (ignored when scoring).
    pub unknown_ids: Vec<u64>,
    /// Solution surveys without a score row (they score 0).
    pub missing_ids: Vec<u64>,
}

impl Solution {
    /// Builds a solution from ids and label lists (labels are sorted and de-duplicated).
    pub fn new(survey_ids: Vec<u64>, labels: Vec<Vec<u32>>) -> Result<Solution, MetricsError> {
        if survey_ids.len() != labels.len() {
            return Err(MetricsError::Invalid(format!(
                "{} survey ids but {} label lists",
                survey_ids.len(),
                labels.len()
            )));
        }
        let mut index = HashMap::with_capacity(survey_ids.len());
        for (i, &id) in survey_ids.iter().enumerate() {
            if index.insert(id, i).is_some() {
                return Err(MetricsError::Invalid(format!(
                    "survey {id} occurs twice in the solution"
                )));
            }
        }
        let labels = labels
            .into_iter()
            .map(|mut l| {
                l.sort_unstable();
                l.dedup();
                l
            })
            .collect();
        Ok(Solution {
            survey_ids,
            labels,
            index,
        })
    }

    /// Number of surveys.
    pub fn len(&self) -> usize {
        self.survey_ids.len()
    }

    /// True when there is no survey.
    pub fn is_empty(&self) -> bool {
        self.survey_ids.is_empty()
    }

    /// The true species of a survey, if it is in the solution.
    pub fn get(&self, survey_id: u64) -> Option<&[u32]> {
        self.index
            .get(&survey_id)
            .map(|&i| self.labels[i].as_slice())
    }

    /// Aligns the solution to score rows, counting unknown and missing surveys.
    pub fn align(&self, survey_ids: &[u64]) -> Alignment {
        let mut truth = Vec::with_capacity(survey_ids.len());
        let mut known = Vec::with_capacity(survey_ids.len());
        let mut unknown_ids = Vec::new();
        let mut present = HashSet::with_capacity(survey_ids.len());
        for &id in survey_ids {
            present.insert(id);
            match self.get(id) {
                Some(l) => {
                    truth.push(l.to_vec());
                    known.push(true);
                }
                None => {
                    truth.push(Vec::new());
                    known.push(false);
                    unknown_ids.push(id);
                }
            }
        }
        let missing_ids = self
            .survey_ids
            .iter()
            .copied()
            .filter(|id| !present.contains(id))
            .collect();
        Alignment {
            truth,
            known,
            unknown_ids,
            missing_ids,
        }
    }
}

/// Reads the solution file (`surveyId,predictions`); an empty list is allowed (no species).
pub fn read_solution(path: &Path) -> Result<Solution, MetricsError> {
    let bytes = std::fs::read(path).map_err(|e| MetricsError::io(path, e))?;
    let table = parse_table(path, &bytes)?;
    let id_col = table.column(path, &["surveyId", "observation_id"])?;
    let pred_col = table.column(path, &["predictions"])?;
    let mut ids = Vec::with_capacity(table.rows.len());
    let mut labels = Vec::with_capacity(table.rows.len());
    let mut seen = HashSet::new();
    for (line, fields) in &table.rows {
        let id = parse_id(path, *line, &fields[id_col])?;
        if !seen.insert(id) {
            return Err(MetricsError::DuplicateSurvey {
                path: path.to_path_buf(),
                survey_id: id,
            });
        }
        ids.push(id);
        labels.push(parse_species_list(path, *line, id, &fields[pred_col])?);
    }
    Solution::new(ids, labels)
}

/// Writes a Kaggle submission atomically: header `surveyId,predictions`, one row per survey,
/// species space-separated in the given order (duplicates dropped). Refuses duplicate survey
/// ids, length mismatches and empty rows.
pub fn write_submission(
    path: &Path,
    survey_ids: &[u64],
    predictions: &[Vec<u32>],
) -> Result<(), MetricsError> {
    if survey_ids.len() != predictions.len() {
        return Err(MetricsError::Invalid(format!(
            "{}: {} survey ids but {} prediction lists",
            path.display(),
            survey_ids.len(),
            predictions.len()
        )));
    }
    let mut seen = HashSet::with_capacity(survey_ids.len());
    let mut rows = Vec::with_capacity(survey_ids.len());
    for (&id, pred) in survey_ids.iter().zip(predictions) {
        if !seen.insert(id) {
            return Err(MetricsError::DuplicateSurvey {
                path: path.to_path_buf(),
                survey_id: id,
            });
        }
        if pred.is_empty() {
            return Err(MetricsError::Invalid(format!(
                "{}: survey {id} has an empty prediction (a submission row must list at least one species)",
                path.display()
            )));
        }
        let mut row_seen = HashSet::with_capacity(pred.len());
        let species: Vec<String> = pred
            .iter()
            .filter(|s| row_seen.insert(**s))
            .map(u32::to_string)
            .collect();
        rows.push([id.to_string(), species.join(" ")]);
    }
    write_atomic(path, |w| {
        let mut csv = csv::Writer::from_writer(w);
        csv.write_record(["surveyId", "predictions"])?;
        for row in &rows {
            csv.write_record(row)?;
        }
        csv.flush()
    })
}

/// Reads a Kaggle submission (ranked, no scores) or a malpolon `;` file (with probabilities).
pub(crate) fn read_text_scores(path: &Path, bytes: &[u8]) -> Result<ScoreFile, MetricsError> {
    let table = parse_table(path, bytes)?;
    let id_col = table.column(path, &["surveyId", "observation_id"])?;
    let pred_col = table.column(path, &["predictions"])?;
    let prob_col = table
        .header
        .iter()
        .position(|h| h == "probas" || h == "probabilities" || h == "scores");
    let mut ids = Vec::with_capacity(table.rows.len());
    let mut lists: Vec<Vec<(u32, f32)>> = Vec::with_capacity(table.rows.len());
    let mut seen = HashSet::new();
    for (line, fields) in &table.rows {
        let id = parse_id(path, *line, &fields[id_col])?;
        if !seen.insert(id) {
            return Err(MetricsError::DuplicateSurvey {
                path: path.to_path_buf(),
                survey_id: id,
            });
        }
        let species = parse_ranked_list(path, *line, id, &fields[pred_col])?;
        let row: Vec<(u32, f32)> = match prob_col {
            Some(pc) => {
                let probs = parse_scores(path, *line, id, &fields[pc])?;
                if probs.len() != species.len() {
                    return Err(malformed(
                        path,
                        *line,
                        format!(
                            "survey {id}: {} species but {} probabilities",
                            species.len(),
                            probs.len()
                        ),
                    ));
                }
                let mut row = Vec::with_capacity(species.len());
                let mut in_row = HashSet::new();
                for (&s, &p) in species.iter().zip(&probs) {
                    if !p.is_finite() {
                        return Err(MetricsError::NonFinite {
                            path: path.to_path_buf(),
                            survey_id: id,
                            species: s,
                            value: p,
                        });
                    }
                    if in_row.insert(s) {
                        row.push((s, p));
                    }
                }
                row
            }
            None => {
                let mut in_row = HashSet::new();
                species
                    .into_iter()
                    .filter(|s| in_row.insert(*s))
                    .map(|s| (s, 0.0))
                    .collect()
            }
        };
        ids.push(id);
        lists.push(row);
    }
    // Vocabulary: the sorted union of listed species.
    let mut vocab: Vec<u32> = lists.iter().flatten().map(|&(s, _)| s).collect();
    vocab.sort_unstable();
    vocab.dedup();
    let col: HashMap<u32, u32> = vocab
        .iter()
        .enumerate()
        .map(|(c, &s)| (s, c as u32))
        .collect();
    let scores = if prob_col.is_some() {
        Scores::Sparse {
            rows: lists
                .iter()
                .map(|r| r.iter().map(|&(s, p)| (col[&s], p)).collect())
                .collect(),
        }
    } else {
        Scores::Ranked {
            rows: lists
                .iter()
                .map(|r| r.iter().map(|&(s, _)| col[&s]).collect())
                .collect(),
        }
    };
    let model = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(ScoreFile {
        model,
        split: String::new(),
        survey_ids: ids,
        species: vocab,
        scores,
    })
}

/// A header and its data rows (1-based line numbers), split on `,` or `;`.
struct Table {
    header: Vec<String>,
    rows: Vec<(u64, Vec<String>)>,
}

impl Table {
    fn column(&self, path: &Path, names: &[&str]) -> Result<usize, MetricsError> {
        self.header
            .iter()
            .position(|h| names.contains(&h.as_str()))
            .ok_or_else(|| {
                malformed(
                    path,
                    1,
                    format!(
                        "header {:?} lacks a column named {}",
                        self.header,
                        names.join(" or ")
                    ),
                )
            })
    }
}

fn parse_table(path: &Path, bytes: &[u8]) -> Result<Table, MetricsError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| malformed(path, 0, format!("not UTF-8 text: {e}")))?;
    let mut lines = text.lines().enumerate();
    let header_line = loop {
        match lines.next() {
            Some((_, l)) if l.trim().is_empty() => continue,
            Some((_, l)) => break l,
            None => return Err(malformed(path, 1, "empty file, expected a header".into())),
        }
    };
    let sep = if header_line.contains(';') { ';' } else { ',' };
    let header: Vec<String> = header_line
        .trim_start_matches('\u{feff}')
        .split(sep)
        .map(|h| h.trim().trim_matches('"').to_string())
        .collect();
    let mut rows = Vec::new();
    for (k, l) in lines {
        let line = k as u64 + 1;
        if l.trim().is_empty() {
            continue;
        }
        let fields: Vec<String> = l
            .split(sep)
            .map(|f| f.trim().trim_matches('"').to_string())
            .collect();
        if fields.len() != header.len() {
            return Err(malformed(
                path,
                line,
                format!(
                    "{} fields, expected {} as in the header {:?}",
                    fields.len(),
                    header.len(),
                    header
                ),
            ));
        }
        rows.push((line, fields));
    }
    Ok(Table { header, rows })
}

fn parse_id(path: &Path, line: u64, field: &str) -> Result<u64, MetricsError> {
    field.parse::<u64>().map_err(|_| {
        malformed(
            path,
            line,
            format!("survey id {field:?} is not a non-negative integer"),
        )
    })
}

fn parse_ranked_list(
    path: &Path,
    line: u64,
    id: u64,
    field: &str,
) -> Result<Vec<u32>, MetricsError> {
    field
        .split_whitespace()
        .map(|t| {
            t.parse::<u32>().map_err(|_| {
                malformed(
                    path,
                    line,
                    format!("survey {id}: species id {t:?} is not a non-negative integer"),
                )
            })
        })
        .collect()
}

fn parse_species_list(
    path: &Path,
    line: u64,
    id: u64,
    field: &str,
) -> Result<Vec<u32>, MetricsError> {
    let mut l = parse_ranked_list(path, line, id, field)?;
    l.sort_unstable();
    l.dedup();
    Ok(l)
}

fn parse_scores(path: &Path, line: u64, id: u64, field: &str) -> Result<Vec<f32>, MetricsError> {
    field
        .split_whitespace()
        .map(|t| {
            t.parse::<f32>().map_err(|_| {
                malformed(
                    path,
                    line,
                    format!("survey {id}: probability {t:?} is not a number"),
                )
            })
        })
        .collect()
}

fn malformed(path: &Path, line: u64, message: String) -> MetricsError {
    MetricsError::Malformed {
        path: path.to_path_buf(),
        line,
        message,
    }
}

/// Survey ids of a metadata CSV (column `surveyId`, first-occurrence order, duplicates
/// dropped): the row order of a submission. Float-formatted ids such as `642.0` are accepted.
pub fn read_survey_ids(path: &Path) -> Result<Vec<u64>, MetricsError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let header = reader.headers().map_err(|e| csv_error(path, e))?.clone();
    let col = header
        .iter()
        .position(|h| h.trim_start_matches('\u{feff}') == "surveyId")
        .ok_or_else(|| {
            malformed(
                path,
                1,
                format!(
                    "header {:?} lacks a surveyId column",
                    header.iter().collect::<Vec<_>>()
                ),
            )
        })?;
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    for (k, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| csv_error(path, e))?;
        let line = k as u64 + 2;
        let field = rec.get(col).unwrap_or("").trim();
        let id = match field.parse::<u64>() {
            Ok(id) => id,
            Err(_) => match field.parse::<f64>() {
                Ok(x) if x >= 0.0 && x.fract() == 0.0 && x < 9.0e15 => x as u64,
                _ => {
                    return Err(malformed(
                        path,
                        line,
                        format!("surveyId {field:?} is not a non-negative integer"),
                    ));
                }
            },
        };
        if seen.insert(id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn csv_error(path: &Path, e: csv::Error) -> MetricsError {
    let line = e.position().map_or(0, |p| p.line());
    malformed(path, line, e.to_string())
}
