//! The safe torch reader on a state dict written by PyTorch (fixtures/torchfile_gen.py):
//! names, order, dtypes, shapes and every value as PyTorch reads them.

use std::path::PathBuf;

use geolife_io::torchfile::{DType, TorchError, load_state_dict, load_tensor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn state_dict_matches_pytorch() {
    let exp: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("torchfile_state_dict.json")).unwrap(),
    )
    .unwrap();
    let sd = load_state_dict(&fixture("torchfile_state_dict.pth")).unwrap();
    let order: Vec<&str> = exp["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let names: Vec<&str> = sd.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, order);
    for (name, t) in &sd {
        let e = &exp["tensors"][name];
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{name}");
        let dtype = match e["dtype"].as_str().unwrap() {
            "float32" => DType::F32,
            "float16" => DType::F16,
            "bfloat16" => DType::BF16,
            "float64" => DType::F64,
            "int64" => DType::I64,
            "int32" => DType::I32,
            d => panic!("unexpected dtype {d}"),
        };
        assert_eq!(t.dtype, dtype, "{name}");
        let want: Vec<f32> = e["values_f32"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = t.data_f32();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{name}[{i}]: {a} vs {b}");
        }
    }
    let counter = &sd
        .iter()
        .find(|(k, _)| k == "1.num_batches_tracked")
        .unwrap()
        .1;
    assert!(counter.shape.is_empty());
    assert_eq!(counter.data_f32(), vec![7.0]);
    let view = &sd.iter().find(|(k, _)| k == "fc.bias_view").unwrap().1;
    assert_eq!(view.offset, 8);
    assert_eq!(view.data_f32(), vec![1.0, 1.125, 1.25]);
}

#[test]
fn a_state_dict_is_not_a_bare_tensor() {
    let err = load_tensor(&fixture("torchfile_state_dict.pth")).unwrap_err();
    assert!(matches!(err, TorchError::Pickle { .. }), "{err}");
    assert!(err.to_string().contains("bare tensor"));
}
