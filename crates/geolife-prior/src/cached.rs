//! The PA pool and queries of a packed cache (`geolife prepare`), for the trainer, `predict`
//! and the pipeline, which work from caches rather than the raw CSVs. A cache keeps each
//! survey's place and labels but not its year or region, so the same-year and same-region
//! restrictions are refused here (use `geolife prior --data ROOT` on the raw files for those).

use geolife_data::SurveyMeta;
use geolife_data::cache::PackedSplit;

use crate::{PriorConfig, PriorError};

/// The surveys of a packed split in cache row order, as [`SurveyMeta`] with only the id and
/// the place set (year 0, no region), and their label sets (empty for an unlabelled split).
#[derive(Debug, Clone, Default)]
pub struct CachedSurveys {
    pub surveys: Vec<SurveyMeta>,
    pub labels: Vec<Vec<u32>>,
}

impl CachedSurveys {
    /// Every row of `split`.
    pub fn of(split: &PackedSplit) -> CachedSurveys {
        Self::rows(split, &(0..split.len()).collect::<Vec<_>>())
    }

    /// The rows `rows` of `split`, in that order.
    pub fn rows(split: &PackedSplit, rows: &[usize]) -> CachedSurveys {
        let ids = split.survey_ids();
        let surveys = rows
            .iter()
            .map(|&i| {
                let (lon, lat) = split.lon_lat(i);
                SurveyMeta {
                    survey_id: ids[i],
                    lon,
                    lat,
                    ..SurveyMeta::default()
                }
            })
            .collect();
        let labels = rows.iter().map(|&i| split.labels(i).to_vec()).collect();
        CachedSurveys { surveys, labels }
    }

    /// The labelled pool view of these surveys.
    pub fn as_train(&self) -> crate::PaTrain<'_> {
        crate::PaTrain {
            surveys: &self.surveys,
            labels: &self.labels,
        }
    }
}

/// Refuses a prior config that needs what a cache does not keep (years and regions).
pub fn check_cache_config(cfg: &PriorConfig) -> Result<(), PriorError> {
    if cfg.pa.enabled && (cfg.pa.same_year || cfg.pa.same_region) {
        let key = if cfg.pa.same_year {
            "prior.pa.same_year"
        } else {
            "prior.pa.same_region"
        };
        return Err(PriorError::Key {
            key: key.into(),
            message: "same_year / same_region need each survey's year and region, which a \
                      packed cache does not keep: turn them off here (they work with \
                      `geolife prior --data ROOT` on the raw files)"
                .into(),
        });
    }
    Ok(())
}
