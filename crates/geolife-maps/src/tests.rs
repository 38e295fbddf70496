//! Every kind of map on a hand-written dataset of five surveys: the pixel at each survey has
//! the colour its value calls for (read off the drawn colour bar or legend), and bad input is
//! refused with a message naming the file and the survey or species, leaving no file behind.

use std::path::{Path, PathBuf};

use geolife_metrics::{ScoreFile, Scores};

use crate::*;

const HEADER: &str = "lon,lat,year,geoUncertaintyInM,areaInM2,region,country,speciesId,surveyId";

/// Train surveys (id, lon, lat, species) and the one test survey.
const TRAIN: [(u64, f64, f64, &[u32]); 4] = [
    (1, 0.0, 40.0, &[1, 2]),
    (2, 20.0, 60.0, &[3]),
    (3, 10.0, 50.0, &[1, 3]),
    (4, 5.0, 55.0, &[2]),
];
const TEST: (u64, f64, f64) = (101, 15.0, 45.0);

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut train = format!("{HEADER}\n");
        for (id, lon, lat, species) in TRAIN {
            for s in species {
                train.push_str(&format!(
                    "{lon},{lat},2020,10,100,ATLANTIC,France,{s},{id}\n"
                ));
            }
        }
        std::fs::write(dir.path().join("GLC24_PA_metadata_train.csv"), train).unwrap();
        let (id, lon, lat) = TEST;
        std::fs::write(
            dir.path().join("GLC24_PA_metadata_test.csv"),
            format!(
                "lon,lat,year,geoUncertaintyInM,areaInM2,region,country,surveyId\n\
                 {lon},{lat},2021,10,100,ATLANTIC,France,{id}\n"
            ),
        )
        .unwrap();
        // Ten records of species 7 at (2, 42), one of species 8 at (18, 58).
        let mut po = String::from("surveyId,speciesId,lon,lat,year\n");
        for k in 0..10 {
            po.push_str(&format!("{},7,2.0,42.0,2019\n", 500 + k));
        }
        po.push_str("600,8,18.0,58.0,2019\n");
        std::fs::write(dir.path().join("GLC24_P0_metadata_train.csv"), po).unwrap();
        Fixture { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Dense scores over species [1, 2, 3], split `val`.
    fn scores(&self, name: &str, rows: &[(u64, [f32; 3])]) -> PathBuf {
        let path = self.path(name);
        ScoreFile {
            model: "m".into(),
            split: "val".into(),
            survey_ids: rows.iter().map(|r| r.0).collect(),
            species: vec![1, 2, 3],
            scores: Scores::Dense {
                data: rows.iter().flat_map(|r| r.1).collect(),
            },
        }
        .write(&path)
        .unwrap();
        path
    }

    fn policy(&self, text: &str) -> PathBuf {
        let path = self.path("policy.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// The decoded PNG.
fn png(path: &Path) -> image::RgbImage {
    image::open(path).unwrap().to_rgb8()
}

/// The colour at the centre of the raster cell holding (lon, lat), by the projection the
/// layout documents: x = x0 + floor((lon - lon_min) / (lon_max - lon_min) * width).
fn at(img: &image::RgbImage, l: &Layout, lon: f64, lat: f64) -> [u8; 3] {
    let [x0, y0, x1, y1] = l.plot;
    let [lon0, lon1, lat0, lat1] = l.extent;
    let px = ((lon - lon0) / (lon1 - lon0) * (x1 - x0) as f64).floor() as u32;
    let py = ((lat1 - lat) / (lat1 - lat0) * (y1 - y0) as f64).floor() as u32;
    let c = l.cell_px;
    let x = x0 as u32 + px / c * c + c / 2;
    let y = y0 as u32 + py / c * c + c / 2;
    img.get_pixel(x, y).0
}

/// The colour of the pixel holding (lon, lat) itself.
fn pixel(img: &image::RgbImage, l: &Layout, lon: f64, lat: f64) -> [u8; 3] {
    let [x0, y0, x1, y1] = l.plot;
    let [lon0, lon1, lat0, lat1] = l.extent;
    let px = ((lon - lon0) / (lon1 - lon0) * (x1 - x0) as f64).floor() as i32;
    let py = ((lat1 - lat) / (lat1 - lat0) * (y1 - y0) as f64).floor() as i32;
    img.get_pixel((x0 + px) as u32, (y0 + py) as u32).0
}

/// Colours of the colour bar's top (max) and bottom (min) rows, at its middle column.
fn bar_ends(img: &image::RgbImage, l: &Layout) -> ([u8; 3], [u8; 3]) {
    let [x0, y0, x1, y1] = l.colour_bar.as_ref().unwrap().rect;
    let x = ((x0 + x1) / 2) as u32;
    (
        img.get_pixel(x, y0 as u32).0,
        img.get_pixel(x, (y1 - 1) as u32).0,
    )
}

const WHITE: [u8; 3] = [255, 255, 255];
const GREY: [u8; 3] = [222, 222, 222];

fn opts() -> MapOptions {
    MapOptions {
        size: 400,
        ..MapOptions::default()
    }
}

#[test]
fn f1_map_colours_each_survey_by_its_f1() {
    let f = Fixture::new();
    // Top-2 of every row is {1, 2}: survey 1 (truth {1, 2}) F1 1, survey 2 ({3}) F1 0,
    // survey 3 ({1, 3}) 2*1/(2+2) = 0.5.
    let scores = f.scores(
        "s.safetensors",
        &[
            (1, [0.9, 0.8, 0.1]),
            (2, [0.9, 0.8, 0.1]),
            (3, [0.9, 0.8, 0.1]),
        ],
    );
    let policy = f.policy("[policy]\ntype = \"top_k\"\nk = 2\n");
    let out = f.path("f1.png");
    let s = render(
        &MapRequest::F1(F1Map {
            scores,
            labels: Labels::Train,
            policy: Some(policy),
            coords: f.root(),
        }),
        &out,
        &opts(),
    )
    .unwrap();
    assert_eq!(s.points, 3);
    assert_eq!(s.counts["base"], 5);
    assert!((s.mean.unwrap() - 0.5).abs() < 1e-12);
    let img = png(&out);
    assert_eq!([img.width(), img.height()], s.layout.image);
    // 20 x 20 degrees (padded alike) at a mean latitude of 50: the height is the longer
    // side, the width 400 * cos(50 deg) = 257.1 pixels.
    let [x0, y0, x1, y1] = s.layout.plot;
    assert_eq!((x1 - x0, y1 - y0), (257, 400));
    let (top, bottom) = bar_ends(&img, &s.layout);
    assert_ne!(top, bottom);
    assert_eq!(at(&img, &s.layout, 0.0, 40.0), top, "F1 1");
    assert_eq!(at(&img, &s.layout, 20.0, 60.0), bottom, "F1 0");
    let half = at(&img, &s.layout, 10.0, 50.0);
    assert!(
        ![top, bottom, WHITE, GREY].contains(&half),
        "F1 0.5: {half:?}"
    );
    // Unscored surveys are the grey base layer; empty land is white.
    assert_eq!(at(&img, &s.layout, 15.0, 45.0), GREY);
    assert_eq!(at(&img, &s.layout, 17.0, 42.0), WHITE);
    // The solution route gives the same map.
    let sol = f.path("solution.csv");
    std::fs::write(&sol, "surveyId,predictions\n1,1 2\n2,3\n3,1 3\n").unwrap();
    let out2 = f.path("f1b.png");
    render(
        &MapRequest::F1(F1Map {
            scores: f.path("s.safetensors"),
            labels: Labels::Solution(sol),
            policy: Some(f.path("policy.toml")),
            coords: f.root(),
        }),
        &out2,
        &opts(),
    )
    .unwrap();
    assert_eq!(png(&out2), img);
}

#[test]
fn richness_maps_count_the_selection_or_sum_the_probabilities() {
    let f = Fixture::new();
    let scores = f.scores(
        "r.safetensors",
        &[(1, [0.9, 0.9, 0.9]), (2, [0.1, 0.0, 0.0])],
    );
    // Threshold 0.5 keeps 3 species at survey 1 and min_k = 1 at survey 2.
    let policy = f.policy("[policy]\ntype = \"threshold\"\nt = 0.5\nmin_k = 1\nmax_k = 3\n");
    let req = |expected| {
        MapRequest::Richness(RichnessMap {
            scores: scores.clone(),
            policy: Some(policy.clone()),
            expected,
            coords: f.root(),
        })
    };
    let out = f.path("rich.png");
    let s = render(&req(false), &out, &opts()).unwrap();
    assert_eq!(s.mean, Some(2.0));
    let bar = s.layout.colour_bar.clone().unwrap();
    assert_eq!((bar.min, bar.max), (0.0, 3.0));
    let img = png(&out);
    let (top, _) = bar_ends(&img, &s.layout);
    assert_eq!(at(&img, &s.layout, 0.0, 40.0), top);
    let one = at(&img, &s.layout, 20.0, 60.0);
    assert!(![top, WHITE, GREY].contains(&one));
    // Expected: 2.7 and 0.1 (f32 sums).
    let s = render(&req(true), &out, &opts()).unwrap();
    assert!((s.mean.unwrap() - 1.4).abs() < 1e-6);
    let bar = s.layout.colour_bar.clone().unwrap();
    assert!((bar.max - 2.7).abs() < 1e-6);
    let img = png(&out);
    assert_eq!(at(&img, &s.layout, 0.0, 40.0), bar_ends(&img, &s.layout).0);
}

#[test]
fn species_map_shows_one_column_and_rings_train_presences() {
    let f = Fixture::new();
    let scores = f.scores(
        "sp.safetensors",
        &[(1, [0.9, 0.2, 0.0]), (2, [0.1, 0.3, 0.0])],
    );
    let out = f.path("species.png");
    let s = render(
        &MapRequest::Species(SpeciesMap {
            species: 1,
            scores,
            coords: f.root(),
        }),
        &out,
        &MapOptions {
            svg: true,
            ..opts()
        },
    )
    .unwrap();
    // Species 1 is held by train surveys 1 and 3.
    assert_eq!(s.counts["presences"], 2);
    assert!((s.mean.unwrap() - 0.5).abs() < 1e-6);
    let img = png(&out);
    let (top, _) = bar_ends(&img, &s.layout);
    assert_eq!(at(&img, &s.layout, 0.0, 40.0), top);
    assert_ne!(at(&img, &s.layout, 20.0, 60.0), top);
    assert_eq!(s.files, vec![out.clone(), f.path("species.svg")]);
    let svg = std::fs::read_to_string(f.path("species.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<image"),
        "{}",
        &svg[..200]
    );
}

#[test]
fn po_map_counts_records_per_cell_on_a_log_scale() {
    let f = Fixture::new();
    let out = f.path("po.png");
    let req = |species| {
        MapRequest::Po(PoMap {
            data: f.root(),
            species,
        })
    };
    let s = render(&req(None), &out, &opts()).unwrap();
    assert_eq!((s.points, s.counts["cells"], s.counts["base"]), (11, 2, 5));
    let bar = s.layout.colour_bar.clone().unwrap();
    assert!(bar.log && (bar.max - 10.0).abs() < 1e-9);
    let img = png(&out);
    let (top, _) = bar_ends(&img, &s.layout);
    assert_eq!(
        at(&img, &s.layout, 2.0, 42.0),
        top,
        "10 records: the maximum"
    );
    let one = at(&img, &s.layout, 18.0, 58.0);
    assert!(![top, WHITE, GREY].contains(&one), "1 record: {one:?}");
    let s = render(&req(Some(8)), &out, &opts()).unwrap();
    assert_eq!(s.points, 1);
    let img = png(&out);
    assert_eq!(at(&img, &s.layout, 18.0, 58.0), bar_ends(&img, &s.layout).0);
    assert_eq!(at(&img, &s.layout, 2.0, 42.0), WHITE);
}

#[test]
fn split_map_of_a_run_shows_validation_surveys_and_blocks() {
    let f = Fixture::new();
    let run = f.path("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(
        run.join("run.json"),
        r#"{"val_survey_ids": [3], "species": [1]}"#,
    )
    .unwrap();
    std::fs::write(
        run.join("config.toml"),
        format!(
            "[data]\npath = {:?}\n[validation]\nsplit = \"spatial\"\nblock_arcmin = 60.0\n",
            f.root()
        ),
    )
    .unwrap();
    let out = f.path("split.png");
    let s = render(&MapRequest::Split(SplitMap { from: run }), &out, &opts()).unwrap();
    assert_eq!(s.counts["train"], 3);
    assert_eq!(s.counts["validation"], 1);
    assert_eq!(s.counts["test"], 1);
    assert_eq!(s.counts["blocks"], 1);
    let img = png(&out);
    let key = |i: usize| {
        let k = &s.layout.legend[i];
        assert_eq!(img.get_pixel(k.at[0] as u32, k.at[1] as u32).0, k.rgb);
        k.rgb
    };
    let (train, val, test, block) = (key(0), key(1), key(2), key(3));
    assert_eq!(at(&img, &s.layout, 0.0, 40.0), train);
    assert_eq!(at(&img, &s.layout, 10.0, 50.0), val);
    assert_eq!(at(&img, &s.layout, 15.0, 45.0), test);
    // The 1-degree block [10, 11] x [50, 51] of the validation survey, away from its cell
    // (the block is not aligned to cells: read the point's own pixel).
    assert_eq!(pixel(&img, &s.layout, 10.8, 50.8), block);
    assert_eq!(at(&img, &s.layout, 11.5, 50.5), WHITE);
    // A dataset root: train and test only.
    let s = render(
        &MapRequest::Split(SplitMap { from: f.root() }),
        &out,
        &opts(),
    )
    .unwrap();
    assert_eq!((s.counts["train"], s.counts["validation"]), (4, 0));
}

/// Files in the fixture folder that are not inputs (a failed render must leave none).
fn leftovers(f: &Fixture) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(f.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".png") || n.contains(".svg"))
        .collect();
    v.sort();
    v
}

#[test]
fn bad_input_is_refused_with_the_file_and_the_culprit_and_no_image() {
    let f = Fixture::new();
    let scores = f.scores(
        "s.safetensors",
        &[(1, [0.9, 0.8, 0.1]), (2, [0.1, 0.2, 0.3])],
    );
    let out = f.path("bad.png");
    let err = |req: MapRequest| {
        render(
            &req,
            &out,
            &MapOptions {
                svg: true,
                ..opts()
            },
        )
        .unwrap_err()
        .to_string()
    };
    let species = |species, scores: &PathBuf| {
        MapRequest::Species(SpeciesMap {
            species,
            scores: scores.clone(),
            coords: f.root(),
        })
    };
    let e = err(species(42, &scores));
    assert!(
        e.contains("s.safetensors") && e.contains("species 42") && e.contains("ids 1 to 3"),
        "{e}"
    );
    // Survey 2 is not in the solution.
    let sol = f.path("solution.csv");
    std::fs::write(&sol, "surveyId,predictions\n1,1 2\n").unwrap();
    let e = err(MapRequest::F1(F1Map {
        scores: scores.clone(),
        labels: Labels::Solution(sol.clone()),
        policy: None,
        coords: f.root(),
    }));
    assert!(
        e.contains("survey 2 has no labels in") && e.contains("solution.csv"),
        "{e}"
    );
    // Survey 999 has no coordinates.
    let stray = f.scores(
        "stray.safetensors",
        &[(1, [0.9, 0.8, 0.1]), (999, [0.1, 0.2, 0.3])],
    );
    let e = err(species(1, &stray));
    assert!(
        e.contains("stray.safetensors") && e.contains("survey 999 has no coordinates"),
        "{e}"
    );
    // A test survey has no train labels.
    let on_test = f.scores("t.safetensors", &[(101, [0.9, 0.8, 0.1])]);
    let e = err(MapRequest::F1(F1Map {
        scores: on_test,
        labels: Labels::Train,
        policy: None,
        coords: f.root(),
    }));
    assert!(e.contains("survey 101 is not a train survey"), "{e}");
    // Corrupt and missing score files, a folder that holds no surveys.
    let corrupt = f.path("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\0\0\0\0\0\0\0{\"a\":1}").unwrap();
    let e = err(species(1, &corrupt));
    assert!(e.contains("corrupt.safetensors"), "{e}");
    let e = err(species(1, &f.path("absent.safetensors")));
    assert!(e.contains("absent.safetensors"), "{e}");
    let e = err(MapRequest::Species(SpeciesMap {
        species: 1,
        scores: scores.clone(),
        coords: f.path("nowhere"),
    }));
    assert!(e.contains("nowhere") && e.contains("packed cache"), "{e}");
    let e = err(MapRequest::Po(PoMap {
        data: f.root(),
        species: Some(9),
    }));
    assert!(e.contains("no presence-only record of species 9"), "{e}");
    // A run whose validation survey the data lacks.
    let run = f.path("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("run.json"), r#"{"val_survey_ids": [77]}"#).unwrap();
    std::fs::write(
        run.join("config.toml"),
        format!("[data]\npath = {:?}\n", f.root()),
    )
    .unwrap();
    let e = err(MapRequest::Split(SplitMap { from: run }));
    assert!(e.contains("validation survey 77"), "{e}");
    // A Kaggle submission ranks species without probabilities.
    let kaggle = f.path("submission.csv");
    std::fs::write(&kaggle, "surveyId,predictions\n1,1 2\n2,3\n").unwrap();
    let e = err(species(1, &kaggle));
    assert!(
        e.contains("submission.csv") && e.contains("needs probabilities"),
        "{e}"
    );
    let e = err(MapRequest::Richness(RichnessMap {
        scores: kaggle.clone(),
        policy: None,
        expected: true,
        coords: f.root(),
    }));
    assert!(e.contains("needs probabilities"), "{e}");
    let e = render(
        &MapRequest::Po(PoMap {
            data: f.root(),
            species: None,
        }),
        &f.path("map.svg"),
        &opts(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("map.svg") && e.contains("expected a .png path"),
        "{e}"
    );
    assert_eq!(leftovers(&f), Vec::<String>::new());
}
