//! The mixed-precision overflow check (`kernels::finite::FiniteCheck`) on the CPU: one NaN, or
//! one infinity of either sign, anywhere in any of the tensors makes the whole check fail;
//! finite values pass however large (their sum would overflow f32, which does not count, as in
//! PyTorch's `GradScaler`); permuted and sliced views are checked on their own values; no tensor
//! passes; a NaN in any of twenty tensors (three kernels' worth) is found. (The same cases run on the GPU build in `geolife-train/tests/wgpu_path.rs`.)

use burn::tensor::{Device, Tensor, TensorData};
use geolife_model::kernels::finite::FiniteCheck;

/// `[4, 6]` values, finite, with `bad` written at `at` when given.
fn values(bad: Option<(usize, f32)>, device: &Device) -> Tensor<2> {
    let mut v: Vec<f32> = (0..24).map(|i| (i as f32 - 11.5) * 0.25).collect();
    if let Some((at, x)) = bad {
        v[at] = x;
    }
    Tensor::from_data(TensorData::new(v, [4, 6]), device)
}

fn check(tensors: Vec<Tensor<2>>) -> bool {
    let mut c = FiniteCheck::default();
    for t in tensors {
        c.add(t);
    }
    c.finish().expect("the check reads its flag back")
}

#[test]
fn one_value_that_is_not_finite_fails_the_check() {
    let d = Device::flex();
    assert!(check(vec![]), "no tensor: finite");
    assert!(check(vec![values(None, &d), values(None, &d)]));
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for at in [0, 13, 23] {
            // The bad value in the second of three tensors, the others finite.
            let ts = vec![
                values(None, &d),
                values(Some((at, bad)), &d),
                values(None, &d),
            ];
            assert!(!check(ts), "{bad} at {at} passed");
        }
    }
    // Finite values near f32's largest: their sum overflows, the check does not fail.
    let big = Tensor::<2>::from_data(TensorData::new(vec![3.0e38f32; 24], [4, 6]), &d);
    assert!(check(vec![big.clone(), big]));
    // A permuted view and a slice read their own values only.
    let t = values(Some((5, f32::NAN)), &d);
    assert!(!check(vec![t.clone().permute([1, 0])]));
    assert!(
        check(vec![t.clone().slice([1..4, 0..6])]),
        "the NaN is in row 0"
    );
    assert!(!check(vec![t.slice([0..2, 4..6])]));
    // More tensors than one kernel reads (8): a NaN in any of them is found.
    for bad_at in [0, 7, 8, 19] {
        let ts = (0..20)
            .map(|i| values((i == bad_at).then_some((13, f32::NAN)), &d))
            .collect();
        assert!(!check(ts), "NaN in tensor {bad_at} of 20 passed");
    }
}
