//! `inspect` and the readers on a complete synthetic dataset: full coverage, no failures, and
//! every value read back equals the generator's ground truth (SynthPlan).

use geolife_data::inspect::{InspectOptions, inspect};
use geolife_data::synth::{SynthConfig, SynthPlan, write_dataset};
use geolife_data::{Dataset, DatasetOptions, NanPolicy, Split};

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn readers_return_the_synthetic_ground_truth() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        train_surveys: 24,
        test_surveys: 6,
        species: 15,
        mean_species_per_survey: 5.0,
        seed: 11,
        missing_rate: 0.3,
        ..SynthConfig::default()
    };
    write_dataset(dir.path(), &cfg).unwrap();
    let plan = SynthPlan::new(&cfg).unwrap();
    let opts = DatasetOptions {
        cube_nan: NanPolicy::Keep,
        ..DatasetOptions::default()
    };
    let ds = Dataset::open(dir.path(), opts).unwrap();

    let report = inspect(&ds, &InspectOptions::default(), &|| {});
    assert_eq!(
        report.n_failures(),
        0,
        "{:?}",
        report
            .splits
            .iter()
            .map(|s| &s.failures)
            .collect::<Vec<_>>()
    );
    assert!(report.incomplete().is_empty(), "{:?}", report.incomplete());
    assert_eq!(report.splits[0].surveys, 24);
    assert_eq!(report.splits[1].surveys, 6);

    for split in Split::ALL {
        let table = ds.tabular(split).unwrap();
        let surveys = ds.surveys(split).unwrap();
        assert_eq!(
            surveys.iter().map(|s| s.survey_id).collect::<Vec<_>>(),
            plan.survey_ids(split)
        );
        for (i, s) in surveys.iter().enumerate() {
            let truth = plan.survey(split, s.survey_id).unwrap();
            // The writer prints coordinates with 6 decimals, as the real files do.
            assert!((s.lon - truth.lon).abs() <= 5e-7 && (s.lat - truth.lat).abs() <= 5e-7);
            if split == Split::Train {
                assert_eq!(ds.labels(split).unwrap()[i], truth.species);
            }
            // Compared by name: the generator lists LandCover before the SoilGrids, the
            // reader uses the seed's order (GLC24.md: ..., soilgrids, landcover).
            assert_eq!(table.n_features(), truth.tabular.len());
            for (n, want) in &truth.tabular {
                let j = table.feature_names.iter().position(|f| f == n).unwrap();
                let got = table.row(i)[j];
                assert!(
                    same(got, *want as f32),
                    "{split} {} {n}: {got} vs {want}",
                    s.survey_id
                );
            }
            let l = ds.read_landsat(split, s.survey_id).unwrap();
            let b = ds.read_bioclim(split, s.survey_id).unwrap();
            assert!(l.iter().zip(&truth.landsat).all(|(a, b)| same(*a, *b)));
            assert!(b.iter().zip(&truth.bioclim).all(|(a, b)| same(*a, *b)));
            assert_eq!(
                ds.read_patch(split, s.survey_id).unwrap().len(),
                4 * 128 * 128
            );
        }
    }
}
