//! `geolife synth` datasets: the complete official layout, seeded byte-identical output,
//! atomic writing, CSV / patch values that match the generated survey records, and the
//! presence-only records (read back, informative, and leaving every other file unchanged).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use geolife_data::Split;
use geolife_data::layout::PO_METADATA_TRAIN;
use geolife_data::po::{PoReader, PoRecord};
use geolife_data::synth::layout::{self, EnvTable, PatchKind};
use geolife_data::synth::{SynthConfig, SynthPlan, po, write_dataset};

fn tiny(seed: u64) -> SynthConfig {
    SynthConfig {
        train_surveys: 40,
        test_surveys: 8,
        species: 30,
        seed,
        mean_species_per_survey: 6.0,
        missing_rate: 0.2,
        duplicate_row_rate: 0.1,
        ..SynthConfig::default()
    }
}

/// All files under `root`, relative path -> bytes.
fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            (rel, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|rec| rec.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

#[test]
fn same_seed_gives_byte_identical_datasets_and_another_seed_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    write_dataset(&a, &tiny(7)).unwrap();
    write_dataset(&b, &tiny(7)).unwrap();
    write_dataset(&c, &tiny(8)).unwrap();
    let (fa, fb, fc) = (files(&a), files(&b), files(&c));
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (k, v) in &fa {
        assert!(
            fb[k] == *v,
            "{} differs between two runs with the same seed",
            k.display()
        );
    }
    let meta = layout::metadata_csv(Split::Train);
    assert_ne!(
        fa[&meta], fc[&meta],
        "another seed must change the metadata"
    );
    // Nothing but the three datasets is left in the parent folder (no temporary dirs).
    let names: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    );
}

#[test]
fn existing_non_empty_output_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"mine").unwrap();
    let err = write_dataset(&out, &tiny(1)).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(std::fs::read(out.join("keep.txt")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // An invalid option is rejected before any work, naming the option.
    let bad = SynthConfig {
        species: 0,
        ..tiny(1)
    };
    let err = write_dataset(&dir.path().join("other"), &bad).unwrap_err();
    assert!(err.to_string().contains("species"), "{err}");
    assert!(!dir.path().join("other").exists());
}

#[test]
fn dataset_has_every_file_of_the_official_layout_with_matching_values() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    let cfg = tiny(3);
    let summary = write_dataset(&out, &cfg).unwrap();
    let plan = SynthPlan::new(&cfg).unwrap();
    assert_eq!(summary.train_surveys, 40);
    assert_eq!(summary.test_surveys, 8);

    // Exact folder names of the official layout (repeated folders, the space, hyphens).
    for rel in [
        "GLC24_PA_metadata_train.csv",
        "GLC24_PA_metadata_test.csv",
        "GLC24_SOLUTION_FILE.csv",
        "EnvironmentalRasters/EnvironmentalRasters/Climate/Average 1981-2010/GLC24-PA-train-bioclimatic.csv",
        "EnvironmentalRasters/EnvironmentalRasters/Human Footprint/GLC24-PA-test-human_footprint.csv",
        "EnvironmentalRasters/EnvironmentalRasters/SoilGrids/GLC24-PA-train-soilgrids.csv",
        "EnvironmentalRasters/EnvironmentalRasters/Elevation/GLC24-PA-test-elevation.csv",
        "EnvironmentalRasters/EnvironmentalRasters/LandCover/GLC24-PA-train-landcover.csv",
    ] {
        assert!(out.join(rel).is_file(), "missing {rel}");
    }

    // Metadata: train rows per (survey, species), float-formatted species ids, repeats.
    let (header, rows) = read_csv(&out.join("GLC24_PA_metadata_train.csv"));
    assert_eq!(
        header,
        [
            "lon",
            "lat",
            "year",
            "geoUncertaintyInM",
            "areaInM2",
            "region",
            "country",
            "speciesId",
            "surveyId"
        ]
    );
    let mut labels: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    let mut pairs = BTreeSet::new();
    let mut repeats = 0;
    for r in &rows {
        assert!(
            r[7].ends_with(".0"),
            "speciesId `{}` must be float-formatted",
            r[7]
        );
        let sid = r[7].trim_end_matches(".0").parse::<u32>().unwrap();
        let id = r[8].parse::<u64>().unwrap();
        let (lon, lat): (f64, f64) = (r[0].parse().unwrap(), r[1].parse().unwrap());
        assert!((-10.0..=30.0).contains(&lon) && (36.0..=70.0).contains(&lat));
        labels.entry(id).or_default().insert(sid);
        repeats += usize::from(!pairs.insert((id, sid)));
    }
    assert!(repeats > 0, "duplicate_row_rate 0.1 must repeat some rows");
    let ids: Vec<u64> = labels.keys().copied().collect();
    assert_eq!(ids, plan.survey_ids(Split::Train));
    assert!(
        ids.iter().any(|&id| id < 10),
        "a one-digit survey id exercises the path rule"
    );
    for (&id, set) in &labels {
        let truth = plan.survey(Split::Train, id).unwrap();
        assert_eq!(
            set.iter().copied().collect::<Vec<_>>(),
            truth.species,
            "survey {id}"
        );
    }

    // Test metadata has no speciesId; the solution file lists the generated species.
    let (header, test_rows) = read_csv(&out.join("GLC24_PA_metadata_test.csv"));
    assert!(!header.iter().any(|h| h == "speciesId"));
    let test_ids: Vec<u64> = test_rows.iter().map(|r| r[7].parse().unwrap()).collect();
    assert_eq!(test_ids, plan.survey_ids(Split::Test));
    assert!(
        test_ids.iter().all(|id| !labels.contains_key(id)),
        "train/test ids overlap"
    );
    let (header, sol) = read_csv(&out.join("GLC24_SOLUTION_FILE.csv"));
    assert_eq!(header, ["surveyId", "predictions"]);
    assert_eq!(sol.len(), 8);
    for r in &sol {
        let id: u64 = r[0].parse().unwrap();
        let mut got: Vec<u32> = r[1].split(' ').map(|s| s.parse().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, plan.survey(Split::Test, id).unwrap().species);
    }

    // Environmental CSVs: real column names, one row per survey, values as generated.
    let anchors = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/data/glc24-real/env_value_anchors.csv"),
    )
    .unwrap();
    let real_columns: BTreeSet<&str> = anchors
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(2))
        .collect();
    let mut written_columns = BTreeSet::new();
    let mut empty_or_inf = 0;
    for split in Split::ALL {
        let mut tab: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
        for table in EnvTable::ALL {
            let (header, rows) = read_csv(&out.join(table.csv(split)));
            assert_eq!(header[0], "surveyId");
            assert_eq!(header.len(), 1 + table.columns().len());
            for r in rows {
                let id = r[0].parse().unwrap();
                for (h, v) in header.iter().zip(&r).skip(1) {
                    written_columns.insert(h.clone());
                    empty_or_inf += usize::from(v.is_empty() || v.contains("inf"));
                    tab.entry(id).or_default().push((h.clone(), v.clone()));
                }
            }
        }
        assert_eq!(
            tab.keys().copied().collect::<Vec<_>>(),
            plan.survey_ids(split)
        );
        for (id, cells) in tab {
            let truth = plan.survey(split, id).unwrap();
            assert_eq!(cells.len(), 46);
            for ((h, v), (name, value)) in cells.iter().zip(&truth.tabular) {
                assert_eq!(h, name);
                let parsed = if v.is_empty() {
                    f64::NAN
                } else {
                    v.parse::<f64>().unwrap()
                };
                assert!(
                    parsed == *value || (parsed.is_nan() && value.is_nan()),
                    "{split} {id} {h}: `{v}` vs {value}"
                );
            }
        }
    }
    assert_eq!(written_columns.len(), 46);
    let real_names: BTreeSet<String> = real_columns.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        written_columns, real_names,
        "column names must be the official ones"
    );
    assert!(
        empty_or_inf > 0,
        "missing_rate 0.2 must leave some empty/inf cells"
    );

    // Cubes and patches exist for every survey; patches decode to the right size and are
    // close to the generated pixels (JPEG is lossy).
    for split in Split::ALL {
        for id in plan.survey_ids(split) {
            assert!(out.join(layout::landsat_cube(split, id)).is_file());
            assert!(out.join(layout::bioclim_cube(split, id)).is_file());
            let truth = plan.survey(split, id).unwrap();
            let rgb = image::open(out.join(layout::patch(split, PatchKind::Rgb, id))).unwrap();
            assert_eq!(rgb.color(), image::ColorType::Rgb8);
            let rgb = rgb.to_rgb8();
            assert_eq!(rgb.dimensions(), (128, 128));
            let nir = image::open(out.join(layout::patch(split, PatchKind::Nir, id))).unwrap();
            assert_eq!(nir.color(), image::ColorType::L8);
            let nir = nir.to_luma8();
            for (decoded, want) in [(rgb.as_raw(), &truth.rgb), (nir.as_raw(), &truth.nir)] {
                let mean_abs = decoded
                    .iter()
                    .zip(want.iter())
                    .map(|(&a, &b)| (a as f64 - b as f64).abs())
                    .sum::<f64>()
                    / want.len() as f64;
                assert!(
                    mean_abs < 4.0,
                    "{split} {id}: JPEG differs by {mean_abs} on average"
                );
            }
        }
    }
}

#[test]
fn monthly_climate_csv_holds_the_bioclimatic_cube_values() {
    use geolife_data::{Dataset, DatasetOptions, EnvGroup, NanPolicy};

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    let cfg = tiny(5);
    write_dataset(&out, &cfg).unwrap();
    let plan = SynthPlan::new(&cfg).unwrap();

    // The file itself, read with the csv crate: official path, 912 distinct value columns,
    // one row per survey whose cells are the generated cube in C order.
    for split in Split::ALL {
        let rel = format!(
            "EnvironmentalRasters/EnvironmentalRasters/Climate/Monthly/GLC24-PA-{split}-bioclimatic_monthly.csv"
        );
        let (header, rows) = read_csv(&out.join(&rel));
        assert_eq!(header[0], "surveyId", "{rel}");
        assert_eq!(header.len(), 1 + 912, "{rel}");
        let distinct: BTreeSet<&String> = header.iter().collect();
        assert_eq!(distinct.len(), 913, "{rel}: column names must be distinct");
        assert_eq!(header[1], "pr_01_2000");
        assert_eq!(header[912], "tasmin_12_2018");
        let ids: Vec<u64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
        assert_eq!(ids, plan.survey_ids(split), "{rel}");
        for r in &rows {
            let id: u64 = r[0].parse().unwrap();
            let cube = plan.survey(split, id).unwrap().bioclim;
            let cells: Vec<f32> = r[1..].iter().map(|c| c.parse().unwrap()).collect();
            assert_eq!(cells, cube, "{rel}: survey {id}");
        }
    }

    // Through the reader: the monthly group adds 912 features after the seed's 46, equal to
    // the values of the survey's `.pt` cube.
    let seed = Dataset::open(&out, DatasetOptions::default()).unwrap();
    let mut groups = EnvGroup::SEED.to_vec();
    groups.push(EnvGroup::MonthlyClimate);
    let ds = Dataset::open(
        &out,
        DatasetOptions {
            env_groups: groups,
            cube_nan: NanPolicy::Keep,
        },
    )
    .unwrap();
    for split in Split::ALL {
        let base = seed.tabular(split).unwrap();
        let table = ds.tabular(split).unwrap();
        assert_eq!(base.n_features(), 46);
        assert_eq!(table.n_features(), 46 + 912);
        assert_eq!(table.feature_names[..46], base.feature_names[..]);
        assert_eq!(table.feature_names[46], "pr_01_2000");
        assert!(table.categorical[46..].iter().all(|&c| !c));
        let missing: usize = table.missing_rows.iter().map(|m| m.1).sum();
        assert_eq!(missing, 0, "{split}: every survey has a monthly row");
        for (i, s) in ds.surveys(split).unwrap().iter().enumerate() {
            let row = table.row(i);
            let seed_row = base.row(i);
            for (a, b) in row[..46].iter().zip(seed_row) {
                assert!(
                    a == b || (a.is_nan() && b.is_nan()),
                    "{split} {}",
                    s.survey_id
                );
            }
            let cube = ds.read_bioclim(split, s.survey_id).unwrap();
            assert_eq!(cube.len(), 912);
            assert_eq!(&row[46..], &cube[..], "{split} survey {}", s.survey_id);
        }
    }
}

// Presence-only records: the official file read back by `geolife_data::po`, every other file
// unchanged by them, observer hotspots, and real information about where species live (PO
// species near a test survey agree with its PA labels more than chance).

fn with_po(po_records: usize) -> SynthConfig {
    SynthConfig {
        train_surveys: 600,
        test_surveys: 120,
        species: 60,
        po_records: Some(po_records),
        ..SynthConfig::default()
    }
}

fn km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lon1, lat1, lon2, lat2) = (
        a.0.to_radians(),
        a.1.to_radians(),
        b.0.to_radians(),
        b.1.to_radians(),
    );
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

#[test]
fn po_file_reads_back_and_leaves_every_other_file_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (with, without) = (dir.path().join("with"), dir.path().join("without"));
    let summary = write_dataset(&with, &with_po(6000)).unwrap();
    assert_eq!(summary.po_records, 6000);
    write_dataset(&without, &with_po(0)).unwrap();
    assert!(
        !without.join(PO_METADATA_TRAIN).exists(),
        "0 records: no file"
    );

    let (mut a, mut b) = (files(&with), files(&without));
    let text = String::from_utf8(a.remove(Path::new(PO_METADATA_TRAIN)).unwrap()).unwrap();
    assert_eq!(text.lines().next(), Some(po::HEADER));
    // The manifest records the count; every data file is byte-identical.
    a.remove(Path::new("geolife_synth.json"));
    b.remove(Path::new("geolife_synth.json"));
    assert_eq!(a.len(), b.len());
    for (path, bytes) in &a {
        assert!(b.get(path) == Some(bytes), "{} differs", path.display());
    }

    let records: Vec<PoRecord> = PoReader::open(&with.join(PO_METADATA_TRAIN), false)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(records.len(), 6000);
    let plan = SynthPlan::new(&with_po(6000)).unwrap();
    let species: HashSet<u32> = plan.species_ids().iter().copied().collect();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(
            r.survey_id,
            po::FIRST_SURVEY_ID + i as u64,
            "one id per record"
        );
        assert!(species.contains(&r.species_id));
        let unc = r.geo_uncertainty_m.expect("uncertainty stated");
        assert!((50.0..=1000.0).contains(&unc));
        assert!((-12.0..=32.0).contains(&r.lon) && (35.0..=71.0).contains(&r.lat));
        assert!(matches!(r.year, Some(2017..=2021)));
        assert!(r.month.is_some() && r.day.is_some() && r.day_of_year.is_some());
    }
    // A few hundred metres of uncertainty on average.
    let mean_unc = records
        .iter()
        .filter_map(|r| r.geo_uncertainty_m)
        .sum::<f64>()
        / records.len() as f64;
    assert!((200.0..600.0).contains(&mean_unc), "{mean_unc}");
}

#[test]
fn po_records_cluster_at_hotspots_and_say_where_species_live() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("d");
    let cfg = with_po(6000);
    write_dataset(&root, &cfg).unwrap();
    let records: Vec<PoRecord> = PoReader::open(&root.join(PO_METADATA_TRAIN), false)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();

    // Hotspots: the busiest 5% of 0.1-degree cells hold a large share of the records.
    let mut cells: HashMap<(i64, i64), usize> = HashMap::new();
    for r in &records {
        *cells
            .entry(((r.lon * 10.0).floor() as i64, (r.lat * 10.0).floor() as i64))
            .or_default() += 1;
    }
    let mut counts: Vec<usize> = cells.into_values().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let top: usize = counts[..counts.len().div_ceil(20)].iter().sum();
    assert!(
        top as f64 > 0.3 * records.len() as f64,
        "busiest 5% of cells hold {top} of {}",
        records.len()
    );

    // Information: the share of PO records within 20 km of a test survey whose species the
    // survey holds, against the share of all PO records it holds (chance; high, as common
    // species are over-reported). Measured: 0.60 vs 0.50.
    let plan = SynthPlan::new(&cfg).unwrap();
    let (mut local, mut chance, mut n) = (0.0, 0.0, 0);
    for id in plan.survey_ids(Split::Test) {
        let s = plan.survey(Split::Test, id).unwrap();
        let labels: HashSet<u32> = s.species.iter().copied().collect();
        let holds = |r: &PoRecord| labels.contains(&r.species_id);
        let near: Vec<&PoRecord> = records
            .iter()
            .filter(|r| km((s.lon, s.lat), (r.lon, r.lat)) < 20.0)
            .collect();
        if near.len() < 5 {
            continue;
        }
        n += 1;
        local += near.iter().filter(|r| holds(r)).count() as f64 / near.len() as f64;
        chance += records.iter().filter(|r| holds(r)).count() as f64 / records.len() as f64;
    }
    assert!(n >= 60, "only {n} test surveys have PO records nearby");
    let (local, chance) = (local / n as f64, chance / n as f64);
    assert!(
        local > chance + 0.05,
        "PO species near a survey are its species {local:.3} of the time, {chance:.3} by chance"
    );
}
