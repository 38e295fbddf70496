//! The `[prior]` configuration (TOML), with the defaults documented on each field.

use serde::{Deserialize, Serialize};

use crate::PriorError;
use crate::sphere::Search;

/// Weight of a neighbour or record at great-circle distance `d` with bandwidth `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kernel {
    /// `exp(-d^2 / (2 h^2))`.
    Gaussian,
    /// 1 (every neighbour or record in range counts the same).
    Uniform,
}

impl Kernel {
    /// Names accepted on the command line.
    pub const NAMES: [&'static str; 2] = ["gaussian", "uniform"];

    /// `ln` of the weight at distance `km` with bandwidth `h_km`.
    pub fn log_weight(self, km: f64, h_km: f64) -> f64 {
        match self {
            Kernel::Gaussian => -0.5 * (km / h_km).powi(2),
            Kernel::Uniform => 0.0,
        }
    }
}

impl std::str::FromStr for Kernel {
    type Err = PriorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gaussian" => Ok(Kernel::Gaussian),
            "uniform" => Ok(Kernel::Uniform),
            other => Err(PriorError::Invalid(format!(
                "unknown kernel `{other}`: expected gaussian or uniform"
            ))),
        }
    }
}

/// A whole prior: its two sources and how they are blended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriorConfig {
    /// Weight `λ` of the PO source in the blend `(1 - λ) * PA + λ * PO` (0.5). Used only when
    /// both sources are on; a source alone gets weight 1.
    pub po_weight: f64,
    /// Species kept per survey in the score file (200); 0 writes every species (dense).
    pub top: usize,
    pub pa: PaConfig,
    pub po: PoConfig,
    /// Nearest-neighbour search (not a file setting): the k-d tree, or brute force for
    /// comparisons (`geolife prior --brute-force`).
    #[serde(skip)]
    pub search: Search,
}

/// PA neighbours: distance-weighted label frequencies of the k nearest PA train surveys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaConfig {
    /// Use this source (true).
    pub enabled: bool,
    /// Neighbours per survey (50).
    pub k: usize,
    /// Kernel over the great-circle distance (gaussian).
    pub kernel: Kernel,
    /// Kernel bandwidth in km (10).
    pub bandwidth_km: f64,
    /// Pseudo-count `α` of the global PA label frequency (0): with α > 0 the neighbours'
    /// absolute kernel weights compete with α, so a survey far from every neighbour gets
    /// the global frequency; with 0 only the neighbours' relative weights matter.
    pub pseudo_count: f64,
    /// Only neighbours of the same year (false).
    pub same_year: bool,
    /// Only neighbours of the same biogeographic region (false).
    pub same_region: bool,
}

/// PO density: each species' share of the presence-only records around the survey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoConfig {
    /// Use this source (true; off by itself when the dataset has no PO file).
    pub enabled: bool,
    /// Records within this great-circle radius count (25 km).
    pub radius_km: f64,
    /// Kernel over the distance inside the radius (gaussian).
    pub kernel: Kernel,
    /// Kernel bandwidth in km (10).
    pub bandwidth_km: f64,
    /// Pseudo-count `β` (2): shares from few records shrink towards the species' share of
    /// the whole PO file `G_s`: `(c_s + β G_s) / (C + β)` for the plain share, and
    /// `(c_s + β) / (C G_s + β)` for the reporting ratio of `debias` (strong shrinkage where
    /// a species is expected to be reported less than `β` times).
    pub pseudo_count: f64,
    /// Divide out the reporting bias (true): score `g_s x` the shrunk ratio of the species'
    /// records around the survey to those expected from its global PO share, with `g_s` its
    /// PA label frequency. A species' over-reporting (showy, common) is a per-species factor
    /// and cancels; a species no PO record reports keeps `g_s`. Off: the plain share.
    pub debias: bool,
}

impl Default for PriorConfig {
    fn default() -> Self {
        PriorConfig {
            po_weight: 0.5,
            top: 200,
            pa: PaConfig::default(),
            po: PoConfig::default(),
            search: Search::Tree,
        }
    }
}

impl Default for PaConfig {
    fn default() -> Self {
        PaConfig {
            enabled: true,
            k: 50,
            kernel: Kernel::Gaussian,
            bandwidth_km: 10.0,
            pseudo_count: 0.0,
            same_year: false,
            same_region: false,
        }
    }
}

impl Default for PoConfig {
    fn default() -> Self {
        PoConfig {
            enabled: true,
            radius_km: 25.0,
            kernel: Kernel::Gaussian,
            bandwidth_km: 10.0,
            pseudo_count: 2.0,
            debias: true,
        }
    }
}

/// The file form: everything under a `[prior]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    prior: PriorConfig,
}

impl PriorConfig {
    /// Parses a TOML text whose settings sit under `[prior]`, `[prior.pa]` and `[prior.po]`.
    pub fn from_toml(text: &str) -> Result<PriorConfig, PriorError> {
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| PriorError::Invalid(e.to_string()))?;
        Ok(file.prior)
    }

    /// Rejects values that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), PriorError> {
        let bad = |key: &str, message: String| {
            Err(PriorError::Key {
                key: format!("prior.{key}"),
                message,
            })
        };
        if !self.pa.enabled && !self.po.enabled {
            return bad(
                "pa.enabled",
                "at least one source must be on (prior.pa.enabled or prior.po.enabled)".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.po_weight) {
            return bad("po_weight", format!("{} is not in 0..=1", self.po_weight));
        }
        if self.pa.k == 0 {
            return bad("pa.k", "must be at least 1".into());
        }
        for (key, v) in [
            ("pa.bandwidth_km", self.pa.bandwidth_km),
            ("po.bandwidth_km", self.po.bandwidth_km),
            ("po.radius_km", self.po.radius_km),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(key, format!("{v} must be a positive number of km"));
            }
        }
        for (key, v) in [
            ("pa.pseudo_count", self.pa.pseudo_count),
            ("po.pseudo_count", self.po.pseudo_count),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, format!("{v} must be >= 0"));
            }
        }
        Ok(())
    }
}
