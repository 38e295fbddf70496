//! Writes the binary files of one split into a folder: the per-row files are preallocated for
//! the expected row count and filled at row offsets, then truncated to the rows kept.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::CacheError;
use super::manifest::FileEntry;
use super::{BIOCLIM_LEN, LANDSAT_LEN, PATCH_LEN, files};

/// One packed row borrowed from the caller.
pub(crate) struct RowRef<'a> {
    pub tabular: &'a [f32],
    pub landsat: &'a [f32],
    pub bioclim: &'a [f32],
    pub patch: &'a [u8],
}

/// A preallocated, fixed-row-size output file.
struct RowFile {
    path: PathBuf,
    file: File,
    row_bytes: u64,
}

impl RowFile {
    fn create(
        dir: &Path,
        name: &str,
        row_bytes: usize,
        rows: usize,
    ) -> Result<RowFile, CacheError> {
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| CacheError::io(&path, e))?;
        let row_bytes = row_bytes as u64;
        file.set_len(row_bytes * rows as u64)
            .map_err(|e| CacheError::io(&path, e))?;
        Ok(RowFile {
            path,
            file,
            row_bytes,
        })
    }

    fn write_row(&self, row: usize, bytes: &[u8]) -> Result<(), CacheError> {
        debug_assert_eq!(bytes.len() as u64, self.row_bytes);
        self.file
            .write_all_at(bytes, row as u64 * self.row_bytes)
            .map_err(|e| CacheError::io(&self.path, e))
    }

    /// Truncates to `rows`, syncs, and returns the file's entry.
    fn finish(self, rows: usize) -> Result<FileEntry, CacheError> {
        let bytes = self.row_bytes * rows as u64;
        self.file
            .set_len(bytes)
            .and_then(|_| self.file.sync_all())
            .map_err(|e| CacheError::io(&self.path, e))?;
        Ok(entry(&self.path, bytes))
    }
}

fn entry(path: &Path, bytes: u64) -> FileEntry {
    FileEntry {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        bytes,
    }
}

/// Writes a whole small file (ids, coordinates, labels) and syncs it.
pub(crate) fn write_small(dir: &Path, name: &str, bytes: &[u8]) -> Result<FileEntry, CacheError> {
    let path = dir.join(name);
    let mut f = File::create(&path).map_err(|e| CacheError::io(&path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| CacheError::io(&path, e))?;
    Ok(entry(&path, bytes.len() as u64))
}

/// The four per-row array files of a split being written.
pub(crate) struct SplitWriter {
    n_features: usize,
    tabular: RowFile,
    landsat: RowFile,
    bioclim: RowFile,
    patches: RowFile,
}

impl SplitWriter {
    /// Creates the files in `dir` (which must exist), sized for `capacity` rows.
    pub fn create(dir: &Path, n_features: usize, capacity: usize) -> Result<Self, CacheError> {
        if cfg!(target_endian = "big") {
            return Err(CacheError::Invalid(
                "the cache layout is little-endian; this host is big-endian".into(),
            ));
        }
        Ok(SplitWriter {
            n_features,
            tabular: RowFile::create(dir, files::TABULAR, n_features * 4, capacity)?,
            landsat: RowFile::create(dir, files::LANDSAT, LANDSAT_LEN * 4, capacity)?,
            bioclim: RowFile::create(dir, files::BIOCLIM, BIOCLIM_LEN * 4, capacity)?,
            patches: RowFile::create(dir, files::PATCHES, PATCH_LEN, capacity)?,
        })
    }

    /// Writes one row at `row`; sizes must match the layout (checked by the caller).
    pub fn write_row(&self, row: usize, r: &RowRef<'_>) -> Result<(), CacheError> {
        debug_assert_eq!(r.tabular.len(), self.n_features);
        self.tabular
            .write_row(row, bytemuck::cast_slice(r.tabular))?;
        self.landsat
            .write_row(row, bytemuck::cast_slice(r.landsat))?;
        self.bioclim
            .write_row(row, bytemuck::cast_slice(r.bioclim))?;
        self.patches.write_row(row, r.patch)
    }

    /// Truncates every file to `rows` rows and syncs; returns their entries.
    pub fn finish(self, rows: usize) -> Result<Vec<FileEntry>, CacheError> {
        Ok(vec![
            self.tabular.finish(rows)?,
            self.landsat.finish(rows)?,
            self.bioclim.finish(rows)?,
            self.patches.finish(rows)?,
        ])
    }
}
