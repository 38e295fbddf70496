//! The report's comparison rows (`[report] comparisons = true`): what the members are measured
//! against, each evaluated like every other row (policy fitted on validation) but never blended
//! into the submission. The species-frequency baseline always; with a two-source `[prior]`,
//! each source alone and the first member blended with the prior.

use geolife_data::Split;
use geolife_data::cache::PackedSplit;
use geolife_metrics::{ScoreFile, Scores, Solution};
use geolife_prior::{CachedSurveys, PriorSource};

use super::blend::fit_blend;
use super::members::MemberScores;
use super::prior::prior_scores;
use super::report::{Comparison, RowEvaluator};
use super::{PipelineOptions, outputs};
use crate::error::TrainError;

/// The comparison rows, in the order the report lists them. `scores` holds the prior's files
/// last when there is a prior; `source` is the prior's resolved source.
pub(super) fn comparison_rows(
    opts: &PipelineOptions,
    scores: &MemberScores,
    labels: &Solution,
    source: Option<&PriorSource>,
    eval: &RowEvaluator,
) -> Result<Vec<Comparison>, TrainError> {
    let p = &opts.pipeline;
    let mut rows = Vec::new();
    let train = PackedSplit::open(&opts.cache, Split::Train)?;
    let test_ids = PackedSplit::open(&opts.cache, Split::Test)?
        .survey_ids()
        .to_vec();
    let (val, test) = frequency_scores(&train, &scores.groups, &test_ids)?;
    rows.push(Comparison {
        row: eval.row("frequency", "species-frequency", &val, &test)?.0,
        what: "every survey gets the train prevalences (its validation group left out)".into(),
        location: false,
    });
    let (Some(spec), Some(source)) = (&p.prior, source) else {
        return Ok(rows);
    };
    if spec.config.pa.enabled && spec.config.po.enabled {
        let po = source
            .read_po(|_| {})
            .map_err(|e| TrainError::prior_in("prior", e))?;
        let cached = CachedSurveys::of(&train);
        let test_surveys = CachedSurveys::of(&PackedSplit::open(&opts.cache, Split::Test)?).surveys;
        for (name, pa, po_on, what) in [
            ("pa-prior", true, false, "PA neighbours alone"),
            ("po-prior", false, true, "presence-only density alone"),
        ] {
            let mut cfg = spec.config.clone();
            cfg.pa.enabled = pa;
            cfg.po.enabled = po_on;
            let (v, t) = prior_scores(&cfg, &cached, &test_surveys, &scores.groups, po.as_ref())?;
            rows.push(Comparison {
                row: eval.row(name, name, &v, &t)?.0,
                what: what.into(),
                location: true,
            });
        }
    }
    // The first member and the prior (the last blend member), weights fitted on validation.
    let (first, prior) = (0, scores.val.len() - 1);
    let name = format!("{}+prior", p.members[first].name);
    let b = fit_blend(
        &[scores.val[first].clone(), scores.val[prior].clone()],
        &[scores.test[first].clone(), scores.test[prior].clone()],
        labels,
        &p.ensemble,
        p.policy.max_k,
        &name,
    )?;
    rows.push(Comparison {
        row: eval.row(&name, "blend", &b.val, &b.test)?.0,
        what: format!(
            "{} {:.2} + {} {:.2}, weights {}",
            p.members[first].name,
            b.weights[0],
            outputs::PRIOR_MEMBER,
            b.weights[1],
            if b.fitted {
                "fitted on validation"
            } else {
                "fixed"
            }
        ),
        location: true,
    });
    Ok(rows)
}

/// The species-frequency baseline's validation and test scores: the surveys of each held-out
/// group get each species' prevalence among the train surveys outside the group; test surveys
/// get the mean of those rows (the one row of a single split).
fn frequency_scores(
    train: &PackedSplit,
    groups: &[Vec<u64>],
    test_ids: &[u64],
) -> Result<(ScoreFile, ScoreFile), TrainError> {
    let species = train.manifest().species.clone();
    let file = |split: &str, ids: &[u64], row: &[f32]| ScoreFile {
        model: "species-frequency".into(),
        split: split.into(),
        survey_ids: ids.to_vec(),
        species: species.clone(),
        scores: Scores::Dense {
            data: row.repeat(ids.len()),
        },
    };
    let mut val = Vec::with_capacity(groups.len());
    let mut mean = vec![0f32; species.len()];
    for group in groups {
        let held_out: std::collections::HashSet<u64> = group.iter().copied().collect();
        let kept = (train.survey_ids().iter().enumerate())
            .filter(|(_, id)| !held_out.contains(id))
            .map(|(i, _)| train.labels(i));
        let row = prevalence(&species, kept);
        for (m, r) in mean.iter_mut().zip(&row) {
            *m += r / groups.len() as f32;
        }
        val.push(file("val", group, &row));
    }
    let val = match <[ScoreFile; 1]>::try_from(val) {
        Ok([one]) => one,
        Err(many) => ScoreFile::concat(&many)?,
    };
    Ok((val, file("test", test_ids, &mean)))
}

/// Each species' share of the label sets (0 for all when there are none); labels outside
/// `species` (sorted) are ignored.
fn prevalence<'a>(species: &[u32], label_sets: impl Iterator<Item = &'a [u32]>) -> Vec<f32> {
    let mut counts = vec![0f32; species.len()];
    let mut n = 0usize;
    for labels in label_sets {
        n += 1;
        for s in labels {
            if let Ok(c) = species.binary_search(s) {
                counts[c] += 1.0;
            }
        }
    }
    let n = n.max(1) as f32;
    counts.iter().map(|c| c / n).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn prevalence_is_the_share_of_label_sets() {
        // Species 3 in 2 of 4 sets, 7 in 1, 9 in none; 5 is not in the vocabulary.
        let sets: [&[u32]; 4] = [&[3, 7], &[3], &[5], &[]];
        assert_eq!(
            super::prevalence(&[3, 7, 9], sets.into_iter()),
            vec![0.5, 0.25, 0.0]
        );
        assert_eq!(super::prevalence(&[3], std::iter::empty()), vec![0.0]);
    }
}
