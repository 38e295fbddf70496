//! Inputs that used to be packed without a word (issue 10): a truncated Sentinel JPEG, a
//! survey missing from an environmental CSV, a survey with two conflicting rows (in an env CSV
//! or the metadata), rows of unknown surveys. Each is refused naming the file and the survey,
//! skipped and listed with `skip_bad`, or (missing rows, exact repeats, unknown rows) accepted
//! and reported, refused under `strict`. Expected ids and lines are read from the edited CSV
//! text by hand, not through geolife's readers.

mod cache_common;

use std::path::{Path, PathBuf};

use cache_common::{opts, pack, synth_into};
use geolife_data::cache::{CacheError, PackedSplit};
use geolife_data::patches::{JpegStructure, jpeg_structure, read_nir, read_rgb};
use geolife_data::{DataError, Dataset, DatasetOptions, Split};

const ELEVATION: &str =
    "EnvironmentalRasters/EnvironmentalRasters/Elevation/GLC24-PA-train-elevation.csv";
const LANDCOVER: &str =
    "EnvironmentalRasters/EnvironmentalRasters/LandCover/GLC24-PA-train-landcover.csv";

fn mini() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/glc24-real/mini")
}

/// Every real patch of the mini slice: (path, survey id, is NIR).
fn real_patches() -> Vec<(PathBuf, u64, bool)> {
    let mut v: Vec<(PathBuf, u64, bool)> = walkdir::WalkDir::new(mini())
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.path().extension().is_some_and(|x| x == "jpeg"))
        .map(|e| {
            let p = e.into_path();
            let id = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            let nir = p.to_string_lossy().contains("_NIR");
            (p, id, nir)
        })
        .collect();
    v.sort();
    v
}

fn read(p: &Path, id: u64, nir: bool) -> Result<Vec<u8>, DataError> {
    if nir {
        read_nir(p, Some(id))
    } else {
        read_rgb(p, Some(id))
    }
}

#[test]
fn real_patches_decode_as_before_and_their_truncations_are_typed_errors() {
    let patches = real_patches();
    assert_eq!(patches.len(), 36, "18 RGB + 18 NIR real patches");
    let dir = tempfile::tempdir().unwrap();
    for (p, id, nir) in &patches {
        let bytes = std::fs::read(p).unwrap();
        assert_eq!(jpeg_structure(&bytes), JpegStructure::Complete, "{p:?}");
        // The strict decoder gives the pixels of the `image` crate on intact files.
        let ours = read(p, *id, *nir).unwrap();
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).unwrap();
        let theirs = if *nir {
            img.to_luma8().into_raw()
        } else {
            img.to_rgb8().into_raw()
        };
        assert!(ours == theirs, "{p:?}: same pixels as the image crate");

        // Cut to a third (PIL: "image file is truncated"), or only the end-of-image marker.
        let q = dir.path().join(format!("{id}-{nir}.jpeg"));
        for cut in [bytes.len() / 3, bytes.len() - 2] {
            std::fs::write(&q, &bytes[..cut]).unwrap();
            match read(&q, *id, *nir) {
                Err(e @ DataError::Truncated { .. }) => {
                    let msg = e.to_string();
                    assert_eq!(e.kind(), "truncated");
                    for part in [
                        q.display().to_string(),
                        format!("(survey {id})"),
                        format!("ends after {cut} bytes"),
                        "end-of-image marker".to_string(),
                    ] {
                        assert!(msg.contains(&part), "`{part}` not in: {msg}");
                    }
                }
                other => panic!("{p:?} cut to {cut}: expected Truncated, got {other:?}"),
            }
        }
        // Bytes after the end-of-image marker are harmless (decoders stop at it).
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0u8; 7]);
        std::fs::write(&q, &padded).unwrap();
        assert!(read(&q, *id, *nir).unwrap() == ours, "{p:?} padded");
    }
}

#[test]
fn corrupt_jpeg_structure_is_an_image_error() {
    let (p, id, _) = real_patches()
        .into_iter()
        .find(|x| !x.2)
        .expect("an RGB patch");
    let bytes = std::fs::read(&p).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("bad.jpeg");
    // A second start-of-image marker where the first segment should begin.
    let mut bad = bytes[..2].to_vec();
    bad.extend_from_slice(&bytes);
    std::fs::write(&q, &bad).unwrap();
    match read_rgb(&q, Some(id)) {
        Err(e @ DataError::Image { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&q.display().to_string()) && msg.contains(&format!("survey {id}")),
                "{msg}"
            );
        }
        other => panic!("expected Image, got {other:?}"),
    }
}

/// (survey id, 1-based line) of each data row of a CSV, by plain line splitting.
fn csv_ids(path: &Path) -> Vec<(u64, usize)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let c = header.iter().position(|h| *h == "surveyId").unwrap();
    lines
        .enumerate()
        .map(|(k, l)| (l.split(',').nth(c).unwrap().parse().unwrap(), k + 2))
        .collect()
}

/// Applies `edit` to the data lines of a CSV (header kept).
fn edit_csv(path: &Path, edit: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut body = lines.split_off(1);
    edit(&mut body);
    lines.extend(body);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A line with its value column (the one after `surveyId,`) replaced.
fn with_value(line: &str, value: &str) -> String {
    let (id, _) = line.split_once(',').unwrap();
    format!("{id},{value}")
}

#[test]
fn env_rows_missing_repeated_conflicting_and_unknown_are_reported_or_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = synth_into(tmp.path());
    let elevation = root.join(ELEVATION);
    let landcover = root.join(LANDCOVER);
    let ids = csv_ids(&landcover);
    assert_eq!(ids.len(), 40);
    // Both files list surveyId first: `id,value`.
    assert!(
        std::fs::read_to_string(&landcover)
            .unwrap()
            .starts_with("surveyId,LandCover\n")
    );
    assert!(
        std::fs::read_to_string(&elevation)
            .unwrap()
            .starts_with("surveyId,Elevation\n")
    );

    let missing = ids[5].0;
    let conflict = ids[9].0;
    let repeated = ids[20].0;
    edit_csv(&elevation, |body| {
        body.retain(|l| !l.starts_with(&format!("{missing},")));
    });
    edit_csv(&landcover, |body| {
        let c = body[9].clone();
        let r = body[20].clone();
        let old: f64 = c.split(',').nth(1).unwrap().parse().unwrap();
        body.push(with_value(&c, &format!("{}", old + 3.0)));
        body.push(r);
        body.push("99999999,4.0".into());
    });
    // Lines by hand: 40 data rows at lines 2..=41, then the three appended rows.
    let (conflict_line, first_line) = (42u64, 11u64);
    assert_eq!(csv_ids(&landcover)[40], (conflict, 42));

    let ds = Dataset::open(&root, DatasetOptions::default()).unwrap();
    // The checked table refuses the conflict, naming file, survey and both lines.
    match ds.tabular(Split::Train) {
        Err(e @ DataError::ConflictingRows { .. }) => {
            let msg = e.to_string();
            for part in [
                landcover.display().to_string(),
                format!("(survey {conflict})"),
                format!("lines {first_line} and {conflict_line}"),
                "`LandCover`".to_string(),
            ] {
                assert!(msg.contains(&part), "`{part}` not in: {msg}");
            }
            assert_eq!(e.kind(), "conflicting-rows");
        }
        other => panic!("expected ConflictingRows, got {other:?}"),
    }
    // The report lists everything, per file.
    let t = ds.tabular_report(Split::Train).unwrap();
    let elev = t.coverage.iter().find(|c| c.group == "elevation").unwrap();
    assert_eq!(elev.path, elevation);
    assert_eq!(elev.missing_surveys, vec![missing]);
    assert_eq!(elev.rows, 39);
    let lc = t.coverage.iter().find(|c| c.group == "landcover").unwrap();
    assert_eq!(lc.rows, 43);
    assert_eq!(lc.exact_duplicate_rows, 1);
    assert_eq!(lc.unknown_survey_rows, 1);
    assert_eq!(lc.unknown_survey_examples, vec![(99999999, 44)]);
    assert_eq!(lc.conflicts.len(), 1);
    assert_eq!(
        (
            lc.conflicts[0].survey_id,
            lc.conflicts[0].first_line,
            lc.conflicts[0].line
        ),
        (conflict, first_line, conflict_line)
    );
    for c in &t.coverage {
        if c.group != "elevation" && c.group != "landcover" {
            assert!(c.is_clean(), "{c:?}");
        }
    }
    let i = ds.index_of(Split::Train, missing).unwrap();
    let e_col = t
        .feature_names
        .iter()
        .position(|n| n == "Elevation")
        .unwrap();
    assert!(t.row(i)[e_col].is_nan());

    // prepare: the conflict fails the run, naming file and survey; nothing is left behind.
    let out = tmp.path().join("cache");
    let err = pack(&root, &out, opts(&[Split::Train])).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, CacheError::Data(DataError::ConflictingRows { .. })),
        "{err:?}"
    );
    assert!(msg.contains(&landcover.display().to_string()) && msg.contains(&conflict.to_string()));
    assert!(!out.join("train").exists());

    // skip_bad: the conflicting survey is skipped and listed; the missing row is kept (NaN)
    // and reported in the manifest, with the repeat and the unknown row.
    let mut o = opts(&[Split::Train]);
    o.skip_bad = true;
    let r = pack(&root, &out, o.clone()).unwrap();
    assert_eq!((r[0].n, r[0].skipped), (39, 1));
    let train = PackedSplit::open(&out, Split::Train).unwrap();
    let m = train.manifest();
    assert_eq!(m.skipped.len(), 1);
    assert_eq!(m.skipped[0].survey_id, conflict);
    assert_eq!(m.skipped[0].kind, "conflicting-rows");
    assert!(
        m.skipped[0]
            .reason
            .contains(&landcover.display().to_string())
    );
    assert_eq!(train.index_of(conflict), None);
    assert!(
        train.index_of(repeated).is_some(),
        "an exact repeat is harmless"
    );
    let row = train.index_of(missing).expect("missing-row survey kept");
    assert!(train.tabular(row)[e_col].is_nan());
    let elev = m
        .env_coverage
        .iter()
        .find(|c| c.group == "elevation")
        .unwrap();
    assert_eq!(elev.missing_surveys, vec![missing]);
    let lc = m
        .env_coverage
        .iter()
        .find(|c| c.group == "landcover")
        .unwrap();
    assert_eq!((lc.exact_duplicate_rows, lc.unknown_survey_rows), (1, 1));
    assert_eq!(r[0].env_coverage, m.env_coverage);

    // strict: rows of unknown surveys fail the split (skip_bad or not), naming file and line.
    let mut s = o.clone();
    s.strict = true;
    let err = pack(&root, &out, s.clone()).unwrap_err().to_string();
    assert!(
        err.contains(&format!("{}:44", landcover.display()))
            && err.contains("survey 99999999")
            && err.contains("--strict"),
        "{err}"
    );
    edit_csv(&landcover, |body| {
        body.pop();
    });
    // strict without skip_bad: the first bad survey by id order fails; with skip_bad the
    // survey without a row is skipped too.
    let mut no_skip = s.clone();
    no_skip.skip_bad = false;
    let first_bad = missing.min(conflict);
    let err = pack(&root, &out, no_skip).unwrap_err();
    assert!(
        err.to_string().contains(&format!("survey {first_bad}")),
        "{err}"
    );
    let r = pack(&root, &out, s).unwrap();
    assert_eq!((r[0].n, r[0].skipped), (38, 2));
    let train = PackedSplit::open(&out, Split::Train).unwrap();
    let kinds: Vec<(u64, String)> = train
        .manifest()
        .skipped
        .iter()
        .map(|k| (k.survey_id, k.kind.clone()))
        .collect();
    let mut want = vec![
        (missing, "missing-row".to_string()),
        (conflict, "conflicting-rows".to_string()),
    ];
    want.sort();
    assert_eq!(kinds, want);
    let reason = &train
        .manifest()
        .skipped
        .iter()
        .find(|k| k.survey_id == missing)
        .unwrap()
        .reason;
    assert!(
        reason.contains(&elevation.display().to_string()) && reason.contains("no row"),
        "{reason}"
    );
    assert!(train.manifest().options.strict);
}

#[test]
fn metadata_rows_of_one_survey_that_disagree_are_refused_or_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = synth_into(tmp.path());
    let meta = root.join("GLC24_PA_metadata_train.csv");
    // The survey of the first data row, and the line of its second row (by hand).
    let text = std::fs::read_to_string(&meta).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let (c_id, c_year) = (
        header.iter().position(|h| *h == "surveyId").unwrap(),
        header.iter().position(|h| *h == "year").unwrap(),
    );
    let rows: Vec<Vec<String>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    let id = rows
        .iter()
        .map(|r| r[c_id].clone())
        .find(|s| rows.iter().filter(|r| r[c_id] == *s).count() >= 2)
        .expect("a survey with two rows");
    let second = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r[c_id] == id)
        .nth(1)
        .unwrap()
        .0;
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let mut cells = rows[second].clone();
    let year: i32 = cells[c_year].parse().unwrap();
    cells[c_year] = (year + 1).to_string();
    lines[second + 1] = cells.join(",");
    std::fs::write(&meta, lines.join("\n") + "\n").unwrap();
    let id: u64 = id.parse().unwrap();

    let ds = Dataset::open(&root, DatasetOptions::default()).unwrap();
    let m = ds.metadata(Split::Train).unwrap();
    assert_eq!(m.conflicts.len(), 1);
    let c = &m.conflicts[0];
    assert_eq!(
        (c.survey_id, c.line, c.column.as_str()),
        (id, second as u64 + 2, "year")
    );
    assert_eq!(
        (c.first.clone(), c.other.clone()),
        (year.to_string(), (year + 1).to_string())
    );

    let out = tmp.path().join("cache");
    let err = pack(&root, &out, opts(&[Split::Train]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&meta.display().to_string())
            && err.contains(&format!("survey {id}"))
            && err.contains("`year`"),
        "{err}"
    );
    let mut o = opts(&[Split::Train]);
    o.skip_bad = true;
    let r = pack(&root, &out, o).unwrap();
    assert_eq!((r[0].n, r[0].skipped), (39, 1));
    assert_eq!(r[0].skipped_surveys[0].survey_id, id);
    assert_eq!(r[0].skipped_surveys[0].kind, "conflicting-rows");
}
