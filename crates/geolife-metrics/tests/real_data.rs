//! Reference scores on the real GLC24 solution file and real model outputs
//! (`tests/data/glc24-real` at the workspace root): golden values published with the data (README, GLC24.md §5).

use std::path::PathBuf;

use geolife_metrics::{
    FitOptions, Policy, PolicyKind, RankTable, ScoreFile, Scores, fold_assignment, read_solution,
    samples_f1,
};

fn real(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/glc24-real")
        .join(name)
}

/// Samples-F1 of every row of `sf` (all ranked species kept) against the full solution.
fn f1_all(sf: &ScoreFile) -> f64 {
    let sol = read_solution(&real("GLC24_SOLUTION_FILE.csv")).unwrap();
    let al = sol.align(&sf.survey_ids);
    assert!(al.unknown_ids.is_empty());
    assert!(al.missing_ids.is_empty());
    let pred = Policy::TopK { k: 1000 }.select(sf);
    samples_f1(&pred, &al.truth)
}

#[test]
fn malpolon_top25_scores_0_2954() {
    let sf = ScoreFile::read(&real("predictions/malpolon_mme_top25_probas.csv")).unwrap();
    assert_eq!(sf.len(), 4716);
    assert!(matches!(sf.scores, Scores::Sparse { .. }));
    let f = f1_all(&sf);
    assert_eq!(format!("{f:.4}"), "0.2954", "got {f}");
}

#[test]
fn official_baseline_top25_scores_0_3229() {
    let sf = ScoreFile::read(&real("predictions/official_multimodal_baseline_top25.csv")).unwrap();
    assert_eq!(sf.len(), 4716);
    assert!(matches!(sf.scores, Scores::Ranked { .. }));
    let f = f1_all(&sf);
    assert_eq!(format!("{f:.4}"), "0.3229", "got {f}");
}

/// Issue 3 benchmark in miniature: fitted on one seeded half of malpolon's real test
/// probabilities, the per-survey K policy beats top-25 and the global threshold on the other.
#[test]
fn per_survey_k_beats_threshold_on_held_out_half() {
    let sf = ScoreFile::read(&real("predictions/malpolon_mme_top25_probas.csv")).unwrap();
    let sol = read_solution(&real("GLC24_SOLUTION_FILE.csv")).unwrap();
    let al = sol.align(&sf.survey_ids);
    let table = RankTable::new(&sf, &al.truth, 50);
    let assign = fold_assignment(sf.len(), 2, 42);
    let a: Vec<usize> = (0..sf.len()).filter(|&i| assign[i] == 0).collect();
    let b: Vec<usize> = (0..sf.len()).filter(|&i| assign[i] == 1).collect();
    let (fit, held) = (table.subset(&a), table.subset(&b));
    let opts = FitOptions::default();
    let held_f1 = |kind: PolicyKind| kind.fit(&fit, &opts).unwrap().0.mean_f1(&held);
    let top25 = held_f1(PolicyKind::Top25);
    let threshold = held_f1(PolicyKind::Threshold);
    let (policy, _) = PolicyKind::PerSurveyK.fit(&fit, &opts).unwrap();
    let per_survey = policy.mean_f1(&held);
    // The fitted model survives its TOML file unchanged.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    policy.save(&path).unwrap();
    assert_eq!(Policy::load(&path).unwrap(), policy);
    assert!(threshold > top25, "{threshold} vs {top25}");
    assert!(per_survey > threshold + 0.01, "{per_survey} vs {threshold}");
    assert!(per_survey > 0.315, "{per_survey}");
}
