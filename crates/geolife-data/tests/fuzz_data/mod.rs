//! The geolife-data fuzz targets (torch `.pt`/`.pth`, JPEG patches, CSVs): seeds from the real
//! mini dataset, the fixtures and the synthetic writer, plus zip/pickle/CSV/JPEG-aware
//! generators. Shared by `tests/fuzz_readers.rs` and `examples/fuzz_readers.rs`.

#![allow(dead_code)]

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use geolife_data::Split;
use geolife_data::cubes::{BIOCLIM_SHAPE, LANDSAT_SHAPE, NanPolicy, read_cube};
use geolife_data::env::{EnvGroup, read_tabular};
use geolife_data::metadata::read_pa_metadata;
use geolife_data::patches::{read_nir, read_rgb};
use geolife_data::po::{PoReader, po_labels};
use geolife_data::synth::torch_pt::{PtTensor, crc32, encode_pt, serialization_id};
use geolife_io::torchfile::{
    TorchTensor, load_state_dict, load_state_dict_from_bytes, load_tensor, load_tensor_from_bytes,
};

use crate::fuzz_common::{
    Case, Input, Target, Verdict, class, interesting, lie_in_zip, mutate, mutate_csv, put,
    zip_records,
};

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real mini GLC24 extract.
pub fn mini() -> PathBuf {
    manifest().join("../../tests/data/glc24-real/mini")
}

fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == ext))
        .map(|e| e.into_path())
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// Torch files.

/// Real `.pt` cubes, the PyTorch-written state dict fixture, synthetic `encode_pt` files of
/// assorted shapes/strides/offsets, and deflated repackagings (zip readers take both).
pub fn torch_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = files_under(&mini().join("TimeSeries-Cubes"), "pt")
        .iter()
        .map(|p| std::fs::read(p).expect("real cube"))
        .collect();
    assert!(
        !seeds.is_empty(),
        "no real .pt seeds under {}",
        mini().display()
    );
    seeds.push(
        std::fs::read(manifest().join("tests/fixtures/torchfile_state_dict.pth"))
            .expect("state dict fixture"),
    );
    let synth: [(&[usize], &[usize], usize, usize); 7] = [
        (&[6, 4, 21], &[84, 1, 4], 0, 504),
        (&[4, 19, 12], &[228, 12, 1], 0, 912),
        (&[3, 2], &[1, 3], 1, 8),
        (&[0], &[1], 0, 0),
        (&[], &[], 2, 3),
        (&[2, 2, 2, 2, 2], &[16, 8, 4, 2, 1], 0, 32),
        (&[5], &[2], 0, 10),
    ];
    for (i, (size, stride, offset, n)) in synth.into_iter().enumerate() {
        let storage: Vec<f32> = (0..n).map(|k| k as f32 * 0.5 - 3.0).collect();
        seeds.push(encode_pt(
            &format!("synth_{i}"),
            PtTensor {
                size,
                stride,
                offset,
                storage: &storage,
            },
            &serialization_id(i as u64, 7),
        ));
    }
    let deflated: Vec<Vec<u8>> = seeds[..3]
        .iter()
        .map(|s| repack(&zip_entries(s), zip::CompressionMethod::Deflated))
        .collect();
    seeds.extend(deflated);
    seeds
}

/// The entries of a zip (name, bytes), in archive order.
pub fn zip_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(Cursor::new(bytes)).expect("seed zip");
    (0..z.len())
        .map(|i| {
            let mut e = z.by_index(i).expect("seed entry");
            let mut v = Vec::new();
            e.read_to_end(&mut v).expect("seed entry data");
            (e.name().to_string(), v)
        })
        .collect()
}

/// A well-formed zip of `entries` (the `zip` writer; by hand, stored, when names repeat or
/// are empty, which that writer refuses).
pub fn repack(entries: &[(String, Vec<u8>)], method: zip::CompressionMethod) -> Vec<u8> {
    let mut names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) || names.iter().any(|n| n.is_empty()) {
        return stored_zip(entries);
    }
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in entries {
        w.start_file(name.as_str(), opts).expect("zip entry");
        w.write_all(data).expect("zip data");
    }
    w.finish().expect("zip").into_inner()
}

/// A stored zip written by hand: local headers, central directory, end record.
pub fn stored_zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut o = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let crc = crc32(data);
        let offset = o.len() as u32;
        let mut fixed = Vec::new();
        fixed.extend_from_slice(&20u16.to_le_bytes()); // version needed
        fixed.extend_from_slice(&0u16.to_le_bytes()); // flags
        fixed.extend_from_slice(&0u16.to_le_bytes()); // stored
        fixed.extend_from_slice(&0u32.to_le_bytes()); // time, date
        fixed.extend_from_slice(&crc.to_le_bytes());
        fixed.extend_from_slice(&(data.len() as u32).to_le_bytes());
        fixed.extend_from_slice(&(data.len() as u32).to_le_bytes());
        fixed.extend_from_slice(&(name.len() as u16).to_le_bytes());
        fixed.extend_from_slice(&0u16.to_le_bytes()); // extra length
        o.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        o.extend_from_slice(&fixed);
        o.extend_from_slice(name.as_bytes());
        o.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // made by
        central.extend_from_slice(&fixed);
        central.extend_from_slice(&[0u8; 8]); // comment length, disk, attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_start = o.len() as u32;
    o.extend_from_slice(&central);
    o.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    o.extend_from_slice(&[0u8; 4]);
    o.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    o.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    o.extend_from_slice(&(central.len() as u32).to_le_bytes());
    o.extend_from_slice(&cd_start.to_le_bytes());
    o.extend_from_slice(&0u16.to_le_bytes());
    o
}

/// Mutates inside the archive and repackages it with valid CRCs and sizes, so the mutation
/// reaches the pickle VM and the storage checks instead of the zip layer: `data.pkl` bytes
/// (with splices from the other seeds' pickles), a storage's length or bytes, `byteorder`,
/// entry names, dropped or duplicated entries.
pub fn mutate_entries(rng: &mut StdRng, input: &[u8], pickles: &[Vec<u8>]) -> Vec<u8> {
    let mut entries = zip_entries(input);
    for _ in 0..rng.random_range(1..=2) {
        let n = entries.len();
        let i = entries
            .iter()
            .position(|(name, _)| name.ends_with("data.pkl"))
            .filter(|_| rng.random_bool(0.7))
            .unwrap_or_else(|| rng.random_range(0..n));
        let (name, data) = &mut entries[i];
        match rng.random_range(0..10) {
            0..=5 => *data = mutate(rng, data, pickles, data.len() * 2 + 64),
            6 => {
                let k = rng.random_range(0..=data.len() + 16);
                data.resize(k, 0x41);
            }
            7 => {
                *name = match rng.random_range(0..4) {
                    0 => name.replace("data/", "data/x"),
                    1 => format!("../{name}"),
                    2 => name.to_uppercase(),
                    _ => String::new(),
                }
            }
            8 => {
                let e = entries[i].clone();
                entries.push(e);
            }
            _ => {
                entries.remove(i);
            }
        }
        if entries.is_empty() {
            break;
        }
    }
    for (name, data) in entries.iter_mut() {
        if name.ends_with("byteorder") && rng.random_bool(0.05) {
            *data = b"big".to_vec();
        }
    }
    let method = if rng.random_bool(0.85) {
        zip::CompressionMethod::Stored
    } else {
        zip::CompressionMethod::Deflated
    };
    repack(&entries, method)
}

/// The `data.pkl` of every seed (splice material for [`mutate_entries`]).
pub fn pickles_of(seeds: &[Vec<u8>]) -> Vec<Vec<u8>> {
    seeds
        .iter()
        .flat_map(|s| zip_entries(s))
        .filter(|(n, _)| n.ends_with("data.pkl"))
        .map(|(_, d)| d)
        .collect()
}

/// Readers of a torch file in memory: bare tensor and state dict, then every value.
pub fn check_torch_bytes(c: &Case) -> Verdict {
    let a = match load_tensor_from_bytes(c.path, c.bytes) {
        Ok(t) => {
            touch(&t);
            "Ok".to_string()
        }
        Err(e) => class(&e),
    };
    let b = match load_state_dict_from_bytes(c.path, c.bytes) {
        Ok(sd) => {
            sd.iter().for_each(|(_, t)| touch(t));
            "Ok".to_string()
        }
        Err(e) => class(&e),
    };
    Ok(format!("{a}/{b}"))
}

fn touch(t: &TorchTensor) {
    let v = t.data_f32();
    assert_eq!(v.len(), t.numel(), "data_f32 length");
}

/// Readers of a torch file on disk: both cube readers (dtype/shape check, values, NaN
/// policy), `load_tensor` and `load_state_dict`.
pub fn check_torch_file(c: &Case) -> Verdict {
    let mut out = Vec::new();
    for shape in [&LANDSAT_SHAPE[..], &BIOCLIM_SHAPE[..]] {
        out.push(match read_cube(c.path, Some(1), shape, NanPolicy::Zero) {
            Ok(v) => {
                assert_eq!(v.len(), shape.iter().product::<usize>());
                "Ok".to_string()
            }
            Err(e) => class(&e),
        });
    }
    out.push(match load_tensor(c.path) {
        Ok(t) => {
            touch(&t);
            "Ok".into()
        }
        Err(e) => class(&e),
    });
    out.push(match load_state_dict(c.path) {
        Ok(sd) => {
            sd.iter().for_each(|(_, t)| touch(t));
            "Ok".into()
        }
        Err(e) => class(&e),
    });
    Ok(out.join("/"))
}

// ---------------------------------------------------------------------------------------------
// Random pickles.

/// A pickle emitter: each opcode with its arguments is one item, so random opcodes can be
/// inserted between items.
#[derive(Default)]
pub struct Ops(pub Vec<Vec<u8>>);

impl Ops {
    pub fn op(&mut self, b: &[u8]) {
        self.0.push(b.to_vec());
    }
    pub fn str(&mut self, s: &[u8]) {
        let mut v = vec![b'X'];
        v.extend_from_slice(&(s.len() as u32).to_le_bytes());
        v.extend_from_slice(s);
        self.0.push(v);
    }
    pub fn global(&mut self, module: &str, name: &str) {
        self.0.push(format!("c{module}\n{name}\n").into_bytes());
    }
    pub fn int(&mut self, v: i64) {
        let mut o = Vec::new();
        if (0..256).contains(&v) {
            o.extend_from_slice(&[b'K', v as u8]);
        } else if (0..65536).contains(&v) {
            o.push(b'M');
            o.extend_from_slice(&(v as u16).to_le_bytes());
        } else if i32::try_from(v).is_ok() {
            o.push(b'J');
            o.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            o.extend_from_slice(&[0x8a, 8]);
            o.extend_from_slice(&v.to_le_bytes());
        }
        self.0.push(o);
    }
    pub fn ints(&mut self, xs: &[i64]) {
        self.op(b"(");
        for &x in xs {
            self.int(x);
        }
        self.op(b"t");
    }
}

const STORAGES: [&str; 8] = [
    "FloatStorage",
    "HalfStorage",
    "BFloat16Storage",
    "DoubleStorage",
    "LongStorage",
    "IntStorage",
    "ByteStorage",
    "UntypedStorage",
];

fn rand_int(rng: &mut StdRng) -> i64 {
    match rng.random_range(0..4) {
        0 => -(rng.random_range(1..=3)),
        1 => interesting(rng, 16) as i64,
        _ => rng.random_range(0..=40),
    }
}

/// `_rebuild_tensor_v2((storage, <type>, key, 'cpu', numel), offset, size, stride, False,
/// OrderedDict())` with random arguments: what reaches `resolve_one` and `data_f32`.
fn tensor_ops(o: &mut Ops, rng: &mut StdRng, keys: &[&str]) {
    o.global("torch._utils", "_rebuild_tensor_v2");
    o.op(b"(");
    o.op(b"(");
    o.str(b"storage");
    // Mostly the six readable storage types; sometimes one that is refused.
    let n_types = if rng.random_bool(0.9) {
        6
    } else {
        STORAGES.len()
    };
    o.global("torch", STORAGES[rng.random_range(0..n_types)]);
    o.str(keys.choose(rng).unwrap_or(&"0").as_bytes());
    o.str(b"cpu");
    let numel = if rng.random_bool(0.8) {
        rng.random_range(0..=64)
    } else {
        rand_int(rng)
    };
    o.int(numel);
    o.op(b"t");
    o.op(b"Q");
    o.int(if rng.random_bool(0.7) {
        rng.random_range(0..4)
    } else {
        rand_int(rng)
    });
    let nd = rng.random_range(0..=4);
    let size: Vec<i64> = (0..nd)
        .map(|_| {
            if rng.random_bool(0.8) {
                rng.random_range(0..6)
            } else {
                rand_int(rng)
            }
        })
        .collect();
    let stride: Vec<i64> = (0..if rng.random_bool(0.9) { nd } else { nd + 1 })
        .map(|_| {
            if rng.random_bool(0.8) {
                rng.random_range(0..8)
            } else {
                rand_int(rng)
            }
        })
        .collect();
    o.ints(&size);
    o.ints(&stride);
    o.op(&[if rng.random_bool(0.9) { 0x89 } else { b'N' }]);
    o.global("collections", "OrderedDict");
    o.op(b")");
    o.op(b"R");
    o.op(b"t");
    o.op(b"R");
}

/// The pickle of one bare tensor `_rebuild_tensor_v2` call (protocol 2, STOP included).
pub fn tensor_pickle(
    storage: &str,
    numel: i64,
    offset: i64,
    size: &[i64],
    stride: &[i64],
) -> Vec<u8> {
    let mut o = Ops::default();
    o.op(&[0x80, 2]);
    o.global("torch._utils", "_rebuild_tensor_v2");
    o.op(b"(");
    o.op(b"(");
    o.str(b"storage");
    o.global("torch", storage);
    o.str(b"0");
    o.str(b"cpu");
    o.int(numel);
    o.op(b"t");
    o.op(b"Q");
    o.int(offset);
    o.ints(size);
    o.ints(stride);
    o.op(&[0x89]);
    o.global("collections", "OrderedDict");
    o.op(b")");
    o.op(b"R");
    o.op(b"t");
    o.op(b"R");
    o.op(b".");
    o.0.concat()
}

/// A torch archive `t/` of `pkl` and storage `data/0`.
pub fn torch_zip(pkl: &[u8], storage: &[u8], method: zip::CompressionMethod) -> Vec<u8> {
    repack(
        &[
            ("t/data.pkl".to_string(), pkl.to_vec()),
            ("t/byteorder".to_string(), b"little".to_vec()),
            ("t/data/0".to_string(), storage.to_vec()),
        ],
        method,
    )
}

/// Sets the uncompressed size in the central directory header of entry `name`.
pub fn set_central_size(zip: &mut [u8], name: &str, size: u32) {
    let recs = zip_records(zip);
    let at = recs
        .iter()
        .filter(|(_, sig)| *sig == 0x0201_4b50)
        .map(|&(at, _)| at)
        .find(|&at| {
            let n = u16::from_le_bytes([zip[at + 28], zip[at + 29]]) as usize;
            zip.get(at + 46..at + 46 + n) == Some(name.as_bytes())
        })
        .expect("central header of the entry");
    put(zip, at + 24, 4, size as u64);
}

/// One random opcode with plausible (or broken) arguments.
fn random_op(rng: &mut StdRng) -> Vec<u8> {
    let mut o = Ops::default();
    match rng.random_range(0..30) {
        0 => o.op(b"("),
        1 => o.op(b"}"),
        2 => o.op(b"]"),
        3 => o.op(b")"),
        4 => o.op(&[0x85 + rng.random_range(0..3)]),
        5 => o.op(b"t"),
        6 => {
            let s: &[u8] = [
                &b"storage"[..],
                b"0",
                b"1",
                b"cpu",
                b"weight",
                b"\xff\xfe",
                b"",
            ]
            .choose(rng)
            .copied()
            .unwrap_or(b"");
            if rng.random_bool(0.1) {
                // A lying length.
                let mut v = vec![b'X'];
                v.extend_from_slice(&(interesting(rng, s.len()) as u32).to_le_bytes());
                v.extend_from_slice(s);
                o.0.push(v);
            } else {
                o.str(s);
            }
        }
        7 => {
            let n = rng.random_range(0..6u8);
            let mut v = vec![0x8c, if rng.random_bool(0.9) { n } else { 0xff }];
            v.extend((0..n).map(|_| rng.random_range(b'0'..=b'z')));
            o.0.push(v);
        }
        8 => o.int(rand_int(rng)),
        9 => {
            let n = rng.random_range(0..=10u8);
            let mut v = vec![0x8a, n];
            v.extend((0..n).map(|_| rng.random::<u8>()));
            o.0.push(v);
        }
        10 => {
            let mut v = vec![b'G'];
            v.extend_from_slice(&rng.random::<f64>().to_be_bytes());
            o.0.push(v);
        }
        11 => o.op(&[*[0x88u8, 0x89, b'N'].choose(rng).unwrap_or(&b'N')]),
        12 => {
            let (m, n) = *[
                ("torch._utils", "_rebuild_tensor_v2"),
                ("torch._utils", "_rebuild_parameter"),
                ("collections", "OrderedDict"),
                ("torch", "FloatStorage"),
                ("torch", "LongStorage"),
                ("os", "system"),
                ("builtins", "eval"),
                ("torch", "Tensor"),
            ]
            .choose(rng)
            .unwrap_or(&("os", "system"));
            o.global(m, n);
        }
        13 => {
            o.str(b"collections");
            o.str(b"OrderedDict");
            o.op(&[0x93]);
        }
        14 => o.op(&[0x93]),
        15 => o.op(b"Q"),
        16 => o.op(b"R"),
        17 => o.op(b"b"),
        18 => o.op(b"s"),
        19 => o.op(b"u"),
        20 => o.op(b"a"),
        21 => o.op(b"e"),
        22 => o.op(&[b'q', rng.random_range(0..4)]),
        23 => {
            let mut v = vec![b'r'];
            v.extend_from_slice(&(interesting(rng, 4) as u32).to_le_bytes());
            o.0.push(v);
        }
        24 => o.op(&[0x94]),
        25 => o.op(&[b'h', rng.random_range(0..4)]),
        26 => {
            let mut v = vec![b'j'];
            v.extend_from_slice(&(rng.random_range(0..4u32)).to_le_bytes());
            o.0.push(v);
        }
        27 => {
            let mut v = vec![0x95];
            v.extend_from_slice(&interesting(rng, 64).to_le_bytes());
            o.0.push(v);
        }
        28 => o.op(b"."),
        _ => o.op(&[rng.random()]),
    }
    o.0.concat()
}

/// Memo amplification: `[] q0` then k times `( h0 h0 t q0`, doubling the memoised value;
/// a plain pickle that must not be able to make the reader copy without bound.
fn memo_doubling(o: &mut Ops, rng: &mut StdRng) {
    o.op(b"]");
    o.op(&[b'q', 0]);
    for _ in 0..rng.random_range(1..=40) {
        o.op(b"(");
        o.op(&[b'h', 0]);
        o.op(&[b'h', 0]);
        o.op(b"t");
        o.op(&[b'q', 0]);
        if rng.random_bool(0.3) {
            o.op(&[0x94]);
        }
    }
}

/// A random pickle with valid framing (PROTO ... STOP): a tensor or state-dict skeleton with
/// random arguments, or a bare opcode soup, with random opcodes inserted between items.
pub fn random_pickle(rng: &mut StdRng, keys: &[&str]) -> Vec<u8> {
    let mut o = Ops::default();
    match rng.random_range(0..100) {
        0..=39 => tensor_ops(&mut o, rng, keys),
        40..=69 => {
            o.global("collections", "OrderedDict");
            o.op(b")");
            o.op(b"R");
            o.op(&[b'q', 0]);
            o.op(b"(");
            for i in 0..rng.random_range(0..4) {
                o.str(format!("layer{i}.weight").as_bytes());
                if rng.random_bool(0.8) {
                    tensor_ops(&mut o, rng, keys);
                } else {
                    o.op(&[b'h', 0]);
                }
            }
            o.op(b"u");
        }
        // Rare: each bomb runs the reader up to its value budget (~0.1 s unoptimised).
        70 => memo_doubling(&mut o, rng),
        _ => {
            for _ in 0..rng.random_range(1..=40) {
                o.0.push(random_op(rng));
            }
        }
    }
    // Random opcodes between items.
    let extra = if rng.random_bool(0.3) {
        0
    } else {
        rng.random_range(1..=6)
    };
    for _ in 0..extra {
        let at = rng.random_range(0..=o.0.len());
        o.0.insert(at, random_op(rng));
    }
    let proto = if rng.random_bool(0.9) {
        2
    } else {
        rng.random_range(0..=6)
    };
    let mut out = vec![0x80, proto];
    if proto >= 4 && rng.random_bool(0.5) {
        out.push(0x95);
        out.extend_from_slice(&0u64.to_le_bytes());
    }
    out.extend(o.0.concat());
    if rng.random_bool(0.95) {
        out.push(b'.');
    }
    out
}

/// A random pickle packaged as a valid torch zip: `<stem>/data.pkl`, `byteorder` (usually
/// `little`), storages `data/<key>` of random lengths, `version`.
pub fn pickle_archive(rng: &mut StdRng) -> Vec<u8> {
    let keys = ["0", "1", "2"];
    let pkl = random_pickle(rng, &keys);
    let stem = *["archive", "cube", "a/b", ""]
        .choose(rng)
        .unwrap_or(&"archive");
    let prefix = if stem.is_empty() {
        String::new()
    } else {
        format!("{stem}/")
    };
    let mut entries = vec![(format!("{prefix}data.pkl"), pkl)];
    match rng.random_range(0..10) {
        0 => {}
        1 => entries.push((format!("{prefix}byteorder"), b"big".to_vec())),
        _ => entries.push((format!("{prefix}byteorder"), b"little".to_vec())),
    }
    for k in keys {
        if rng.random_bool(0.8) {
            let n = match rng.random_range(0..10) {
                // Large enough for the usual small views of any dtype.
                0..=4 => 8 * 64,
                5..=8 => 4 * rng.random_range(0..=64),
                _ => rng.random_range(0..=300),
            };
            let data: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            entries.push((format!("{prefix}data/{k}"), data));
        }
    }
    entries.push((format!("{prefix}version"), b"3\n".to_vec()));
    let method = if rng.random_bool(0.8) {
        zip::CompressionMethod::Stored
    } else {
        zip::CompressionMethod::Deflated
    };
    repack(&entries, method)
}

// ---------------------------------------------------------------------------------------------
// JPEG patches.

/// Every real RGB and NIR patch of the mini extract.
pub fn jpeg_seeds() -> Vec<Vec<u8>> {
    let seeds: Vec<Vec<u8>> = files_under(&mini(), "jpeg")
        .iter()
        .map(|p| std::fs::read(p).expect("real patch"))
        .collect();
    assert!(
        !seeds.is_empty(),
        "no real patches under {}",
        mini().display()
    );
    seeds
}

/// Mutates the bytes right after a marker (segment lengths, SOF dimensions and component
/// counts, Huffman/quantisation table headers, SOS component selectors).
pub fn mutate_jpeg_header(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    let markers: Vec<usize> = b
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] == 0xFF && matches!(w[1], 0xC0..=0xCF | 0xDA..=0xFE))
        .map(|(i, _)| i)
        .collect();
    for _ in 0..rng.random_range(1..=3) {
        let Some(&at) = markers.choose(rng) else {
            break;
        };
        let i = at + 2 + rng.random_range(0..12);
        if i >= b.len() {
            continue;
        }
        match rng.random_range(0..3) {
            0 => b[i] = rng.random(),
            1 => {
                b[i] = *[0u8, 1, 0x7f, 0x80, 0xff, 3, 4, 16]
                    .choose(rng)
                    .unwrap_or(&0)
            }
            _ => {
                let v = interesting(rng, 128) as u16;
                b[i] = (v >> 8) as u8;
                if let Some(x) = b.get_mut(i + 1) {
                    *x = v as u8;
                }
            }
        }
    }
    b
}

/// Both patch readers on one file (a mutated RGB patch read as NIR fails its shape check
/// before any pixel is decoded, so the second read is cheap).
pub fn check_jpeg(c: &Case) -> Verdict {
    let a = match read_rgb(c.path, Some(1)) {
        Ok(px) => {
            assert_eq!(px.len(), 128 * 128 * 3);
            "Ok".to_string()
        }
        Err(e) => class(&e),
    };
    let b = match read_nir(c.path, Some(1)) {
        Ok(px) => {
            assert_eq!(px.len(), 128 * 128);
            "Ok".to_string()
        }
        Err(e) => class(&e),
    };
    Ok(format!("{a}/{b}"))
}

// ---------------------------------------------------------------------------------------------
// CSVs.

/// The first 40 lines of the real PA metadata, a test-split variant (no `speciesId`), and
/// CRLF/BOM/quoted variants.
pub fn metadata_seeds() -> Vec<Vec<u8>> {
    let real =
        std::fs::read_to_string(mini().join("GLC24_PA_metadata_train.csv")).expect("real metadata");
    let head: Vec<&str> = real.lines().take(40).collect();
    let train = head.join("\n") + "\n";
    let test: String = head
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            // Drop speciesId (column 7).
            f.iter()
                .enumerate()
                .filter(|(i, _)| *i != 7)
                .map(|(_, s)| *s)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let crlf = train.replace('\n', "\r\n");
    let bom = format!("\u{feff}{train}");
    let quoted = head
        .iter()
        .map(|l| {
            l.split(',')
                .map(|f| format!("\"{f}\""))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join("\n");
    vec![
        train.into_bytes(),
        test.into_bytes(),
        crlf.into_bytes(),
        bom.into_bytes(),
        quoted.into_bytes(),
    ]
}

/// Presence-only CSVs with the official columns.
pub fn po_seeds() -> Vec<Vec<u8>> {
    let header = "publisher,year,month,day,lon,lat,geoUncertaintyInM,taxonRank,date,dayOfYear,speciesId,surveyId";
    let rows = [
        "iNaturalist,2019,5,12,2.35,48.85,10.0,SPECIES,2019-05-12,132,1234,1",
        "Pl@ntNet,2020,,,-3.7,40.4,,SPECIES,,,5,2",
        "Observation.org,2018,12,31,12.5,41.9,3.5,SPECIES,2018-12-31,365,11254,3",
        "iNaturalist,2021,2,29,4.0,50.0,1000.0,SUBSPECIES,2021-02-29,60,7,3",
        "x,2017,1,1,0.0,0.0,0.0,SPECIES,2017-01-01,1,1234.0,4",
    ];
    let plain = format!("{header}\n{}\n", rows.join("\n"));
    let minimal = "surveyId,speciesId,lon,lat,year\n1,2,3.0,4.0,2020\n5,6,7.5,8.5,\n".to_string();
    vec![
        plain.clone().into_bytes(),
        minimal.into_bytes(),
        plain.replace('\n', "\r\n").into_bytes(),
    ]
}

/// One small CSV per environmental group (fixed columns), and a monthly-climate-like one.
pub fn env_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for g in EnvGroup::SEED {
        let cols = g.columns().expect("fixed columns");
        let mut s = format!("surveyId,{}\n", cols.join(","));
        for (r, id) in [1u64, 2, 3, 212, 1322301].iter().enumerate() {
            let vals: Vec<String> = (0..cols.len())
                .map(|c| match (r + c) % 7 {
                    0 => String::new(),
                    1 => "nan".into(),
                    _ => format!("{}", (r * 31 + c * 7) as f32 * 0.25 - 3.0),
                })
                .collect();
            s.push_str(&format!("{id},{}\n", vals.join(",")));
        }
        out.push(s.into_bytes());
    }
    let monthly = "surveyId,pr_01_2000,tas_01_2000,tasmax_01_2000\n1,3.5,271.2,280.0\n212,,inf,-inf\n3,1e3,2,3\n";
    out.push(monthly.as_bytes().to_vec());
    out
}

pub fn check_metadata(c: &Case) -> Verdict {
    let mut out = Vec::new();
    for split in Split::ALL {
        out.push(match read_pa_metadata(c.path, split) {
            Ok(m) => {
                assert!(
                    m.surveys
                        .windows(2)
                        .all(|w| w[0].survey_id < w[1].survey_id)
                );
                if let Some(l) = &m.labels {
                    assert_eq!(l.len(), m.surveys.len());
                }
                "Ok".to_string()
            }
            Err(e) => class(&e),
        });
    }
    Ok(out.join("/"))
}

pub fn check_po(c: &Case) -> Verdict {
    let strict = match po_labels(c.path, false) {
        Ok((ids, labels, _)) => {
            assert_eq!(ids.len(), labels.len());
            "Ok".to_string()
        }
        Err(e) => class(&e),
    };
    let lenient = match PoReader::open(c.path, true) {
        Ok(mut r) => {
            let n = r.by_ref().filter(|x| x.is_ok()).count();
            let _ = (n, r.skipped(), r.first_error().map(|e| e.to_string()));
            "Ok".to_string()
        }
        Err(e) => class(&e),
    };
    Ok(format!("{strict}/{lenient}"))
}

pub fn check_env(c: &Case) -> Verdict {
    let ids = [1u64, 2, 3, 212, 1322301, 99];
    let mut ok = 0;
    let mut last = String::from("none");
    for g in EnvGroup::ALL {
        match read_tabular(&[g], &ids, |_| Ok(c.path.to_path_buf())) {
            Ok(t) => {
                assert_eq!(t.values.len(), ids.len() * t.n_features());
                ok += 1;
            }
            Err(e) => last = class(&e),
        }
    }
    Ok(format!("ok={ok} last={last}"))
}

// ---------------------------------------------------------------------------------------------
// The targets.

fn pick(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    seeds.choose(rng).cloned().unwrap_or_default()
}

/// Every geolife-data target.
pub fn targets() -> Vec<Target> {
    let torch = Arc::new(torch_seeds());
    let max_torch = torch.iter().map(Vec::len).max().unwrap_or(0) * 2 + 64;
    let jpeg = Arc::new(jpeg_seeds());
    let max_jpeg = jpeg.iter().map(Vec::len).max().unwrap_or(0) * 2 + 64;
    let meta = Arc::new(metadata_seeds());
    let po = Arc::new(po_seeds());
    let env = Arc::new(env_seeds());

    let pickles = Arc::new(pickles_of(&torch));
    let t1 = torch.clone();
    let t2 = torch.clone();
    let t3 = torch.clone();
    let (m1, p1, e1, j1) = (meta.clone(), po.clone(), env.clone(), jpeg.clone());
    vec![
        Target::new(
            "torch-bytes",
            "torchfile::load_tensor_from_bytes, load_state_dict_from_bytes, data_f32",
            Input::Bytes,
            move |rng| {
                let s = pick(rng, &t1);
                if rng.random_bool(0.5) {
                    mutate_entries(rng, &s, &pickles)
                } else {
                    mutate(rng, &s, &t1, max_torch)
                }
            },
            check_torch_bytes,
        ),
        Target::new(
            "torch-zip-sizes",
            "torchfile (bytes) on zips whose size/offset/count fields lie",
            Input::Bytes,
            move |rng| {
                let s = pick(rng, &t2);
                let b = lie_in_zip(rng, &s);
                if rng.random_bool(0.2) {
                    mutate(rng, &b, &t2, max_torch)
                } else {
                    b
                }
            },
            check_torch_bytes,
        ),
        Target::new(
            "torch-pickle",
            "torchfile (bytes) on random-opcode pickles in valid zips",
            Input::Bytes,
            pickle_archive,
            check_torch_bytes,
        ),
        Target::new(
            "torch-file",
            "cubes::read_cube (Landsat, bioclim), torchfile::load_tensor, load_state_dict (files)",
            Input::File("pt"),
            move |rng| {
                let s = pick(rng, &t3);
                if rng.random_bool(0.3) {
                    lie_in_zip(rng, &s)
                } else {
                    mutate(rng, &s, &t3, max_torch)
                }
            },
            check_torch_file,
        ),
        Target::new(
            "jpeg",
            "patches::read_rgb, read_nir (files)",
            Input::File("jpeg"),
            move |rng| {
                let s = pick(rng, &j1);
                if rng.random_bool(0.4) {
                    let b = mutate_jpeg_header(rng, &s);
                    if rng.random_bool(0.3) {
                        mutate(rng, &b, &j1, max_jpeg)
                    } else {
                        b
                    }
                } else {
                    mutate(rng, &s, &j1, max_jpeg)
                }
            },
            check_jpeg,
        ),
        Target::new(
            "csv-metadata",
            "metadata::read_pa_metadata (train, test)",
            Input::File("csv"),
            move |rng| {
                let s = pick(rng, &m1);
                mutate_csv(rng, &s, &m1)
            },
            check_metadata,
        ),
        Target::new(
            "csv-po",
            "po::po_labels (strict), PoReader (skip_bad)",
            Input::File("csv"),
            move |rng| {
                let s = pick(rng, &p1);
                mutate_csv(rng, &s, &p1)
            },
            check_po,
        ),
        Target::new(
            "csv-env",
            "env::read_tabular (every group)",
            Input::File("csv"),
            move |rng| {
                let s = pick(rng, &e1);
                mutate_csv(rng, &s, &e1)
            },
            check_env,
        ),
    ]
}
