//! End-to-end runs of `geolife synth / inspect / prepare` through the binary: reports and
//! survey records checked against the written files read by hand (not geolife's readers),
//! the real mini slice against its PyTorch/PIL golden values, and the exit codes and messages
//! of missing parts, corrupt cubes, re-runs, interrupted runs and a held cache lock.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use geolife_data::synth::{SynthConfig, SynthPlan};
use geolife_data::{Split, cache::PackedSplit};
use serde_json::Value;

const TRAIN: usize = 30;
const TEST: usize = 6;
/// Env CSVs of the seed's 46 features, relative to the root, `{split}` to fill in.
const ENV_CSVS: [&str; 5] = [
    "EnvironmentalRasters/EnvironmentalRasters/Climate/Average 1981-2010/GLC24-PA-{split}-bioclimatic.csv",
    "EnvironmentalRasters/EnvironmentalRasters/Elevation/GLC24-PA-{split}-elevation.csv",
    "EnvironmentalRasters/EnvironmentalRasters/Human Footprint/GLC24-PA-{split}-human_footprint.csv",
    "EnvironmentalRasters/EnvironmentalRasters/LandCover/GLC24-PA-{split}-landcover.csv",
    "EnvironmentalRasters/EnvironmentalRasters/SoilGrids/GLC24-PA-{split}-soilgrids.csv",
];
const MONTHLY_CSV: &str = "EnvironmentalRasters/EnvironmentalRasters/Climate/Monthly/GLC24-PA-{split}-bioclimatic_monthly.csv";

fn mini() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/glc24-real/mini")
}

/// `geolife synth` of a tiny dataset into `dir/data`; returns the root.
fn synth(dir: &Path) -> PathBuf {
    let root = dir.join("data");
    let (o, _) = run_expect(
        &[
            "synth",
            "--out",
            s(&root),
            "--surveys",
            &TRAIN.to_string(),
            "--test-surveys",
            &TEST.to_string(),
            "--species",
            "20",
            "--mean-species",
            "5",
            "--seed",
            "9",
        ],
        0,
    );
    assert!(
        o.contains(&format!("({TRAIN} train + {TEST} test surveys, 20 species")),
        "{o}"
    );
    root
}

/// A CSV read by hand: header and rows of raw cells (the synthetic files hold no quotes).
fn csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let t = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut lines = t.lines().filter(|l| !l.is_empty());
    let split = |l: &str| l.split(',').map(String::from).collect::<Vec<_>>();
    let header = split(lines.next().expect("header"));
    let rows = lines.map(split).collect();
    (header, rows)
}

fn col(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

fn for_split(template: &str, split: &str) -> String {
    template.replace("{split}", split)
}

/// Train metadata by hand: rows, and survey -> (lon text, lat text, distinct species).
type Sites = BTreeMap<u64, (String, String, BTreeSet<u64>)>;
fn metadata(root: &Path, split: &str) -> (usize, Sites) {
    let (h, rows) = csv(&root.join(format!("GLC24_PA_metadata_{split}.csv")));
    let (c_lon, c_lat, c_id) = (col(&h, "lon"), col(&h, "lat"), col(&h, "surveyId"));
    let c_sp = h.iter().position(|x| x == "speciesId");
    let mut sites = Sites::new();
    for r in &rows {
        let e = sites
            .entry(r[c_id].parse().unwrap())
            .or_insert_with(|| (r[c_lon].clone(), r[c_lat].clone(), BTreeSet::new()));
        if let Some(c) = c_sp {
            e.2.insert(r[c].trim_end_matches(".0").parse().unwrap());
        }
    }
    (rows.len(), sites)
}

/// The JSON `inspect` gives for a CSV cell: a number, or "NaN" / "inf" / "-inf".
fn cell_json(cell: &str) -> Value {
    if cell.is_empty() {
        return Value::from("NaN");
    }
    let v: f32 = cell.parse().unwrap_or_else(|_| panic!("cell `{cell}`"));
    if v.is_nan() {
        Value::from("NaN")
    } else if v == f32::INFINITY {
        Value::from("inf")
    } else if v == f32::NEG_INFINITY {
        Value::from("-inf")
    } else {
        serde_json::json!(f64::from(v))
    }
}

/// Every file under `dir` but the prepare lock (which names its last holder): relative path
/// -> (bytes, modification time).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file() && e.file_name() != ".prepare.lock")
        .map(|e| {
            let mtime = e.metadata().unwrap().modified().unwrap();
            let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
            (rel, (std::fs::read(e.path()).unwrap(), mtime))
        })
        .collect()
}

fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let (p, q) = (e.path(), dst.join(e.file_name()));
        if p.is_dir() {
            copy_dir(&p, &q);
        } else {
            std::fs::copy(&p, &q).unwrap();
        }
    }
}

/// The whitespace-separated words of the first stdout line starting with `start`.
fn line_words(stdout: &str, start: &str) -> Vec<String> {
    stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with `{start}` in:\n{stdout}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn inspect_reports_the_splits_and_counts_of_a_synthetic_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path());
    let (train_rows, train) = metadata(&root, "train");
    let (test_rows, test) = metadata(&root, "test");
    assert_eq!((train.len(), test.len(), test_rows), (TRAIN, TEST, TEST));
    let pairs: usize = train.values().map(|t| t.2.len()).sum();
    let species: BTreeSet<u64> = train.values().flat_map(|t| t.2.iter().copied()).collect();

    let (o, _) = run_expect(&["inspect", s(&root)], 0);
    assert!(
        o.contains(&format!(
            "[train] {TRAIN} surveys, {train_rows} rows ({} duplicate survey-species rows), {} species",
            train_rows - pairs,
            species.len()
        )),
        "{o}"
    );
    assert!(
        o.contains(&format!(
            "[test] {TEST} surveys, {TEST} rows (0 duplicate survey-species rows)"
        )),
        "{o}"
    );
    assert!(
        o.contains(&format!("files of {TRAIN} checked surveys")),
        "{o}"
    );
    assert!(
        o.contains(&format!("files of {TEST} checked surveys")),
        "{o}"
    );
    for m in ["landsat", "bioclim", "rgb", "nir"] {
        let w = line_words(&o, m);
        assert_eq!(
            w,
            [
                m,
                "present",
                &TRAIN.to_string(),
                "/",
                &TRAIN.to_string(),
                "failed",
                "0"
            ],
            "{o}"
        );
    }
    assert!(!o.contains("ABSENT") && !o.contains("FAILED"), "{o}");

    // The JSON report carries the same counts, per split.
    let (o, _) = run_expect(&["inspect", s(&root), "--json"], 0);
    let j: Value = serde_json::from_str(&o).unwrap();
    let splits = j["splits"].as_array().unwrap();
    assert_eq!(splits.len(), 2);
    for (sp, surveys, rows, sp_species) in [
        (&splits[0], TRAIN, train_rows, Value::from(species.len())),
        (&splits[1], TEST, TEST, Value::Null),
    ] {
        assert_eq!(sp["surveys"], surveys);
        assert_eq!(sp["rows"], rows);
        assert_eq!(sp["species"], sp_species);
        assert_eq!(sp["checked"], surveys);
        assert_eq!(sp["failures"].as_array().unwrap().len(), 0);
        assert_eq!(sp["features"].as_array().unwrap().len(), 46);
    }
    assert_eq!(splits[0]["split"], "train");
    assert_eq!(splits[1]["split"], "test");

    // --split limits the report; --sample checks fewer surveys.
    let (o, _) = run_expect(
        &["inspect", s(&root), "--split", "test", "--sample", "2"],
        0,
    );
    assert!(o.contains("[test]") && !o.contains("[train]"), "{o}");
    assert!(o.contains("files of 2 checked surveys"), "{o}");
}

#[test]
fn survey_json_matches_the_written_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path());
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("geolife_synth.json")).unwrap())
            .unwrap();
    let cfg: SynthConfig = serde_json::from_value(manifest["config"].clone()).unwrap();
    let plan = SynthPlan::new(&cfg).unwrap();

    for split in ["train", "test"] {
        let (_, sites) = metadata(&root, split);
        // The shortest id (one digit: the patch path rule's edge case) and the largest.
        let ids = [
            *sites.keys().next().unwrap(),
            *sites.keys().next_back().unwrap(),
        ];
        let env: Vec<(Vec<String>, Vec<Vec<String>>)> = ENV_CSVS
            .iter()
            .map(|t| csv(&root.join(for_split(t, split))))
            .collect();
        let monthly = csv(&root.join(for_split(MONTHLY_CSV, split)));
        for id in ids {
            let id_s = id.to_string();
            let mut args = vec!["inspect", s(&root), "--survey", &id_s, "--json"];
            // Test surveys are looked up without --split: the id is found in its split.
            if split == "train" {
                args.extend(["--split", split]);
            }
            let (o, _) = run_expect(&args, 0);
            let j: Value = serde_json::from_str(&o).unwrap();
            let ctx = format!("{split} survey {id}");
            assert_eq!(j["survey_id"], id, "{ctx}");
            assert_eq!(j["split"], split, "{ctx}");
            let (lon, lat, species) = &sites[&id];
            assert_eq!(j["lon"].as_f64(), lon.parse::<f64>().ok(), "{ctx}");
            assert_eq!(j["lat"].as_f64(), lat.parse::<f64>().ok(), "{ctx}");
            if split == "train" {
                let want: Vec<u64> = species.iter().copied().collect();
                assert_eq!(j["species"], serde_json::json!(want), "{ctx}");
            } else {
                assert!(j["species"].is_null(), "{ctx}: test has no labels");
            }

            // Tabular: every column of the five env CSVs, by header name.
            let tab = j["tabular"].as_object().unwrap();
            assert_eq!(tab.len(), 46, "{ctx}");
            for (h, rows) in &env {
                let c_id = col(h, "surveyId");
                let row = rows
                    .iter()
                    .find(|r| r[c_id] == id.to_string())
                    .unwrap_or_else(|| panic!("{ctx}: no env row"));
                for (k, name) in h.iter().enumerate().filter(|&(k, _)| k != c_id) {
                    assert_eq!(tab[name], cell_json(&row[k]), "{ctx} {name}");
                }
            }

            // Cubes: shapes; bioclim values equal the monthly climate CSV row.
            assert_eq!(
                j["landsat"]["shape"],
                serde_json::json!([6, 4, 21]),
                "{ctx}"
            );
            let landsat = j["landsat"]["values"].as_array().unwrap();
            assert_eq!(landsat.len(), 504, "{ctx}");
            assert!(
                landsat
                    .iter()
                    .all(|v| v.as_f64().is_some_and(|x| (0.0..=255.0).contains(&x))),
                "{ctx}: Landsat values are 0..255 (NaN -> 0)"
            );
            assert_eq!(
                j["bioclim"]["shape"],
                serde_json::json!([4, 19, 12]),
                "{ctx}"
            );
            let (mh, mrows) = &monthly;
            assert_eq!(mh.len(), 913);
            let mrow = mrows.iter().find(|r| r[0] == id.to_string()).unwrap();
            let want: Vec<Value> = mrow[1..].iter().map(|c| cell_json(c)).collect();
            assert_eq!(j["bioclim"]["values"], Value::Array(want), "{ctx}");

            // Patches: shapes, and channel means close to the generated pixels (JPEG is lossy).
            assert_eq!(j["rgb_shape"], serde_json::json!([128, 128, 3]), "{ctx}");
            assert_eq!(j["nir_shape"], serde_json::json!([128, 128]), "{ctx}");
            let sp = if split == "train" {
                Split::Train
            } else {
                Split::Test
            };
            let truth = plan.survey(sp, id).unwrap();
            let mean = |v: &[u8], c: usize, step: usize| {
                let px: Vec<f64> = v.iter().skip(c).step_by(step).map(|&x| x as f64).collect();
                px.iter().sum::<f64>() / px.len() as f64
            };
            let want = [
                mean(&truth.rgb, 0, 3),
                mean(&truth.rgb, 1, 3),
                mean(&truth.rgb, 2, 3),
                mean(&truth.nir, 0, 1),
            ];
            let got = j["patch_channel_means"].as_array().unwrap();
            assert_eq!(got.len(), 4, "{ctx}");
            for (c, (g, w)) in got.iter().zip(want).enumerate() {
                let d = g.as_f64().unwrap() - w;
                assert!(d.abs() < 1.0, "{ctx}: channel {c} mean off by {d}");
            }
            assert_eq!(j["errors"], serde_json::json!({}), "{ctx}");
        }
    }

    // An unknown survey, with or without --split, is an error (exit 1) that says why.
    let (_, e) = run_expect(
        &[
            "inspect",
            s(&root),
            "--split",
            "train",
            "--survey",
            "123456789",
            "--json",
        ],
        1,
    );
    assert!(
        e.contains("123456789") && e.contains("not in the train metadata"),
        "{e}"
    );
    let (_, e) = run_expect(&["inspect", s(&root), "--survey", "123456789"], 1);
    assert!(e.contains("123456789") && e.contains("neither"), "{e}");
}

#[test]
fn mini_survey_json_matches_the_golden_values() {
    let (o, _) = run_expect(
        &[
            "inspect",
            s(&mini()),
            "--split",
            "train",
            "--survey",
            "1322301",
            "--json",
        ],
        0,
    );
    let j: Value = serde_json::from_str(&o).unwrap();
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(mini().join("expected").join(name)).unwrap())
            .unwrap()
    };
    let cubes = read("cubes_1322301.json");
    for name in ["landsat", "bioclim"] {
        assert_eq!(j[name]["shape"], cubes[name]["shape"], "{name}");
        let got = j[name]["values"].as_array().unwrap();
        let want = cubes[name]["values_c_order"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (k, (a, b)) in got.iter().zip(want).enumerate() {
            assert_eq!(
                a.as_f64().map(|v| v as f32),
                b.as_f64().map(|v| v as f32),
                "{name}[{k}]"
            );
        }
    }
    let pil = read("patch_1322301_pil.json");
    assert_eq!(j["rgb_shape"], pil["rgb_shape"]);
    assert_eq!(j["nir_shape"], pil["nir_shape"]);
    let means = j["patch_channel_means"].as_array().unwrap();
    assert_eq!(means.len(), 4);
    let want = [
        &pil["rgb_channel_means_pil"][0],
        &pil["rgb_channel_means_pil"][1],
        &pil["rgb_channel_means_pil"][2],
        &pil["nir_mean_pil"],
    ];
    for (c, (g, w)) in means.iter().zip(want).enumerate() {
        let d = g.as_f64().unwrap() - w.as_f64().unwrap();
        assert!(d.abs() < 1.0, "channel {c} mean off by {d}");
    }
    assert_eq!(j["survey_id"], 1322301);
    // Metadata row: 5.19824,51.08484,... (by hand from the CSV).
    let (_, sites) = metadata(&mini(), "train");
    let (lon, lat, species) = &sites[&1322301];
    assert_eq!(j["lon"].as_f64(), lon.parse::<f64>().ok());
    assert_eq!(j["lat"].as_f64(), lat.parse::<f64>().ok());
    assert_eq!(
        j["species"],
        serde_json::json!(species.iter().collect::<Vec<_>>())
    );
    assert_eq!(j["area_m2"], "-inf");
    // The slice has no env CSVs: tabular is null, with the reason.
    assert!(j["tabular"].is_null());
    assert!(
        j["errors"]["tabular"]
            .as_str()
            .is_some_and(|e| e.contains("EnvironmentalRasters")),
        "{}",
        j["errors"]
    );

    // The whole slice: exit 0 (nothing corrupt), but --strict fails on the absent parts.
    let (o, _) = run_expect(&["inspect", s(&mini())], 0);
    assert!(o.contains("[test] metadata absent"), "{o}");
    let (_, e) = run_expect(&["inspect", s(&mini()), "--strict"], 1);
    assert!(e.contains("incomplete") && e.contains("test split"), "{e}");
}

#[test]
fn a_missing_required_part_is_exit_1_naming_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path());
    let cache = dir.path().join("cache");

    // An env CSV of the seed features: inspect says ABSENT (--strict fails), prepare fails.
    let elevation = root.join(for_split(ENV_CSVS[1], "test"));
    std::fs::remove_file(&elevation).unwrap();
    let rel = for_split(ENV_CSVS[1], "test");
    let (o, _) = run_expect(&["inspect", s(&root)], 0);
    assert!(o.contains(&format!("ABSENT (expected at {rel})")), "{o}");
    let (_, e) = run_expect(&["inspect", s(&root), "--strict"], 1);
    assert!(e.contains(&rel), "{e}");
    let (_, e) = run_expect(&["prepare", s(&root), "--out", s(&cache)], 1);
    assert!(e.contains(s(&elevation)), "{e}");
    assert!(
        !cache.join("test").exists(),
        "no test split without its tabular data"
    );

    // The train metadata: nothing can be read.
    let meta = root.join("GLC24_PA_metadata_train.csv");
    std::fs::remove_file(&meta).unwrap();
    for args in [
        vec!["inspect", s(&root)],
        vec![
            "inspect",
            s(&root),
            "--split",
            "train",
            "--survey",
            "1",
            "--json",
        ],
        vec!["prepare", s(&root), "--out", s(&cache)],
    ] {
        let (o, e) = run_expect(&args, 1);
        assert!(o.is_empty(), "{args:?}: nothing on stdout, got {o}");
        assert!(e.contains(s(&meta)), "{args:?}: {e}");
    }
    // A root that does not exist at all.
    let nowhere = dir.path().join("nowhere");
    let (_, e) = run_expect(&["inspect", s(&nowhere)], 1);
    assert!(e.contains(s(&nowhere)), "{e}");
}

#[test]
fn a_truncated_cube_is_exit_2_for_inspect_and_fails_prepare_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path());
    let (_, sites) = metadata(&root, "train");
    let id = *sites.keys().nth(TRAIN / 2).unwrap();
    let cube = root.join(format!(
        "TimeSeries-Cubes/TimeSeries-Cubes/GLC24-PA-train-landsat_time_series/GLC24-PA-train-landsat-time-series_{id}_cube.pt"
    ));
    let len = std::fs::metadata(&cube).unwrap().len();
    let f = std::fs::File::options().write(true).open(&cube).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);

    let (o, e) = run_expect(&["inspect", s(&root)], 2);
    let failed: Vec<&str> = o.lines().filter(|l| l.contains("FAILED")).collect();
    assert_eq!(failed.len(), 1, "{o}");
    assert!(failed[0].contains(s(&cube)), "{o}");
    assert!(failed[0].contains(&id.to_string()), "{o}");
    assert!(e.contains("1 file(s) failed to parse"), "{e}");
    let w = line_words(&o, "landsat");
    assert_eq!(w[2..], ["30", "/", "30", "failed", "1"], "{o}");
    let (o, _) = run_expect(&["inspect", s(&root), "--json"], 2);
    let j: Value = serde_json::from_str(&o).unwrap();
    let failures = j["splits"][0]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["survey"], id);
    assert_eq!(failures[0]["modality"], "landsat");

    // prepare stops, naming the survey and the file, and leaves no split behind.
    let cache = dir.path().join("cache");
    let (_, e) = run_expect(&["prepare", s(&root), "--out", s(&cache)], 1);
    assert!(e.contains(&format!("survey {id}")), "{e}");
    assert!(e.contains(s(&cube)), "{e}");
    assert_eq!(
        entries(&cache),
        BTreeSet::from([".prepare.lock".into()]),
        "nothing left in the cache"
    );

    // --skip-bad drops that survey and counts it.
    let o = prepare_skipping_one_train_survey(&root, &cache);
    assert!(
        o.contains(&format!("test: packed {TEST} surveys (0 skipped as bad)")),
        "{o}"
    );
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(cache.join("train/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["n"], TRAIN - 1);
    let skipped = m["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["survey_id"], id);
    assert!(
        skipped[0]["reason"].as_str().unwrap().contains(s(&cube)),
        "{}",
        skipped[0]
    );
}

#[test]
fn prepare_again_on_unchanged_data_is_up_to_date_and_leaves_the_cache_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path());
    let cache = dir.path().join("cache");
    let args = ["prepare", s(&root), "--out", s(&cache), "--threads", "2"];
    let (o, _) = run_expect(&args, 0);
    assert!(
        o.contains(&format!("train: packed {TRAIN} surveys (0 skipped as bad)")),
        "{o}"
    );
    assert!(o.contains(&format!("test: packed {TEST} surveys")), "{o}");
    assert_eq!(
        entries(&cache),
        BTreeSet::from([".prepare.lock".into(), "train".into(), "test".into()])
    );
    let before = snapshot(&cache);
    let (_, train) = metadata(&root, "train");
    let ids: Vec<u8> = train.keys().flat_map(|id| id.to_le_bytes()).collect();
    assert_eq!(
        before[Path::new("train/survey_ids.u64")].0,
        ids,
        "survey ids in ascending order"
    );

    let (o, _) = run_expect(&args, 0);
    assert!(
        o.contains(&format!("train: up to date ({TRAIN} surveys")),
        "{o}"
    );
    assert!(
        o.contains(&format!("test: up to date ({TEST} surveys")),
        "{o}"
    );
    assert!(!o.contains("packed"), "{o}");
    assert!(
        snapshot(&cache) == before,
        "an up-to-date run changes no file"
    );

    // A changed dataset file is noticed (fingerprint), and --force re-packs regardless.
    let bio = root.join(for_split(ENV_CSVS[0], "train"));
    let modified = std::fs::metadata(&bio).unwrap().modified().unwrap();
    let f = std::fs::File::options().write(true).open(&bio).unwrap();
    f.set_modified(modified + std::time::Duration::from_secs(60))
        .unwrap();
    drop(f);
    let (o, _) = run_expect(&args, 0);
    assert!(
        o.contains("train: packed") && o.contains("test: packed"),
        "{o}"
    );
    let (o, _) = run_expect(
        &[&args[..], &["--force", "--splits", "train"][..]].concat(),
        0,
    );
    assert!(o.contains("train: packed") && !o.contains("test:"), "{o}");
}

#[test]
fn an_interrupted_prepare_never_looks_complete() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path());
    let done = dir.path().join("done");
    run_expect(&["prepare", s(&root), "--out", s(&done)], 0);

    // A run killed just before its final rename: a complete-looking temporary folder
    // (manifest included) of a process that no longer runs.
    let cache = dir.path().join("cache");
    let leftover = cache.join("train.tmp-4000000000");
    copy_dir(&done.join("train"), &leftover);
    assert!(leftover.join("manifest.json").is_file());
    assert!(PackedSplit::open(&cache, Split::Train).is_err());
    assert!(PackedSplit::open(&cache, Split::Test).is_err());
    // A split folder without its manifest (the manifest is written last).
    copy_dir(&done.join("test"), &cache.join("test"));
    std::fs::remove_file(cache.join("test/manifest.json")).unwrap();
    assert!(PackedSplit::open(&cache, Split::Test).is_err());
    // And the lock file of the killed run (nobody holds its OS lock any more).
    let lock = cache.join(".prepare.lock");
    std::fs::write(&lock, "pid=4000000000\n").unwrap();

    let (o, _) = run_expect(&["prepare", s(&root), "--out", s(&cache)], 0);
    assert!(o.contains(&format!("train: packed {TRAIN} surveys")), "{o}");
    assert!(o.contains(&format!("test: packed {TEST} surveys")), "{o}");
    assert!(!o.contains("up to date"), "{o}");
    assert_eq!(
        entries(&cache),
        BTreeSet::from([".prepare.lock".into(), "train".into(), "test".into()]),
        "temporary folders removed"
    );
    assert_ne!(std::fs::read_to_string(&lock).unwrap(), "pid=4000000000\n");
    assert_eq!(
        PackedSplit::open(&cache, Split::Train).unwrap().len(),
        TRAIN
    );
    assert_eq!(PackedSplit::open(&cache, Split::Test).unwrap().len(), TEST);
}

#[test]
fn prepare_refuses_a_cache_whose_lock_a_running_process_holds() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path());
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let lock = cache.join(".prepare.lock");
    // This test process stands in for a running prepare: it holds the OS lock.
    let me = std::process::id();
    let held = format!("pid={me}\n");
    std::fs::write(&lock, &held).unwrap();
    let holder = std::fs::File::open(&lock).unwrap();
    holder.try_lock().unwrap();

    let (o, e) = run_expect(&["prepare", s(&root), "--out", s(&cache)], 1);
    assert!(o.is_empty(), "{o}");
    for part in [
        s(&lock),
        &format!("pid {me}"),
        "another `geolife prepare`",
        "wait",
    ] {
        assert!(e.contains(part), "`{part}` not in: {e}");
    }
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        held,
        "lock untouched"
    );
    assert_eq!(entries(&cache), BTreeSet::from([".prepare.lock".into()]));

    // Once the holder is gone (its lock released; the file stays), the same command packs.
    drop(holder);
    let (o, _) = run_expect(&["prepare", s(&root), "--out", s(&cache)], 0);
    assert!(o.contains("train: packed"), "{o}");
}

/// The file of a survey's patch of `kind` (`RGB`/`NIR`) in a train split, found by name.
fn train_patch(root: &Path, kind: &str, id: u64) -> PathBuf {
    walkdir::WalkDir::new(root.join(format!("PA_Train_SatellitePatches_{kind}")))
        .into_iter()
        .map(Result::unwrap)
        .find(|e| e.file_name().to_str() == Some(&format!("{id}.jpeg")))
        .unwrap_or_else(|| panic!("no {kind} patch of survey {id}"))
        .into_path()
}

/// The train manifest of a cache as JSON.
fn train_manifest(cache: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(cache.join("train/manifest.json")).unwrap())
        .unwrap()
}

/// Removes the data line of `id` from a CSV (first column `surveyId`, as synth writes env
/// CSVs); returns the removed line.
fn remove_row(path: &Path, id: u64) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let prefix = format!("{id},");
    let removed = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no row of {id} in {}", path.display()))
        .to_string();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with(&prefix)).collect();
    std::fs::write(path, kept.join("\n") + "\n").unwrap();
    removed
}

#[test]
fn a_truncated_patch_fails_prepare_naming_file_and_survey_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path());
    let (_, sites) = metadata(&root, "train");
    let id = *sites.keys().nth(TRAIN / 3).unwrap();
    let jpeg = train_patch(&root, "RGB", id);
    // Cut to a third of its bytes: PIL refuses such a file ("image file is truncated").
    let bytes = std::fs::read(&jpeg).unwrap();
    std::fs::write(&jpeg, &bytes[..bytes.len() / 3]).unwrap();
    let cache = dir.path().join("cache");

    let (o, e) = run_expect(&["prepare", s(&root), "--out", s(&cache)], 1);
    assert!(o.is_empty(), "{o}");
    for part in [s(&jpeg), &format!("(survey {id})"), "truncated"] {
        assert!(e.contains(part), "`{part}` not in: {e}");
    }
    assert_eq!(entries(&cache), BTreeSet::from([".prepare.lock".into()]));

    // inspect lists it as a failed rgb file (exit 2).
    let (o, _) = run_expect(&["inspect", s(&root)], 2);
    let failed: Vec<&str> = o.lines().filter(|l| l.contains("FAILED")).collect();
    assert_eq!(failed.len(), 1, "{o}");
    assert!(
        failed[0].contains("[truncated]") && failed[0].contains(s(&jpeg)),
        "{o}"
    );

    let o = prepare_skipping_one_train_survey(&root, &cache);
    assert!(
        o.contains(&format!("skipped survey {id} [truncated]: {}", s(&jpeg))),
        "{o}"
    );
    let m = train_manifest(&cache);
    assert_eq!(m["n"], TRAIN - 1);
    let skipped = m["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["survey_id"], id);
    assert_eq!(skipped[0]["kind"], "truncated");
    assert!(skipped[0]["reason"].as_str().unwrap().contains(s(&jpeg)));
}

#[test]
fn a_survey_without_an_env_row_is_reported_and_refused_under_strict() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path());
    let (_, sites) = metadata(&root, "train");
    let id = *sites.keys().nth(TRAIN / 2).unwrap();
    let elevation = root.join(for_split(ENV_CSVS[1], "train"));
    remove_row(&elevation, id);
    let cache = dir.path().join("cache");

    // Accepted (missing values are a fact of the real data), but said: which file, which
    // survey, what happens to it.
    let (o, _) = run_expect(&["prepare", s(&root), "--out", s(&cache)], 0);
    assert!(
        o.contains(&format!("train: packed {TRAIN} surveys (0 skipped as bad)")),
        "{o}"
    );
    let line = format!(
        "{}: 1 surveys of the train split have no row (survey {id}): kept with NaN features",
        s(&elevation)
    );
    assert!(o.contains(&line), "`{line}` not in:\n{o}");
    let m = train_manifest(&cache);
    let cov = m["env_coverage"].as_array().unwrap();
    let elev: Vec<&Value> = cov.iter().filter(|c| c["group"] == "elevation").collect();
    assert_eq!(elev.len(), 1);
    assert_eq!(elev[0]["missing_surveys"], serde_json::json!([id]));
    assert_eq!(elev[0]["path"], s(&elevation));
    for c in cov.iter().filter(|c| c["group"] != "elevation") {
        assert_eq!(c["missing_surveys"], serde_json::json!([]), "{c}");
    }
    // The up-to-date re-run repeats the report from the manifest.
    let (o, _) = run_expect(&["prepare", s(&root), "--out", s(&cache)], 0);
    assert!(o.contains("train: up to date") && o.contains(&line), "{o}");
    // inspect says it too, and --strict fails on it.
    let (o, _) = run_expect(&["inspect", s(&root)], 0);
    assert!(
        o.contains(&format!(
            "1 surveys without a row (survey {id}; their features are NaN)"
        )),
        "{o}"
    );
    let (_, e) = run_expect(&["inspect", s(&root), "--strict"], 1);
    assert!(
        e.contains(&format!("survey {id}")) && e.contains("elevation"),
        "{e}"
    );
    let (o, _) = run_expect(
        &[
            "inspect",
            s(&root),
            "--split",
            "train",
            "--survey",
            &id.to_string(),
            "--json",
        ],
        0,
    );
    let j: Value = serde_json::from_str(&o).unwrap();
    assert_eq!(j["env_rows_missing"], serde_json::json!(["elevation"]));
    assert_eq!(j["tabular"]["Elevation"], "NaN");

    // prepare --strict refuses it, naming file and survey; with --skip-bad leaves it out.
    let (o, e) = run_expect(&["prepare", s(&root), "--out", s(&cache), "--strict"], 1);
    assert!(o.is_empty(), "{o}");
    for part in [
        s(&elevation),
        &format!("(survey {id})"),
        "no row for this survey",
    ] {
        assert!(e.contains(part), "`{part}` not in: {e}");
    }
    let (o, _) = run_expect(
        &[
            "prepare",
            s(&root),
            "--out",
            s(&cache),
            "--strict",
            "--skip-bad",
        ],
        0,
    );
    assert_one_train_survey_skipped(&o);
    assert!(
        o.contains(&format!("skipped survey {id} [missing-row]")),
        "{o}"
    );
    let m = train_manifest(&cache);
    assert_eq!(m["skipped"][0]["survey_id"], id);
    assert_eq!(m["skipped"][0]["kind"], "missing-row");
    assert_eq!(m["options"]["strict"], true);
}

#[test]
fn conflicting_env_rows_fail_prepare_unless_skipped_and_exact_repeats_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let root = synth(dir.path());
    let (_, sites) = metadata(&root, "train");
    let ids: Vec<u64> = sites.keys().copied().collect();
    let (conflict, repeated) = (ids[TRAIN / 4], ids[TRAIN / 4 + 1]);
    let landcover = root.join(for_split(ENV_CSVS[3], "train"));
    let (h, rows) = csv(&landcover);
    assert_eq!(h, ["surveyId", "LandCover"]);
    let row_of = |id: u64| {
        rows.iter()
            .find(|r| r[0] == id.to_string())
            .unwrap()
            .clone()
    };
    let (c_row, r_row) = (row_of(conflict), row_of(repeated));
    let other: f64 = c_row[1].parse::<f64>().unwrap() + 2.0;
    let mut text = std::fs::read_to_string(&landcover).unwrap();
    text.push_str(&format!("{conflict},{other:.1}\n{}\n", r_row.join(",")));
    std::fs::write(&landcover, text).unwrap();
    // Lines by hand: header 1, the TRAIN rows, then the two appended rows.
    let first_line = 2 + rows
        .iter()
        .position(|r| r[0] == conflict.to_string())
        .unwrap();
    let conflict_line = TRAIN + 2;
    let cache = dir.path().join("cache");

    let (o, e) = run_expect(&["prepare", s(&root), "--out", s(&cache)], 1);
    assert!(o.is_empty(), "{o}");
    for part in [
        s(&landcover),
        &format!("(survey {conflict})"),
        "conflicting rows",
        &format!("lines {first_line} and {conflict_line}"),
        "`LandCover`",
    ] {
        assert!(e.contains(part), "`{part}` not in: {e}");
    }
    assert_eq!(entries(&cache), BTreeSet::from([".prepare.lock".into()]));

    // inspect: the conflict is a failure (exit 2), the repeat a count.
    let (o, _) = run_expect(&["inspect", s(&root)], 2);
    let failed: Vec<&str> = o
        .lines()
        .filter(|l| l.trim_start().starts_with("FAILED"))
        .collect();
    assert_eq!(failed.len(), 1, "{o}");
    assert!(
        failed[0].contains("[conflicting-rows]") && failed[0].contains(&conflict.to_string()),
        "{o}"
    );
    assert!(o.contains("1 exact duplicate rows"), "{o}");

    let o = prepare_skipping_one_train_survey(&root, &cache);
    assert!(
        o.contains(&format!("skipped survey {conflict} [conflicting-rows]")),
        "{o}"
    );
    assert!(
        o.contains(&format!(
            "{}: 1 exact duplicate rows (same survey, same values) ignored",
            s(&landcover)
        )),
        "{o}"
    );
    let m = train_manifest(&cache);
    let skipped = m["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["survey_id"], conflict);
    assert_eq!(skipped[0]["kind"], "conflicting-rows");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains(s(&landcover))
    );
    let train = PackedSplit::open(&cache, Split::Train).unwrap();
    assert_eq!(train.index_of(conflict), None);
    assert!(
        train.index_of(repeated).is_some(),
        "an exact repeat is harmless"
    );
}

/// `prepare --skip-bad` of `root` into `cache`: exits 0, packs all train surveys but one and
/// says so; returns its stdout.
fn prepare_skipping_one_train_survey(root: &Path, cache: &Path) -> String {
    let (o, _) = run_expect(&["prepare", s(root), "--out", s(cache), "--skip-bad"], 0);
    assert_one_train_survey_skipped(&o);
    o
}

/// The prepare summary says one train survey was skipped as bad.
fn assert_one_train_survey_skipped(o: &str) {
    assert!(
        o.contains(&format!(
            "train: packed {} surveys (1 skipped as bad)",
            TRAIN - 1
        )),
        "{o}"
    );
}
