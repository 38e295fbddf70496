//! Synthetic presence-only records: the official file read back by `geolife_data::po`, every
//! other file unchanged by them, observer hotspots, and real information about where species
//! live (PO species near a test survey agree with its PA labels more than chance).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use geolife_data::Split;
use geolife_data::layout::PO_METADATA_TRAIN;
use geolife_data::po::{PoReader, PoRecord};
use geolife_data::synth::{SynthConfig, SynthPlan, po, write_dataset};

fn config(po_records: usize) -> SynthConfig {
    SynthConfig {
        train_surveys: 600,
        test_surveys: 120,
        species: 60,
        po_records: Some(po_records),
        ..SynthConfig::default()
    }
}

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
    let summary = write_dataset(&with, &config(6000)).unwrap();
    assert_eq!(summary.po_records, 6000);
    write_dataset(&without, &config(0)).unwrap();
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
    let plan = SynthPlan::new(&config(6000)).unwrap();
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
    let cfg = config(6000);
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
