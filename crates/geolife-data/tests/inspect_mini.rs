//! `inspect` on the real mini slice: counts against an independent walk of the files and the
//! CSV, the one-survey record against the PyTorch/PIL golden values, and a corrupted copy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use geolife_data::inspect::{InspectOptions, inspect, json_number, survey_record};
use geolife_data::{DataError, Dataset, DatasetOptions, Split};

fn mini() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/glc24-real/mini")
}

fn files_under(dir: &Path, ext: &str) -> usize {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            n += files_under(&p, ext);
        } else if p.extension().is_some_and(|x| x == ext) {
            n += 1;
        }
    }
    n
}

fn hand_species() -> BTreeMap<u64, BTreeSet<u64>> {
    let text = std::fs::read_to_string(mini().join("GLC24_PA_metadata_train.csv")).unwrap();
    let mut m: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for l in text.lines().skip(1).filter(|l| !l.is_empty()) {
        let f: Vec<&str> = l.split(',').collect();
        m.entry(f[8].parse().unwrap())
            .or_default()
            .insert(f[7].trim_end_matches(".0").parse().unwrap());
    }
    m
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let p = e.path();
        let q = dst.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &q);
        } else {
            std::fs::copy(&p, &q).unwrap();
        }
    }
}

#[test]
fn report_counts_match_an_independent_walk() {
    let ds = Dataset::open(&mini(), DatasetOptions::default()).unwrap();
    let report = inspect(&ds, &InspectOptions::default(), &|| {});
    let hand = hand_species();
    let tr = &report.splits[0];
    assert_eq!(tr.split, "train");
    assert!(tr.present);
    assert_eq!(tr.surveys, hand.len());
    assert_eq!(tr.rows, 335);
    let set_total: usize = hand.values().map(|s| s.len()).sum();
    assert_eq!(tr.duplicate_rows, 335 - set_total);
    let distinct: BTreeSet<u64> = hand.values().flatten().copied().collect();
    assert_eq!(tr.species, Some(distinct.len()));
    assert_eq!(tr.checked, 18);
    let counts: Vec<(String, usize, usize)> = tr
        .modalities
        .iter()
        .map(|m| (m.modality.clone(), m.present, m.failed))
        .collect();
    let rgb = files_under(&mini().join("PA_Train_SatellitePatches_RGB"), "jpeg");
    let nir = files_under(&mini().join("PA_Train_SatellitePatches_NIR"), "jpeg");
    assert_eq!(
        counts,
        vec![
            ("landsat".into(), 1, 0),
            ("bioclim".into(), 1, 0),
            ("rgb".into(), rgb, 0),
            ("nir".into(), nir, 0),
        ]
    );
    assert!(tr.failures.is_empty());
    assert!(tr.env.iter().all(|e| !e.present));
    assert_eq!(tr.env.len(), 5);
    assert!(!report.splits[1].present);
    assert!(!report.incomplete().is_empty());

    let sampled = inspect(
        &ds,
        &InspectOptions {
            sample: Some(5),
            splits: vec![Split::Train],
        },
        &|| {},
    );
    assert_eq!(sampled.splits.len(), 1);
    assert_eq!(sampled.splits[0].checked, 5);
}

#[test]
fn survey_record_matches_golden_values() {
    let ds = Dataset::open(&mini(), DatasetOptions::default()).unwrap();
    let rec = survey_record(&ds, Split::Train, 1322301).unwrap();
    let text = std::fs::read_to_string(mini().join("expected/cubes_1322301.json")).unwrap();
    let cubes: serde_json::Value = serde_json::from_str(&text).unwrap();
    for name in ["landsat", "bioclim"] {
        assert_eq!(rec[name]["shape"], cubes[name]["shape"]);
        let got = rec[name]["values"].as_array().unwrap();
        let want = cubes[name]["values_c_order"].as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(want) {
            assert_eq!(a.as_f64().unwrap() as f32, b.as_f64().unwrap() as f32);
        }
    }
    let pil: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(mini().join("expected/patch_1322301_pil.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["rgb_shape"], pil["rgb_shape"]);
    assert_eq!(rec["nir_shape"], pil["nir_shape"]);
    let means = rec["patch_channel_means"].as_array().unwrap();
    for (c, m) in means.iter().take(3).enumerate() {
        let d = m.as_f64().unwrap() - pil["rgb_channel_means_pil"][c].as_f64().unwrap();
        assert!(d.abs() < 1.0, "channel {c} off by {d}");
    }
    assert!((means[3].as_f64().unwrap() - pil["nir_mean_pil"].as_f64().unwrap()).abs() < 1.0);
    let species: Vec<u64> = hand_species()[&1322301].iter().copied().collect();
    assert_eq!(rec["species"], serde_json::json!(species));
    assert_eq!(rec["survey_id"], serde_json::json!(1322301));
    // No env CSVs in the mini slice: tabular is null and the reason is given.
    assert!(rec["tabular"].is_null());
    assert!(
        rec["errors"]["tabular"]
            .as_str()
            .unwrap()
            .contains("EnvironmentalRasters")
    );

    match survey_record(&ds, Split::Train, 5) {
        Err(DataError::UnknownSurvey { survey, .. }) => assert_eq!(survey, 5),
        other => panic!("expected UnknownSurvey, got {other:?}"),
    }
    assert!(matches!(
        survey_record(&ds, Split::Test, 642),
        Err(DataError::Missing { .. })
    ));
}

#[test]
fn corrupted_files_are_listed_with_their_kind() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&mini(), dir.path());
    let cube = dir.path().join(
        "TimeSeries-Cubes/TimeSeries-Cubes/GLC24-PA-train-landsat_time_series/GLC24-PA-train-landsat-time-series_1322301_cube.pt",
    );
    let bytes = std::fs::read(&cube).unwrap();
    std::fs::write(&cube, &bytes[..bytes.len() - 300]).unwrap();
    let nir = dir
        .path()
        .join("PA_Train_SatellitePatches_NIR/pa_train_patches_nir/00/00/80000.jpeg");
    std::fs::write(&nir, b"not a jpeg").unwrap();
    let ds = Dataset::open(dir.path(), DatasetOptions::default()).unwrap();
    let report = inspect(&ds, &InspectOptions::default(), &|| {});
    let f = &report.splits[0].failures;
    let kinds: BTreeSet<(String, Option<u64>, String)> = f
        .iter()
        .map(|x| (x.modality.clone(), x.survey, x.kind.clone()))
        .collect();
    let want: BTreeSet<(String, Option<u64>, String)> = [
        (
            "landsat".to_string(),
            Some(1322301),
            "truncated".to_string(),
        ),
        ("nir".to_string(), Some(80000), "image".to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(kinds, want);
    assert_eq!(report.n_failures(), 2);
}

#[test]
fn non_finite_numbers_are_encoded_as_strings() {
    assert_eq!(json_number(f64::NAN), serde_json::json!("NaN"));
    assert_eq!(json_number(f64::INFINITY), serde_json::json!("inf"));
    assert_eq!(json_number(f64::NEG_INFINITY), serde_json::json!("-inf"));
    assert_eq!(json_number(2.5), serde_json::json!(2.5));
}
