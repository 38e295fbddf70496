//! The packed cache as a [`SampleSource`], and the input statistics read from its manifest.

use geolife_data::cache::{Batch, Manifest, PackedSplit};

use crate::loader::SampleSource;
use crate::transform::{InputStats, MeanStd};

impl SampleSource for PackedSplit {
    fn len(&self) -> usize {
        PackedSplit::len(self)
    }
    fn gather(&self, indices: &[usize], out: &mut Batch) {
        PackedSplit::gather(self, indices, out);
    }
    fn patch_shape(&self) -> [usize; 3] {
        self.manifest().patch_shape
    }
    fn cube_channel_len(&self) -> (usize, usize) {
        let m = self.manifest();
        (
            m.landsat_shape[1] * m.landsat_shape[2],
            m.bioclim_shape[1] * m.bioclim_shape[2],
        )
    }
}

/// Train statistics of every input, from a manifest (test manifests carry the train ones).
pub fn stats_from_manifest(m: &Manifest) -> InputStats {
    let ms = |mean: f64, std: f64| MeanStd {
        mean: mean as f32,
        std: std as f32,
    };
    InputStats {
        tabular: m.tabular_stats.iter().map(|s| ms(s.mean, s.std)).collect(),
        landsat: m
            .landsat_channel_stats
            .iter()
            .map(|s| ms(s.mean, s.std))
            .collect(),
        bioclim: m
            .bioclim_channel_stats
            .iter()
            .map(|s| ms(s.mean, s.std))
            .collect(),
        patch: m
            .patch_channel_stats
            .iter()
            .map(|s| ms(s.mean, s.std))
            .collect(),
    }
}
