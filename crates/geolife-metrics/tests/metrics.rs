//! Hand-computed cases and invariants of the metric, score files, policies, ensembles and
//! submissions, plus bad-input handling. Golden values are worked out by hand in comments.

use std::path::Path;

use geolife_metrics::ensemble::FitTarget;
use geolife_metrics::{
    BlendMethod, FitOptions, FittedWeights, MetricsError, Policy, PolicyFile, PolicyKind,
    RankTable, ScoreFile, Scores, Solution, best_global_threshold, blend, f1_at_k_curve,
    fit_weights, oracle_f1, read_solution, read_survey_ids, samples_f1, set_metrics,
    write_submission,
};

fn v(x: &[u32]) -> Vec<u32> {
    x.to_vec()
}

/// Dense 2 surveys x 4 species (ids 10, 20, 30, 40).
fn dense_fixture() -> ScoreFile {
    ScoreFile {
        model: "m".into(),
        split: "val".into(),
        survey_ids: vec![7, 9],
        species: vec![10, 20, 30, 40],
        scores: Scores::Dense {
            data: vec![
                0.9, 0.1, 0.6, 0.3, // survey 7: ranking 10, 30, 40, 20
                0.2, 0.8, 0.05, 0.7, // survey 9: ranking 20, 40, 10, 30
            ],
        },
    }
}

#[test]
fn hand_computed_small_case() {
    // Survey 1: pred {1,2,3}, truth {1,2,5}: TP 2 -> F1 = 4/6, P = 2/3, R = 2/3.
    // Survey 2: pred {4}, truth {6}: all 0.  Means: F1 1/3, P 1/3, R 1/3.
    // Micro: TP 2, |pred| 4, |truth| 4 -> 4/8 = 0.5.
    let m = set_metrics(&[v(&[1, 2, 3]), v(&[4])], &[v(&[1, 2, 5]), v(&[6])]);
    assert!((m.samples_f1 - 1.0 / 3.0).abs() < 1e-12);
    assert!((m.samples_precision - 1.0 / 3.0).abs() < 1e-12);
    assert!((m.samples_recall - 1.0 / 3.0).abs() < 1e-12);
    assert!((m.micro_f1 - 0.5).abs() < 1e-12);
    assert_eq!(m.n, 2);
}

#[test]
fn invariants_perfect_disjoint_duplicates_order_empty() {
    let truth = vec![v(&[1, 2, 3]), v(&[4, 5])];
    assert_eq!(samples_f1(&truth, &truth), 1.0);
    assert_eq!(samples_f1(&[v(&[9]), v(&[8, 7])], &truth), 0.0);
    let base = samples_f1(&[v(&[1, 9]), v(&[4])], &truth);
    // 2*1/(2+3) = 0.4 and 2*1/(1+2) = 2/3.
    assert!((base - (0.4 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
    let dup = samples_f1(
        &[v(&[1, 9, 1, 9]), v(&[4, 4])],
        &[v(&[3, 2, 1, 1]), v(&[5, 4, 5])],
    );
    assert_eq!(base, dup);
    let reordered = samples_f1(&[v(&[9, 1]), v(&[4])], &[v(&[3, 1, 2]), v(&[5, 4])]);
    assert_eq!(base, reordered);
    // An empty prediction scores 0, even against an empty truth.
    assert_eq!(samples_f1(&[v(&[])], &[v(&[1])]), 0.0);
    assert_eq!(samples_f1(&[v(&[])], &[v(&[])]), 0.0);
}

#[test]
fn f1_at_k_threshold_and_oracle_by_hand() {
    let sf = dense_fixture();
    // Truth: survey 7 {10, 40}; survey 9 {40, 50} (50 outside the vocabulary: still a FN).
    let truth = vec![v(&[10, 40]), v(&[40, 50])];
    let curve = f1_at_k_curve(&sf, &truth, 5);
    // Survey 7 ranking 10(hit) 30 40(hit) 20: F1@k = 2/3, 2/4, 4/5, 4/6, (k=5 keeps 4) 4/6.
    // Survey 9 ranking 20 40(hit) 10 30:      F1@k = 0, 2/4, 2/5, 2/6, 2/6.
    let want = [
        (2.0 / 3.0) / 2.0,
        (0.5 + 0.5) / 2.0,
        (0.8 + 0.4) / 2.0,
        (4.0 / 6.0 + 2.0 / 6.0) / 2.0,
        (4.0 / 6.0 + 2.0 / 6.0) / 2.0,
    ];
    for (g, w) in curve.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "{curve:?}");
    }
    // Oracle: best per survey 0.8 and 0.5.
    assert!((oracle_f1(&sf, &truth, 5) - 0.65).abs() < 1e-12);
    // Threshold (at least 1 species): t=0.6 -> survey 7 keeps {10,30}: 0.5; survey 9 keeps
    // {20,40}: 0.5 => 0.5.  t=0.3 -> 7 keeps {10,30,40}: 0.8; 9 keeps {20,40}: 0.5 => 0.65,
    // the best (t=0.2 gives (0.8+0.4)/2 = 0.6; t=0.7 gives (2/3+0.5)/2 = 0.583).
    let (t, f) = best_global_threshold(&sf, &truth);
    assert_eq!(t, 0.3);
    assert!((f - 0.65).abs() < 1e-12);
    let p = Policy::Threshold {
        t,
        min_k: 1,
        max_k: 10,
    };
    assert_eq!(p.select(&sf), vec![v(&[10, 30, 40]), v(&[20, 40])]);
}

#[test]
fn top_k_select_is_never_empty_and_orders_by_score() {
    let sf = dense_fixture();
    assert_eq!(
        Policy::TopK { k: 2 }.select(&sf),
        vec![v(&[10, 30]), v(&[20, 40])]
    );
    let p = Policy::Threshold {
        t: 0.99,
        min_k: 1,
        max_k: 3,
    };
    assert_eq!(p.select(&sf), vec![v(&[10]), v(&[20])]);
}

#[test]
fn score_file_round_trips_all_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let dense = dense_fixture();
    let sparse = ScoreFile {
        scores: Scores::Sparse {
            rows: vec![vec![(0, 0.9), (2, 0.6)], vec![]],
        },
        ..dense.clone()
    };
    let ranked = ScoreFile {
        scores: Scores::Ranked {
            rows: vec![vec![3, 1], vec![0]],
        },
        ..dense.clone()
    };
    for (name, sf) in [("d.st", dense), ("s.st", sparse), ("r.st", ranked)] {
        let p = dir.path().join(name);
        sf.write(&p).unwrap();
        let back = ScoreFile::read(&p).unwrap();
        assert_eq!(back, sf, "{name}");
    }
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn round_trip_scores_submission_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let sf = dense_fixture();
    let truth = vec![v(&[10, 40]), v(&[40, 50])];
    let st = dir.path().join("val.safetensors");
    sf.write(&st).unwrap();
    let sf = ScoreFile::read(&st).unwrap();
    let pred = Policy::TopK { k: 3 }.select(&sf);
    let sub = dir.path().join("sub.csv");
    write_submission(&sub, &sf.survey_ids, &pred).unwrap();
    let text = std::fs::read_to_string(&sub).unwrap();
    assert_eq!(text, "surveyId,predictions\n7,10 30 40\n9,20 40 10\n");
    // Read the submission back as a (ranked) score file and as a solution.
    let back = ScoreFile::read(&sub).unwrap();
    assert!(!back.has_scores());
    let sol_path = dir.path().join("sol.csv");
    std::fs::write(&sol_path, "surveyId,predictions\n9,50 40 40\n7,40 10\n").unwrap();
    let sol = read_solution(&sol_path).unwrap();
    let al = sol.align(&back.survey_ids);
    let again = Policy::TopK { k: 100 }.select(&back);
    // (0.8 + 0.4) / 2 as computed by hand in f1_at_k_threshold_and_oracle_by_hand.
    assert!((samples_f1(&again, &al.truth) - 0.6).abs() < 1e-12);
    assert!((samples_f1(&pred, &truth) - 0.6).abs() < 1e-12);
}

#[test]
fn unknown_and_missing_surveys_are_counted() {
    let sol = Solution::new(vec![1, 2, 3], vec![v(&[5]), v(&[6]), v(&[7])]).unwrap();
    let al = sol.align(&[2, 99, 1]);
    assert_eq!(al.unknown_ids, vec![99]);
    assert_eq!(al.missing_ids, vec![3]);
    assert_eq!(al.known, vec![true, false, true]);
    assert_eq!(al.truth[0], v(&[6]));
    assert!(Solution::new(vec![1, 1], vec![v(&[]), v(&[])]).is_err());
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bad_text_input_gives_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let non_numeric = write(d, "a.csv", "surveyId,predictions\n12x,1 2\n");
    let e = read_solution(&non_numeric).unwrap_err();
    assert!(matches!(e, MetricsError::Malformed { line: 2, .. }), "{e}");
    assert!(e.to_string().contains("12x"));
    let bad_species = write(d, "b.csv", "surveyId,predictions\n5,1 two\n");
    let e = ScoreFile::read(&bad_species).unwrap_err();
    assert!(
        e.to_string().contains("survey 5") && e.to_string().contains("two"),
        "{e}"
    );
    let extra_field = write(d, "c.csv", "surveyId,predictions\n5,1 2,3\n");
    assert!(matches!(
        ScoreFile::read(&extra_field).unwrap_err(),
        MetricsError::Malformed { line: 2, .. }
    ));
    let no_column = write(d, "d.csv", "id,preds\n5,1\n");
    assert!(read_solution(&no_column).is_err());
    let nan = write(
        d,
        "e.csv",
        "observation_id;lon;lat;target_species_id;predictions;probas\n5;;;0;1 2;0.5 NaN\n",
    );
    let e = ScoreFile::read(&nan).unwrap_err();
    assert!(
        matches!(
            e,
            MetricsError::NonFinite {
                survey_id: 5,
                species: 2,
                ..
            }
        ),
        "{e}"
    );
    let short = write(
        d,
        "f.csv",
        "observation_id;lon;lat;target_species_id;predictions;probas\n5;;;0;1 2;0.5\n",
    );
    assert!(
        ScoreFile::read(&short)
            .unwrap_err()
            .to_string()
            .contains("2 species but 1")
    );
    let dup = write(d, "g.csv", "surveyId,predictions\n5,1\n5,2\n");
    assert!(matches!(
        ScoreFile::read(&dup).unwrap_err(),
        MetricsError::DuplicateSurvey { survey_id: 5, .. }
    ));
    let meta = write(
        d,
        "meta.csv",
        "lon,lat,surveyId\n1.0,2.0,642.0\n1,2,17\n1,2,642\n",
    );
    assert_eq!(read_survey_ids(&meta).unwrap(), vec![642, 17]);
    let garbage = write(d, "h.st", "\u{8}\0\0\0\0\0\0\0{not json");
    assert!(ScoreFile::read(&garbage).is_err());
}

#[test]
fn bad_score_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut sf = dense_fixture();
    if let Scores::Dense { data } = &mut sf.scores {
        data[5] = f32::NAN;
    }
    let e = sf.write(&dir.path().join("x.st")).unwrap_err();
    assert!(
        matches!(
            e,
            MetricsError::NonFinite {
                survey_id: 9,
                species: 20,
                ..
            }
        ),
        "{e}"
    );
    let mut sf = dense_fixture();
    sf.species = vec![10, 20, 20, 40];
    assert!(sf.write(&dir.path().join("y.st")).is_err());
    let mut sf = dense_fixture();
    sf.survey_ids = vec![7, 7];
    assert!(matches!(
        sf.write(&dir.path().join("z.st")).unwrap_err(),
        MetricsError::DuplicateSurvey { survey_id: 7, .. }
    ));
    let sf = ScoreFile {
        scores: Scores::Sparse {
            rows: vec![vec![(9, 0.5)], vec![]],
        },
        ..dense_fixture()
    };
    assert!(sf.write(&dir.path().join("w.st")).is_err());
    assert!(!dir.path().join("x.st").exists());
}

#[test]
fn submission_refuses_empty_rows_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.csv");
    assert!(write_submission(&p, &[1, 2], &[v(&[3]), v(&[])]).is_err());
    assert!(write_submission(&p, &[1, 1], &[v(&[3]), v(&[4])]).is_err());
    assert!(write_submission(&p, &[1], &[v(&[3]), v(&[4])]).is_err());
    assert!(!p.exists());
    write_submission(&p, &[2, 1], &[v(&[3, 3, 4]), v(&[5])]).unwrap();
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        "surveyId,predictions\n2,3 4\n1,5\n"
    );
}

#[test]
fn policies_round_trip_through_toml() {
    let dir = tempfile::tempdir().unwrap();
    for p in [
        Policy::TopK { k: 18 },
        Policy::Threshold {
            t: 0.25,
            min_k: 3,
            max_k: 40,
        },
    ] {
        let path = dir.path().join("p.toml");
        p.save(&path).unwrap();
        assert_eq!(Policy::load(&path).unwrap(), p);
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[policy]\ntype = \"top_k\"\nk = 0\n").unwrap();
    assert!(PolicyFile::load(&bad).is_err());
    std::fs::write(&bad, "[policy]\ntype = \"nope\"\n").unwrap();
    assert!(matches!(
        PolicyFile::load(&bad).unwrap_err(),
        MetricsError::Policy { .. }
    ));
}

#[test]
fn ensemble_mean_and_rank_with_gaps_by_hand() {
    // File A: surveys 1, 2; species 10, 20.  File B: surveys 2, 3; species 20, 30.
    let a = ScoreFile {
        model: "a".into(),
        split: "val".into(),
        survey_ids: vec![1, 2],
        species: vec![10, 20],
        scores: Scores::Sparse {
            rows: vec![vec![(0, 0.8), (1, 0.2)], vec![(1, 0.4)]],
        },
    };
    let b = ScoreFile {
        model: "b".into(),
        split: "val".into(),
        survey_ids: vec![2, 3],
        species: vec![20, 30],
        scores: Scores::Sparse {
            rows: vec![vec![(0, 0.6), (1, 0.2)], vec![(1, 1.0)]],
        },
    };
    let (out, rep) = blend(&[a.clone(), b.clone()], &[1.0, 3.0], BlendMethod::Mean).unwrap();
    assert_eq!(out.survey_ids, vec![1, 2, 3]);
    assert_eq!(out.species, vec![10, 20, 30]);
    assert_eq!(rep.surveys_missing, vec![1, 1]);
    assert_eq!(rep.species_missing, vec![1, 1]);
    let Scores::Sparse { rows } = &out.scores else {
        panic!("sparse expected")
    };
    // Survey 1 only in A: its weight becomes 1 -> 10: 0.8, 20: 0.2.
    assert_eq!(rows[0], vec![(0, 0.8), (1, 0.2)]);
    // Survey 2: 0.25*A + 0.75*B -> 20: 0.25*0.4 + 0.75*0.6 = 0.55; 30: 0.75*0.2 = 0.15.
    assert_eq!(rows[1].len(), 2);
    assert_eq!(rows[1][0].0, 1);
    assert!((rows[1][0].1 - 0.55).abs() < 1e-6 && (rows[1][1].1 - 0.15).abs() < 1e-6);
    assert_eq!(rows[2], vec![(2, 1.0)]);
    // Rank: survey 2 -> 20: 0.25*1 + 0.75*1 = 1.0; 30: 0.75 * 1/2 = 0.375.
    let (out, _) = blend(&[a.clone(), b.clone()], &[1.0, 3.0], BlendMethod::Rank).unwrap();
    let Scores::Sparse { rows } = &out.scores else {
        panic!("sparse expected")
    };
    assert!((rows[1][0].1 - 1.0).abs() < 1e-6 && (rows[1][1].1 - 0.375).abs() < 1e-6);
    // Bad weights are errors.
    assert!(blend(&[a.clone(), b.clone()], &[1.0], BlendMethod::Mean).is_err());
    assert!(blend(&[a.clone(), b.clone()], &[1.0, f64::NAN], BlendMethod::Mean).is_err());
    assert!(blend(&[a.clone(), b.clone()], &[0.0, 0.0], BlendMethod::Mean).is_err());
    // Fitting on survey 2 (truth {30}): B ranks 30 second, A never has it; only a blend
    // with B's weight can find it at K=2, so the fit cannot be worse than equal weights.
    let sol = Solution::new(vec![2], vec![v(&[30])]).unwrap();
    let fw = fit_weights(
        &[a, b],
        &sol,
        BlendMethod::Mean,
        &FitTarget::BestTopK { max_k: 2 },
    )
    .unwrap();
    let (f1, f1_equal) = (fw.f1.unwrap(), fw.f1_equal.unwrap());
    assert!(f1 >= f1_equal);
    assert!((f1 - 2.0 / 3.0).abs() < 1e-12, "{fw:?}");
    assert_eq!(fw.paper_f1, None);
    assert!((fw.weights.iter().sum::<f64>() - 1.0).abs() < 1e-9);
}

#[test]
fn weights_files_keep_measured_and_paper_figures_apart() {
    let dir = tempfile::tempdir().unwrap();
    // As `ensemble --fit` has always written it: both measured figures, no paper figure.
    let fitted = write(
        dir.path(),
        "fit.weights.toml",
        "weights = [0.25, 0.75]\nmethod = \"mean\"\nf1 = 0.5\nf1_equal = 0.4\n\
         target = \"best top-K (K <= 50)\"\nfiles = [\"a\", \"b\"]\n",
    );
    let fw = FittedWeights::load(&fitted).unwrap();
    assert_eq!(
        (fw.f1, fw.f1_equal, fw.paper_f1),
        (Some(0.5), Some(0.4), None)
    );
    assert_eq!(
        fw.describe(),
        "samples-F1 0.5000 after best top-K (K <= 50) (equal weights 0.4000)"
    );
    let again = dir.path().join("again.toml");
    fw.save(&again).unwrap();
    assert_eq!(FittedWeights::load(&again).unwrap(), fw);
    // The paper's weights: a published figure only; nothing geolife measured is written.
    let paper = FittedWeights::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ensemble-paper.toml"),
    )
    .unwrap();
    assert_eq!((paper.f1, paper.f1_equal), (None, None));
    assert_eq!(paper.paper_f1, Some(0.42581));
    assert_eq!(paper.weights, vec![0.15, 0.1, 0.4, 0.35]);
    assert!(paper.describe().starts_with("paper's samples-F1 0.42581 ("));
    paper.save(&again).unwrap();
    let text = std::fs::read_to_string(&again).unwrap();
    assert!(text.contains("paper_f1 = 0.42581"), "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("f1 ") || l.starts_with("f1_equal")),
        "{text}"
    );
    assert_eq!(FittedWeights::load(&again).unwrap(), paper);
}

#[test]
fn rank_table_matches_curve_definition() {
    let sf = dense_fixture();
    let truth = vec![v(&[10, 40]), v(&[40, 50])];
    let t = RankTable::new(&sf, &truth, 4);
    assert_eq!(t.rows[0].hits, vec![true, false, true, false]);
    assert_eq!(t.rows[1].species, vec![20, 40, 10, 30]);
}

/// Sparse and ranked rows are checked alike: one row per survey, columns inside the
/// vocabulary, no species twice in a row; sparse scores must also be finite.
#[test]
fn sparse_and_ranked_rows_are_validated() {
    let origin = Path::new("scores.safetensors");
    let file = |scores: Scores| ScoreFile {
        model: "m".into(),
        split: "test".into(),
        survey_ids: vec![7, 9],
        species: vec![10, 20, 30],
        scores,
    };
    let err = |scores: Scores| file(scores).validate(origin).unwrap_err().to_string();
    assert!(
        file(Scores::Sparse {
            rows: vec![vec![(0, 0.5), (2, 0.1)], vec![]]
        })
        .validate(origin)
        .is_ok()
    );
    assert!(
        file(Scores::Ranked {
            rows: vec![vec![2, 0], vec![1]]
        })
        .validate(origin)
        .is_ok()
    );
    let e = err(Scores::Sparse {
        rows: vec![vec![(0, 0.5)]],
    });
    assert!(e.contains("1 sparse rows for 2 surveys"), "{e}");
    let e = err(Scores::Ranked { rows: vec![] });
    assert!(e.contains("0 ranked rows for 2 surveys"), "{e}");
    let e = err(Scores::Sparse {
        rows: vec![vec![], vec![(1, 0.5), (1, 0.2)]],
    });
    assert!(e.contains("survey 9: species 20 listed twice"), "{e}");
    let e = err(Scores::Ranked {
        rows: vec![vec![0, 0], vec![]],
    });
    assert!(e.contains("survey 7: species 10 listed twice"), "{e}");
    let e = err(Scores::Ranked {
        rows: vec![vec![], vec![3]],
    });
    assert!(
        e.contains("survey 9: column index 3 outside the vocabulary of 3"),
        "{e}"
    );
    let e = file(Scores::Sparse {
        rows: vec![vec![(2, f32::NAN)], vec![]],
    })
    .validate(origin)
    .unwrap_err();
    assert!(
        matches!(
            e,
            MetricsError::NonFinite {
                survey_id: 7,
                species: 30,
                ..
            }
        ),
        "{e}"
    );
}

/// F1@K curves, the oracle bound and the per-survey K fit add thousands of float terms in
/// parallel; their results must not depend on the thread count or on how work was stolen
/// (evaluate and calibrate reports are compared byte for byte across runs).
#[test]
fn parallel_sums_are_the_same_on_every_run_and_thread_count() {
    let (n, v) = (3000usize, 40usize);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let species: Vec<u32> = (0..v as u32).map(|s| 100 + s).collect();
    let mut data = Vec::with_capacity(n * v);
    let mut truth = Vec::with_capacity(n);
    for _ in 0..n {
        let mut t = Vec::new();
        for &sp in &species {
            let present = next() < 0.15;
            if present {
                t.push(sp);
            }
            data.push((next() * 0.6 + if present { 0.35 } else { 0.0 }) as f32);
        }
        truth.push(t);
    }
    let sf = ScoreFile {
        model: "m".into(),
        split: "val".into(),
        survey_ids: (0..n as u64).collect(),
        species,
        scores: Scores::Dense { data },
    };
    let table = RankTable::new(&sf, &truth, 50);
    let results = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let fit = PolicyKind::PerSurveyK
                .fit(&table, &FitOptions::default())
                .unwrap();
            (table.f1_at_k_curve(50), table.oracle_f1(50), fit)
        })
    };
    let first = results(1);
    for threads in [2, 3, 8, 8] {
        assert!(results(threads) == first, "{threads} threads");
    }
}
