//! Train/validation splits of the PA train surveys: spatial blocks (honest: neighbouring sites
//! share species, so a random split overstates F1) or the seed's random 90/10.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Indices (into the train split) of the two parts, each sorted ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainValSplit {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

/// The block of a site: integer cell of side `block_arcmin` arc-minutes in lon and lat.
pub fn block_of(lon: f64, lat: f64, block_arcmin: f64) -> (i64, i64) {
    let side = block_arcmin / 60.0;
    ((lon / side).floor() as i64, (lat / side).floor() as i64)
}

/// Whole blocks go to validation, in a seeded random order, until at least `fraction` of the
/// surveys are there. Surveys with non-finite coordinates stay in train.
pub fn spatial_split(
    coords: &[(f64, f64)],
    fraction: f64,
    block_arcmin: f64,
    seed: u64,
) -> TrainValSplit {
    let (blocks, keys, _) = shuffled_blocks(coords, block_arcmin, seed);
    let target = (fraction * coords.len() as f64).round() as usize;
    let mut in_val = vec![false; coords.len()];
    let mut count = 0;
    for key in keys {
        if count >= target {
            break;
        }
        for &i in &blocks[&key] {
            in_val[i] = true;
            count += 1;
        }
    }
    partition(&in_val)
}

/// The surveys of each block, the blocks in a seeded random order, and the surveys with
/// non-finite coordinates (no block).
#[allow(clippy::type_complexity)]
fn shuffled_blocks(
    coords: &[(f64, f64)],
    block_arcmin: f64,
    seed: u64,
) -> (
    BTreeMap<(i64, i64), Vec<usize>>,
    Vec<(i64, i64)>,
    Vec<usize>,
) {
    let mut blocks: BTreeMap<(i64, i64), Vec<usize>> = BTreeMap::new();
    let mut loose = Vec::new();
    for (i, &(lon, lat)) in coords.iter().enumerate() {
        if lon.is_finite() && lat.is_finite() {
            blocks
                .entry(block_of(lon, lat, block_arcmin))
                .or_default()
                .push(i);
        } else {
            loose.push(i);
        }
    }
    let mut keys: Vec<(i64, i64)> = blocks.keys().copied().collect();
    keys.shuffle(&mut StdRng::seed_from_u64(seed));
    (blocks, keys, loose)
}

/// A seeded random permutation; the first `round(fraction * n)` surveys are validation.
/// (Same proportions and seed as the seed's split; the permutation is geolife's own RNG, not
/// torch's.)
pub fn random_split(n: usize, fraction: f64, seed: u64) -> TrainValSplit {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let n_val = (fraction * n as f64).round() as usize;
    let mut in_val = vec![false; n];
    for &i in &order[..n_val.min(n)] {
        in_val[i] = true;
    }
    partition(&in_val)
}

/// The fold (0..k) of every survey for k-fold validation: whole spatial blocks, in a seeded
/// random order, each to the fold that has the fewest surveys so far, so the folds are about
/// equal and every survey is in exactly one. Surveys with non-finite coordinates, which have no
/// block, are dealt to the folds in turn.
pub fn spatial_folds(coords: &[(f64, f64)], k: usize, block_arcmin: f64, seed: u64) -> Vec<usize> {
    let k = k.max(1);
    let (blocks, keys, loose) = shuffled_blocks(coords, block_arcmin, seed);
    let mut fold = vec![0; coords.len()];
    let mut sizes = vec![0usize; k];
    for key in keys {
        // The first of the smallest folds: ties go to the lower fold index.
        let f = (0..k).min_by_key(|&f| sizes[f]).unwrap_or(0);
        for &i in &blocks[&key] {
            fold[i] = f;
        }
        sizes[f] += blocks[&key].len();
    }
    for (j, i) in loose.into_iter().enumerate() {
        fold[i] = j % k;
    }
    fold
}

/// The fold (0..k) of every survey for random k-fold validation: a seeded permutation dealt to
/// the folds in turn.
pub fn random_folds(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut fold = vec![0; n];
    for (j, &i) in order.iter().enumerate() {
        fold[i] = j % k.max(1);
    }
    fold
}

/// Fold `f` of `folds` validates; the others train.
pub fn fold_split(folds: &[usize], f: usize) -> TrainValSplit {
    let in_val: Vec<bool> = folds.iter().map(|&x| x == f).collect();
    partition(&in_val)
}

fn partition(in_val: &[bool]) -> TrainValSplit {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, &v) in in_val.iter().enumerate() {
        if v { val.push(i) } else { train.push(i) }
    }
    TrainValSplit { train, val }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_follow_hand_computed_cells() {
        // 10' = 1/6 degree: lon 2.05 -> 12.3 -> 12; lat 48.99 -> 293.94 -> 293.
        assert_eq!(block_of(2.05, 48.99, 10.0), (12, 293));
        // Negative longitudes floor downwards: -0.01 * 6 = -0.06 -> -1.
        assert_eq!(block_of(-0.01, 0.0, 10.0), (-1, 0));
    }

    #[test]
    fn spatial_split_never_cuts_a_block() {
        let coords: Vec<(f64, f64)> = (0..400)
            .map(|i| (f64::from(i % 20) * 0.05, f64::from(i / 20) * 0.05))
            .collect();
        let s = spatial_split(&coords, 0.2, 10.0, 3);
        assert_eq!(s.train.len() + s.val.len(), 400);
        assert!(s.val.len() >= 80 && s.val.len() < 160, "{}", s.val.len());
        let val_blocks: std::collections::HashSet<_> = s
            .val
            .iter()
            .map(|&i| block_of(coords[i].0, coords[i].1, 10.0))
            .collect();
        for &i in &s.train {
            assert!(!val_blocks.contains(&block_of(coords[i].0, coords[i].1, 10.0)));
        }
        assert_eq!(s, spatial_split(&coords, 0.2, 10.0, 3), "seeded");
        assert_ne!(s, spatial_split(&coords, 0.2, 10.0, 4), "seed matters");
    }

    #[test]
    fn spatial_folds_cover_every_survey_once_and_never_cut_a_block() {
        // 400 sites on a 20 x 20 grid of 0.05 degrees: 3 x 3 sites per 10' block, 49 blocks.
        let mut coords: Vec<(f64, f64)> = (0..400)
            .map(|i| (f64::from(i % 20) * 0.05, f64::from(i / 20) * 0.05))
            .collect();
        coords.push((f64::NAN, 1.0));
        let folds = spatial_folds(&coords, 5, 10.0, 3);
        assert_eq!(folds.len(), 401);
        let mut sizes = [0usize; 5];
        for &f in &folds {
            sizes[f] += 1;
        }
        // Greedy by size: no fold is more than one block (at most 9 sites) above another.
        let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(hi - lo <= 9, "{sizes:?}");
        let mut fold_of_block = std::collections::HashMap::new();
        for (i, &(lon, lat)) in coords[..400].iter().enumerate() {
            let b = block_of(lon, lat, 10.0);
            assert_eq!(
                *fold_of_block.entry(b).or_insert(folds[i]),
                folds[i],
                "block {b:?} cut"
            );
        }
        // The folds' validation parts partition the surveys.
        let mut seen = vec![0; 401];
        for f in 0..5 {
            let s = fold_split(&folds, f);
            assert_eq!(s.train.len() + s.val.len(), 401);
            for &i in &s.val {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1));
        assert_eq!(folds, spatial_folds(&coords, 5, 10.0, 3), "seeded");
        assert_ne!(folds, spatial_folds(&coords, 5, 10.0, 4), "seed matters");
    }

    #[test]
    fn random_folds_deal_in_turn() {
        let folds = random_folds(10, 3, 1);
        let count = |f| folds.iter().filter(|&&x| x == f).count();
        assert_eq!((count(0), count(1), count(2)), (4, 3, 3));
    }

    #[test]
    fn random_split_is_ninety_ten() {
        let s = random_split(1000, 0.1, 666);
        assert_eq!(s.val.len(), 100);
        assert_eq!(s.train.len(), 900);
        assert_eq!(s, random_split(1000, 0.1, 666));
    }
}
