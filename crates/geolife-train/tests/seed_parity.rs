//! Seed-transform parity end to end (tracker issue 5, item 2): real files in the official layout
//! -> `prepare` -> `predict --weights --config` with `[transforms] mode = "seed"` gives the scores
//! PyTorch gives when it reads the same files the seed's way and runs the seed's model with the
//! same weights. Golden values: tests/fixtures/gen_seed_parity.py (PyTorch, PIL, pandas).
//!
//! The environmental CSVs' headers are not alphabetical (human footprint in the official files'
//! order, SoilGrids shuffled): the seed's tabular vector follows each train file's header, and so
//! must geolife's, or a seed model reads its tabular inputs permuted (tracker issue 22). Fed
//! geolife's own decoded pixels, PyTorch's model and `geolife predict` agree to 1e-5 on every
//! survey.

use std::path::{Path, PathBuf};

use geolife_data::Split;
use geolife_data::cache::{NoProgress, PackedSplit, PrepareOptions, prepare};
use geolife_data::dataset::DatasetOptions;
use geolife_metrics::{ScoreFile, Scores};
use geolife_model::backbones::BackboneKind;
use geolife_model::formula::formula_dict;
use geolife_model::fusion::FusionConfig;
use geolife_model::import::read_safetensors;
use geolife_model::state::{StateDict, load_state_dict};
use geolife_train::config::{TransformMode, TransformSection};
use geolife_train::loader::{BatchPlan, build_batch};
use geolife_train::predict::{PredictOptions, predict};
use geolife_train::source::stats_from_manifest;
use geolife_train::vocab::Vocabulary;

/// The real survey of the mini dataset with both cubes and both patches.
const SURVEY: u64 = 1322301;
/// Every survey of the fixture: SURVEY and five mini surveys with real patches (their cubes are
/// copies of SURVEY's), as gen_seed_parity.py's `SURVEYS`.
const SURVEYS: [u64; 6] = [80000, 300100, 1160000, 1322301, 2270100, 3510100];
/// Largest allowed |geolife score - PyTorch score| when PyTorch is fed geolife's own decoded
/// pixels: nothing but float summation order is left to differ.
const SAME_PIXELS_TOL: f64 = 1e-5;
/// Outputs of the formula-weight model (gen_seed_parity.py: `SeedEnsemble(50, 46, ...)`).
const CLASSES: usize = 50;
/// Largest allowed |geolife score - PyTorch score| (the score file holds sigmoid probabilities,
/// so PyTorch's logits go through a sigmoid first). Tabular and cube inputs are bit-exact
/// (asserted), so only the JPEG decoders differ: the `image` crate (zune-jpeg) and PIL
/// (libjpeg-turbo) disagree on 2,590 of this survey's 65,536 patch values, by at most 3 levels in
/// R and B (4:2:0 chroma upsampling and colour conversion, mostly on the 16-pixel MCU edges) and 1
/// in NIR, mean 0.05 levels. Measured: max score difference 6.2e-4, all of it from the decoders
/// (PyTorch's model fed geolife's decoded patch matches geolife's scores to 3.6e-7). For scale: a
/// uniform +1 level on every pixel moves the scores by 2.1e-3 (gen_seed_parity.py), and geolife's
/// own transforms move them by 0.17 (asserted below to exceed 20x this tolerance).
const SCORE_TOL: f64 = 1e-3;
/// Largest allowed patch difference in 0-255 levels (measured: 3, see [`SCORE_TOL`]).
const PATCH_TOL_LEVELS: f64 = 3.0;
/// Largest allowed mean patch difference in levels (measured: 0.05); an off-by-one level shift
/// or a /256 scale would exceed it.
const PATCH_TOL_MEAN_LEVELS: f64 = 0.1;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn mini() -> PathBuf {
    manifest_dir().join("../../tests/data/glc24-real/mini")
}

fn fixtures() -> PathBuf {
    manifest_dir().join("tests/fixtures/seed_parity")
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

/// A dataset root holding [`SURVEYS`]: their metadata rows from mini, their real patches and
/// 1322301's real cubes (copied for every survey) at their official paths (written out here, not
/// taken from the code under test), and the fixture's environmental CSVs.
fn dataset_root(root: &Path) {
    let meta = std::fs::read_to_string(mini().join("GLC24_PA_metadata_train.csv")).unwrap();
    let mut lines = meta.lines();
    let header = lines.next().unwrap();
    let col = header.split(',').position(|c| c == "surveyId").unwrap();
    let rows: Vec<&str> = lines
        .filter(|l| {
            l.split(',')
                .nth(col)
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|id| SURVEYS.contains(&id))
        })
        .collect();
    let text = std::iter::once(header)
        .chain(rows)
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    std::fs::write(root.join("GLC24_PA_metadata_train.csv"), text).unwrap();
    let cubes = "TimeSeries-Cubes/TimeSeries-Cubes";
    let cube_paths = |id: u64| {
        [
            format!(
                "{cubes}/GLC24-PA-train-landsat_time_series/GLC24-PA-train-landsat-time-series_{id}_cube.pt"
            ),
            format!(
                "{cubes}/GLC24-PA-train-bioclimatic_monthly/GLC24-PA-train-bioclimatic_monthly_{id}_cube.pt"
            ),
        ]
    };
    for id in SURVEYS {
        for (from, to) in cube_paths(SURVEY).iter().zip(cube_paths(id)) {
            copy(&mini().join(from), &root.join(to));
        }
        let s = id.to_string();
        let (cd, ab) = (&s[s.len() - 2..], &s[s.len() - 4..s.len() - 2]);
        for rel in [
            format!("PA_Train_SatellitePatches_RGB/pa_train_patches_rgb/{cd}/{ab}/{id}.jpeg"),
            format!("PA_Train_SatellitePatches_NIR/pa_train_patches_nir/{cd}/{ab}/{id}.jpeg"),
        ] {
            copy(&mini().join(&rel), &root.join(&rel));
        }
    }
    for rel in ENV_FILES {
        let rel = format!("{ENV}/{rel}");
        copy(&fixtures().join(&rel), &root.join(&rel));
    }
}

const ENV: &str = "EnvironmentalRasters/EnvironmentalRasters";
/// The seed's merge order.
const ENV_FILES: [&str; 5] = [
    "Climate/Average 1981-2010/GLC24-PA-train-bioclimatic.csv",
    "Elevation/GLC24-PA-train-elevation.csv",
    "Human Footprint/GLC24-PA-train-human_footprint.csv",
    "SoilGrids/GLC24-PA-train-soilgrids.csv",
    "LandCover/GLC24-PA-train-landcover.csv",
];

/// The seed's tabular feature names, read here from the fixture CSVs' header lines: every column
/// but `surveyId`, file after file. With `sorted`, each file's columns alphabetically instead.
fn header_names(sorted: bool) -> Vec<String> {
    ENV_FILES
        .iter()
        .flat_map(|rel| {
            let text = std::fs::read_to_string(fixtures().join(ENV).join(rel)).unwrap();
            let mut names: Vec<String> = text
                .lines()
                .next()
                .unwrap()
                .split(',')
                .filter(|c| *c != "surveyId")
                .map(str::to_string)
                .collect();
            if sorted {
                names.sort();
            }
            names
        })
        .collect()
}

/// The formula-weight fusion model (gen_cnn.py's `SeedEnsemble(50, 46, small_convnext(4))`) as a
/// geolife checkpoint recording the tabular names the fixture's headers give (as
/// `import-weights --features-from DATASET` does).
fn write_checkpoint(path: &Path) {
    write_checkpoint_with(path, None, Some(&header_names(false)));
}

/// [`write_checkpoint`] recording `transforms` (JSON) and `features` in the metadata.
fn write_checkpoint_with(path: &Path, transforms: Option<&str>, features: Option<&[String]>) {
    let fc = FusionConfig::new(CLASSES, BackboneKind::SmokeConvnext);
    let model = fc.init(&geolife_model::cpu_device());
    let (model, report) = load_state_dict(model.clone(), &formula_dict(&model));
    assert!(report.is_exact(), "{}", report.summary());
    let inputs = geolife_model::checkpoint::InputsMeta {
        transforms_json: transforms,
        feature_names: features,
        location_json: None,
        species: None,
    };
    geolife_model::checkpoint::save_safetensors_with(&model, &fc, inputs, path).unwrap();
}

/// A predict config matching that model, with the given transform mode.
fn write_config(path: &Path, mode: &str) {
    let text = format!(
        "preset = \"paper\"\n\n[data]\nvocabulary = \"full\"\nfull_size = {CLASSES}\n\n\
         [model]\nbackbone = \"smoke_convnext\"\nhidden = 1024\ndropout = 0.15\n\n\
         [transforms]\nmode = \"{mode}\"\n"
    );
    std::fs::write(path, text).unwrap();
}

/// All scores, survey after survey (checks the surveys and species of the file).
fn scores_of(file: &ScoreFile) -> &[f32] {
    assert_eq!(file.survey_ids, SURVEYS.to_vec());
    assert_eq!(file.species, (0..CLASSES as u32).collect::<Vec<_>>());
    match &file.scores {
        Scores::Dense { data } => data,
        other => panic!("expected dense scores, got {}", other.kind()),
    }
}

/// The scores of [`SURVEY`].
fn survey_scores(file: &ScoreFile) -> &[f32] {
    let row = SURVEYS.iter().position(|&s| s == SURVEY).unwrap();
    &scores_of(file)[row * CLASSES..(row + 1) * CLASSES]
}

/// max |score - sigmoid(logit)|.
fn max_score_diff(scores: &[f32], logits: &[f32]) -> f64 {
    assert_eq!(scores.len(), logits.len());
    scores
        .iter()
        .zip(logits)
        .map(|(&s, &l)| (f64::from(s) - 1.0 / (1.0 + (-f64::from(l)).exp())).abs())
        .fold(0.0, f64::max)
}

fn expected() -> StateDict {
    read_safetensors(&fixtures().join("expected.safetensors")).unwrap()
}

#[test]
fn seed_mode_predict_reproduces_pytorch_reading_the_files_the_seeds_way() {
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(&root).unwrap();
    dataset_root(&root);
    let cache = dir.path().join("cache");
    let opts = PrepareOptions {
        splits: vec![Split::Train],
        ..PrepareOptions::new(DatasetOptions::default())
    };
    let reports = prepare(&root, &cache, &opts, &NoProgress).unwrap();
    assert_eq!((reports[0].n, reports[0].skipped), (SURVEYS.len(), 0));
    let weights = dir.path().join("seed_formula.safetensors");
    write_checkpoint(&weights);
    let expected = expected();
    let logits = &expected["logits"];
    assert_eq!(logits.shape, vec![1, CLASSES]);

    // 1. The model inputs geolife builds in seed mode (the batches predict feeds the model).
    let data = PackedSplit::open(&cache, Split::Train).unwrap();
    let plan = BatchPlan::inference(TransformMode::Seed, stats_from_manifest(data.manifest()));
    let vocab = Vocabulary::from_species((0..CLASSES as u32).collect());
    assert_eq!(data.survey_ids(), SURVEYS.as_slice());
    // The cache's columns are the train headers' order (the seed's rule), read independently.
    assert_eq!(data.manifest().feature_names, header_names(false));
    let row = SURVEYS.iter().position(|&s| s == SURVEY).unwrap();
    let inputs = build_batch(&data, &[row], 0, &plan, &vocab).inputs;
    // Tabular (pandas merge by name, NaN/inf -> -1) and cubes (torch.load, nan_to_num): exact.
    assert_eq!(inputs.tabular, expected["tabular"].data, "tabular input");
    assert_eq!(
        inputs.tabular.iter().filter(|&&v| v == -1.0).count(),
        3,
        "the fixture's NaN, inf and -inf all become -1: {:?}",
        inputs.tabular
    );
    assert_eq!(inputs.landsat, expected["landsat"].data, "landsat input");
    assert_eq!(inputs.bioclim, expected["bioclim"].data, "bioclim input");
    // Sentinel (PIL, ToTensor, Normalize(0.5, 0.5)): equal up to the JPEG decoders.
    let s2 = &expected["sentinel"];
    assert_eq!(s2.shape, vec![1, 4, 128, 128]);
    let levels: Vec<f64> = inputs
        .sentinel
        .iter()
        .zip(&s2.data)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs() * 127.5)
        .collect();
    let max_levels = levels.iter().copied().fold(0.0, f64::max);
    let differing = levels.iter().filter(|&&d| d > 1e-3).count();
    let mean_levels = levels.iter().sum::<f64>() / levels.len() as f64;
    eprintln!(
        "patch: max |geolife - PIL| = {max_levels:.3} levels, mean {mean_levels:.4}, {differing} of {} values differ",
        levels.len()
    );
    assert!(
        max_levels <= PATCH_TOL_LEVELS + 1e-3,
        "patch differs by up to {max_levels} levels"
    );
    assert!(
        mean_levels < PATCH_TOL_MEAN_LEVELS,
        "patch differs by {mean_levels} levels on average"
    );

    // 2. predict --weights --config (seed transforms) vs sigmoid(PyTorch logits).
    let opts = |config: Option<PathBuf>| PredictOptions {
        run_dir: None,
        weights: Some(weights.clone()),
        config,
        cache: cache.clone(),
        split: Split::Train,
        batch_size: 4,
        workers: 1,
        device: None,
        precision: None,
    };
    let run = |mode: &str| {
        let config = dir.path().join(format!("{mode}.toml"));
        write_config(&config, mode);
        predict(&opts(Some(config))).unwrap()
    };
    let seed = run("seed");
    let diff = max_score_diff(survey_scores(&seed), &logits.data);
    eprintln!(
        "seed mode: max |score - sigmoid(PyTorch logit)| = {diff:.3e} (tolerance {SCORE_TOL:.0e})"
    );
    assert!(
        diff < SCORE_TOL,
        "seed-mode scores differ from PyTorch by {diff}"
    );

    // 2b. Every survey, against PyTorch fed geolife's own decoded pixels (the cache's patches,
    //     checked to be the pixels the fixture was made from): no decoder difference is left.
    let ids: Vec<u64> = expected["survey_ids"]
        .data
        .iter()
        .map(|&v| v as u64)
        .collect();
    assert_eq!(ids, SURVEYS.to_vec());
    let patches = &expected["patches"];
    assert_eq!(patches.shape, vec![SURVEYS.len(), 4, 128, 128]);
    let cached: Vec<u8> = (0..data.len())
        .flat_map(|i| data.patch(i).to_vec())
        .collect();
    assert!(
        cached
            .iter()
            .zip(&patches.data)
            .all(|(&a, &b)| f32::from(a) == b),
        "the cache's decoded patches differ from those gen_seed_parity.py fed PyTorch: the JPEG \
         decoder changed; rerun gen_seed_parity.py --geolife <this build>"
    );
    assert_eq!(expected["tabular_all"].shape, vec![SURVEYS.len(), 46]);
    let all = build_batch(
        &data,
        &(0..SURVEYS.len()).collect::<Vec<_>>(),
        0,
        &plan,
        &vocab,
    );
    assert_eq!(
        all.inputs.tabular, expected["tabular_all"].data,
        "tabular rows"
    );
    let same_pixels = &expected["logits_cache"];
    assert_eq!(same_pixels.shape, vec![SURVEYS.len(), CLASSES]);
    let diff = max_score_diff(scores_of(&seed), &same_pixels.data);
    eprintln!(
        "same pixels, {} surveys: max |score - PyTorch| = {diff:.3e}",
        SURVEYS.len()
    );
    assert!(
        diff < SAME_PIXELS_TOL,
        "on identical pixels, scores differ from PyTorch by {diff}"
    );
    // A reader that ignored the headers (each group's columns sorted, as geolife read them
    // before) moves the scores far beyond the tolerance: the check can fail.
    let sorted = &expected["logits_cache_sorted_tab"];
    let off = max_score_diff(scores_of(&seed), &sorted.data);
    eprintln!("same pixels, sorted tabular columns: max |score - PyTorch| = {off:.3e}");
    assert!(
        off > 100.0 * SAME_PIXELS_TOL,
        "a permuted tabular order is not detectable: {off}"
    );
    // A checkpoint whose model takes each group's columns sorted gets the cache's columns
    // mapped by name into that order: PyTorch's scores on the sorted rows.
    let sorted_names = dir.path().join("sorted_names.safetensors");
    write_checkpoint_with(
        &sorted_names,
        Some(&TransformSection::seed().to_json()),
        Some(&header_names(true)),
    );
    let mapped = predict(&PredictOptions {
        weights: Some(sorted_names),
        config: None,
        ..opts(None)
    })
    .unwrap();
    let diff = max_score_diff(scores_of(&mapped), &sorted.data);
    assert!(
        diff < SAME_PIXELS_TOL,
        "columns mapped by name onto the checkpoint's order: off by {diff}"
    );
    // A name the cache lacks is an error naming it.
    let mut unknown = header_names(false);
    unknown[20] = "HumanFootprint-Built2030".into();
    let bad = dir.path().join("unknown_name.safetensors");
    write_checkpoint_with(
        &bad,
        Some(&TransformSection::seed().to_json()),
        Some(&unknown),
    );
    let e = predict(&PredictOptions {
        weights: Some(bad),
        config: None,
        ..opts(None)
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("`HumanFootprint-Built2030`") && e.contains("`HumanFootprint-Built1994`"),
        "{e}"
    );

    // 3. The check can fail: geolife's own transforms give clearly different scores.
    let geolife = run("geolife");
    let off = max_score_diff(survey_scores(&geolife), &logits.data);
    eprintln!("geolife mode: max |score - sigmoid(PyTorch logit)| = {off:.3e}");
    assert!(
        off > 20.0 * SCORE_TOL,
        "geolife-mode scores are too close to PyTorch: {off}"
    );
    // 4. No --config: predict follows the transforms the checkpoint records, whatever the
    //    built-in preset says (a seed import records the seed's; a geolife run its own).
    let bare = |name: &str, t: TransformSection| {
        let w = dir.path().join(name);
        write_checkpoint_with(&w, Some(&t.to_json()), Some(&header_names(false)));
        predict(&PredictOptions {
            run_dir: None,
            weights: Some(w),
            config: None,
            cache: cache.clone(),
            split: Split::Train,
            batch_size: 4,
            workers: 1,
            device: None,
            precision: None,
        })
        .unwrap()
    };
    let recorded_seed = bare("seed_recorded.safetensors", TransformSection::seed());
    let diff = max_score_diff(survey_scores(&recorded_seed), &logits.data);
    assert!(diff < SCORE_TOL, "recorded seed transforms: off by {diff}");
    let geolife_section = TransformSection {
        mode: TransformMode::Geolife,
        ..TransformSection::default()
    };
    let recorded_geolife = bare("geolife_recorded.safetensors", geolife_section);
    let off = max_score_diff(survey_scores(&recorded_geolife), &logits.data);
    assert!(
        off > 20.0 * SCORE_TOL,
        "recorded geolife transforms were not applied: {off}"
    );
    eprintln!("test time {:.1} s", t0.elapsed().as_secs_f64());
}
