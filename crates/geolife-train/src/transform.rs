//! Input transforms from raw cache values to model inputs: geolife's standardisation with train
//! statistics, or the seed's exact transforms; plus patch flips/rotations and mixup.

use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

use crate::config::TransformMode;

/// Mean and standard deviation of one feature or channel (train statistics).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct MeanStd {
    pub mean: f32,
    pub std: f32,
}

/// Train statistics of every input, saved in the run folder (`stats.json`) so prediction uses
/// exactly the training normalisation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InputStats {
    /// Per tabular feature.
    pub tabular: Vec<MeanStd>,
    /// Per Landsat band (first cube axis).
    pub landsat: Vec<MeanStd>,
    /// Per bioclim variable (first cube axis).
    pub bioclim: Vec<MeanStd>,
    /// Per Sentinel channel (R, G, B, NIR) on the 0-255 scale.
    pub patch: Vec<MeanStd>,
}

/// Model inputs of one batch, flat row-major buffers.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub n: usize,
    pub tabular: Vec<f32>,
    pub landsat: Vec<f32>,
    pub bioclim: Vec<f32>,
    pub sentinel: Vec<f32>,
    /// Location prior rows `[n, classes]` when the model takes them, else empty.
    pub prior: Vec<f32>,
}

/// Divide safely: a zero or non-finite std becomes 1 so constant features map to 0.
fn inv_std(s: f32) -> f32 {
    if s.is_finite() && s > 1e-12 {
        1.0 / s
    } else {
        1.0
    }
}

/// Statistic `i`, or the identity (mean 0, std 1) when the manifest has none.
fn stat(stats: &[MeanStd], i: usize) -> MeanStd {
    stats.get(i).copied().unwrap_or(MeanStd {
        mean: 0.0,
        std: 1.0,
    })
}

/// The model's tabular inputs located in a cache row, by name: model input `j` is cache column
/// `pick[j]`. Models record the names they were trained on (checkpoint metadata, `run.json`),
/// and a cache may hold the same features in another order (the seed's rule follows each train
/// CSV's header), so columns are matched by name, never by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TabularColumns {
    pick: Vec<usize>,
    cache_len: usize,
}

impl TabularColumns {
    /// The mapping of `cache` columns onto `model` names; `None` when they are the same list.
    /// A model name the cache lacks, a cache column the model does not take, or a repeated
    /// name is an error naming it (`context` says which model and which cache).
    pub fn between(
        model: &[String],
        cache: &[String],
        context: &str,
    ) -> Result<Option<Self>, crate::error::TrainError> {
        if model == cache {
            return Ok(None);
        }
        let bad = |what: String| crate::error::TrainError::Invalid(format!("{context}: {what}"));
        let position = |names: &[String], n: &String| names.iter().position(|c| c == n);
        for (names, whose) in [(model, "the model's"), (cache, "the cache's")] {
            if let Some((i, n)) = names
                .iter()
                .enumerate()
                .find(|&(i, n)| position(names, n) != Some(i))
            {
                return Err(bad(format!(
                    "tabular feature `{n}` appears twice in {whose} names (at {} and {i})",
                    position(names, n).unwrap_or(i)
                )));
            }
        }
        let missing: Vec<&str> = model
            .iter()
            .filter(|n| position(cache, n).is_none())
            .map(String::as_str)
            .collect();
        let unexpected: Vec<&str> = cache
            .iter()
            .filter(|n| position(model, n).is_none())
            .map(String::as_str)
            .collect();
        let mut problems = Vec::new();
        if !missing.is_empty() {
            problems.push(format!(
                "the model takes tabular feature(s) {} that the cache does not have",
                quoted(&missing)
            ));
        }
        if !unexpected.is_empty() {
            problems.push(format!(
                "the cache has tabular feature(s) {} that the model was not trained with",
                quoted(&unexpected)
            ));
        }
        if !problems.is_empty() {
            return Err(bad(format!(
                "{} (prepare the cache from data with the environmental columns the model was \
                 trained on)",
                problems.join("; ")
            )));
        }
        Ok(Some(Self {
            pick: model.iter().filter_map(|n| position(cache, n)).collect(),
            cache_len: cache.len(),
        }))
    }

    /// `rows` (cache order, `cache.len()` values a row) in the model's order.
    pub fn apply(&self, rows: &[f32]) -> Vec<f32> {
        rows.chunks_exact(self.cache_len.max(1))
            .flat_map(|row| self.pick.iter().map(move |&c| row[c]))
            .collect()
    }

    /// Per-column values (e.g. statistics) in cache order, put in the model's order.
    pub fn reorder<T: Clone>(&self, per_column: &[T]) -> Vec<T> {
        self.pick.iter().map(|&c| per_column[c].clone()).collect()
    }
}

/// `a`, `b` and 3 more: the first names of a list, quoted.
fn quoted(names: &[&str]) -> String {
    const SHOWN: usize = 5;
    let mut s = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Tabular features. Geolife: (x - mean) / std, non-finite -> 0 (the mean); LandCover is
/// standardised as-is like the other columns (not one-hot). Seed: non-finite -> -1, raw.
pub fn tabular(mode: TransformMode, stats: &[MeanStd], raw: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.extend(raw.iter().enumerate().map(|(i, &x)| match mode {
        TransformMode::Seed => {
            if x.is_finite() {
                x
            } else {
                -1.0
            }
        }
        TransformMode::Geolife => {
            if x.is_finite() {
                let s = stat(stats, i % stats.len().max(1));
                (x - s.mean) * inv_std(s.std)
            } else {
                0.0
            }
        }
    }));
}

/// A cube batch `[B, C, ...]` with `per_channel` values per channel. Geolife: per-channel
/// standardisation, NaN -> 0 afterwards; seed: raw values with NaN -> 0 (`nan_to_num`).
pub fn cube(
    mode: TransformMode,
    stats: &[MeanStd],
    per_channel: usize,
    raw: &[f32],
    out: &mut Vec<f32>,
) {
    out.clear();
    let channels = stats.len().max(1);
    out.extend(raw.iter().enumerate().map(|(i, &x)| {
        let v = match mode {
            TransformMode::Seed => x,
            TransformMode::Geolife => {
                let s = stat(stats, (i / per_channel.max(1)) % channels);
                (x - s.mean) * inv_std(s.std)
            }
        };
        if v.is_nan() {
            0.0
        } else if v.is_infinite() {
            // nan_to_num maps +-inf to the largest finite f32; keep that behaviour.
            if v > 0.0 { f32::MAX } else { f32::MIN }
        } else {
            v
        }
    }));
}

/// Sentinel patches `[B, 4, H, W]` u8. Geolife: per-channel standardisation with train stats;
/// seed: x / 255 then (x - 0.5) / 0.5.
pub fn patches(mode: TransformMode, stats: &[MeanStd], hw: usize, raw: &[u8], out: &mut Vec<f32>) {
    out.clear();
    let channels = stats.len().max(1);
    out.extend(raw.iter().enumerate().map(|(i, &p)| {
        let x = f32::from(p);
        match mode {
            TransformMode::Seed => (x / 255.0 - 0.5) / 0.5,
            TransformMode::Geolife => {
                let s = stat(stats, (i / hw.max(1)) % channels);
                (x - s.mean) * inv_std(s.std)
            }
        }
    }));
}

/// Flip and rotate one CHW patch in place: `rot` quarter turns counter-clockwise, then
/// optional horizontal / vertical flips. Square patches only (non-square: left unchanged).
pub fn augment_patch(
    patch: &mut [u8],
    c: usize,
    h: usize,
    w: usize,
    rot: u8,
    hflip: bool,
    vflip: bool,
) {
    if h != w || (rot.is_multiple_of(4) && !hflip && !vflip) {
        return;
    }
    let n = h;
    let mut tmp = vec![0u8; n * n];
    for ch in 0..c {
        let plane = &mut patch[ch * n * n..(ch + 1) * n * n];
        for y in 0..n {
            for x in 0..n {
                // Source pixel for output (y, x) after rot quarter turns CCW.
                let (sy, sx) = match rot % 4 {
                    0 => (y, x),
                    1 => (x, n - 1 - y),
                    2 => (n - 1 - y, n - 1 - x),
                    _ => (n - 1 - x, y),
                };
                let (sy, sx) = (
                    if vflip { n - 1 - sy } else { sy },
                    if hflip { n - 1 - sx } else { sx },
                );
                tmp[y * n + x] = plane[sy * n + sx];
            }
        }
        plane.copy_from_slice(&tmp);
    }
}

/// Mixup of a batch in place: with `lambda ~ Beta(alpha, alpha)` and a random permutation
/// `p`, every input and target row becomes `lambda * x[i] + (1 - lambda) * x[p[i]]`.
/// Returns lambda.
pub fn mixup<R: Rng>(inputs: &mut Inputs, targets: &mut [f32], alpha: f64, rng: &mut R) -> f32 {
    let lambda = match Beta::new(alpha, alpha) {
        Ok(beta) => beta.sample(rng) as f32,
        Err(_) => 1.0,
    };
    let n = inputs.n;
    let mut perm: Vec<usize> = (0..n).collect();
    rand::seq::SliceRandom::shuffle(perm.as_mut_slice(), rng);
    for buf in [
        &mut inputs.tabular,
        &mut inputs.landsat,
        &mut inputs.bioclim,
        &mut inputs.sentinel,
        &mut inputs.prior,
    ] {
        mix_rows(buf, n, &perm, lambda);
    }
    mix_rows(targets, n, &perm, lambda);
    lambda
}

fn mix_rows(buf: &mut [f32], n: usize, perm: &[usize], lambda: f32) {
    if n == 0 || buf.is_empty() {
        return;
    }
    let width = buf.len() / n;
    let src = buf.to_vec();
    for (i, &j) in perm.iter().enumerate() {
        let (a, b) = (
            &src[i * width..(i + 1) * width],
            &src[j * width..(j + 1) * width],
        );
        for (o, (x, y)) in buf[i * width..(i + 1) * width]
            .iter_mut()
            .zip(a.iter().zip(b))
        {
            *o = lambda * x + (1.0 - lambda) * y;
        }
    }
}

#[cfg(test)]
mod tests {
    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tabular_columns_are_matched_by_name() {
        use super::TabularColumns;
        let model = names(&["b", "c", "a"]);
        let cache = names(&["a", "b", "c"]);
        assert_eq!(TabularColumns::between(&cache, &cache, "x").unwrap(), None);
        let m = TabularColumns::between(&model, &cache, "x")
            .unwrap()
            .unwrap();
        // Two cache rows (a, b, c) = (1, 2, 3) and (4, 5, 6), read as (b, c, a).
        assert_eq!(
            m.apply(&[1., 2., 3., 4., 5., 6.]),
            vec![2., 3., 1., 5., 6., 4.]
        );
        assert_eq!(m.reorder(&["A", "B", "C"]), vec!["B", "C", "A"]);
        let e = TabularColumns::between(&names(&["a", "z"]), &names(&["a", "b"]), "ckpt")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ckpt") && e.contains("`z` that the cache does not have"),
            "{e}"
        );
        assert!(e.contains("`b` that the model was not trained with"), "{e}");
        let e = TabularColumns::between(&names(&["a"]), &names(&["a", "b"]), "ckpt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not trained with") && e.contains("`b`"), "{e}");
        let e = TabularColumns::between(&names(&["a", "a"]), &names(&["a", "b"]), "ckpt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`a` appears twice"), "{e}");
    }

    use super::*;
    use rand::SeedableRng;

    #[test]
    fn seed_mode_tabular_maps_non_finite_to_minus_one() {
        let mut out = Vec::new();
        tabular(
            TransformMode::Seed,
            &[],
            &[1.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY],
            &mut out,
        );
        assert_eq!(out, vec![1.5, -1.0, -1.0, -1.0]);
    }

    #[test]
    fn geolife_tabular_standardises_per_feature() {
        let stats = [
            MeanStd {
                mean: 10.0,
                std: 2.0,
            },
            MeanStd {
                mean: 0.0,
                std: 0.0,
            },
        ];
        let mut out = Vec::new();
        tabular(
            TransformMode::Geolife,
            &stats,
            &[14.0, 3.0, f32::NAN, 5.0],
            &mut out,
        );
        assert_eq!(out, vec![2.0, 3.0, 0.0, 5.0]);
    }

    #[test]
    fn seed_mode_sentinel_is_minus_one_to_one() {
        let mut out = Vec::new();
        patches(TransformMode::Seed, &[], 1, &[0, 255, 51], &mut out);
        assert_eq!(out[0], -1.0);
        assert_eq!(out[1], 1.0);
        assert!((out[2] - (0.2 - 0.5) / 0.5).abs() < 1e-6);
    }

    #[test]
    fn cubes_replace_nan_with_zero() {
        let mut out = Vec::new();
        cube(
            TransformMode::Seed,
            &[],
            2,
            &[f32::NAN, 3.0, 4.0, f32::NAN],
            &mut out,
        );
        assert_eq!(out, vec![0.0, 3.0, 4.0, 0.0]);
        let stats = [
            MeanStd {
                mean: 1.0,
                std: 2.0,
            },
            MeanStd {
                mean: 4.0,
                std: 1.0,
            },
        ];
        cube(
            TransformMode::Geolife,
            &stats,
            2,
            &[f32::NAN, 3.0, 4.0, 6.0],
            &mut out,
        );
        assert_eq!(out, vec![0.0, 1.0, 0.0, 2.0]);
    }

    #[test]
    fn rot90_matches_numpy_rot90() {
        // numpy.rot90([[1,2],[3,4]]) == [[2,4],[1,3]]
        let mut p = vec![1u8, 2, 3, 4];
        augment_patch(&mut p, 1, 2, 2, 1, false, false);
        assert_eq!(p, vec![2, 4, 1, 3]);
        // numpy.fliplr([[1,2],[3,4]]) == [[2,1],[4,3]]
        let mut p = vec![1u8, 2, 3, 4];
        augment_patch(&mut p, 1, 2, 2, 0, true, false);
        assert_eq!(p, vec![2, 1, 4, 3]);
        let mut p = vec![1u8, 2, 3, 4];
        augment_patch(&mut p, 1, 2, 2, 4, false, true);
        assert_eq!(p, vec![3, 4, 1, 2]);
    }

    #[test]
    fn mixup_is_a_convex_combination_of_rows() {
        let mut inputs = Inputs {
            n: 2,
            tabular: vec![0.0, 10.0],
            landsat: vec![1.0, 1.0],
            bioclim: vec![],
            sentinel: vec![2.0, 4.0],
            prior: vec![1.0, 0.0, 0.0, 1.0],
        };
        let mut targets = vec![1.0, 0.0, 0.0, 1.0];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let lambda = mixup(&mut inputs, &mut targets, 0.4, &mut rng);
        assert!((0.0..=1.0).contains(&lambda));
        // Rows stay in the convex hull and the sums of each target row stay 1.
        assert!((targets[0] + targets[1] - 1.0).abs() < 1e-6);
        assert!((targets[2] + targets[3] - 1.0).abs() < 1e-6);
        // The prior rows are mixed with the same pairs and weight as the targets.
        assert_eq!(inputs.prior, targets);
        assert_eq!(inputs.landsat, vec![1.0, 1.0]);
        let t0 = inputs.tabular[0];
        assert!((t0 - 0.0).abs() < 1e-5 || (t0 - 10.0 * (1.0 - lambda)).abs() < 1e-4);
    }
}
