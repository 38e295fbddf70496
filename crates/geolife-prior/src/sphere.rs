//! Points on the unit sphere and a k-d tree over them. The chord (straight-line) distance
//! between two unit vectors is monotone in their great-circle distance, so Euclidean
//! nearest-neighbour and radius queries on 3-D unit vectors are great-circle queries.

use std::num::NonZeroUsize;

use kiddo::{ImmutableKdTree, QueryResultItem, SquaredEuclidean};

/// Mean Earth radius in km (great-circle distances).
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A point as a 3-D unit vector, in f32 (12 bytes; 1 ulp near 1.0 is about 0.4 m on Earth).
pub type Point = [f32; 3];

/// The unit vector of (lon, lat) in degrees.
pub fn unit_vector(lon: f64, lat: f64) -> Point {
    let (lon, lat) = (lon.to_radians(), lat.to_radians());
    [
        (lat.cos() * lon.cos()) as f32,
        (lat.cos() * lon.sin()) as f32,
        lat.sin() as f32,
    ]
}

/// Squared chord between two unit vectors, computed in f64.
pub fn chord2(a: &Point, b: &Point) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum()
}

/// Great-circle distance in km of a squared chord.
pub fn chord2_to_km(c2: f64) -> f64 {
    2.0 * EARTH_RADIUS_KM * (0.5 * c2.max(0.0).sqrt()).min(1.0).asin()
}

/// Squared chord of a great-circle distance in km (radius queries).
pub fn km_to_chord2(km: f64) -> f64 {
    let half_angle = (0.5 * km / EARTH_RADIUS_KM).min(std::f64::consts::FRAC_PI_2);
    (2.0 * half_angle.sin()).powi(2)
}

/// Great-circle distance in km between two (lon, lat) places in degrees (haversine).
pub fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lon1, lat1) = (a.0.to_radians(), a.1.to_radians());
    let (lon2, lat2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// One search result: the item stored with the point and its great-circle distance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub item: u32,
    pub km: f64,
}

/// How an index answers queries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Search {
    /// A k-d tree (the default).
    #[default]
    Tree,
    /// A scan of every point per query: the reference for tests and timings.
    BruteForce,
}

/// An immutable k-d tree of unit vectors, each with a `u32` item (an index or a species
/// column): 16 bytes a point plus the tree's small stem arrays. (Or, for comparisons, the
/// plain list scanned by brute force.)
pub struct SphereIndex {
    tree: Option<ImmutableKdTree<f32, 3>>,
    brute: Vec<(u32, Point)>,
    len: usize,
}

impl SphereIndex {
    /// Builds the k-d tree over `(item, point)` entries (any number, duplicates allowed).
    pub fn new(entries: &[(u32, Point)]) -> SphereIndex {
        SphereIndex::with_search(entries, Search::Tree)
    }

    /// Builds an index that answers by `search`.
    pub fn with_search(entries: &[(u32, Point)], search: Search) -> SphereIndex {
        let (tree, brute) = match search {
            Search::Tree if !entries.is_empty() => {
                // Construction only fails for item indices that overflow `u32`, and these are
                // the caller's own items.
                (ImmutableKdTree::new_from_entries(entries).ok(), Vec::new())
            }
            Search::Tree => (None, Vec::new()),
            Search::BruteForce => (None, entries.to_vec()),
        };
        SphereIndex {
            tree,
            brute,
            len: entries.len(),
        }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True without points.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `k` nearest points to `q`, nearest first (ties in any order).
    pub fn nearest(&self, q: &Point, k: usize) -> Vec<Hit> {
        let (Some(tree), Some(k)) = (&self.tree, NonZeroUsize::new(k.min(self.len))) else {
            return brute_nearest(&self.brute, q, k);
        };
        tree.query(q)
            .nearest_n::<SquaredEuclidean<f32>>(k)
            .execute()
            .into_iter()
            .map(hit)
            .collect()
    }

    /// Every point within `km` of `q` (inclusive), in no particular order.
    pub fn within(&self, q: &Point, km: f64) -> Vec<Hit> {
        let Some(tree) = &self.tree else {
            return brute_within(&self.brute, q, km);
        };
        tree.query(q)
            .within::<SquaredEuclidean<f32>>(km_to_chord2(km) as f32)
            .unsorted()
            .execute()
            .into_iter()
            .map(hit)
            .collect()
    }
}

fn hit<P>(r: QueryResultItem<P, u32, f32>) -> Hit {
    Hit {
        item: r.item,
        km: chord2_to_km(f64::from(r.distance)),
    }
}

/// Brute force over every entry: the reference the index is tested and timed against.
/// `k` nearest, nearest first (ties by entry order).
pub fn brute_nearest(entries: &[(u32, Point)], q: &Point, k: usize) -> Vec<Hit> {
    let mut all: Vec<(f64, usize)> = entries
        .iter()
        .enumerate()
        .map(|(i, (_, p))| (chord2(p, q), i))
        .collect();
    let k = k.min(all.len());
    if k == 0 {
        return Vec::new();
    }
    all.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    all.truncate(k);
    all.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    all.into_iter()
        .map(|(c2, i)| Hit {
            item: entries[i].0,
            km: chord2_to_km(c2),
        })
        .collect()
}

/// Brute force: every entry within `km` of `q`, in entry order.
pub fn brute_within(entries: &[(u32, Point)], q: &Point, km: f64) -> Vec<Hit> {
    let r2 = km_to_chord2(km);
    entries
        .iter()
        .filter_map(|(item, p)| {
            let c2 = chord2(p, q);
            (c2 <= r2).then(|| Hit {
                item: *item,
                km: chord2_to_km(c2),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chord_distances_match_haversine() {
        let a = (2.35, 48.85); // Paris
        let b = (13.40, 52.52); // Berlin
        let hav = haversine_km(a, b);
        assert!((hav - 877.5).abs() < 2.0, "{hav}");
        let c2 = chord2(&unit_vector(a.0, a.1), &unit_vector(b.0, b.1));
        assert!((chord2_to_km(c2) - hav).abs() < 0.01);
        for km in [0.1, 1.0, 10.0, 500.0] {
            assert!((chord2_to_km(km_to_chord2(km)) - km).abs() < 1e-9 * km.max(1.0));
        }
    }
}
