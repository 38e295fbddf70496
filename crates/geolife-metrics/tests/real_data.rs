//! Reference scores on the real GLC24 solution file and real model outputs
//! (`shared/data/glc24-real`): golden values published with the data (README, GLC24.md §5).

use std::path::PathBuf;

use geolife_metrics::{
    Policy, PolicyKind, RankTable, ScoreFile, Scores, cross_validate, f1_at_k_curve, read_solution,
    samples_f1,
};

fn real(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/glc24-real")
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

#[test]
fn tmp_halves() {
    let sf = ScoreFile::read(&real("predictions/malpolon_mme_top25_probas.csv")).unwrap();
    let sol = read_solution(&real("GLC24_SOLUTION_FILE.csv")).unwrap();
    let al = sol.align(&sf.survey_ids);
    let table = RankTable::new(&sf, &al.truth, 50);
    let curve = f1_at_k_curve(&sf, &al.truth, 50);
    println!("top25 {:.4} oracle {:.4}", curve[24], table.oracle_f1(50));
    let opts = geolife_metrics::FitOptions::default();
    for kind in PolicyKind::ALL {
        let cv = cross_validate(&table, kind, &opts, 5, 1).unwrap();
        let (p, f) = kind.fit(&table, &opts).unwrap();
        println!("{:?} cv {cv:.4} train {f:.4} {}", kind, p.describe());
    }
    // two halves
    let assign = geolife_metrics::policy::fold_assignment(sf.len(), 2, 42);
    let a: Vec<usize> = (0..sf.len()).filter(|&i| assign[i] == 0).collect();
    let b: Vec<usize> = (0..sf.len()).filter(|&i| assign[i] == 1).collect();
    let (ta, tb) = (table.subset(&a), table.subset(&b));
    for kind in PolicyKind::ALL {
        let (p, f) = kind.fit(&ta, &opts).unwrap();
        println!("half {:?} fitA {f:.4} heldB {:.4}", kind, p.mean_f1(&tb));
        let (p, f) = kind.fit(&tb, &opts).unwrap();
        println!("half {:?} fitB {f:.4} heldA {:.4}", kind, p.mean_f1(&ta));
    }
}
