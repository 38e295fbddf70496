//! Score files: per-survey species scores (dense matrix, sparse top-N lists, or bare ranked
//! lists), stored as safetensors with a metadata header, and read from the formats real systems
//! write (geolife safetensors, Kaggle submissions, malpolon's `;`-separated top-N files).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::{MetricsError, atomic::write_atomic};

/// Value of the `format` metadata key that marks a geolife score file.
pub const FORMAT_TAG: &str = "geolife-scores";
/// Version of the on-disk layout.
pub const FORMAT_VERSION: &str = "1";

/// Model outputs for a set of surveys: row `i` belongs to `survey_ids[i]`, column `j` to the
/// real species id `species[j]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreFile {
    /// Name of the model (or ensemble) that produced the scores.
    pub model: String,
    /// Data split the scores are for (`val`, `test`, ...).
    pub split: String,
    /// One survey id per row; unique.
    pub survey_ids: Vec<u64>,
    /// Vocabulary: the real species id of each column; unique.
    pub species: Vec<u32>,
    /// The scores themselves.
    pub scores: Scores,
}

/// The score matrix, in one of three layouts.
#[derive(Debug, Clone, PartialEq)]
pub enum Scores {
    /// `n x species.len()` row-major probabilities.
    Dense { data: Vec<f32> },
    /// Per survey, `(column index, score)` pairs (top-N); species absent from a list score 0.
    Sparse { rows: Vec<Vec<(u32, f32)>> },
    /// Per survey, column indices ranked best first, without scores (Kaggle submissions).
    /// Only rank-based operations (top-K, F1@K) apply.
    Ranked { rows: Vec<Vec<u32>> },
}

/// Which layout a [`ScoreFile`] uses, as text for reports.
impl Scores {
    pub fn kind(&self) -> &'static str {
        match self {
            Scores::Dense { .. } => "dense",
            Scores::Sparse { .. } => "sparse",
            Scores::Ranked { .. } => "ranked",
        }
    }
}

impl ScoreFile {
    /// Number of surveys (rows).
    pub fn len(&self) -> usize {
        self.survey_ids.len()
    }

    /// True when the file holds no survey.
    pub fn is_empty(&self) -> bool {
        self.survey_ids.is_empty()
    }

    /// True when real scores (not only ranks) are available.
    pub fn has_scores(&self) -> bool {
        !matches!(self.scores, Scores::Ranked { .. })
    }

    /// Checks lengths, unique ids and vocabulary, column indices and finite scores.
    /// `origin` names the file (or producer) in error messages.
    pub fn validate(&self, origin: &Path) -> Result<(), MetricsError> {
        let n = self.survey_ids.len();
        let v = self.species.len();
        let mut seen = HashSet::with_capacity(n);
        for &id in &self.survey_ids {
            if !seen.insert(id) {
                return Err(MetricsError::DuplicateSurvey {
                    path: origin.to_path_buf(),
                    survey_id: id,
                });
            }
        }
        let mut seen_sp = HashSet::with_capacity(v);
        for &s in &self.species {
            if !seen_sp.insert(s) {
                return Err(bad(
                    origin,
                    format!("species id {s} occurs twice in the vocabulary"),
                ));
            }
        }
        // Shared by sparse and ranked rows: one row per survey, columns inside the vocabulary,
        // no species listed twice in a row.
        let check_rows = |kind: &str, count: usize| -> Result<(), MetricsError> {
            if count == n {
                Ok(())
            } else {
                Err(bad(origin, format!("{count} {kind} rows for {n} surveys")))
            }
        };
        let check_cols = |i: usize, cols: &mut dyn Iterator<Item = u32>| {
            let mut seen = HashSet::new();
            for c in cols {
                if (c as usize) >= v {
                    return Err(bad(
                        origin,
                        format!(
                            "survey {}: column index {c} outside the vocabulary of {v} species",
                            self.survey_ids[i]
                        ),
                    ));
                }
                if !seen.insert(c) {
                    return Err(bad(
                        origin,
                        format!(
                            "survey {}: species {} listed twice",
                            self.survey_ids[i], self.species[c as usize]
                        ),
                    ));
                }
            }
            Ok(())
        };
        let non_finite = |i: usize, c: usize, value: f32| MetricsError::NonFinite {
            path: origin.to_path_buf(),
            survey_id: self.survey_ids[i],
            species: self.species.get(c).copied().unwrap_or(u32::MAX),
            value,
        };
        match &self.scores {
            Scores::Dense { data } => {
                if data.len() != n * v {
                    return Err(bad(
                        origin,
                        format!(
                            "dense scores hold {} values, expected {n} surveys x {v} species",
                            data.len()
                        ),
                    ));
                }
                if v > 0
                    && let Some((pos, &x)) = data
                        .par_iter()
                        .enumerate()
                        .find_first(|(_, x)| !x.is_finite())
                {
                    return Err(non_finite(pos / v, pos % v, x));
                }
            }
            Scores::Sparse { rows } => {
                check_rows("sparse", rows.len())?;
                for (i, row) in rows.iter().enumerate() {
                    check_cols(i, &mut row.iter().map(|&(c, _)| c))?;
                    if let Some(&(c, x)) = row.iter().find(|(_, x)| !x.is_finite()) {
                        return Err(non_finite(i, c as usize, x));
                    }
                }
            }
            Scores::Ranked { rows } => {
                check_rows("ranked", rows.len())?;
                for (i, row) in rows.iter().enumerate() {
                    check_cols(i, &mut row.iter().copied())?;
                }
            }
        }
        Ok(())
    }

    /// The best `m` entries of row `i` as `(column, score)`, best first (ties: lower column
    /// first). Ranked rows get the pseudo-score `1 / (rank + 1)`.
    pub fn top(&self, i: usize, m: usize) -> Vec<(u32, f32)> {
        let v = self.species.len();
        match &self.scores {
            Scores::Dense { data } => {
                let row = &data[i * v..(i + 1) * v];
                top_of_dense(row, m)
            }
            Scores::Sparse { rows } => {
                let mut r = rows[i].clone();
                r.sort_unstable_by(cmp_entry);
                r.truncate(m);
                r
            }
            Scores::Ranked { rows } => rows[i]
                .iter()
                .take(m)
                .enumerate()
                .map(|(r, &c)| (c, 1.0 / (r as f32 + 1.0)))
                .collect(),
        }
    }

    /// Top-`m` entries of every row (parallel), best first.
    pub fn top_all(&self, m: usize) -> Vec<Vec<(u32, f32)>> {
        (0..self.len())
            .into_par_iter()
            .map(|i| self.top(i, m))
            .collect()
    }

    /// Position of each survey id.
    pub fn index(&self) -> HashMap<u64, usize> {
        self.survey_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (id, i))
            .collect()
    }

    /// Keeps only the rows at `rows` (in that order): for splits and cross-validation.
    pub fn subset(&self, rows: &[usize]) -> ScoreFile {
        let v = self.species.len();
        let scores = match &self.scores {
            Scores::Dense { data } => {
                let mut out = Vec::with_capacity(rows.len() * v);
                for &i in rows {
                    out.extend_from_slice(&data[i * v..(i + 1) * v]);
                }
                Scores::Dense { data: out }
            }
            Scores::Sparse { rows: r } => Scores::Sparse {
                rows: rows.iter().map(|&i| r[i].clone()).collect(),
            },
            Scores::Ranked { rows: r } => Scores::Ranked {
                rows: rows.iter().map(|&i| r[i].clone()).collect(),
            },
        };
        ScoreFile {
            model: self.model.clone(),
            split: self.split.clone(),
            survey_ids: rows.iter().map(|&i| self.survey_ids[i]).collect(),
            species: self.species.clone(),
            scores,
        }
    }

    /// The rows of several files over disjoint surveys as one file, sorted by survey id (the
    /// out-of-fold scores of k-fold copies): same vocabulary and layout required; the first
    /// file's model and split names are kept.
    pub fn concat(files: &[ScoreFile]) -> Result<ScoreFile, MetricsError> {
        let first = files
            .first()
            .ok_or_else(|| MetricsError::Invalid("no score files to concatenate".into()))?;
        let mut rows: Vec<(u64, usize, usize)> = Vec::new();
        for (f, file) in files.iter().enumerate() {
            if file.species != first.species || file.scores.kind() != first.scores.kind() {
                return Err(MetricsError::Invalid(format!(
                    "score files to concatenate differ: `{}` has {} species ({}), `{}` {} ({})",
                    first.model,
                    first.species.len(),
                    first.scores.kind(),
                    file.model,
                    file.species.len(),
                    file.scores.kind()
                )));
            }
            rows.extend(
                file.survey_ids
                    .iter()
                    .enumerate()
                    .map(|(i, &id)| (id, f, i)),
            );
        }
        rows.sort_unstable();
        if let Some(w) = rows.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(MetricsError::Invalid(format!(
                "survey {} is in two of the score files to concatenate (`{}` and `{}`)",
                w[0].0, files[w[0].1].model, files[w[1].1].model
            )));
        }
        let v = first.species.len();
        let scores = match &first.scores {
            Scores::Dense { .. } => {
                let mut out = Vec::with_capacity(rows.len() * v);
                for &(_, f, i) in &rows {
                    if let Scores::Dense { data } = &files[f].scores {
                        out.extend_from_slice(&data[i * v..(i + 1) * v]);
                    }
                }
                Scores::Dense { data: out }
            }
            Scores::Sparse { .. } => Scores::Sparse {
                rows: (rows.iter())
                    .map(|&(_, f, i)| match &files[f].scores {
                        Scores::Sparse { rows } => rows[i].clone(),
                        _ => Vec::new(),
                    })
                    .collect(),
            },
            Scores::Ranked { .. } => Scores::Ranked {
                rows: (rows.iter())
                    .map(|&(_, f, i)| match &files[f].scores {
                        Scores::Ranked { rows } => rows[i].clone(),
                        _ => Vec::new(),
                    })
                    .collect(),
            },
        };
        Ok(ScoreFile {
            model: first.model.clone(),
            split: first.split.clone(),
            survey_ids: rows.iter().map(|r| r.0).collect(),
            species: first.species.clone(),
            scores,
        })
    }

    /// Writes the file as safetensors with a metadata header, atomically.
    ///
    /// Layout: metadata `format`, `version`, `model`, `split`, `layout`, `species` (the
    /// vocabulary, space-separated); tensors `survey_ids` (u64 `[n]`), `species` (u32 `[V]`),
    /// and `scores` (f32 `[n, V]`) for dense, or `indices` (u32 `[n, N]`), `values` (f32 `[n, N]`)
    /// and `lengths` (u32 `[n]`) for sparse/ranked rows padded to the longest row `N`.
    pub fn write(&self, path: &Path) -> Result<(), MetricsError> {
        self.validate(path)?;
        let n = self.len();
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT_TAG.to_string());
        meta.insert("version".to_string(), FORMAT_VERSION.to_string());
        meta.insert("model".to_string(), self.model.clone());
        meta.insert("split".to_string(), self.split.clone());
        meta.insert("layout".to_string(), self.scores.kind().to_string());
        meta.insert("species".to_string(), join_ids(&self.species));

        let ids_bytes = le_bytes_u64(&self.survey_ids);
        let sp_bytes = le_bytes_u32(&self.species);
        let mut tensors: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = vec![
            ("survey_ids".into(), ids_bytes, Dtype::U64, vec![n]),
            (
                "species".into(),
                sp_bytes,
                Dtype::U32,
                vec![self.species.len()],
            ),
        ];
        match &self.scores {
            Scores::Dense { data } => {
                tensors.push((
                    "scores".into(),
                    le_bytes_f32(data),
                    Dtype::F32,
                    vec![n, self.species.len()],
                ));
            }
            Scores::Sparse { rows } => {
                let width = rows.iter().map(Vec::len).max().unwrap_or(0);
                let mut idx = vec![0u32; n * width];
                let mut val = vec![0f32; n * width];
                let mut lens = Vec::with_capacity(n);
                for (i, row) in rows.iter().enumerate() {
                    lens.push(row.len() as u32);
                    for (j, &(c, x)) in row.iter().enumerate() {
                        idx[i * width + j] = c;
                        val[i * width + j] = x;
                    }
                }
                tensors.push((
                    "indices".into(),
                    le_bytes_u32(&idx),
                    Dtype::U32,
                    vec![n, width],
                ));
                tensors.push((
                    "values".into(),
                    le_bytes_f32(&val),
                    Dtype::F32,
                    vec![n, width],
                ));
                tensors.push(("lengths".into(), le_bytes_u32(&lens), Dtype::U32, vec![n]));
            }
            Scores::Ranked { rows } => {
                let width = rows.iter().map(Vec::len).max().unwrap_or(0);
                let mut idx = vec![0u32; n * width];
                let mut lens = Vec::with_capacity(n);
                for (i, row) in rows.iter().enumerate() {
                    lens.push(row.len() as u32);
                    idx[i * width..i * width + row.len()].copy_from_slice(row);
                }
                tensors.push((
                    "indices".into(),
                    le_bytes_u32(&idx),
                    Dtype::U32,
                    vec![n, width],
                ));
                tensors.push(("lengths".into(), le_bytes_u32(&lens), Dtype::U32, vec![n]));
            }
        }
        let mut views = Vec::with_capacity(tensors.len());
        for (name, bytes, dtype, shape) in &tensors {
            let view = TensorView::new(*dtype, shape.clone(), bytes)
                .map_err(|e| bad(path, format!("tensor {name}: {e}")))?;
            views.push((name.clone(), view));
        }
        let mut buffer = safetensors::serialize(views, &Some(meta))
            .map_err(|e| bad(path, format!("serialising: {e}")))?;
        geolife_io::reproducible::sort_safetensors_header(&mut buffer);
        write_atomic(path, |w| w.write_all(&buffer))
    }
}

pub(crate) fn cmp_entry(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Top-`m` of a dense row using a partial sort (select, then sort the head).
fn top_of_dense(row: &[f32], m: usize) -> Vec<(u32, f32)> {
    let mut entries: Vec<(u32, f32)> = row
        .iter()
        .enumerate()
        .map(|(c, &x)| (c as u32, x))
        .collect();
    let m = m.min(entries.len());
    if m == 0 {
        return Vec::new();
    }
    if m < entries.len() {
        entries.select_nth_unstable_by(m - 1, cmp_entry);
        entries.truncate(m);
    }
    entries.sort_unstable_by(cmp_entry);
    entries
}

fn bad(path: &Path, message: String) -> MetricsError {
    MetricsError::BadScoreFile {
        path: path.to_path_buf(),
        message,
    }
}

fn join_ids(ids: &[u32]) -> String {
    let mut s = String::with_capacity(ids.len() * 6);
    for (k, id) in ids.iter().enumerate() {
        if k > 0 {
            s.push(' ');
        }
        s.push_str(&id.to_string());
    }
    s
}

fn le_bytes_u64(x: &[u64]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}
fn le_bytes_u32(x: &[u32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}
fn le_bytes_f32(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() * 4);
    for v in x {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// A safetensors file starts with a little-endian u64 header length followed by `{`.
pub(crate) fn looks_like_safetensors(bytes: &[u8]) -> bool {
    if bytes.len() < 9 {
        return false;
    }
    let mut head = [0u8; 8];
    head.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(head);
    bytes[8] == b'{' && n >= 2 && n <= (bytes.len() - 8) as u64
}

pub(crate) fn read_safetensors(path: &Path, bytes: &[u8]) -> Result<ScoreFile, MetricsError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(path, format!("{e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(path, format!("{e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT_TAG) {
        return Err(bad(
            path,
            format!(
                "metadata key `format` must be `{FORMAT_TAG}` (a safetensors file from another tool?)"
            ),
        ));
    }
    if meta.get("version").map(String::as_str) != Some(FORMAT_VERSION) {
        return Err(bad(
            path,
            format!(
                "unsupported version {:?}, expected {FORMAT_VERSION}",
                meta.get("version")
            ),
        ));
    }
    let get = |name: &str, dtype: Dtype| -> Result<(Vec<usize>, &[u8]), MetricsError> {
        let t = st
            .tensor(name)
            .map_err(|_| bad(path, format!("missing tensor `{name}`")))?;
        if t.dtype() != dtype {
            return Err(bad(
                path,
                format!(
                    "tensor `{name}` has dtype {:?}, expected {dtype:?}",
                    t.dtype()
                ),
            ));
        }
        Ok((t.shape().to_vec(), t.data()))
    };
    let (ids_shape, ids) = get("survey_ids", Dtype::U64)?;
    let (sp_shape, sp) = get("species", Dtype::U32)?;
    if ids_shape.len() != 1 || sp_shape.len() != 1 {
        return Err(bad(path, "`survey_ids` and `species` must be 1-D".into()));
    }
    let survey_ids: Vec<u64> = ids
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let species = u32s(sp);
    if let Some(text) = meta.get("species")
        && text
            .split_whitespace()
            .map(|t| t.parse::<u32>().ok())
            .ne(species.iter().map(|&s| Some(s)))
    {
        return Err(bad(
            path,
            "the vocabulary in the metadata header differs from the `species` tensor".into(),
        ));
    }
    let n = survey_ids.len();
    let v = species.len();
    let layout = meta.get("layout").map(String::as_str).unwrap_or("");
    let scores = match layout {
        "dense" => {
            let (shape, data) = get("scores", Dtype::F32)?;
            if shape != [n, v] {
                return Err(bad(
                    path,
                    format!("`scores` has shape {shape:?}, expected [{n}, {v}]"),
                ));
            }
            Scores::Dense { data: f32s(data) }
        }
        "sparse" | "ranked" => {
            let (ishape, idx) = get("indices", Dtype::U32)?;
            let (lshape, lens) = get("lengths", Dtype::U32)?;
            if ishape.len() != 2 || ishape[0] != n || lshape != [n] {
                return Err(bad(
                    path,
                    format!("`indices` {ishape:?} / `lengths` {lshape:?} do not fit {n} surveys"),
                ));
            }
            let width = ishape[1];
            let idx = u32s(idx);
            let lens = u32s(lens);
            let vals = if layout == "sparse" {
                let (vshape, vals) = get("values", Dtype::F32)?;
                if vshape != ishape {
                    return Err(bad(path, "`values` and `indices` differ in shape".into()));
                }
                Some(f32s(vals))
            } else {
                None
            };
            let mut sparse = Vec::new();
            let mut ranked = Vec::new();
            for i in 0..n {
                let len = lens[i] as usize;
                if len > width {
                    return Err(bad(
                        path,
                        format!(
                            "survey {}: length {len} exceeds width {width}",
                            survey_ids[i]
                        ),
                    ));
                }
                let cols = &idx[i * width..i * width + len];
                match &vals {
                    Some(vals) => sparse.push(
                        cols.iter()
                            .zip(&vals[i * width..i * width + len])
                            .map(|(&c, &x)| (c, x))
                            .collect(),
                    ),
                    None => ranked.push(cols.to_vec()),
                }
            }
            if vals.is_some() {
                Scores::Sparse { rows: sparse }
            } else {
                Scores::Ranked { rows: ranked }
            }
        }
        other => {
            return Err(bad(
                path,
                format!("metadata `layout` is {other:?}, expected dense, sparse or ranked"),
            ));
        }
    };
    Ok(ScoreFile {
        model: meta.get("model").cloned().unwrap_or_default(),
        split: meta.get("split").cloned().unwrap_or_default(),
        survey_ids,
        species,
        scores,
    })
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_sorts_disjoint_rows_by_survey() {
        let file = |ids: Vec<u64>, data: Vec<f32>| ScoreFile {
            model: "m".into(),
            split: "val".into(),
            survey_ids: ids,
            species: vec![1, 2],
            scores: Scores::Dense { data },
        };
        let a = file(vec![5, 1], vec![0.5, 0.6, 0.1, 0.2]);
        let b = file(vec![3], vec![0.3, 0.4]);
        let c = ScoreFile::concat(&[a.clone(), b]).unwrap();
        assert_eq!(c.survey_ids, vec![1, 3, 5]);
        assert_eq!(
            c.scores,
            Scores::Dense {
                data: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
            }
        );
        let e = ScoreFile::concat(&[a.clone(), a]).unwrap_err().to_string();
        assert!(e.contains("survey 1 is in two"), "{e}");
        assert!(ScoreFile::concat(&[]).is_err());
    }
}
