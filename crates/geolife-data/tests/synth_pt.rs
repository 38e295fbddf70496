//! The synthetic `.pt` writer against the real GLC24 cubes: byte-for-byte reproduction of
//! the real files, and synthetic cubes with the real zip and pickle structure.

use std::io::Read;
use std::path::{Path, PathBuf};

use geolife_data::Split;
use geolife_data::synth::torch_pt::{PtTensor, encode_pt};
use geolife_data::synth::{SynthConfig, SynthPlan, layout, write_dataset};

fn real_cube(kind: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/glc24-real/mini/TimeSeries-Cubes/TimeSeries-Cubes");
    match kind {
        "landsat" => root.join(
            "GLC24-PA-train-landsat_time_series/GLC24-PA-train-landsat-time-series_1322301_cube.pt",
        ),
        _ => root.join(
            "GLC24-PA-train-bioclimatic_monthly/GLC24-PA-train-bioclimatic_monthly_1322301_cube.pt",
        ),
    }
}

/// Reads one zip entry whose name ends with `suffix`.
fn entry(path: &Path, suffix: &str) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let name = zip
        .file_names()
        .find(|n| n.ends_with(suffix))
        .unwrap()
        .to_string();
    let mut out = Vec::new();
    zip.by_name(&name).unwrap().read_to_end(&mut out).unwrap();
    out
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Size and stride of the real cubes (GLC24.md §3, verified with PyTorch).
fn geometry(kind: &str) -> ([usize; 3], [usize; 3]) {
    match kind {
        "landsat" => ([6, 4, 21], [84, 1, 4]),
        _ => ([4, 19, 12], [1, 48, 4]),
    }
}

#[test]
fn encode_pt_reproduces_the_real_cubes_byte_for_byte() {
    for kind in ["landsat", "bioclim"] {
        let path = real_cube(kind);
        let real = std::fs::read(&path).unwrap();
        let storage = f32s(&entry(&path, "/data/0"));
        let sid = String::from_utf8(entry(&path, "/.data/serialization_id")).unwrap();
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let (size, stride) = geometry(kind);
        let ours = encode_pt(
            stem,
            PtTensor {
                size: &size,
                stride: &stride,
                offset: 0,
                storage: &storage,
            },
            &sid,
        );
        assert_eq!(ours.len(), real.len(), "{kind}: file size");
        let first_diff = ours.iter().zip(&real).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "{kind}: first differing byte");
    }
}

#[test]
fn synthetic_cubes_have_the_real_structure_and_decode_to_the_generated_values() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ds");
    let cfg = SynthConfig {
        train_surveys: 6,
        test_surveys: 3,
        species: 20,
        mean_species_per_survey: 5.0,
        missing_rate: 0.5,
        ..SynthConfig::default()
    };
    write_dataset(&out, &cfg).unwrap();
    let plan = SynthPlan::new(&cfg).unwrap();
    let real_pickles = [
        entry(&real_cube("landsat"), "/data.pkl"),
        entry(&real_cube("bioclim"), "/data.pkl"),
    ];
    let mut nan_seen = false;
    for split in Split::ALL {
        for id in plan.survey_ids(split) {
            let truth = plan.survey(split, id).unwrap();
            for (k, (rel, stem)) in [
                (
                    layout::landsat_cube(split, id),
                    layout::landsat_stem(split, id),
                ),
                (
                    layout::bioclim_cube(split, id),
                    layout::bioclim_stem(split, id),
                ),
            ]
            .into_iter()
            .enumerate()
            {
                let path = out.join(rel);
                let file = std::fs::File::open(&path).unwrap();
                let mut zip = zip::ZipArchive::new(file).unwrap();
                let names: Vec<String> = (0..zip.len())
                    .map(|i| {
                        let f = zip.by_index(i).unwrap();
                        assert_eq!(f.compression(), zip::CompressionMethod::Stored);
                        f.name().to_string()
                    })
                    .collect();
                let expected: Vec<String> = [
                    "data.pkl",
                    "byteorder",
                    "data/0",
                    "version",
                    ".data/serialization_id",
                ]
                .iter()
                .map(|n| format!("{stem}/{n}"))
                .collect();
                assert_eq!(names, expected);
                // Same shape -> the pickle must be the real file's pickle, byte for byte.
                assert_eq!(entry(&path, "/data.pkl"), real_pickles[k]);
                assert_eq!(entry(&path, "/byteorder"), b"little");
                assert_eq!(entry(&path, "/version"), b"3\n");
                let sid = entry(&path, "/.data/serialization_id");
                assert!(sid.len() == 40 && sid.iter().all(u8::is_ascii_digit));
                // Independent strided decode vs the generator's C-order values.
                let storage = f32s(&entry(&path, "/data/0"));
                let kind = if k == 0 { "landsat" } else { "bioclim" };
                let (size, stride) = geometry(kind);
                let want = if k == 0 {
                    &truth.landsat
                } else {
                    &truth.bioclim
                };
                assert_eq!(storage.len(), size.iter().product::<usize>());
                let mut c = 0;
                for i in 0..size[0] {
                    for j in 0..size[1] {
                        for l in 0..size[2] {
                            let got = storage[i * stride[0] + j * stride[1] + l * stride[2]];
                            let w = want[c];
                            assert!(
                                got == w || (got.is_nan() && w.is_nan()),
                                "{kind} survey {id} [{i},{j},{l}]: {got} vs {w}"
                            );
                            nan_seen |= got.is_nan();
                            c += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(
        nan_seen,
        "missing_rate 0.5 must put NaN in some Landsat cube"
    );
}
