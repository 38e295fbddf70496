//! Streaming statistics for the manifest: per-feature (finite mean/std, NaN/inf counts,
//! min/max) and per-channel moments, mergeable across rows and chunks (Chan et al.).

use super::manifest::{ChannelStats, FeatureStats};

/// Count, mean and sum of squared deviations of finite values, plus non-finite counts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Moments {
    pub count: u64,
    pub mean: f64,
    pub m2: f64,
    pub nan: u64,
    pub inf: u64,
    pub min: f64,
    pub max: f64,
}

impl Moments {
    /// Moments of one block of values (two passes over the block: exact for small blocks).
    pub fn of<I: Iterator<Item = f64> + Clone>(values: I) -> Moments {
        let mut m = Moments {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            ..Moments::default()
        };
        let mut sum = 0.0;
        for v in values.clone() {
            if v.is_nan() {
                m.nan += 1;
            } else if v.is_infinite() {
                m.inf += 1;
            } else {
                m.count += 1;
                sum += v;
                m.min = m.min.min(v);
                m.max = m.max.max(v);
            }
        }
        if m.count == 0 {
            return m;
        }
        m.mean = sum / m.count as f64;
        m.m2 = values
            .filter(|v| v.is_finite())
            .map(|v| (v - m.mean) * (v - m.mean))
            .sum();
        m
    }

    /// Merges another block into this one (parallel variance formula).
    pub fn merge(&mut self, other: &Moments) {
        self.nan += other.nan;
        self.inf += other.inf;
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            let (nan, inf) = (self.nan, self.inf);
            *self = *other;
            self.nan = nan;
            self.inf = inf;
            return;
        }
        let n = (self.count + other.count) as f64;
        let delta = other.mean - self.mean;
        self.mean += delta * other.count as f64 / n;
        self.m2 += other.m2 + delta * delta * self.count as f64 * other.count as f64 / n;
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Population standard deviation of the finite values (0 when fewer than one).
    pub fn std(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.m2 / self.count as f64).sqrt()
        }
    }

    pub fn to_feature(self, name: &str) -> FeatureStats {
        let has = self.count > 0;
        FeatureStats {
            name: name.to_string(),
            mean: self.mean,
            std: self.std(),
            finite_count: self.count,
            nan_count: self.nan,
            inf_count: self.inf,
            min: has.then_some(self.min),
            max: has.then_some(self.max),
        }
    }

    pub fn to_channel(self) -> ChannelStats {
        ChannelStats {
            mean: self.mean,
            std: self.std(),
            count: self.count,
            nan_count: self.nan,
        }
    }
}

/// Per-channel moments of one row laid out channel-major (`channels` equal blocks).
pub(crate) fn channel_moments_f32(row: &[f32], channels: usize) -> Vec<Moments> {
    let block = row.len() / channels;
    row.chunks_exact(block)
        .map(|c| Moments::of(c.iter().map(|&v| v as f64)))
        .collect()
}

/// Per-channel moments of one u8 row laid out channel-major.
pub(crate) fn channel_moments_u8(row: &[u8], channels: usize) -> Vec<Moments> {
    let block = row.len() / channels;
    row.chunks_exact(block)
        .map(|c| {
            // Integer sums are exact; derive mean and M2 from them.
            let (mut s, mut s2) = (0u64, 0u64);
            for &v in c {
                s += v as u64;
                s2 += (v as u64) * (v as u64);
            }
            let n = c.len() as f64;
            let mean = s as f64 / n;
            let m2 = s2 as f64 - (s as f64) * (s as f64) / n;
            let (mut lo, mut hi) = (u8::MAX, u8::MIN);
            for &v in c {
                lo = lo.min(v);
                hi = hi.max(v);
            }
            Moments {
                count: c.len() as u64,
                mean,
                m2: m2.max(0.0),
                nan: 0,
                inf: 0,
                min: lo as f64,
                max: hi as f64,
            }
        })
        .collect()
}

/// Merges per-channel moments `b` into `a` (allocating `a` on first use).
pub(crate) fn merge_all(a: &mut Vec<Moments>, b: &[Moments]) {
    if a.is_empty() {
        a.resize(b.len(), Moments::default());
    }
    for (x, y) in a.iter_mut().zip(b) {
        x.merge(y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_moments_equal_hand_computed_values() {
        // Values 1..=6 plus NaN and inf: mean 3.5, population variance 35/12.
        let a = Moments::of([1.0, 2.0, f64::NAN, 3.0].into_iter());
        let b = Moments::of([4.0, f64::INFINITY, 5.0, 6.0].into_iter());
        let mut m = Moments::default();
        m.merge(&a);
        m.merge(&b);
        assert_eq!(m.count, 6);
        assert_eq!((m.nan, m.inf), (1, 1));
        assert!((m.mean - 3.5).abs() < 1e-12);
        assert!((m.std() - (35.0f64 / 12.0).sqrt()).abs() < 1e-12);
        assert_eq!((m.min, m.max), (1.0, 6.0));
    }

    #[test]
    fn u8_channel_moments_match_hand_values() {
        // Two channels of two pixels: [0, 255] and [10, 20].
        let m = channel_moments_u8(&[0, 255, 10, 20], 2);
        assert!((m[0].mean - 127.5).abs() < 1e-12);
        assert!((m[0].std() - 127.5).abs() < 1e-12);
        assert!((m[1].mean - 15.0).abs() < 1e-12);
        assert!((m[1].std() - 5.0).abs() < 1e-12);
    }
}
