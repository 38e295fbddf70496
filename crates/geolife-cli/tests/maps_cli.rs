//! `geolife map` on a tiny synthetic dataset packed by `geolife prepare`: every kind renders
//! a PNG of the size its layout reports, the pixel at a survey has the colour its value calls
//! for (read off the drawn colour bar or legend, the position computed from the documented
//! projection), counts equal those read by hand from the raw CSVs, and bad input exits 1 with
//! a message naming the file and the culprit, leaving no image behind.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use geolife_metrics::{ScoreFile, Scores};
use serde_json::Value;

/// A survey id no synthetic dataset holds.
const STRANGER: u64 = 987_654_321;

struct Site {
    lon: f64,
    lat: f64,
    species: BTreeSet<u32>,
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    cache: PathBuf,
    /// Train and test surveys read by hand from the metadata CSVs.
    train: BTreeMap<u64, Site>,
    test: BTreeMap<u64, Site>,
}

/// A metadata CSV read by hand: survey -> (lon, lat, species).
fn read_sites(path: &Path) -> BTreeMap<u64, Site> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (c_id, c_lon, c_lat) = (
        col("surveyId").unwrap(),
        col("lon").unwrap(),
        col("lat").unwrap(),
    );
    let c_sp = col("speciesId");
    let mut out: BTreeMap<u64, Site> = BTreeMap::new();
    for l in lines.filter(|l| !l.is_empty()) {
        let f: Vec<&str> = l.split(',').collect();
        let site = out.entry(f[c_id].parse().unwrap()).or_insert(Site {
            lon: f[c_lon].parse().unwrap(),
            lat: f[c_lat].parse().unwrap(),
            species: BTreeSet::new(),
        });
        if let Some(c) = c_sp {
            site.species
                .insert(f[c].trim_end_matches(".0").parse().unwrap());
        }
    }
    out
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let data = root.join("data");
    let cache = root.join("cache");
    run_expect(
        &[
            "synth",
            "--out",
            s(&data),
            "--surveys",
            "60",
            "--test-surveys",
            "6",
            "--species",
            "20",
            "--mean-species",
            "5",
            "--po-records",
            "300",
            "--seed",
            "3",
        ],
        0,
    );
    run_expect(&["prepare", s(&data), "--out", s(&cache)], 0);
    let train = read_sites(&data.join("GLC24_PA_metadata_train.csv"));
    let test = read_sites(&data.join("GLC24_PA_metadata_test.csv"));
    Fixture {
        _dir: dir,
        root,
        data,
        cache,
        train,
        test,
    }
}

/// `geolife map ... --json`, exit 0, the summary.
fn map(args: &[&str]) -> Value {
    let mut all = vec!["map"];
    all.extend_from_slice(args);
    all.push("--json");
    let (o, _) = run_expect(&all, 0);
    serde_json::from_str(&o).unwrap_or_else(|e| panic!("{e}: {o}"))
}

/// `geolife map ...` that must fail with exit 1; its stderr.
fn map_fails(args: &[&str]) -> String {
    let mut all = vec!["map"];
    all.extend_from_slice(args);
    let (_, e) = run_expect(&all, 1);
    e
}

fn png(path: &Path) -> image::RgbImage {
    image::open(path).unwrap().to_rgb8()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// The colour at the centre of the raster cell holding (lon, lat): x = x0 + floor((lon -
/// lon_min) / (lon_max - lon_min) * width), cells of `cell_px` from the plot's corner.
fn at(img: &image::RgbImage, summary: &Value, lon: f64, lat: f64) -> [u8; 3] {
    let l = &summary["layout"];
    let p = ints(&l["plot"]);
    let e: Vec<f64> = l["extent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let c = l["cell_px"].as_i64().unwrap();
    let px = ((lon - e[0]) / (e[1] - e[0]) * (p[2] - p[0]) as f64).floor() as i64;
    let py = ((e[3] - lat) / (e[3] - e[2]) * (p[3] - p[1]) as f64).floor() as i64;
    let x = p[0] + px / c * c + c / 2;
    let y = p[1] + py / c * c + c / 2;
    img.get_pixel(x as u32, y as u32).0
}

/// Colours of the colour bar's top (its maximum) and bottom (its minimum) rows.
fn bar_ends(img: &image::RgbImage, summary: &Value) -> ([u8; 3], [u8; 3]) {
    let r = ints(&summary["layout"]["colour_bar"]["rect"]);
    let x = ((r[0] + r[2]) / 2) as u32;
    (
        img.get_pixel(x, r[1] as u32).0,
        img.get_pixel(x, (r[3] - 1) as u32).0,
    )
}

/// The PNG has the size the summary reports.
fn check_size(img: &image::RgbImage, summary: &Value) {
    let size = ints(&summary["layout"]["image"]);
    assert_eq!(vec![img.width() as i64, img.height() as i64], size);
    assert!(size[0] > 400 && size[1] > 300, "{size:?}");
}

/// Dense scores over `species` of `rows` (survey, one value per species).
fn write_dense(path: &Path, split: &str, species: &[u32], rows: &[(u64, Vec<f32>)]) {
    ScoreFile {
        model: "fixture".into(),
        split: split.into(),
        survey_ids: rows.iter().map(|r| r.0).collect(),
        species: species.to_vec(),
        scores: Scores::Dense {
            data: rows.iter().flat_map(|r| r.1.clone()).collect(),
        },
    }
    .write(path)
    .unwrap();
}

/// The westernmost and easternmost train surveys and the longitude half-way between them.
fn west_east(f: &Fixture) -> (u64, u64, f64) {
    let by_lon = |a: &&u64, b: &&u64| f.train[a].lon.total_cmp(&f.train[b].lon);
    let west = *f.train.keys().min_by(by_lon).unwrap();
    let east = *f.train.keys().max_by(by_lon).unwrap();
    (west, east, (f.train[&west].lon + f.train[&east].lon) / 2.0)
}

#[test]
fn every_kind_draws_and_the_colours_follow_the_data() {
    let f = fixture();
    let out = |name: &str| f.root.join("maps").join(name);
    let (west, east, mid) = west_east(&f);

    // Split of a run: validation = the train surveys north of the median latitude.
    let mut lats: Vec<f64> = f.train.values().map(|s| s.lat).collect();
    lats.sort_by(f64::total_cmp);
    let median = lats[lats.len() / 2];
    let val: Vec<u64> = f
        .train
        .iter()
        .filter(|(_, s)| s.lat > median)
        .map(|(&id, _)| id)
        .collect();
    let run = f.root.join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(
        run.join("run.json"),
        serde_json::json!({ "val_survey_ids": val }).to_string(),
    )
    .unwrap();
    std::fs::write(
        run.join("config.toml"),
        format!(
            "[data]\npath = {:?}\n[validation]\nsplit = \"spatial\"\nblock_arcmin = 60.0\n",
            f.cache
        ),
    )
    .unwrap();
    let png_path = out("split.png");
    let sm = map(&["--split-map", s(&run), "-o", s(&png_path), "--svg"]);
    assert_eq!(sm["counts"]["validation"], val.len());
    assert_eq!(sm["counts"]["train"], f.train.len() - val.len());
    assert_eq!(sm["counts"]["test"], f.test.len());
    assert_eq!(sm["points"], f.train.len() + f.test.len());
    assert!(out("split.svg").is_file());
    let img = png(&png_path);
    check_size(&img, &sm);
    let legend: Vec<[u8; 3]> = sm["layout"]["legend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let at = ints(&k["at"]);
            let rgb = img.get_pixel(at[0] as u32, at[1] as u32).0;
            let want: Vec<u8> = ints(&k["rgb"]).iter().map(|&c| c as u8).collect();
            assert_eq!(rgb.to_vec(), want, "swatch {}", k["label"]);
            rgb
        })
        .collect();
    let (val_c, test_c) = (legend[1], legend[2]);
    // Test surveys are drawn last: always their colour; validation surveys are validation
    // unless a test survey shares their cell.
    for t in f.test.values() {
        assert_eq!(at(&img, &sm, t.lon, t.lat), test_c);
    }
    let val_cells: Vec<[u8; 3]> = val
        .iter()
        .map(|id| at(&img, &sm, f.train[id].lon, f.train[id].lat))
        .collect();
    assert!(val_cells.iter().all(|c| *c == val_c || *c == test_c));
    assert!(val_cells.contains(&val_c));

    // F1 of train surveys, labels from the cache: sparse rows listing exactly the true species
    // west of `mid` (F1 1), one absent species east of it (F1 0).
    let all: BTreeSet<u32> = f.train.values().flat_map(|s| s.species.clone()).collect();
    let species: Vec<u32> = all.into_iter().collect();
    let absent = species.iter().max().unwrap() + 1;
    let mut vocab = species.clone();
    vocab.push(absent);
    let col = |sp: u32| vocab.iter().position(|&v| v == sp).unwrap() as u32;
    let ids: Vec<u64> = f.train.keys().copied().collect();
    let good = |id: &u64| f.train[id].lon < mid;
    let rows: Vec<Vec<(u32, f32)>> = ids
        .iter()
        .map(|id| {
            if good(id) {
                f.train[id]
                    .species
                    .iter()
                    .map(|&sp| (col(sp), 0.9))
                    .collect()
            } else {
                vec![(col(absent), 0.9)]
            }
        })
        .collect();
    let scores = f.root.join("train_scores.safetensors");
    ScoreFile {
        model: "fixture".into(),
        split: "val".into(),
        survey_ids: ids.clone(),
        species: vocab.clone(),
        scores: Scores::Sparse { rows },
    }
    .write(&scores)
    .unwrap();
    let png_path = out("f1.png");
    let fm = map(&[
        "--f1",
        s(&scores),
        "--labels-from",
        s(&f.cache),
        "-o",
        s(&png_path),
    ]);
    let n_good = ids.iter().filter(|id| good(id)).count();
    assert_eq!(fm["points"], ids.len());
    let mean = fm["mean"].as_f64().unwrap();
    assert!(
        (mean - n_good as f64 / ids.len() as f64).abs() < 1e-12,
        "{mean}"
    );
    let img = png(&png_path);
    check_size(&img, &fm);
    let (top, bottom) = bar_ends(&img, &fm);
    assert_ne!(top, bottom);
    let (w, e) = (&f.train[&west], &f.train[&east]);
    assert_eq!(at(&img, &fm, w.lon, w.lat), top, "F1 1 in the west");
    assert_eq!(at(&img, &fm, e.lon, e.lat), bottom, "F1 0 in the east");

    // One species' dense scores: 0.9 west of `mid`, 0.1 east; train presences ringed.
    let sp = *f.train[&west].species.iter().next().unwrap();
    let dense = f.root.join("dense.safetensors");
    let rows: Vec<(u64, Vec<f32>)> = ids
        .iter()
        .map(|id| (*id, vec![if good(id) { 0.9 } else { 0.1 }, 0.2]))
        .collect();
    write_dense(&dense, "val", &[sp, absent], &rows);
    let png_path = out("species.png");
    let spm = map(&[
        "--scores",
        s(&dense),
        "--species",
        &sp.to_string(),
        "--labels-from",
        s(&f.cache),
        "-o",
        s(&png_path),
    ]);
    let holding = f.train.values().filter(|s| s.species.contains(&sp)).count();
    assert_eq!(spm["counts"]["presences"], holding);
    let img = png(&png_path);
    check_size(&img, &spm);
    let (top, _) = bar_ends(&img, &spm);
    assert_eq!(at(&img, &spm, w.lon, w.lat), top);
    assert_ne!(at(&img, &spm, e.lon, e.lat), top);

    // Expected richness (sums 1.1 and 0.3), coordinates from the dataset root.
    let png_path = out("richness.png");
    let rm = map(&[
        "--richness",
        s(&dense),
        "--expected",
        "--coords",
        s(&f.data),
        "-o",
        s(&png_path),
    ]);
    let want = (n_good as f64 * 1.1 + (ids.len() - n_good) as f64 * 0.3) / ids.len() as f64;
    assert!((rm["mean"].as_f64().unwrap() - want).abs() < 1e-6);
    let img = png(&png_path);
    assert_eq!(at(&img, &rm, w.lon, w.lat), bar_ends(&img, &rm).0);

    // A prior's test scores as a species map.
    let prior = f.root.join("prior_test.safetensors");
    run_expect(
        &[
            "prior",
            "--data",
            s(&f.data),
            "--split",
            "test",
            "--out",
            s(&prior),
        ],
        0,
    );
    let prior_sf = ScoreFile::read(&prior).unwrap();
    let pm = map(&[
        "--scores",
        s(&prior),
        "--species",
        &prior_sf.species[0].to_string(),
        "--coords",
        s(&f.cache),
        "-o",
        s(&out("prior.png")),
    ]);
    assert_eq!(pm["points"], f.test.len());

    // --labels-from RUN reads the run's val_labels.csv (written here by hand): rows listing
    // exactly the true species of each validation survey score F1 1.
    let mut csv = String::from("surveyId,predictions\n");
    for id in &val {
        let list: Vec<String> = f.train[id].species.iter().map(u32::to_string).collect();
        csv.push_str(&format!("{id},{}\n", list.join(" ")));
    }
    std::fs::write(run.join("val_labels.csv"), csv).unwrap();
    let val_scores = f.root.join("val_scores.safetensors");
    ScoreFile {
        model: "fixture".into(),
        split: "val".into(),
        survey_ids: val.clone(),
        species: vocab.clone(),
        scores: Scores::Sparse {
            rows: val
                .iter()
                .map(|id| {
                    f.train[id]
                        .species
                        .iter()
                        .map(|&sp| (col(sp), 0.5))
                        .collect()
                })
                .collect(),
        },
    }
    .write(&val_scores)
    .unwrap();
    let vm = map(&[
        "--f1",
        s(&val_scores),
        "--labels-from",
        s(&run),
        "-o",
        s(&out("val_f1.png")),
    ]);
    assert_eq!(
        (vm["points"].as_u64(), vm["mean"].as_f64()),
        (Some(val.len() as u64), Some(1.0))
    );
    // A cache's split: train and test only.
    let cm = map(&["--split-map", s(&f.cache), "-o", s(&out("cache_split.png"))]);
    assert_eq!(cm["counts"]["train"], f.train.len());
    assert_eq!(cm["counts"]["validation"], 0);
    assert_eq!(cm["counts"]["test"], f.test.len());

    // Presence-only records, all and of one species, counted by hand from the CSV.
    let po_csv = std::fs::read_to_string(f.data.join("GLC24_P0_metadata_train.csv")).unwrap();
    let mut lines = po_csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let c_sp = header.iter().position(|h| *h == "speciesId").unwrap();
    let po_species: Vec<String> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split(',')
                .nth(c_sp)
                .unwrap()
                .trim_end_matches(".0")
                .to_string()
        })
        .collect();
    let pom = map(&["--po", s(&f.data), "-o", s(&out("po.png"))]);
    assert_eq!(pom["points"], po_species.len());
    check_size(&png(&out("po.png")), &pom);
    let one = &po_species[0];
    let pom = map(&[
        "--po",
        s(&f.data),
        "--species",
        one,
        "-o",
        s(&out("po1.png")),
    ]);
    assert_eq!(
        pom["points"],
        po_species.iter().filter(|s| *s == one).count()
    );
}

#[test]
fn bad_input_exits_1_naming_the_file_and_the_culprit_without_an_image() {
    let f = fixture();
    let ids: Vec<u64> = f.train.keys().take(3).copied().collect();
    let scores = f.root.join("s.safetensors");
    let rows: Vec<(u64, Vec<f32>)> = ids.iter().map(|&id| (id, vec![0.5, 0.2])).collect();
    let sp: Vec<u32> = f.train[&ids[0]].species.iter().take(1).copied().collect();
    write_dense(&scores, "val", &[sp[0], 999_999], &rows);
    let out = f.root.join("out").join("bad.png");
    let o = s(&out);

    let e = map_fails(&[
        "--scores",
        s(&scores),
        "--species",
        "424242",
        "--coords",
        s(&f.cache),
        "-o",
        o,
    ]);
    assert!(
        e.contains("s.safetensors") && e.contains("species 424242 is not in"),
        "{e}"
    );
    // A solution that lacks the third scored survey.
    let sol = f.root.join("solution.csv");
    std::fs::write(
        &sol,
        format!("surveyId,predictions\n{},1\n{},2\n", ids[0], ids[1]),
    )
    .unwrap();
    let e = map_fails(&[
        "--f1",
        s(&scores),
        "--solution",
        s(&sol),
        "--coords",
        s(&f.cache),
        "-o",
        o,
    ]);
    assert!(
        e.contains(&format!("survey {} has no labels in", ids[2])) && e.contains("solution.csv"),
        "{e}"
    );
    // A survey without coordinates.
    let stray = f.root.join("stray.safetensors");
    write_dense(
        &stray,
        "val",
        &[sp[0]],
        &[(ids[0], vec![0.5]), (STRANGER, vec![0.5])],
    );
    let e = map_fails(&["--richness", s(&stray), "--coords", s(&f.cache), "-o", o]);
    assert!(
        e.contains("stray.safetensors")
            && e.contains(&format!("survey {STRANGER} has no coordinates")),
        "{e}"
    );
    // Test surveys have no labels in the cache.
    let test_ids: Vec<u64> = f.test.keys().copied().collect();
    let on_test = f.root.join("test.safetensors");
    write_dense(&on_test, "test", &[sp[0]], &[(test_ids[0], vec![0.5])]);
    let e = map_fails(&["--f1", s(&on_test), "--labels-from", s(&f.cache), "-o", o]);
    assert!(
        e.contains(&format!("survey {} is not a train survey", test_ids[0])),
        "{e}"
    );
    // Corrupt and missing score files; a folder that is no coordinate source.
    let corrupt = f.root.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\0\0\0\0\0\0\0{\"a\":1}").unwrap();
    let e = map_fails(&["--richness", s(&corrupt), "--coords", s(&f.cache), "-o", o]);
    assert!(e.contains("corrupt.safetensors"), "{e}");
    let missing = f.root.join("missing.safetensors");
    let e = map_fails(&["--richness", s(&missing), "--coords", s(&f.cache), "-o", o]);
    assert!(e.contains("missing.safetensors"), "{e}");
    let e = map_fails(&["--richness", s(&scores), "--coords", s(&f.root), "-o", o]);
    assert!(e.contains("neither a packed cache"), "{e}");
    // No coordinates at all.
    let e = map_fails(&["--richness", s(&scores), "-o", o]);
    assert!(e.contains("--coords"), "{e}");
    let e = map_fails(&["--po", s(&f.data), "--species", "424242", "-o", o]);
    assert!(
        e.contains("no presence-only record of species 424242"),
        "{e}"
    );
    // Nothing was written, not even a temporary file.
    let left: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}
