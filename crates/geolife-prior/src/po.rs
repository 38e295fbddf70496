//! Presence-only records held compactly for the index: a unit vector (3 x f32) and a species
//! id (u32) per record, 16 bytes; nothing else of the row is kept.

use std::path::Path;

use geolife_data::po::PoReader;

use crate::PriorError;
use crate::sphere::{Point, unit_vector};

/// PO records as `(species id, point)`.
#[derive(Debug, Clone, Default)]
pub struct PoRecords {
    pub entries: Vec<(u32, Point)>,
    /// Rows left out for a non-finite coordinate.
    pub skipped: usize,
}

impl PoRecords {
    /// Records at `(lon, lat, species id)`.
    pub fn from_places(places: impl IntoIterator<Item = (f64, f64, u32)>) -> PoRecords {
        let mut out = PoRecords::default();
        for (lon, lat, sp) in places {
            out.push(lon, lat, sp);
        }
        out
    }

    fn push(&mut self, lon: f64, lat: f64, species: u32) {
        if lon.is_finite() && lat.is_finite() {
            self.entries.push((species, unit_vector(lon, lat)));
        } else {
            self.skipped += 1;
        }
    }

    /// Streams `GLC24_P0_metadata_train.csv` (strict: a bad row is an error). `tick` is
    /// called every 100,000 rows with the count so far.
    pub fn read(path: &Path, mut tick: impl FnMut(u64)) -> Result<PoRecords, PriorError> {
        let mut out = PoRecords::default();
        for (i, r) in PoReader::open(path, false)?.enumerate() {
            let r = r?;
            out.push(r.lon, r.lat, r.species_id);
            if (i + 1) % 100_000 == 0 {
                tick(i as u64 + 1);
            }
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
