//! The readers on the real GLC24 files in tests/data/glc24-real/mini (at the workspace root), against golden values
//! read with PyTorch and PIL (expected/) and against an independent line count of the CSV.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use geolife_data::cubes::{BIOCLIM_SHAPE, LANDSAT_SHAPE, NanPolicy, read_cube};
use geolife_data::layout::{CubeKind, PatchKind};
use geolife_data::patches::{channel_means, read_nir, read_rgb};
use geolife_data::{DataError, Dataset, DatasetOptions, Split};

fn mini() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/glc24-real/mini")
}

fn expected(name: &str) -> serde_json::Value {
    let p = mini().join("expected").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn golden(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

const ID: u64 = 1322301;

#[test]
fn cubes_equal_pytorch_values_exactly() {
    let ds = Dataset::open(&mini(), DatasetOptions::default()).unwrap();
    let exp = expected("cubes_1322301.json");
    let landsat = ds.read_landsat(Split::Train, ID).unwrap();
    let bioclim = ds.read_bioclim(Split::Train, ID).unwrap();
    assert_eq!(exp["landsat"]["shape"], serde_json::json!(LANDSAT_SHAPE));
    assert_eq!(exp["bioclim"]["shape"], serde_json::json!(BIOCLIM_SHAPE));
    let gl = golden(&exp["landsat"]["values_c_order"]);
    let gb = golden(&exp["bioclim"]["values_c_order"]);
    assert_eq!(landsat.len(), 504);
    assert_eq!(bioclim.len(), 912);
    for (i, (a, b)) in landsat.iter().zip(&gl).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "landsat[{i}]: {a} vs {b}");
    }
    for (i, (a, b)) in bioclim.iter().zip(&gb).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "bioclim[{i}]: {a} vs {b}");
    }
    // The cube has no NaN, so Keep reads the same values.
    let p = ds.cube_path(CubeKind::Landsat, Split::Train, ID).unwrap();
    assert!(p.to_string_lossy().contains("landsat-time-series_1322301"));
    assert_eq!(
        read_cube(&p, Some(ID), &LANDSAT_SHAPE, NanPolicy::Keep).unwrap(),
        landsat
    );
}

#[test]
fn patches_match_pil_statistics() {
    let exp = expected("patch_1322301_pil.json");
    let root = mini();
    let rgb_path = PatchKind::Rgb.path(&root, Split::Train, ID);
    let nir_path = PatchKind::Nir.path(&root, Split::Train, ID);
    assert!(rgb_path.ends_with("pa_train_patches_rgb/01/23/1322301.jpeg"));
    let rgb = read_rgb(&rgb_path, Some(ID)).unwrap();
    let nir = read_nir(&nir_path, Some(ID)).unwrap();
    assert_eq!(rgb.len(), 128 * 128 * 3);
    assert_eq!(nir.len(), 128 * 128);
    let means = exp["rgb_channel_means_pil"].as_array().unwrap();
    for (c, e) in means.iter().enumerate() {
        let m = rgb
            .iter()
            .skip(c)
            .step_by(3)
            .map(|&v| v as f64)
            .sum::<f64>()
            / 16384.0;
        let e = e.as_f64().unwrap();
        assert!((m - e).abs() < 1.0, "RGB channel {c}: mean {m} vs PIL {e}");
    }
    let nm = nir.iter().map(|&v| v as f64).sum::<f64>() / 16384.0;
    assert!((nm - exp["nir_mean_pil"].as_f64().unwrap()).abs() < 1.0);
    let p00 = exp["rgb_pixel_0_0"].as_array().unwrap();
    for (c, p) in p00.iter().enumerate() {
        let d = rgb[c] as i64 - p.as_i64().unwrap();
        assert!(d.abs() <= 3, "pixel (0,0) channel {c} differs by {d}");
    }
    // The dataset's CHW stack holds the same planes.
    let ds = Dataset::open(&root, DatasetOptions::default()).unwrap();
    let chw = ds.read_patch(Split::Train, ID).unwrap();
    assert_eq!(chw.len(), 4 * 128 * 128);
    assert_eq!(chw[16384 * 2 + 5 * 128 + 7], rgb[(5 * 128 + 7) * 3 + 2]);
    assert_eq!(&chw[3 * 16384..], &nir[..]);
    let cm = channel_means(&chw);
    assert!((cm[3] - nm).abs() < 1e-9);
}

/// Survey -> species set from plain line splitting (independent of the csv crate).
fn hand_count() -> (usize, BTreeMap<u64, BTreeSet<u32>>) {
    let text = std::fs::read_to_string(mini().join("GLC24_PA_metadata_train.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let ci = header.iter().position(|h| *h == "surveyId").unwrap();
    let cs = header.iter().position(|h| *h == "speciesId").unwrap();
    let mut rows = 0;
    let mut map: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let f: Vec<&str> = l.split(',').collect();
        rows += 1;
        let sp = f[cs].trim_end_matches(".0").parse::<u32>().unwrap();
        map.entry(f[ci].parse().unwrap()).or_default().insert(sp);
    }
    (rows, map)
}

#[test]
fn metadata_gives_18_surveys_and_their_species_sets() {
    let (rows, hand) = hand_count();
    assert_eq!(rows, 335);
    let ds = Dataset::open(&mini(), DatasetOptions::default()).unwrap();
    let surveys = ds.surveys(Split::Train).unwrap();
    let labels = ds.labels(Split::Train).unwrap();
    assert_eq!(surveys.len(), 18);
    assert_eq!(labels.len(), 18);
    assert_eq!(ds.metadata(Split::Train).unwrap().rows, 335);
    let ids: Vec<u64> = surveys.iter().map(|s| s.survey_id).collect();
    assert_eq!(ids, hand.keys().copied().collect::<Vec<_>>());
    for (s, l) in surveys.iter().zip(labels) {
        let want: Vec<u32> = hand[&s.survey_id].iter().copied().collect();
        assert_eq!(l, &want, "species of survey {}", s.survey_id);
    }
    // 17 complete lists plus the single row of 1322301.
    let complete = labels.iter().filter(|l| l.len() > 1).count();
    assert_eq!(complete, 17);
    assert_eq!(labels[ids.iter().position(|&i| i == ID).unwrap()].len(), 1);
    let first = &surveys[ids.iter().position(|&i| i == 80000).unwrap()];
    assert_eq!(
        (first.lon, first.lat, first.year),
        (20.476806, 48.130972, 2017)
    );
    assert_eq!(first.area_m2, Some(150.0));
    assert_eq!(first.region, "PANNONIAN");
    assert!(ds.labels(Split::Test).is_none());
}

#[test]
fn missing_parts_give_actionable_errors() {
    let ds = Dataset::open(&mini(), DatasetOptions::default()).unwrap();
    // The mini slice has no environmental CSVs and no test split.
    match ds.tabular(Split::Train) {
        Err(DataError::Missing { path, hint, .. }) => {
            assert!(
                path.to_string_lossy()
                    .contains("EnvironmentalRasters/EnvironmentalRasters")
            );
            assert!(hint.contains("env groups"));
        }
        other => panic!("expected Missing, got {other:?}"),
    }
    assert!(matches!(
        ds.surveys(Split::Test),
        Err(DataError::Missing { .. })
    ));
    match ds.read_landsat(Split::Train, 80000) {
        Err(DataError::Missing { survey, .. }) => assert_eq!(survey.0, Some(80000)),
        other => panic!("expected Missing, got {other:?}"),
    }
    let err = Dataset::open(&mini().join("expected"), DatasetOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }));
    assert!(err.to_string().contains("GLC24_PA_metadata_train.csv"));
}
