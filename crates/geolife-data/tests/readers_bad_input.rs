//! The bad-input corpus: each malformed file, built in a temporary folder from the real files
//! or by hand, must give its expected error variant (never a panic, never a silent value).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use geolife_data::cubes::{BIOCLIM_SHAPE, LANDSAT_SHAPE, NanPolicy, read_cube};
use geolife_data::metadata::read_pa_metadata;
use geolife_data::patches::{read_nir, read_rgb};
use geolife_data::{DataError, Split};
use geolife_io::torchfile::{TorchError, load_state_dict, load_tensor};

fn mini() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/glc24-real/mini")
}

fn real_landsat() -> PathBuf {
    mini().join(
        "TimeSeries-Cubes/TimeSeries-Cubes/GLC24-PA-train-landsat_time_series/GLC24-PA-train-landsat-time-series_1322301_cube.pt",
    )
}

fn real_rgb() -> PathBuf {
    mini().join("PA_Train_SatellitePatches_RGB/pa_train_patches_rgb/01/23/1322301.jpeg")
}

/// Entry `name` of the real Landsat archive.
fn real_entry(suffix: &str) -> Vec<u8> {
    let mut z = zip::ZipArchive::new(std::fs::File::open(real_landsat()).unwrap()).unwrap();
    let name = z
        .file_names()
        .find(|n| n.ends_with(suffix))
        .unwrap()
        .to_string();
    let mut buf = Vec::new();
    z.by_name(&name).unwrap().read_to_end(&mut buf).unwrap();
    buf
}

/// A torch-style archive with a `cube/` entry folder.
fn write_pt(path: &Path, pkl: &[u8], storage: &[u8], byteorder: &str) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in [
        ("cube/data.pkl", pkl),
        ("cube/byteorder", byteorder.as_bytes()),
        ("cube/data/0", storage),
    ] {
        w.start_file(name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap();
}

fn read(path: &Path) -> Result<Vec<f32>, DataError> {
    read_cube(path, Some(42), &LANDSAT_SHAPE, NanPolicy::Zero)
}

#[test]
fn truncated_and_non_zip_cubes() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(real_landsat()).unwrap();
    let p = dir.path().join("truncated.pt");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert!(
        matches!(read(&p), Err(DataError::Truncated { .. })),
        "{:?}",
        read(&p)
    );

    let p = dir.path().join("short_storage.pt");
    write_pt(&p, &real_entry("data.pkl"), &[0u8; 100], "little");
    let e = read(&p).unwrap_err();
    assert!(matches!(e, DataError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("survey 42"), "{e}");

    let p = dir.path().join("text.pt");
    std::fs::write(&p, b"this is not a zip archive at all").unwrap();
    assert!(matches!(read(&p), Err(DataError::NotZip { .. })));

    let p = dir.path().join("absent.pt");
    assert!(matches!(read(&p), Err(DataError::Missing { .. })));
}

#[test]
fn forbidden_globals_and_opcodes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = vec![0u8; 504 * 4];
    let cases: [(&str, &[u8], &str); 4] = [
        // os.system("ls") via GLOBAL + REDUCE.
        (
            "os_system",
            b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.",
            "os.system",
        ),
        (
            "eval",
            b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.",
            "builtins.eval",
        ),
        // NEWOBJ is outside the subset.
        (
            "newobj",
            b"\x80\x02ccollections\nOrderedDict\n)\x81.",
            "NEWOBJ",
        ),
        // INST (protocol 0 object creation).
        ("inst", b"(ios\nsystem\n.", "INST"),
    ];
    for (name, pkl, what) in cases {
        let p = dir.path().join(format!("{name}.pt"));
        write_pt(&p, pkl, &storage, "little");
        match read(&p) {
            Err(DataError::ForbiddenPickle { what: w, .. }) => {
                assert!(w.contains(what), "{name}: {w}")
            }
            other => panic!("{name}: expected ForbiddenPickle, got {other:?}"),
        }
        assert!(matches!(
            load_state_dict(&p),
            Err(TorchError::ForbiddenPickle { .. })
        ));
    }
}

#[test]
fn malformed_pickles_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let storage = vec![0u8; 16];
    let mut deep = b"\x80\x02)".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 200)); // TUPLE1 nested 200 deep
    deep.push(b'.');
    let cases: [(&str, Vec<u8>); 5] = [
        ("underflow", b"\x80\x02R.".to_vec()),
        ("no_stop", b"\x80\x02K\x01".to_vec()),
        ("bad_memo", b"\x80\x02h\x07.".to_vec()),
        ("deep", deep),
        ("short_arg", b"\x80\x02X\xff\x00\x00\x00ab".to_vec()),
    ];
    for (name, pkl) in cases {
        let p = dir.path().join(format!("{name}.pt"));
        write_pt(&p, &pkl, &storage, "little");
        let e = load_tensor(&p).unwrap_err();
        assert!(matches!(e, TorchError::Pickle { .. }), "{name}: {e}");
    }
}

#[test]
fn wrong_shape_dtype_and_byteorder() {
    let dir = tempfile::tempdir().unwrap();
    // The real Landsat cube read as if it were a bioclimatic one.
    let e = read_cube(
        &real_landsat(),
        Some(1322301),
        &BIOCLIM_SHAPE,
        NanPolicy::Zero,
    )
    .unwrap_err();
    match e {
        DataError::Shape {
            expected,
            found,
            survey,
            ..
        } => {
            assert_eq!(expected, BIOCLIM_SHAPE.to_vec());
            assert_eq!(found, LANDSAT_SHAPE.to_vec());
            assert_eq!(survey.0, Some(1322301));
        }
        other => panic!("expected Shape, got {other}"),
    }
    // The same pickle declaring float64 storage.
    let pkl = real_entry("data.pkl");
    let text = String::from_utf8_lossy(&pkl).into_owned();
    assert!(text.contains("FloatStorage"));
    let pos = pkl.windows(12).position(|w| w == b"FloatStorage").unwrap();
    let mut pkl64 = pkl[..pos].to_vec();
    pkl64.extend_from_slice(b"DoubleStorage");
    pkl64.extend_from_slice(&pkl[pos + 12..]);
    let p = dir.path().join("f64.pt");
    write_pt(&p, &pkl64, &vec![0u8; 504 * 8], "little");
    match read(&p) {
        Err(DataError::Dtype {
            expected, found, ..
        }) => {
            assert_eq!((expected.as_str(), found.as_str()), ("float32", "float64"));
        }
        other => panic!("expected Dtype, got {other:?}"),
    }
    let p = dir.path().join("big.pt");
    write_pt(&p, &pkl, &real_entry("data/0"), "big");
    assert!(matches!(read(&p), Err(DataError::Dtype { .. })));
    // Control: the same archive with little byteorder reads fine.
    let p = dir.path().join("ok.pt");
    write_pt(&p, &pkl, &real_entry("data/0"), "little");
    assert_eq!(read(&p).unwrap(), read(&real_landsat()).unwrap());
}

#[test]
fn cube_nan_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = real_entry("data/0");
    // Storage element 0 is landsat[0,0,0]; element 1 is [0,1,0] (stride (84, 1, 4)).
    storage[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    storage[4..8].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
    let p = dir.path().join("nan.pt");
    write_pt(&p, &real_entry("data.pkl"), &storage, "little");
    let zero = read_cube(&p, None, &LANDSAT_SHAPE, NanPolicy::Zero).unwrap();
    let keep = read_cube(&p, None, &LANDSAT_SHAPE, NanPolicy::Keep).unwrap();
    assert_eq!(zero[0], 0.0);
    assert!(keep[0].is_nan());
    assert_eq!(zero[21], f32::MIN);
    assert_eq!(keep[21], f32::NEG_INFINITY);
    assert_eq!(zero[1..21], keep[1..21]);
}

#[test]
fn corrupt_wrong_size_and_missing_jpegs() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(real_rgb()).unwrap();
    let p = dir.path().join("corrupt.jpeg");
    let mut bad = bytes[..200].to_vec();
    bad.extend(std::iter::repeat_n(0u8, 50));
    std::fs::write(&p, &bad).unwrap();
    assert!(matches!(
        read_rgb(&p, Some(1)),
        Err(DataError::Image { .. })
    ));

    let p = dir.path().join("garbage.jpeg");
    std::fs::write(&p, b"GIF89a not a jpeg").unwrap();
    assert!(matches!(
        read_rgb(&p, Some(1)),
        Err(DataError::Image { .. })
    ));

    let p = dir.path().join("small.jpeg");
    image::RgbImage::from_pixel(64, 64, image::Rgb([10, 20, 30]))
        .save_with_format(&p, image::ImageFormat::Jpeg)
        .unwrap();
    match read_rgb(&p, Some(7)) {
        Err(DataError::Shape {
            expected, found, ..
        }) => {
            assert_eq!(expected, vec![128, 128, 3]);
            assert_eq!(found, vec![64, 64, 3]);
        }
        other => panic!("expected Shape, got {other:?}"),
    }
    // A 3-channel image where a 1-channel NIR patch is expected.
    assert!(matches!(
        read_nir(&real_rgb(), Some(7)),
        Err(DataError::Shape { .. })
    ));
    let p = dir.path().join("absent.jpeg");
    assert!(matches!(
        read_rgb(&p, Some(7)),
        Err(DataError::Missing { .. })
    ));
}

#[test]
fn metadata_csv_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("no_lat.csv");
    std::fs::write(&p, "lon,year,geoUncertaintyInM,areaInM2,region,country,speciesId,surveyId\n1,2017,,,R,C,5.0,9\n").unwrap();
    match read_pa_metadata(&p, Split::Train) {
        Err(DataError::MissingColumn { column, .. }) => assert_eq!(column, "lat"),
        other => panic!("expected MissingColumn, got {other:?}"),
    }
    let header = "lon,lat,year,geoUncertaintyInM,areaInM2,region,country,speciesId,surveyId\n";
    let p = dir.path().join("nan_lon.csv");
    std::fs::write(
        &p,
        format!("{header}1,2,2017,,,R,C,5.0,9\nNaN,2,2017,,,R,C,5.0,10\n"),
    )
    .unwrap();
    match read_pa_metadata(&p, Split::Train) {
        Err(DataError::NonFinite { survey, .. }) => assert_eq!(survey.0, Some(10)),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    let p = dir.path().join("bad_species.csv");
    std::fs::write(&p, format!("{header}1,2,2017,,,R,C,5.5,11\n")).unwrap();
    match read_pa_metadata(&p, Split::Train) {
        Err(e @ DataError::Csv { .. }) => {
            let s = e.to_string();
            assert!(
                s.contains("survey 11") && s.contains("speciesId") && s.contains(":2"),
                "{s}"
            );
        }
        other => panic!("expected Csv, got {other:?}"),
    }
    // inf / -inf / empty areaInM2 and empty uncertainty are values, not errors; duplicate
    // rows and float-formatted ids collapse into species sets.
    let p = dir.path().join("ok.csv");
    std::fs::write(
        &p,
        format!("{header}1,2,2017,,inf,R,C,5.0,12\n1,2,2017,,inf,R,C,5.0,12\n1,2,2017,,inf,R,C,3.0,12\n3,4,2018,10.5,-inf,R,C,3.0,4\n5,6,2019,,,R,C,8,13\n"),
    )
    .unwrap();
    let m = read_pa_metadata(&p, Split::Train).unwrap();
    assert_eq!(m.rows, 5);
    assert_eq!(m.duplicate_rows, 1);
    let ids: Vec<u64> = m.surveys.iter().map(|s| s.survey_id).collect();
    assert_eq!(ids, vec![4, 12, 13]);
    assert_eq!(
        m.labels.as_ref().unwrap(),
        &vec![vec![3], vec![3, 5], vec![8]]
    );
    assert_eq!(m.surveys[0].area_m2, Some(f64::NEG_INFINITY));
    assert_eq!(m.surveys[0].geo_uncertainty_m, Some(10.5));
    assert_eq!(m.surveys[1].area_m2, Some(f64::INFINITY));
    assert_eq!(m.surveys[2].area_m2, None);
    assert_eq!(m.surveys[2].geo_uncertainty_m, None);
    // Test metadata has no speciesId: no labels.
    let p = dir.path().join("test.csv");
    std::fs::write(
        &p,
        "lon,lat,year,geoUncertaintyInM,areaInM2,region,country,surveyId\n1,2,2017,,,R,C,642\n",
    )
    .unwrap();
    let m = read_pa_metadata(&p, Split::Test).unwrap();
    assert!(m.labels.is_none());
    assert_eq!(m.surveys[0].survey_id, 642);
}
