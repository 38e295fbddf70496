//! "Formula weights": deterministic parameters for cross-language parity tests, computed
//! bit-exactly by Rust and by Python (`tests/fixtures/gen_cnn.py`, `formula`/`apply_formula`,
//! which this module mirrors), so fixtures store only inputs and outputs, never weights.

use crate::state::{Layout, NamedTensor, StateDict, TorchNamed, slots};

/// 64-bit FNV-1a hash of `key`'s bytes (the `fnv` crate; gen_cnn.py's `fnv1a64`).
fn fnv1a64(key: &str) -> u64 {
    let mut h = fnv::FnvHasher::default();
    std::hash::Hasher::write(&mut h, key.as_bytes());
    std::hash::Hasher::finish(&h)
}

/// `n` values in [0, 1): splitmix64 of `fnv1a64(key) + (i + 1) * golden`, top 24 bits.
fn unit(key: &str, n: usize) -> Vec<f64> {
    let seed = fnv1a64(key);
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f64 / (1u64 << 24) as f64
        })
        .collect()
}

/// gen_cnn.py's `formula(key, shape)`: the tensor of PyTorch key `key` (the key's suffix picks
/// BatchNorm statistics, layer scales, norm weights, biases or a fan-in scaled uniform).
pub fn formula(key: &str, shape: &[usize]) -> NamedTensor {
    let n: usize = shape.iter().product();
    let data = unit(key, n)
        .into_iter()
        .map(|u| {
            let v = if key.ends_with("running_var") {
                0.5 + u
            } else if key.ends_with("running_mean") {
                0.2 * (2.0 * u - 1.0)
            } else if key.ends_with("layer_scale") {
                0.5 + 0.5 * u
            } else if shape.len() == 1 && key.ends_with("weight") {
                1.0 + 0.2 * (2.0 * u - 1.0)
            } else if shape.len() == 1 {
                0.1 * (2.0 * u - 1.0)
            } else {
                let fan_in: usize = shape[1..].iter().product();
                (2.0 * u - 1.0) * (3.0 / fan_in as f64).sqrt()
            };
            v as f32
        })
        .collect();
    NamedTensor {
        shape: shape.to_vec(),
        data,
    }
}

/// Formula weights for every parameter of `model`, under PyTorch names and shapes (what
/// gen_cnn.py's `apply_formula` loads into the PyTorch twin); load with
/// [`load_state_dict`](crate::state::load_state_dict).
pub fn formula_dict<M: TorchNamed>(model: &M) -> StateDict {
    slots(model)
        .into_iter()
        .map(|s| {
            let shape = match s.layout {
                Layout::Transposed => s.shape.iter().rev().copied().collect(),
                Layout::Same => model.torch_shape(&s.torch_key, &s.shape),
            };
            let t = formula(&s.torch_key, &shape);
            (s.torch_key, t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        // FNV-1a 64 test vectors (Fowler/Noll/Vo reference): "" and "a".
        assert_eq!(fnv1a64(""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(fnv1a64("a"), 0xAF63_DC4C_8601_EC8C);
    }

    #[test]
    fn formula_ranges_follow_the_key_suffix() {
        let var = formula("bn.running_var", &[64]);
        assert!(var.data.iter().all(|&v| (0.5..1.5).contains(&v)));
        let w = formula("fc.weight", &[10, 12]);
        let bound = (3.0f32 / 12.0).sqrt();
        assert!(w.data.iter().all(|&v| v.abs() <= bound));
        assert_eq!(w.shape, vec![10, 12]);
        assert_ne!(w.data, formula("fc2.weight", &[10, 12]).data);
    }
}
