//! Atomic file output: write to a temporary name in the destination folder, flush, then
//! rename over the target, so a crash never leaves a half-written file behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::MetricsError;

/// Writes `bytes` (produced by `fill`) to `path` atomically.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), MetricsError> {
    let tmp = temp_name(path);
    let result = (|| -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut writer = std::io::BufWriter::new(file);
        fill(&mut writer)?;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(MetricsError::io(path, e));
    }
    Ok(())
}

/// A hidden temporary name beside `path` (same folder, so `rename` stays atomic).
fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
