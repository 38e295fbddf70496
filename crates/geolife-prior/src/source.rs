//! A prior configuration plus its presence-only file: what `geolife prior`, the trainer's
//! `[location]` input and the pipeline's `[prior]` member all score with. The PO file is
//! resolved once per run ([`PriorSource::resolve`]: the one named, else the dataset root's
//! `GLC24_P0_metadata_train.csv`) and read from the resolved source ([`PriorSource::read_po`]).

use std::path::{Path, PathBuf};

use crate::{PoRecords, PriorConfig, PriorError};

/// The key naming the presence-only file beside a prior's settings (`po_file`); errors about
/// the file carry it, and callers prefix their table (`location.po_file`, `prior.po_file`).
pub const PO_FILE_KEY: &str = "po_file";

/// A prior's settings and the presence-only file its PO source reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PriorSource {
    pub config: PriorConfig,
    /// The presence-only CSV (`GLC24_P0_metadata_train.csv` layout). `None` before
    /// [`PriorSource::resolve`]: the one in the dataset root. Not read with `po.enabled = false`.
    pub po_file: Option<PathBuf>,
}

impl PriorSource {
    /// Settings without a named PO file (the dataset root's is used).
    pub fn new(config: PriorConfig) -> Self {
        Self {
            config,
            po_file: None,
        }
    }

    /// The presence-only file of a dataset root in the official layout.
    pub fn default_po_file(data_root: &Path) -> PathBuf {
        data_root.join(geolife_data::layout::PO_METADATA_TRAIN)
    }

    /// Whether the PO source is on (and so a PO file is needed).
    pub fn needs_po(&self) -> bool {
        self.config.po.enabled
    }

    /// This source with its PO file resolved: `None` when the PO source is off; `po_file` when
    /// given; else `data_root`'s file (`None`: the data is a packed cache, which keeps no PO
    /// records). An error keyed `po_file` names the file expected and the options to set when
    /// there is none or it does not exist.
    pub fn resolve(&self, data_root: Option<&Path>) -> Result<PriorSource, PriorError> {
        let po_file = if self.needs_po() {
            let path = match (&self.po_file, data_root) {
                (Some(f), _) => f.clone(),
                (None, Some(root)) => Self::default_po_file(root),
                (None, None) => return Err(no_po_file()),
            };
            if !path.is_file() {
                return Err(po_file_err(format!(
                    "the presence-only source is on but the file {} does not exist: name \
                     another with po_file, or set po.enabled = false",
                    path.display()
                )));
            }
            Some(path)
        } else {
            None
        };
        Ok(PriorSource {
            config: self.config.clone(),
            po_file,
        })
    }

    /// The presence-only records of a resolved source (`None` when the PO source is off): its
    /// `po_file` is read as it stands (an unresolved source without one is refused as
    /// [`PriorSource::resolve`] refuses it without a dataset root). `tick` is called every
    /// 100,000 rows with the count so far.
    pub fn read_po(&self, tick: impl FnMut(u64)) -> Result<Option<PoRecords>, PriorError> {
        if !self.needs_po() {
            return Ok(None);
        }
        let Some(path) = &self.po_file else {
            return Err(no_po_file());
        };
        PoRecords::read(path, tick)
            .map(Some)
            .map_err(|e| po_file_err(geolife_io::error_text(&e)))
    }
}

fn no_po_file() -> PriorError {
    po_file_err(format!(
        "the presence-only source is on but no file is given, and a packed cache keeps no \
         presence-only records: pass the dataset root that holds {} as --data, set po_file, or \
         set po.enabled = false",
        geolife_data::layout::PO_METADATA_TRAIN
    ))
}

fn po_file_err(message: String) -> PriorError {
    PriorError::Key {
        key: PO_FILE_KEY.into(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_file_named_or_the_dataset_roots_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let plain = PriorSource::new(PriorConfig::default());
        let expected = PriorSource::default_po_file(root);
        let e = plain.resolve(Some(root)).unwrap_err();
        assert_eq!(e.key(), Some(PO_FILE_KEY));
        assert!(
            e.to_string().contains(&expected.display().to_string()),
            "{e}"
        );
        std::fs::write(&expected, "").unwrap();
        assert_eq!(plain.resolve(Some(root)).unwrap().po_file, Some(expected));
        let e = plain.resolve(None).unwrap_err().to_string();
        assert!(
            e.contains("packed cache") && e.contains("GLC24_P0_metadata_train.csv"),
            "{e}"
        );
        // A named file wins over the root's.
        let named = PriorSource {
            po_file: Some(root.join("other.csv")),
            ..plain.clone()
        };
        assert!(
            named
                .resolve(Some(root))
                .unwrap_err()
                .to_string()
                .contains("other.csv")
        );
        // Off: nothing is resolved or read.
        let mut off = plain;
        off.config.po.enabled = false;
        assert_eq!(off.resolve(None).unwrap().po_file, None);
        assert!(off.read_po(|_| {}).unwrap().is_none());
    }
}
