//! The two sources and their blend: per-survey dense accumulators over the vocabulary.

use std::collections::HashMap;

use geolife_data::SurveyMeta;

use crate::config::{Kernel, PaConfig, PoConfig, PriorConfig};
use crate::po::PoRecords;
use crate::sphere::{Hit, Point, Search, SphereIndex, unit_vector};

/// Real species ids of the score columns, ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary {
    pub species: Vec<u32>,
}

impl Vocabulary {
    /// Sorted distinct ids of all the given species.
    pub fn new(ids: impl IntoIterator<Item = u32>) -> Vocabulary {
        let mut species: Vec<u32> = ids.into_iter().collect();
        species.sort_unstable();
        species.dedup();
        Vocabulary { species }
    }

    /// Column of a species id.
    pub fn column(&self, id: u32) -> Option<u32> {
        self.species.binary_search(&id).ok().map(|c| c as u32)
    }

    pub fn len(&self) -> usize {
        self.species.len()
    }

    pub fn is_empty(&self) -> bool {
        self.species.is_empty()
    }
}

/// A survey to score. `exclude` is its own position in the PA pool, if it is there (a train
/// survey never sees its own labels).
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub survey: &'a SurveyMeta,
    pub exclude: Option<u32>,
}

/// Neighbourhoods restricted to one year and/or one region.
type GroupKey = (Option<i32>, Option<String>);

fn group_key(cfg: &PaConfig, s: &SurveyMeta) -> GroupKey {
    (
        cfg.same_year.then_some(s.year),
        cfg.same_region.then(|| s.region.clone()),
    )
}

/// PA neighbours: the pool's locations (one index per group), labels as columns.
pub struct PaSource {
    cfg: PaConfig,
    groups: HashMap<GroupKey, SphereIndex>,
    offsets: Vec<usize>,
    columns: Vec<u32>,
    /// Share of pool surveys holding each species (the pseudo-count's target).
    pub global: Vec<f64>,
    /// Mean number of species per pool survey.
    pub mean_labels: f64,
}

impl PaSource {
    /// `pool[i]` = (survey, its species ids); tree items are pool positions.
    pub fn new(
        cfg: &PaConfig,
        pool: &[(&SurveyMeta, &[u32])],
        vocab: &Vocabulary,
        search: Search,
    ) -> PaSource {
        let mut entries: HashMap<GroupKey, Vec<(u32, Point)>> = HashMap::new();
        let mut offsets = Vec::with_capacity(pool.len() + 1);
        let mut columns = Vec::new();
        let mut global = vec![0.0; vocab.len()];
        offsets.push(0);
        for (i, (s, labels)) in pool.iter().enumerate() {
            entries
                .entry(group_key(cfg, s))
                .or_default()
                .push((i as u32, unit_vector(s.lon, s.lat)));
            for &id in labels.iter() {
                if let Some(c) = vocab.column(id) {
                    columns.push(c);
                    global[c as usize] += 1.0;
                }
            }
            offsets.push(columns.len());
        }
        let n = pool.len().max(1) as f64;
        global.iter_mut().for_each(|g| *g /= n);
        PaSource {
            cfg: cfg.clone(),
            groups: entries
                .into_iter()
                .map(|(k, e)| (k, SphereIndex::with_search(&e, search)))
                .collect(),
            mean_labels: columns.len() as f64 / n,
            offsets,
            columns,
            global,
        }
    }

    /// The neighbours of `q` used by the prior: the k nearest of its group, itself left out.
    pub fn neighbours(&self, q: &Query) -> Vec<Hit> {
        let Some(index) = self.groups.get(&group_key(&self.cfg, q.survey)) else {
            return Vec::new();
        };
        let point = unit_vector(q.survey.lon, q.survey.lat);
        let extra = usize::from(q.exclude.is_some());
        let mut hits = index.nearest(&point, self.cfg.k + extra);
        hits.retain(|h| Some(h.item) != q.exclude);
        // Duplicated places can push the survey itself past k + 1: keep k either way.
        hits.sort_by(|a, b| a.km.total_cmp(&b.km).then(a.item.cmp(&b.item)));
        hits.truncate(self.cfg.k);
        hits
    }

    /// Adds `weight x` the PA prior of `q` to `acc`:
    /// `(sum_j w_j y_js + α g_s) / (sum_j w_j + α)` over the neighbours `j`.
    pub fn add(&self, q: &Query, weight: f64, acc: &mut [f64]) {
        let hits = self.neighbours(q);
        let alpha = self.cfg.pseudo_count;
        let w = kernel_weights(&hits, self.cfg.kernel, self.cfg.bandwidth_km, alpha == 0.0);
        let denom = w.iter().sum::<f64>() + alpha;
        if denom <= 0.0 {
            add_scaled(acc, &self.global, weight);
            return;
        }
        if alpha > 0.0 {
            add_scaled(acc, &self.global, weight * alpha / denom);
        }
        for (h, wj) in hits.iter().zip(&w) {
            let i = h.item as usize;
            for &c in &self.columns[self.offsets[i]..self.offsets[i + 1]] {
                acc[c as usize] += weight * wj / denom;
            }
        }
    }
}

/// Kernel weights of hits. `relative`: scaled so that the largest is 1 (no underflow; only
/// ratios matter then), otherwise absolute (1 at distance 0).
fn kernel_weights(hits: &[Hit], kernel: Kernel, h_km: f64, relative: bool) -> Vec<f64> {
    let logs: Vec<f64> = hits.iter().map(|h| kernel.log_weight(h.km, h_km)).collect();
    let shift = if relative {
        logs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    } else {
        0.0
    };
    logs.iter().map(|l| (l - shift).exp()).collect()
}

fn add_scaled(acc: &mut [f64], v: &[f64], k: f64) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a += k * x;
    }
}

/// PO density: the records' places with their species column as item.
pub struct PoSource {
    cfg: PoConfig,
    index: SphereIndex,
    /// Share of each species in the whole PO file (the pseudo-count's target).
    pub global: Vec<f64>,
    /// With `debias`: the PA pool's label frequency per column, `g_s`.
    pa_global: Option<Vec<f64>>,
}

impl PoSource {
    /// Indexes the records (species ids must be in `vocab`; others are dropped).
    /// `pa_global`: the PA pool's label frequency per column (used by `debias`).
    pub fn new(
        cfg: &PoConfig,
        records: &PoRecords,
        vocab: &Vocabulary,
        pa_global: &[f64],
        search: Search,
    ) -> PoSource {
        let entries: Vec<(u32, Point)> = records
            .entries
            .iter()
            .filter_map(|&(sp, p)| vocab.column(sp).map(|c| (c, p)))
            .collect();
        let mut global = vec![0.0; vocab.len()];
        for &(c, _) in &entries {
            global[c as usize] += 1.0;
        }
        let n = entries.len().max(1) as f64;
        global.iter_mut().for_each(|g| *g /= n);
        let index = SphereIndex::with_search(&entries, search);
        PoSource {
            cfg: cfg.clone(),
            index,
            global,
            pa_global: cfg.debias.then(|| pa_global.to_vec()),
        }
    }

    /// Number of indexed records.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Adds `weight x` the PO prior at `point` to `acc`, from the kernel-weighted counts
    /// `c_s = sum_r w_r [s_r = s]` and `C = sum_r c_s` of the records `r` in the radius:
    /// the shrunk share `(c_s + β G_s) / (C + β)`, or with `debias` the PA frequency times
    /// the shrunk reporting ratio, `g_s (c_s + β) / (C G_s + β)`. Without records (and
    /// `β = 0`) the share is `G_s` and the ratio 1.
    pub fn add(&self, point: &Point, weight: f64, acc: &mut [f64]) {
        let hits = self.index.within(point, self.cfg.radius_km);
        let w = kernel_weights(&hits, self.cfg.kernel, self.cfg.bandwidth_km, false);
        let beta = self.cfg.pseudo_count;
        let total: f64 = w.iter().sum();
        match &self.pa_global {
            None => {
                let denom = total + beta;
                let (base, per_record) = if denom > 0.0 {
                    (beta / denom, 1.0 / denom)
                } else {
                    (1.0, 0.0)
                };
                add_scaled(acc, &self.global, weight * base);
                for (h, wr) in hits.iter().zip(&w) {
                    acc[h.item as usize] += weight * wr * per_record;
                }
            }
            Some(pa_global) => {
                let denom = |c: usize| total * self.global[c] + beta;
                for (c, (a, g)) in acc.iter_mut().zip(pa_global).enumerate() {
                    let d = denom(c);
                    *a += weight * g * if d > 0.0 { beta / d } else { 1.0 };
                }
                for (h, wr) in hits.iter().zip(&w) {
                    let c = h.item as usize;
                    // A record makes `C G_s > 0` for its own species.
                    acc[c] += weight * pa_global[c] * wr / denom(c);
                }
            }
        }
    }
}

/// Both sources with their blend weights.
pub struct Prior {
    pub vocab: Vocabulary,
    pub pa: Option<PaSource>,
    pub po: Option<PoSource>,
    /// Weight of the PA term.
    pa_weight: f64,
    /// Weight of the PO term: `λ` times the PA pool's mean species count, so that PO shares
    /// (which sum to 1) are on the scale of PA label frequencies.
    po_weight: f64,
}

impl Prior {
    /// Builds the enabled sources. `pool` = the PA surveys that may serve as neighbours, with
    /// their labels; `vocab` = the score columns.
    pub fn new(
        cfg: &PriorConfig,
        pool: &[(&SurveyMeta, &[u32])],
        po: Option<&PoRecords>,
        vocab: Vocabulary,
    ) -> Prior {
        // The pool's statistics set the PO scale even when the PA source is off.
        let pa = PaSource::new(&cfg.pa, pool, &vocab, cfg.search);
        let po = po
            .filter(|_| cfg.po.enabled)
            .map(|r| PoSource::new(&cfg.po, r, &vocab, &pa.global, cfg.search));
        // Debiased PO scores are already PA frequencies.
        let scale = if pa.mean_labels > 0.0 && !cfg.po.debias {
            pa.mean_labels
        } else {
            1.0
        };
        let (pa_weight, po_weight) = match (cfg.pa.enabled, po.is_some()) {
            (true, true) => (1.0 - cfg.po_weight, cfg.po_weight * scale),
            (true, false) => (1.0, 0.0),
            _ => (0.0, scale),
        };
        Prior {
            vocab,
            pa: cfg.pa.enabled.then_some(pa),
            po,
            pa_weight,
            po_weight,
        }
    }

    /// The prior of one survey, one score per vocabulary column, into `acc` (overwritten).
    pub fn score(&self, q: &Query, acc: &mut Vec<f64>) {
        acc.clear();
        acc.resize(self.vocab.len(), 0.0);
        if let Some(pa) = &self.pa {
            pa.add(q, self.pa_weight, acc);
        }
        if let Some(po) = &self.po {
            po.add(
                &unit_vector(q.survey.lon, q.survey.lat),
                self.po_weight,
                acc,
            );
        }
    }
}
