//! The generative model behind `geolife synth`: spatial clusters, per-survey latent factors,
//! per-species responses and the renderers that hide each factor pair in one modality.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use super::SynthConfig;

/// Number of latent factors: two per modality.
pub const FACTORS: usize = 8;
/// Factor indices: environment (temperature, moisture/soil).
pub const F_TEMP: usize = 0;
pub const F_MOIST: usize = 1;
/// Landsat: seasonal NIR amplitude, multi-year trend.
pub const F_PHENO_AMP: usize = 2;
pub const F_PHENO_TREND: usize = 3;
/// Bioclim cube: precipitation seasonality (winter vs summer, spring vs autumn).
pub const F_RAIN_COS: usize = 4;
pub const F_RAIN_SIN: usize = 5;
/// Patch: vegetation colour, stripe orientation.
pub const F_GREEN: usize = 6;
pub const F_STRIPES: usize = 7;

/// Share of a factor's variance explained by its cluster (spatial autocorrelation).
const CLUSTER_SHARE: f64 = 0.35;

/// Landsat cube shape (band, quarter, year) and the real file's strides.
pub const LANDSAT_SIZE: [usize; 3] = [6, 4, 21];
pub const LANDSAT_STRIDE: [usize; 3] = [84, 1, 4];
/// Bioclim cube shape (variable, year, month) and the real file's strides.
pub const BIOCLIM_SIZE: [usize; 3] = [4, 19, 12];
pub const BIOCLIM_STRIDE: [usize; 3] = [1, 48, 4];
/// Patch side in pixels.
pub const PATCH: usize = 128;

/// Stream tags that keep the random draws of different purposes independent.
#[derive(Clone, Copy)]
pub enum Stream {
    World = 1,
    Ids = 2,
    Survey = 3,
    /// Presence-only records (`super::po`): their own stream, so that every other file is
    /// the same with or without them.
    Po = 4,
}

/// A reproducible generator for (seed, stream, index), independent of thread scheduling.
pub fn rng_for(seed: u64, stream: Stream, index: u64) -> StdRng {
    let mut h = splitmix(seed ^ 0x9E37_79B9_7F4A_7C15);
    h = splitmix(h ^ stream as u64);
    h = splitmix(h ^ index);
    StdRng::seed_from_u64(h)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Draws one standard normal value.
pub fn normal(rng: &mut StdRng) -> f64 {
    StandardNormal.sample(rng)
}

/// A spatial cluster of survey sites.
pub struct Cluster {
    pub lon: f64,
    pub lat: f64,
    /// Cluster mean of each latent factor.
    pub factor_mean: [f64; FACTORS],
}

/// Everything shared by all surveys: clusters, species and their responses.
pub struct World {
    pub clusters: Vec<Cluster>,
    /// Real-looking species ids (2..=11254), one per species index.
    pub species_ids: Vec<u32>,
    /// Per-species intercept (sets the long-tailed prevalence).
    pub intercept: Vec<f64>,
    /// Per-species factor weights, row-major `[species][FACTORS]`.
    pub weights: Vec<[f64; FACTORS]>,
    /// Hidden per-(cluster, species) effect, row-major `[cluster][species]`: visible only
    /// through location, which is why spatial validation matters.
    pub cluster_effect: Vec<f32>,
}

impl World {
    /// Builds the world from the config's seed.
    pub fn new(cfg: &SynthConfig) -> World {
        let mut rng = rng_for(cfg.seed, Stream::World, 0);
        let total = cfg.train_surveys + cfg.test_surveys;
        let n_clusters = total.div_ceil(cfg.surveys_per_cluster.max(1)).max(4);
        let clusters = (0..n_clusters)
            .map(|_| {
                let lon = rng.random_range(-8.0..28.0);
                let lat = rng.random_range(38.0..68.0);
                let mut factor_mean = [0.0; FACTORS];
                for f in &mut factor_mean {
                    *f = normal(&mut rng);
                }
                Cluster {
                    lon,
                    lat,
                    factor_mean,
                }
            })
            .collect();

        let s = cfg.species;
        let species_ids = sample_species_ids(&mut rng, s);
        let prevalence = zipf_prevalence(s, cfg.mean_species_per_survey);
        // Random frequency rank per species so that ids and frequencies are unrelated.
        let mut rank: Vec<usize> = (0..s).collect();
        for i in (1..s).rev() {
            let j = rng.random_range(0..=i);
            rank.swap(i, j);
        }
        let total_sd = (cfg.signal_strength.powi(2) + cfg.cluster_effect.powi(2)).sqrt();
        // Probit approximation of E[sigmoid(b + sd*Z)] = p, solved for b.
        let widen = (1.0 + std::f64::consts::PI * total_sd * total_sd / 8.0).sqrt();
        let mut intercept: Vec<f64> = (0..s)
            .map(|i| {
                let p = prevalence[rank[i]];
                (p / (1.0 - p)).ln() * widen
            })
            .collect();
        let w_sd = cfg.signal_strength / (FACTORS as f64).sqrt();
        let weights: Vec<[f64; FACTORS]> = (0..s)
            .map(|_| {
                let mut w = [0.0; FACTORS];
                for x in &mut w {
                    *x = w_sd * normal(&mut rng);
                }
                w
            })
            .collect();
        let cluster_effect = (0..n_clusters * s)
            .map(|_| (cfg.cluster_effect * normal(&mut rng)) as f32)
            .collect();
        calibrate(&mut intercept, &weights, cfg, &mut rng);
        World {
            clusters,
            species_ids,
            intercept,
            weights,
            cluster_effect,
        }
    }

    /// Latent factors of a survey of `cluster`.
    pub fn factors(&self, cluster: usize, rng: &mut StdRng) -> [f64; FACTORS] {
        let a = CLUSTER_SHARE.sqrt();
        let b = (1.0 - CLUSTER_SHARE).sqrt();
        let mut z = [0.0; FACTORS];
        for (k, zk) in z.iter_mut().enumerate() {
            *zk = a * self.clusters[cluster].factor_mean[k] + b * normal(rng);
        }
        z
    }

    /// Species indices present at a survey: Bernoulli(sigmoid(intercept + w.z + cluster effect)),
    /// at least one (the most probable) so that every survey has a label.
    pub fn sample_species(&self, cluster: usize, z: &[f64; FACTORS], rng: &mut StdRng) -> Vec<u32> {
        let mut present = Vec::new();
        let mut best = (f64::NEG_INFINITY, 0u32);
        for (i, logit) in self.logits(cluster, z).enumerate() {
            if logit > best.0 {
                best = (logit, i as u32);
            }
            let p = 1.0 / (1.0 + (-logit).exp());
            if rng.random::<f64>() < p {
                present.push(i as u32);
            }
        }
        if present.is_empty() {
            present.push(best.1);
        }
        present
    }

    /// Presence logit `b_s + u_{cluster,s} + w_s . z` of every species, in species order: the
    /// occurrence model that PA labels and PO records are both drawn from.
    pub fn logits<'a>(
        &'a self,
        cluster: usize,
        z: &'a [f64; FACTORS],
    ) -> impl Iterator<Item = f64> + 'a {
        let s = self.species_ids.len();
        let effect = &self.cluster_effect[cluster * s..(cluster + 1) * s];
        self.weights
            .iter()
            .zip(self.intercept.iter().zip(effect))
            .map(move |(w, (&b, &u))| {
                b + u as f64 + w.iter().zip(z).map(|(w, z)| w * z).sum::<f64>()
            })
    }

    /// A survey site of `cluster`: its centre plus N(0, 0.3 degrees) in longitude and
    /// N(0, 0.2 degrees) in latitude, clamped to the map.
    pub fn site_position(&self, cluster: usize, rng: &mut StdRng) -> (f64, f64) {
        let c = &self.clusters[cluster];
        let lon = (c.lon + 0.3 * normal(rng)).clamp(-10.0, 30.0);
        let lat = (c.lat + 0.2 * normal(rng)).clamp(36.0, 70.0);
        (lon, lat)
    }
}

/// Shifts all intercepts by one constant so that the expected species count per survey,
/// estimated on 400 simulated surveys, equals `mean_species_per_survey` (the probit
/// approximation alone undershoots with strong signals).
fn calibrate(
    intercept: &mut [f64],
    weights: &[[f64; FACTORS]],
    cfg: &SynthConfig,
    rng: &mut StdRng,
) {
    const DRAWS: usize = 400;
    let mut logits = Vec::with_capacity(DRAWS * intercept.len());
    for _ in 0..DRAWS {
        let z: Vec<f64> = (0..FACTORS).map(|_| normal(rng)).collect();
        for (b, w) in intercept.iter().zip(weights) {
            let u = cfg.cluster_effect * normal(rng);
            logits.push(b + u + w.iter().zip(&z).map(|(w, z)| w * z).sum::<f64>());
        }
    }
    let expected = |shift: f64| {
        logits
            .iter()
            .map(|l| 1.0 / (1.0 + (-(l + shift)).exp()))
            .sum::<f64>()
            / DRAWS as f64
    };
    let (mut lo, mut hi) = (-10.0, 10.0);
    for _ in 0..40 {
        let mid = 0.5 * (lo + hi);
        if expected(mid) < cfg.mean_species_per_survey {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let shift = 0.5 * (lo + hi);
    for b in intercept.iter_mut() {
        *b += shift;
    }
}

/// `n` distinct species ids in 2..=11254 (the real PA id range), ascending.
fn sample_species_ids(rng: &mut StdRng, n: usize) -> Vec<u32> {
    let mut pool: Vec<u32> = (2..=11254).collect();
    let n = n.min(pool.len());
    for i in 0..n {
        let j = rng.random_range(i..pool.len());
        pool.swap(i, j);
    }
    let mut ids = pool[..n].to_vec();
    ids.sort_unstable();
    ids
}

/// Long-tailed (Zipf-like) base prevalences `A / (rank + 3)`, capped at 0.7, scaled so that
/// they sum to `mean` (the expected number of species per survey).
pub fn zipf_prevalence(n: usize, mean: f64) -> Vec<f64> {
    let shape = |a: f64| -> Vec<f64> {
        (0..n)
            .map(|r| (a / (r as f64 + 4.0)).clamp(1e-5, 0.7))
            .collect()
    };
    let (mut lo, mut hi) = (0.0, 1e6);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if shape(mid).iter().sum::<f64>() < mean {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    shape(0.5 * (lo + hi))
}

/// Clamps a factor so that renderers stay in physically plausible ranges.
fn c(z: f64) -> f64 {
    z.clamp(-2.5, 2.5)
}

/// Environmental values of one survey: `(bioclim 19, elevation, human footprint 16,
/// landcover, soilgrids 9)`, before NaN injection.
pub struct EnvValues {
    pub bio: [f64; 19],
    pub elevation: f64,
    pub footprint: [f64; 16],
    pub landcover: f64,
    pub soil: [f64; 9],
}

/// Tabular environment: temperature drives Bio1-11 and elevation, moisture drives
/// precipitation (Bio12-19), soils and land cover; human footprint is uninformative noise.
pub fn render_env(z: &[f64; FACTORS], rng: &mut StdRng) -> EnvValues {
    let t = c(z[F_TEMP]);
    let m = c(z[F_MOIST]);
    let mut n = |sd: f64| sd * normal(rng);
    let bio1 = (2830.0 + 45.0 * t + n(5.0)).round();
    let bio5 = (bio1 + 130.0 + n(12.0)).round();
    let bio6 = (bio1 - 110.0 + n(12.0)).round();
    let bio12 = (8000.0 + 1800.0 * m + n(500.0)).max(1500.0).round();
    let p = |f: f64, n: &mut dyn FnMut(f64) -> f64| (bio12 * f * (1.0 + n(0.08))).round();
    let bio = [
        bio1,
        (70.0 - 6.0 * m + n(10.0)).round().max(10.0),
        (2.0 + n(0.6)).round().clamp(1.0, 4.0),
        (6200.0 - 350.0 * m + n(300.0)).round(),
        bio5,
        bio6,
        bio5 - bio6,
        (bio1 + 30.0 + n(35.0)).round(),
        (bio1 - 20.0 + n(35.0)).round(),
        (bio1 + 80.0 + n(8.0)).round(),
        (bio1 - 70.0 + n(8.0)).round(),
        bio12,
        p(0.12, &mut n),
        p(0.045, &mut n),
        (260.0 - 25.0 * m + n(50.0)).round(),
        p(0.33, &mut n),
        p(0.17, &mut n),
        p(0.22, &mut n),
        p(0.26, &mut n),
    ];
    let elevation = (420.0 - 260.0 * t + 90.0 * m + n(90.0)).max(0.0).round();
    let mut footprint = [0.0; 16];
    let hf_scale = [
        1.0, 1.0, 20.0, 20.0, 8.0, 8.0, 1.5, 1.5, 3.0, 3.0, 5.0, 5.0, 2.0, 3.0, 3.0, 3.0,
    ];
    for (v, s) in footprint.iter_mut().zip(hf_scale) {
        *v = (s * n(1.0).abs()).round();
    }
    let bin = |x: f64| {
        if x < -0.6 {
            0
        } else if x < 0.6 {
            1
        } else {
            2
        }
    };
    // MODIS classes: 1/4/5 forests, 10 grassland, 12 cropland, 8/9 savannas.
    let table = [[10.0, 12.0, 12.0], [9.0, 12.0, 4.0], [1.0, 5.0, 4.0]];
    let mut landcover = table[bin(m)][bin(t)];
    if rng.random::<f64>() < 0.1 {
        landcover = rng.random_range(1..=14) as f64;
    }
    let mut n = |sd: f64| sd * normal(rng);
    let clay = (180.0 + 60.0 * m + n(40.0)).clamp(20.0, 600.0).round();
    let sand = (480.0 - 130.0 * m + n(80.0)).clamp(50.0, 900.0).round();
    let soil = [
        (125.0 - 4.0 * m + n(6.0)).round(),
        (200.0 + 30.0 * m + n(25.0)).round(),
        (120.0 + n(35.0)).abs().round(),
        clay,
        (350.0 + 100.0 * m + n(60.0)).abs().round(),
        (62.0 - 6.0 * m + n(3.0)).round(),
        sand,
        (1000.0 - clay - sand).max(10.0),
        (600.0 + 250.0 * m + n(120.0)).abs().round(),
    ];
    EnvValues {
        bio,
        elevation,
        footprint,
        landcover,
        soil,
    }
}

/// Landsat cube in C order of (band R,G,B,NIR,SWIR1,SWIR2; quarter; year 2000-2020), 0-255.
/// Planted: NIR (and inversely red) summer-minus-winter amplitude from `F_PHENO_AMP`, and a
/// linear greening/browning trend over the 21 years from `F_PHENO_TREND`; both are shape
/// signals that survive a per-sample normalisation of the whole cube.
pub fn render_landsat(z: &[f64; FACTORS], rng: &mut StdRng, nan_years: usize) -> Vec<f32> {
    let [nb, nq, ny] = LANDSAT_SIZE;
    let base = [14.0, 16.0, 8.0, 74.0, 58.0, 28.0];
    let noise = [2.0, 2.0, 1.5, 5.0, 4.0, 3.0];
    let season = [-1.0, 1.0, 1.0, -1.0];
    let amp = 14.0 + 12.0 * c(z[F_PHENO_AMP]);
    let trend = 1.0 * c(z[F_PHENO_TREND]);
    let level = 6.0 * normal(rng);
    let mut out = vec![0f32; nb * nq * ny];
    for b in 0..nb {
        for q in 0..nq {
            for y in 0..ny {
                let dy = y as f64 - 10.0;
                let mut v = base[b] + noise[b] * normal(rng);
                match b {
                    0 => v -= 0.2 * amp * season[q],
                    3 => v += level + amp * season[q] + trend * dy,
                    4 => v += 0.6 * level + 0.5 * amp * season[q] + 0.6 * trend * dy,
                    _ => {}
                }
                let v = if y + nan_years >= ny {
                    f32::NAN
                } else {
                    v.round().clamp(0.0, 255.0) as f32
                };
                out[(b * nq + q) * ny + y] = v;
            }
        }
    }
    out
}

/// Bioclimatic monthly cube in C order of (pr, tas, tasmax, tasmin; year 2000-2018; month).
/// Temperatures follow the survey's mean temperature (`bio1`, 0.1 K) with a July peak;
/// planted: the precipitation seasonal shape (`F_RAIN_COS`: winter vs summer rain,
/// `F_RAIN_SIN`: spring vs autumn), which dominates the cube's variance and so survives
/// a per-sample normalisation.
pub fn render_bioclim(z: &[f64; FACTORS], bio1: f64, rng: &mut StdRng) -> Vec<f32> {
    let [nv, ny, nm] = BIOCLIM_SIZE;
    let a = 0.4 * c(z[F_RAIN_COS]);
    let b = 0.4 * c(z[F_RAIN_SIN]);
    let p0 = 6500.0 * (1.0 + 0.1 * normal(rng));
    let amp_t = 85.0 + 10.0 * normal(rng);
    let mut out = vec![0f32; nv * ny * nm];
    for y in 0..ny {
        let year_t = bio1 + 8.0 * normal(rng);
        for m in 0..nm {
            let ang = 2.0 * std::f64::consts::PI * m as f64 / 12.0;
            let shape = (1.0 + a * ang.cos() + b * ang.sin()).max(0.05);
            let pr = (p0 * shape * (0.3 * normal(rng)).exp()).round();
            let tas = year_t + amp_t * (ang - std::f64::consts::PI).cos() + 6.0 * normal(rng);
            let tasmax = tas + 40.0 + 5.0 * normal(rng);
            let tasmin = tas - 40.0 + 5.0 * normal(rng);
            for (v, val) in [pr, tas.round(), tasmax.round(), tasmin.round()]
                .into_iter()
                .enumerate()
            {
                out[(v * ny + y) * nm + m] = val as f32;
            }
        }
    }
    out
}

/// Scatters a C-ordered cube into a storage with the given strides (offset 0), as the real
/// files lay it out.
pub fn to_storage(c_order: &[f32], size: [usize; 3], stride: [usize; 3]) -> Vec<f32> {
    let mut storage = vec![0f32; c_order.len()];
    for i in 0..size[0] {
        for j in 0..size[1] {
            for k in 0..size[2] {
                storage[i * stride[0] + j * stride[1] + k * stride[2]] =
                    c_order[(i * size[1] + j) * size[2] + k];
            }
        }
    }
    storage
}

/// RGB (interleaved) and NIR patches, 128x128 u8. Planted: vegetation colour (`F_GREEN`:
/// green up / red down, brighter NIR) and stripe orientation (`F_STRIPES`: horizontal
/// stripes for positive values, vertical for negative; period 16 px so that they survive
/// 2x downsampling), over a smooth random background and pixel noise.
pub fn render_patch(z: &[f64; FACTORS], rng: &mut StdRng) -> (Vec<u8>, Vec<u8>) {
    let g = 14.0 * c(z[F_GREEN]);
    let s = c(z[F_STRIPES]);
    let (amp_h, amp_v) = (18.0 * s.max(0.0), 18.0 * (-s).max(0.0));
    let phase = rng.random_range(0.0..std::f64::consts::TAU);
    let bright = 6.0 * normal(rng);
    let mean = [
        79.0 - 0.5 * g + bright,
        83.0 + 0.7 * g + bright,
        71.0 - 0.3 * g + bright,
    ];
    let nir_mean = 146.0 + 22.0 * c(z[F_GREEN]) + 1.5 * bright;
    // Smooth background: three low-frequency plane waves.
    let waves: Vec<(f64, f64, f64, f64)> = (0..3)
        .map(|_| {
            let ang = rng.random_range(0.0..std::f64::consts::TAU);
            let freq = std::f64::consts::TAU / rng.random_range(64.0..160.0);
            let ph = rng.random_range(0.0..std::f64::consts::TAU);
            (freq * ang.cos(), freq * ang.sin(), ph, 7.0)
        })
        .collect();
    let k = std::f64::consts::TAU / 16.0;
    let mut noise = PixelNoise(rng.random::<u64>() | 1);
    // Separable tables: sin(a + b) = sin a cos b + cos a sin b, so no per-pixel sin calls.
    let axis = |f: &dyn Fn(f64) -> f64| -> Vec<f64> { (0..PATCH).map(|i| f(i as f64)).collect() };
    let tables: Vec<[Vec<f64>; 4]> = waves
        .iter()
        .map(|&(fx, fy, ph, a)| {
            [
                axis(&|x| a * (fx * x + ph).sin()),
                axis(&|x| a * (fx * x + ph).cos()),
                axis(&|y| (fy * y).cos()),
                axis(&|y| (fy * y).sin()),
            ]
        })
        .collect();
    let stripe_y = axis(&|y| amp_h * (k * y + phase).sin());
    let stripe_x = axis(&|x| amp_v * (k * x + phase).sin());
    let mut rgb = vec![0u8; PATCH * PATCH * 3];
    let mut nir = vec![0u8; PATCH * PATCH];
    for y in 0..PATCH {
        for x in 0..PATCH {
            let mut bg = 0.0;
            for [sx, cx, cy, sy] in &tables {
                bg += sx[x] * cy[y] + cx[x] * sy[y];
            }
            let common = bg + stripe_y[y] + stripe_x[x];
            for ch in 0..3 {
                let v = mean[ch] + common + 5.0 * noise.next();
                rgb[(y * PATCH + x) * 3 + ch] = v.round().clamp(0.0, 255.0) as u8;
            }
            let v = nir_mean + 1.3 * common + 6.0 * noise.next();
            nir[y * PATCH + x] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    (rgb, nir)
}

/// Cheap approximately normal pixel noise (xorshift64*, Irwin-Hall sum of 4 uniforms):
/// 65k draws per patch would otherwise dominate the generation time.
struct PixelNoise(u64);

impl PixelNoise {
    fn next(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        // Four 16-bit uniforms; their sum has variance 4/12, rescaled to unit variance.
        let sum: f64 = (0..4)
            .map(|i| ((r >> (16 * i)) & 0xffff) as f64)
            .sum::<f64>()
            / 65536.0;
        (sum - 2.0) * 3f64.sqrt()
    }
}
