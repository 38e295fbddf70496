//! The one way geolife writes a result file: into a temporary file in the destination's
//! folder (`tempfile`), flushed and synced, then renamed over the target
//! (`NamedTempFile::persist`). A crash or an error never leaves a half-written file under the
//! target's name, the previous file stays whole until the rename, and on failure the temporary
//! file is removed (it is deleted when dropped).

use std::io::{BufWriter, Write};
use std::path::Path;

use tempfile::NamedTempFile;

/// A hidden temporary file beside `path` (same folder, so the final rename is atomic), named
/// `.<file name>.<random><suffix>`.
fn temp_beside(path: &Path, suffix: &str) -> std::io::Result<NamedTempFile> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(suffix);
    // A result file gets the mode `File::create` would give it (0666 less the umask), not the
    // owner-only 0600 of a temporary file: run folders are shared on clusters.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    builder.tempfile_in(dir)
}

/// Writes what `fill` produces to `path` atomically.
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut tmp = temp_beside(path, ".tmp")?;
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        fill(&mut w)?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(path, |w| w.write_all(bytes))
}

/// For writers that need a path (plotters picks the image format from its extension): `draw`
/// writes a temporary file ending in `suffix` (e.g. `.png`), which then replaces `path`.
pub fn write_via_path(
    path: &Path,
    suffix: &str,
    draw: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), String> {
    let tmp = temp_beside(path, suffix).map_err(|e| e.to_string())?;
    draw(tmp.path())?;
    tmp.as_file().sync_all().map_err(|e| e.to_string())?;
    tmp.persist(path).map_err(|e| e.error.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[cfg(unix)]
    #[test]
    fn a_result_file_gets_the_mode_of_a_created_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (made, written) = (dir.path().join("made"), dir.path().join("written"));
        std::fs::File::create(&made).unwrap();
        write_bytes(&written, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&written), mode(&made));
    }

    #[test]
    fn a_failed_write_keeps_the_previous_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.ckpt");
        write_bytes(&path, b"old").unwrap();
        let e = write_with(&path, |w| {
            w.write_all(b"half of the new")?;
            Err(std::io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "disk full");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), vec!["last.ckpt"]);
        let e = write_via_path(&path, ".png", |_| Err("no font".into())).unwrap_err();
        assert_eq!(e, "no font");
        assert_eq!(names(dir.path()), vec!["last.ckpt"]);
    }

    #[test]
    fn writes_replace_the_target_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.csv");
        write_bytes(&path, b"first, longer content").unwrap();
        write_bytes(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        write_via_path(&path, ".csv", |p| {
            assert!(p.to_string_lossy().ends_with(".csv"));
            std::fs::write(p, b"third").map_err(|e| e.to_string())
        })
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"third");
        assert_eq!(names(dir.path()), vec!["scores.csv"]);
    }
}
