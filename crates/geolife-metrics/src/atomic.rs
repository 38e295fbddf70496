//! Atomic file output: write to a temporary name in the destination folder, flush, then
//! rename over the target, so a crash never leaves a half-written file behind.

use std::io::Write;
use std::path::Path;

use crate::MetricsError;

/// Writes `bytes` (produced by `fill`) to `path` atomically ([`geolife_io::atomic`]).
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), MetricsError> {
    geolife_io::atomic::write_with(path, fill).map_err(|e| MetricsError::io(path, e))
}
