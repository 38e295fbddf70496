//! Packed cache: synth -> prepare -> read back equals the raw files (checked with the raw
//! readers and with independent CSV/JPEG decoding), statistics, gather, re-run skip.

mod cache_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cache_common::{opts, pack, synth_into};
use geolife_data::Split;
use geolife_data::cache::{Batch, PackedSplit, SplitOutcome};
use geolife_data::dataset::{Dataset, DatasetOptions};

fn same_f32(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

/// surveyId -> set of species, parsed here from the metadata CSV (independent of the readers).
fn labels_from_csv(root: &Path) -> BTreeMap<u64, BTreeSet<u32>> {
    let mut rdr = csv::Reader::from_path(root.join("GLC24_PA_metadata_train.csv")).unwrap();
    let header = rdr.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (sc, pc) = (col("surveyId"), col("speciesId"));
    let mut out: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    for rec in rdr.records() {
        let rec = rec.unwrap();
        let survey: f64 = rec[sc].parse().unwrap();
        let species: f64 = rec[pc].parse().unwrap();
        out.entry(survey as u64).or_default().insert(species as u32);
    }
    out
}

/// surveyId -> Elevation, parsed here from the elevation CSV.
fn elevation_from_csv(root: &Path) -> BTreeMap<u64, f32> {
    let p = root
        .join("EnvironmentalRasters/EnvironmentalRasters/Elevation/GLC24-PA-train-elevation.csv");
    let mut rdr = csv::Reader::from_path(p).unwrap();
    let header = rdr.headers().unwrap().clone();
    let sc = header.iter().position(|h| h == "surveyId").unwrap();
    let ec = header.iter().position(|h| h == "Elevation").unwrap();
    rdr.records()
        .map(|r| {
            let r = r.unwrap();
            let v = r[ec].trim();
            let v: f32 = if v.is_empty() {
                f32::NAN
            } else {
                v.parse().unwrap()
            };
            (r[sc].parse::<f64>().unwrap() as u64, v)
        })
        .collect()
}

/// The patch path rule, written out here: CD = last two digits, AB = the two before.
fn patch_path(root: &Path, kind: &str, id: u64) -> std::path::PathBuf {
    let s = id.to_string();
    let cd = &s[s.len().saturating_sub(2)..];
    let ab = &s[s.len().saturating_sub(4)..s.len().saturating_sub(2)];
    let mut p = root
        .join(format!("PA_Train_SatellitePatches_{}", kind.to_uppercase()))
        .join(format!("pa_train_patches_{kind}"))
        .join(cd);
    if !ab.is_empty() {
        p = p.join(ab);
    }
    p.join(format!("{id}.jpeg"))
}

#[test]
fn cache_values_equal_raw_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = &synth_into(dir.path());
    let tmp = tempfile::tempdir().unwrap();
    let reports = pack(root, tmp.path(), opts(&[Split::Train, Split::Test])).unwrap();
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.outcome == SplitOutcome::Packed));

    let ds = Dataset::open(root, DatasetOptions::default()).unwrap();
    let train = PackedSplit::open(tmp.path(), Split::Train).unwrap();
    let metas = ds.surveys(Split::Train).unwrap();
    assert_eq!(train.len(), metas.len());
    assert_eq!(train.len(), 40);
    let table = ds.tabular(Split::Train).unwrap();
    assert_eq!(train.manifest().feature_names, table.feature_names);
    assert_eq!(train.n_features(), 46);

    let csv_labels = labels_from_csv(root);
    let elevation = elevation_from_csv(root);
    let elev_col = table
        .feature_names
        .iter()
        .position(|n| n == "Elevation")
        .unwrap();
    for (i, m) in metas.iter().enumerate() {
        let id = m.survey_id;
        assert_eq!(train.survey_ids()[i], id);
        assert_eq!(train.index_of(id), Some(i));
        assert_eq!(train.lon_lat(i), (m.lon, m.lat));
        assert!(same_f32(train.tabular(i), table.row(i)), "tabular of {id}");
        assert!(same_f32(
            &train.tabular(i)[elev_col..=elev_col],
            &[elevation[&id]]
        ));
        assert!(same_f32(
            train.landsat(i),
            &ds.read_landsat(Split::Train, id).unwrap()
        ));
        assert!(same_f32(
            train.bioclim(i),
            &ds.read_bioclim(Split::Train, id).unwrap()
        ));
        assert_eq!(train.patch(i), ds.read_patch(Split::Train, id).unwrap());
        let expected: Vec<u32> = csv_labels[&id].iter().copied().collect();
        assert_eq!(train.labels(i), expected.as_slice(), "labels of {id}");
    }

    // Patches against an independent decode of the JPEGs of a few surveys.
    for i in [0, 17, 39] {
        let id = train.survey_ids()[i];
        let rgb = image::open(patch_path(root, "rgb", id)).unwrap().to_rgb8();
        let nir = image::open(patch_path(root, "nir", id)).unwrap().to_luma8();
        let p = train.patch(i);
        for (k, px) in rgb.pixels().enumerate() {
            assert_eq!([p[k], p[16384 + k], p[2 * 16384 + k]], px.0);
        }
        assert_eq!(&p[3 * 16384..], nir.as_raw().as_slice());
    }

    // Manifest: vocabulary and statistics recomputed here the naive way.
    let man = train.manifest();
    let vocab: BTreeSet<u32> = csv_labels.values().flatten().copied().collect();
    assert_eq!(man.species, vocab.into_iter().collect::<Vec<_>>());
    assert!(man.has_labels && train.has_labels());
    assert_eq!(man.categorical_features, vec!["LandCover".to_string()]);
    for j in 0..train.n_features() {
        let vals: Vec<f64> = (0..train.len())
            .map(|i| train.tabular(i)[j] as f64)
            .collect();
        let fin: Vec<f64> = vals.iter().copied().filter(|v| v.is_finite()).collect();
        let s = &man.tabular_stats[j];
        assert_eq!(
            s.nan_count as usize,
            vals.iter().filter(|v| v.is_nan()).count()
        );
        assert_eq!(
            s.inf_count as usize,
            vals.iter().filter(|v| v.is_infinite()).count()
        );
        let mean = fin.iter().sum::<f64>() / fin.len() as f64;
        let std = (fin.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / fin.len() as f64).sqrt();
        assert!(
            (s.mean - mean).abs() <= 1e-9 * (1.0 + mean.abs()),
            "{}",
            s.name
        );
        assert!((s.std - std).abs() <= 1e-9 * (1.0 + std), "{}", s.name);
        assert_eq!(s.min, fin.iter().copied().reduce(f64::min));
    }
    for c in 0..4 {
        let vals: Vec<f64> = (0..train.len())
            .flat_map(|i| train.patch(i)[c * 16384..(c + 1) * 16384].to_vec())
            .map(f64::from)
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        assert!((man.patch_channel_stats[c].mean - mean).abs() < 1e-6);
    }
    for c in 0..6 {
        let vals: Vec<f64> = (0..train.len())
            .flat_map(|i| train.landsat(i)[c * 84..(c + 1) * 84].to_vec())
            .map(f64::from)
            .filter(|v| v.is_finite())
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let std = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64).sqrt();
        let s = &man.landsat_channel_stats[c];
        assert!((s.mean - mean).abs() < 1e-9 * (1.0 + mean.abs()));
        assert!((s.std - std).abs() < 1e-9 * (1.0 + std));
    }

    // Test split: no labels, train statistics copied, values equal the raw readers.
    let test = PackedSplit::open(tmp.path(), Split::Test).unwrap();
    let tmetas = ds.surveys(Split::Test).unwrap();
    assert_eq!(test.len(), tmetas.len());
    assert!(!test.has_labels());
    assert!(test.labels(0).is_empty());
    assert_eq!(test.manifest().tabular_stats, man.tabular_stats);
    assert_eq!(test.manifest().patch_channel_stats, man.patch_channel_stats);
    assert_eq!(test.manifest().species, man.species);
    let last = test.len() - 1;
    let id = tmetas[last].survey_id;
    assert_eq!(test.survey_ids()[last], id);
    assert!(same_f32(
        test.landsat(last),
        &ds.read_landsat(Split::Test, id).unwrap()
    ));
    assert_eq!(test.patch(last), ds.read_patch(Split::Test, id).unwrap());

    // Gather: rows in the requested order, allocations reused.
    let mut batch = Batch::default();
    let idx = [5usize, 0, 5, 39];
    train.gather(&idx, &mut batch);
    assert_eq!(batch.len(), 4);
    let f = train.n_features();
    for (k, &i) in idx.iter().enumerate() {
        assert_eq!(batch.survey_ids[k], train.survey_ids()[i]);
        assert_eq!(batch.lon_lat[2 * k], train.lon_lat(i).0);
        assert!(same_f32(
            &batch.tabular[k * f..(k + 1) * f],
            train.tabular(i)
        ));
        assert!(same_f32(
            &batch.landsat[k * 504..(k + 1) * 504],
            train.landsat(i)
        ));
        assert!(same_f32(
            &batch.bioclim[k * 912..(k + 1) * 912],
            train.bioclim(i)
        ));
        assert_eq!(&batch.patches[k * 65536..(k + 1) * 65536], train.patch(i));
        assert_eq!(batch.labels[k], train.labels(i));
    }
    let mut par = Batch::default();
    train.gather_par(&idx, &mut par);
    assert_eq!(par.survey_ids, batch.survey_ids);
    assert_eq!(par.lon_lat, batch.lon_lat);
    assert!(same_f32(&par.tabular, &batch.tabular));
    assert!(same_f32(&par.landsat, &batch.landsat));
    assert!(same_f32(&par.bioclim, &batch.bioclim));
    assert_eq!(par.patches, batch.patches);
    assert_eq!(par.labels, batch.labels);
    train.gather_par(&[3], &mut par);
    assert_eq!(par.patches.as_slice(), train.patch(3));
    assert_eq!((par.len(), par.labels.len()), (1, 1));
    let ptr = batch.patches.as_ptr();
    train.gather(&[1, 2, 3, 4], &mut batch);
    assert_eq!(
        batch.patches.as_ptr(),
        ptr,
        "gather must reuse the patch buffer"
    );
    // Patch rows are copied into a cache-line aligned buffer (4x faster memcpy on x86-64).
    assert_eq!(batch.patches.as_ptr() as usize % 64, 0);
    assert_eq!(par.patches.as_ptr() as usize % 64, 0);
    train.gather(&[7], &mut batch);
    assert_eq!(batch.len(), 1);
    assert_eq!(batch.labels.len(), 1);
}

#[test]
fn rerun_on_unchanged_dataset_skips_and_a_changed_file_repacks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = synth_into(tmp.path());
    let out = tmp.path().join("cache");
    let first = pack(&root, &out, opts(&[Split::Train, Split::Test])).unwrap();
    assert!(first.iter().all(|r| r.outcome == SplitOutcome::Packed));
    let second = pack(&root, &out, opts(&[Split::Train, Split::Test])).unwrap();
    assert!(second.iter().all(|r| r.outcome == SplitOutcome::UpToDate));
    assert_eq!(second[0].n, 40);

    let mut forced = opts(&[Split::Train]);
    forced.force = true;
    assert_eq!(
        pack(&root, &out, forced).unwrap()[0].outcome,
        SplitOutcome::Packed
    );

    // Another modification time on one input file changes the fingerprint.
    let elev = root
        .join("EnvironmentalRasters/EnvironmentalRasters/Elevation/GLC24-PA-train-elevation.csv");
    let f = std::fs::File::options().write(true).open(&elev).unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .unwrap();
    drop(f);
    let third = pack(&root, &out, opts(&[Split::Train])).unwrap();
    assert_eq!(third[0].outcome, SplitOutcome::Packed);

    // A test split alone reuses the (now matching) train statistics.
    let mut t = opts(&[Split::Test]);
    t.force = true;
    assert_eq!(
        pack(&root, &out, t).unwrap()[0].outcome,
        SplitOutcome::Packed
    );
}
