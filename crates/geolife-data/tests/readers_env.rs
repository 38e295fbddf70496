//! Environmental tables: the 555 real anchor values (env_value_anchors.csv) written into tiny
//! CSVs of the official layout with shuffled columns, read back by name into the 46 features.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use geolife_data::env::{EnvGroup, is_categorical};
use geolife_data::layout::env_csv;
use geolife_data::{DataError, Dataset, DatasetOptions, Split};

fn anchors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/glc24-real/env_value_anchors.csv")
}

/// (split, survey) -> column -> value text, by plain line splitting.
fn anchors() -> BTreeMap<(String, u64), BTreeMap<String, String>> {
    let text = std::fs::read_to_string(anchors_path()).unwrap();
    let mut out: BTreeMap<(String, u64), BTreeMap<String, String>> = BTreeMap::new();
    for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.splitn(5, ',').collect();
        out.entry((f[1].to_string(), f[0].parse().unwrap()))
            .or_default()
            .insert(f[2].to_string(), f[3].to_string());
    }
    out
}

/// The seed's 46 names, written out independently of the crate's constants.
fn seed_names() -> Vec<String> {
    let mut v: Vec<String> = (1..=19).map(|i| format!("Bio{i}")).collect();
    v.push("Elevation".into());
    for s in [
        "Built1994",
        "Built2009",
        "HFP1993",
        "HFP2009",
        "Lights1994",
        "Lights2009",
        "NavWater1994",
        "NavWater2009",
        "Pasture1993",
        "Pasture2009",
        "Popdensity1990",
        "Popdensity2010",
        "Railways",
        "Roads",
        "croplands1992",
        "croplands2005",
    ] {
        v.push(format!("HumanFootprint-{s}"));
    }
    for s in [
        "bdod", "cec", "cfvo", "clay", "nitrogen", "phh2o", "sand", "silt", "soc",
    ] {
        v.push(format!("Soilgrid-{s}"));
    }
    v.push("LandCover".into());
    v
}

fn group_of(col: &str) -> EnvGroup {
    if col.starts_with("Bio") {
        EnvGroup::Bioclim
    } else if col == "Elevation" {
        EnvGroup::Elevation
    } else if col.starts_with("HumanFootprint") {
        EnvGroup::HumanFootprint
    } else if col.starts_with("Soilgrid") {
        EnvGroup::SoilGrids
    } else {
        EnvGroup::LandCover
    }
}

const EXTRA_RAW: u64 = 777_001; // a survey with raw non-finite values
const ABSENT: u64 = 777_002; // a survey absent from every env CSV

fn write_dataset(root: &Path) -> BTreeMap<(String, u64), BTreeMap<String, String>> {
    let anchors = anchors();
    let names = seed_names();
    for split in ["train", "test"] {
        let mut ids: Vec<u64> = anchors
            .keys()
            .filter(|k| k.0 == split)
            .map(|k| k.1)
            .collect();
        let mut meta =
            String::from("surveyId,lon,lat,year,geoUncertaintyInM,areaInM2,region,country");
        meta.push_str(if split == "train" {
            ",speciesId\n"
        } else {
            "\n"
        });
        ids.extend([EXTRA_RAW, ABSENT]);
        for id in &ids {
            write!(meta, "{id},1.5,45.25,2019,,,ATLANTIC,France").unwrap();
            meta.push_str(if split == "train" { ",12.0\n" } else { "\n" });
        }
        std::fs::write(root.join(format!("GLC24_PA_metadata_{split}.csv")), meta).unwrap();
        let sp: Split = split.parse().unwrap();
        for g in EnvGroup::SEED {
            // Train columns reversed, test columns in the official order, plus an unrelated
            // column first: reading must go by name, in the train header's order.
            let mut cols: Vec<&String> = names.iter().filter(|c| group_of(c) == g).collect();
            if split == "train" {
                cols.reverse();
            }
            let mut csv = String::from("unused,");
            csv.push_str(
                &cols
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            );
            csv.push_str(",surveyId\n");
            for id in ids.iter().filter(|&&i| i != ABSENT) {
                csv.push_str("x,");
                let vals: Vec<String> = cols
                    .iter()
                    .map(|c| {
                        if *id == EXTRA_RAW {
                            ["inf", "-inf", "NaN", ""][c.len() % 4].to_string()
                        } else {
                            anchors[&(split.to_string(), *id)]
                                .get(*c)
                                .cloned()
                                .unwrap_or_default()
                        }
                    })
                    .collect();
                csv.push_str(&vals.join(","));
                writeln!(csv, ",{id}").unwrap();
            }
            let p = root.join(env_csv(g, sp));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, csv).unwrap();
        }
    }
    anchors
}

#[test]
fn anchor_values_land_in_the_named_features() {
    let dir = tempfile::tempdir().unwrap();
    let anchors = write_dataset(dir.path());
    let ds = Dataset::open(dir.path(), DatasetOptions::default()).unwrap();
    // The seed's order: each train CSV's header order (reversed above), file after file.
    let names: Vec<String> = EnvGroup::SEED
        .iter()
        .flat_map(|&g| {
            let mut cols: Vec<String> = seed_names()
                .into_iter()
                .filter(|c| group_of(c) == g)
                .collect();
            cols.reverse();
            cols
        })
        .collect();
    assert_ne!(names, seed_names());
    let mut checked = 0;
    for split in Split::ALL {
        let table = ds.tabular(split).unwrap();
        assert_eq!(
            table.feature_names, names,
            "{split}: the train headers' order"
        );
        assert_eq!(table.n_features(), 46);
        assert_eq!(table.categorical.iter().filter(|&&c| c).count(), 1);
        assert!(table.categorical[45] && is_categorical("LandCover"));
        for (i, s) in ds.surveys(split).unwrap().iter().enumerate() {
            let row = table.row(i);
            match s.survey_id {
                ABSENT => assert!(row.iter().all(|v| v.is_nan())),
                EXTRA_RAW => {
                    for (v, n) in row.iter().zip(&names) {
                        match n.len() % 4 {
                            0 => assert_eq!(*v, f32::INFINITY, "{n}"),
                            1 => assert_eq!(*v, f32::NEG_INFINITY, "{n}"),
                            _ => assert!(v.is_nan(), "{n}"),
                        }
                    }
                }
                id => {
                    let a = &anchors[&(split.to_string(), id)];
                    for (v, n) in row.iter().zip(&names) {
                        match a.get(n) {
                            Some(text) => {
                                let want: f64 = text.parse().unwrap();
                                assert_eq!(*v as f64, want, "{split} survey {id} {n}");
                                checked += 1;
                            }
                            None => assert!(v.is_nan(), "{split} survey {id} {n} should be empty"),
                        }
                    }
                }
            }
        }
        let missing: Vec<usize> = table.missing_rows.iter().map(|m| m.1).collect();
        assert_eq!(missing, vec![1; 5]);
    }
    assert_eq!(checked, 555);
}

#[test]
fn env_groups_are_configurable_and_columns_required() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path());
    let opts = DatasetOptions {
        env_groups: vec![EnvGroup::LandCover, EnvGroup::Elevation],
        ..DatasetOptions::default()
    };
    let ds = Dataset::open(dir.path(), opts).unwrap();
    let t = ds.tabular(Split::Train).unwrap();
    assert_eq!(t.feature_names, vec!["LandCover", "Elevation"]);
    assert_eq!(t.categorical, vec![true, false]);
    let i = ds.index_of(Split::Train, 212).unwrap();
    assert_eq!(t.row(i), &[8.0, 47.0]);

    // The monthly table is optional: absent -> Missing; present -> all its columns in order.
    let monthly = DatasetOptions {
        env_groups: vec![EnvGroup::MonthlyClimate],
        ..DatasetOptions::default()
    };
    let ds = Dataset::open(dir.path(), monthly.clone()).unwrap();
    assert!(matches!(
        ds.tabular(Split::Train),
        Err(DataError::Missing { .. })
    ));
    let p = dir
        .path()
        .join(env_csv(EnvGroup::MonthlyClimate, Split::Train));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, "pr_01_2000,surveyId,tas_01_2000\n3.5,212,2750\n").unwrap();
    let ds = Dataset::open(dir.path(), monthly).unwrap();
    let t = ds.tabular(Split::Train).unwrap();
    assert_eq!(t.feature_names, vec!["pr_01_2000", "tas_01_2000"]);
    let i = ds.index_of(Split::Train, 212).unwrap();
    assert_eq!(t.row(i), &[3.5, 2750.0]);

    // A CSV without one of its group's columns.
    let p = dir.path().join(env_csv(EnvGroup::Elevation, Split::Test));
    std::fs::write(&p, "surveyId,Elevation_m\n642,3\n").unwrap();
    let ds = Dataset::open(dir.path(), DatasetOptions::default()).unwrap();
    match ds.tabular(Split::Test) {
        Err(DataError::MissingColumn { column, path, .. }) => {
            assert_eq!(column, "Elevation");
            assert!(path.ends_with("Elevation/GLC24-PA-test-elevation.csv"));
        }
        other => panic!("expected MissingColumn, got {other:?}"),
    }
    // A value that is not a number names the file, line, survey and column.
    std::fs::write(&p, "surveyId,Elevation\n642,3\n1792,high\n").unwrap();
    match ds.tabular(Split::Test) {
        Err(e @ DataError::Csv { .. }) => {
            let s = e.to_string();
            assert!(
                s.contains(":3") && s.contains("survey 1792") && s.contains("Elevation"),
                "{s}"
            );
        }
        other => panic!("expected Csv, got {other:?}"),
    }
}
