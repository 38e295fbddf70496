//! Typed, memory-mapped read access to one packed split: random access by row index and a
//! batch gather into reusable buffers. `open` validates version, completeness and file lengths.

use std::fs::File;
use std::path::{Path, PathBuf};

use aligned_vec::{AVec, ConstAlign};
use memmap2::Mmap;
use rayon::prelude::*;

use super::error::CacheError;
use super::manifest::Manifest;
use super::{BIOCLIM_LEN, BIOCLIM_SHAPE, FORMAT_VERSION, LANDSAT_LEN, LANDSAT_SHAPE, PATCH_LEN};
use super::{PATCH_SHAPE, files};
use crate::Split;

/// One packed split, memory-mapped. Row `i` of every accessor is the same survey.
#[derive(Debug)]
pub struct PackedSplit {
    dir: PathBuf,
    manifest: Manifest,
    survey_ids: Mmap,
    lon_lat: Mmap,
    tabular: Mmap,
    landsat: Mmap,
    bioclim: Mmap,
    patches: Mmap,
    label_offsets: Option<Mmap>,
    label_ids: Option<Mmap>,
}

/// Byte buffer whose start is 64-byte (cache-line) aligned.
///
/// Patch rows in the memory-mapped cache start on page boundaries. When the destination is
/// not cache-line aligned as well, `memcpy` of 64 KiB rows ran at about a quarter of its
/// aligned speed on the x86-64 machines we measured (glibc's `rep movsb` path; see `bench
/// data`), so batches gather patches into this buffer rather than a `Vec<u8>`.
pub type AlignedBytes = AVec<u8, ConstAlign<64>>;

/// A gathered batch in contiguous row-major buffers; reuse it across calls to avoid allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub survey_ids: Vec<u64>,
    /// `b x 2` (lon, lat).
    pub lon_lat: Vec<f64>,
    /// `b x F` raw tabular values.
    pub tabular: Vec<f32>,
    /// `b x 6 x 4 x 21`.
    pub landsat: Vec<f32>,
    /// `b x 4 x 19 x 12`.
    pub bioclim: Vec<f32>,
    /// `b x 4 x 128 x 128`, u8 R, G, B, NIR; 64-byte aligned (see [`AlignedBytes`]).
    pub patches: AlignedBytes,
    /// Sorted distinct real species ids per row (empty for unlabelled splits).
    pub labels: Vec<Vec<u32>>,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            survey_ids: Vec::new(),
            lon_lat: Vec::new(),
            tabular: Vec::new(),
            landsat: Vec::new(),
            bioclim: Vec::new(),
            patches: AlignedBytes::new(0),
            labels: Vec::new(),
        }
    }
}

impl Batch {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.survey_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.survey_ids.is_empty()
    }
}

fn map_file(path: &Path, expected: u64) -> Result<Mmap, CacheError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CacheError::Incomplete {
            path: path.to_path_buf(),
            reason: "data file missing".into(),
        },
        _ => CacheError::io(path, e),
    })?;
    let found = file.metadata().map_err(|e| CacheError::io(path, e))?.len();
    if found != expected {
        return Err(CacheError::Length {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    // SAFETY: the cache files are written once by `prepare` and never modified in place; a
    // concurrent truncation by another process is outside the supported use.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| CacheError::io(path, e))?;
    Ok(map)
}

fn check_cast<T: bytemuck::AnyBitPattern>(path: &Path, map: &Mmap) -> Result<(), CacheError> {
    bytemuck::try_cast_slice::<u8, T>(map)
        .map(|_| ())
        .map_err(|e| CacheError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("cannot view as {}: {e:?}", std::any::type_name::<T>()),
        })
}

impl PackedSplit {
    /// Opens `<cache_dir>/<split>/`: checks the manifest's format version and split, that every
    /// file exists with the exact length the manifest implies, and the label offsets.
    pub fn open(cache_dir: &Path, split: Split) -> Result<PackedSplit, CacheError> {
        Self::open_dir(&cache_dir.join(split.as_str()), split)
    }

    /// Opens a split folder directly (see [`PackedSplit::open`]).
    pub fn open_dir(dir: &Path, split: Split) -> Result<PackedSplit, CacheError> {
        if cfg!(target_endian = "big") {
            return Err(CacheError::Invalid(
                "the cache layout is little-endian; this host is big-endian".into(),
            ));
        }
        if !dir.is_dir() {
            return Err(CacheError::NotFound {
                path: dir.to_path_buf(),
                split: split.to_string(),
            });
        }
        let mpath = dir.join(files::MANIFEST);
        if !mpath.is_file() {
            return Err(CacheError::Incomplete {
                path: dir.to_path_buf(),
                reason: format!("no {}", files::MANIFEST),
            });
        }
        let manifest = Manifest::load(&mpath)?;
        let bad = |reason: String| CacheError::Manifest {
            path: mpath.clone(),
            reason,
        };
        if manifest.split != split.as_str() {
            return Err(bad(format!(
                "holds split `{}`, expected `{split}`",
                manifest.split
            )));
        }
        if manifest.landsat_shape != LANDSAT_SHAPE
            || manifest.bioclim_shape != BIOCLIM_SHAPE
            || manifest.patch_shape != PATCH_SHAPE
        {
            return Err(bad("cube or patch shape differs from this format".into()));
        }
        let n = manifest.n as u64;
        let f = manifest.n_features() as u64;
        let m = |name: &str, bytes: u64| map_file(&dir.join(name), bytes);
        let survey_ids = m(files::SURVEY_IDS, n * 8)?;
        let lon_lat = m(files::LON_LAT, n * 16)?;
        let tabular = m(files::TABULAR, n * f * 4)?;
        let landsat = m(files::LANDSAT, n * LANDSAT_LEN as u64 * 4)?;
        let bioclim = m(files::BIOCLIM, n * BIOCLIM_LEN as u64 * 4)?;
        let patches = m(files::PATCHES, n * PATCH_LEN as u64)?;
        check_cast::<u64>(&dir.join(files::SURVEY_IDS), &survey_ids)?;
        check_cast::<f64>(&dir.join(files::LON_LAT), &lon_lat)?;
        check_cast::<f32>(&dir.join(files::TABULAR), &tabular)?;
        check_cast::<f32>(&dir.join(files::LANDSAT), &landsat)?;
        check_cast::<f32>(&dir.join(files::BIOCLIM), &bioclim)?;
        let (label_offsets, label_ids) = if manifest.has_labels {
            let off_path = dir.join(files::LABEL_OFFSETS);
            let offsets = m(files::LABEL_OFFSETS, (n + 1) * 8)?;
            let ids = m(files::LABEL_IDS, manifest.n_label_ids as u64 * 4)?;
            check_cast::<u64>(&off_path, &offsets)?;
            check_cast::<u32>(&dir.join(files::LABEL_IDS), &ids)?;
            let o: &[u64] = bytemuck::cast_slice(&offsets);
            let monotone = o.windows(2).all(|w| w[0] <= w[1]);
            if o.first() != Some(&0)
                || o.last() != Some(&(manifest.n_label_ids as u64))
                || !monotone
            {
                return Err(CacheError::Corrupt {
                    path: off_path,
                    reason: format!(
                        "offsets must rise from 0 to {} (the label count)",
                        manifest.n_label_ids
                    ),
                });
            }
            (Some(offsets), Some(ids))
        } else {
            (None, None)
        };
        if manifest.format_version != FORMAT_VERSION {
            return Err(bad("format version changed while reading".into()));
        }
        Ok(PackedSplit {
            dir: dir.to_path_buf(),
            manifest,
            survey_ids,
            lon_lat,
            tabular,
            landsat,
            bioclim,
            patches,
            label_offsets,
            label_ids,
        })
    }

    /// The split folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of packed surveys.
    pub fn len(&self) -> usize {
        self.manifest.n
    }

    pub fn is_empty(&self) -> bool {
        self.manifest.n == 0
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Tabular features per row.
    pub fn n_features(&self) -> usize {
        self.manifest.n_features()
    }

    /// Survey ids in row order (ascending).
    pub fn survey_ids(&self) -> &[u64] {
        bytemuck::cast_slice(&self.survey_ids)
    }

    /// Row of a survey id, if packed.
    pub fn index_of(&self, survey_id: u64) -> Option<usize> {
        self.survey_ids().binary_search(&survey_id).ok()
    }

    /// The label sets of `survey_ids`, in that order; `Err(id)` is the first survey this split
    /// does not hold.
    pub fn labels_of(&self, survey_ids: &[u64]) -> Result<Vec<Vec<u32>>, u64> {
        survey_ids
            .iter()
            .map(|&id| self.index_of(id).map(|i| self.labels(i).to_vec()).ok_or(id))
            .collect()
    }

    /// (lon, lat) of row `i`. Panics if `i >= len()`, like slice indexing.
    pub fn lon_lat(&self, i: usize) -> (f64, f64) {
        let v: &[f64] = bytemuck::cast_slice(&self.lon_lat);
        (v[2 * i], v[2 * i + 1])
    }

    /// The `F` raw tabular values of row `i` (NaN/inf preserved), named by `feature_names`.
    pub fn tabular(&self, i: usize) -> &[f32] {
        let f = self.n_features();
        &bytemuck::cast_slice::<u8, f32>(&self.tabular)[i * f..(i + 1) * f]
    }

    /// Landsat cube of row `i`, 6x4x21 C order (band, quarter, year), NaN policy applied.
    pub fn landsat(&self, i: usize) -> &[f32] {
        &bytemuck::cast_slice::<u8, f32>(&self.landsat)[i * LANDSAT_LEN..(i + 1) * LANDSAT_LEN]
    }

    /// Bioclim cube of row `i`, 4x19x12 C order (variable, year, month).
    pub fn bioclim(&self, i: usize) -> &[f32] {
        &bytemuck::cast_slice::<u8, f32>(&self.bioclim)[i * BIOCLIM_LEN..(i + 1) * BIOCLIM_LEN]
    }

    /// Patch of row `i`, 4x128x128 CHW, channels R, G, B, NIR.
    pub fn patch(&self, i: usize) -> &[u8] {
        &self.patches[i * PATCH_LEN..(i + 1) * PATCH_LEN]
    }

    /// Whether the split carries labels (train does, test does not).
    pub fn has_labels(&self) -> bool {
        self.label_ids.is_some()
    }

    /// Sorted distinct real species ids of row `i`; empty when the split has no labels.
    pub fn labels(&self, i: usize) -> &[u32] {
        match (&self.label_offsets, &self.label_ids) {
            (Some(o), Some(ids)) => {
                let o: &[u64] = bytemuck::cast_slice(o);
                let ids: &[u32] = bytemuck::cast_slice(ids);
                &ids[o[i] as usize..o[i + 1] as usize]
            }
            _ => {
                assert!(i < self.len(), "row {i} out of range {}", self.len());
                &[]
            }
        }
    }

    /// Copies rows `indices` into `out`'s contiguous buffers, reusing their allocations.
    /// Panics if an index is out of range.
    pub fn gather(&self, indices: &[usize], out: &mut Batch) {
        let b = indices.len();
        out.survey_ids.clear();
        out.lon_lat.clear();
        out.tabular.clear();
        out.landsat.clear();
        out.bioclim.clear();
        out.patches.clear();
        out.survey_ids.reserve(b);
        out.lon_lat.reserve(2 * b);
        out.tabular.reserve(b * self.n_features());
        out.landsat.reserve(b * LANDSAT_LEN);
        out.bioclim.reserve(b * BIOCLIM_LEN);
        out.patches.reserve(b * PATCH_LEN);
        out.labels.resize_with(b, Vec::new);
        let ids = self.survey_ids();
        for (k, &i) in indices.iter().enumerate() {
            out.survey_ids.push(ids[i]);
            let (lon, lat) = self.lon_lat(i);
            out.lon_lat.extend_from_slice(&[lon, lat]);
            out.tabular.extend_from_slice(self.tabular(i));
            out.landsat.extend_from_slice(self.landsat(i));
            out.bioclim.extend_from_slice(self.bioclim(i));
            out.patches.extend_from_slice(self.patch(i));
            let l = &mut out.labels[k];
            l.clear();
            l.extend_from_slice(self.labels(i));
        }
    }

    /// Like [`PackedSplit::gather`], but copies the cube and patch rows on rayon's thread
    /// pool (worth it for large batches on several cores). Same result, same buffer reuse.
    pub fn gather_par(&self, indices: &[usize], out: &mut Batch) {
        let b = indices.len();
        let f = self.n_features();
        let ids = self.survey_ids();
        out.survey_ids.clear();
        out.lon_lat.clear();
        out.labels.resize_with(b, Vec::new);
        for (k, &i) in indices.iter().enumerate() {
            out.survey_ids.push(ids[i]);
            let (lon, lat) = self.lon_lat(i);
            out.lon_lat.extend_from_slice(&[lon, lat]);
            let l = &mut out.labels[k];
            l.clear();
            l.extend_from_slice(self.labels(i));
        }
        // `resize` keeps existing allocations; every element is overwritten below.
        out.tabular.resize(b * f, 0.0);
        out.landsat.resize(b * LANDSAT_LEN, 0.0);
        out.bioclim.resize(b * BIOCLIM_LEN, 0.0);
        out.patches.resize(b * PATCH_LEN, 0);
        if f > 0 {
            for (dst, &i) in out.tabular.chunks_exact_mut(f).zip(indices) {
                dst.copy_from_slice(self.tabular(i));
            }
        }
        out.landsat
            .par_chunks_exact_mut(LANDSAT_LEN)
            .zip(indices.par_iter())
            .for_each(|(dst, &i)| dst.copy_from_slice(self.landsat(i)));
        out.bioclim
            .par_chunks_exact_mut(BIOCLIM_LEN)
            .zip(indices.par_iter())
            .for_each(|(dst, &i)| dst.copy_from_slice(self.bioclim(i)));
        out.patches
            .par_chunks_exact_mut(PATCH_LEN)
            .zip(indices.par_iter())
            .for_each(|(dst, &i)| dst.copy_from_slice(self.patch(i)));
    }
}
