//! Landsat (6, 4, 21) and bioclimatic (4, 19, 12) `.pt` cubes read through the safe torch
//! reader, checked for dtype and shape, returned in C order with the seed's NaN handling.

use std::path::Path;

use geolife_io::torchfile::{DType, load_tensor_for};

use crate::Result;

/// Landsat cube shape: (band R,G,B,NIR,SWIR1,SWIR2; quarter; year 2000-2020).
pub const LANDSAT_SHAPE: [usize; 3] = [6, 4, 21];
/// Bioclimatic cube shape: (variable pr,tas,tasmax,tasmin; year 2000-2018; month).
pub const BIOCLIM_SHAPE: [usize; 3] = [4, 19, 12];
/// Elements of a Landsat cube.
pub const LANDSAT_LEN: usize = 6 * 4 * 21;
/// Elements of a bioclimatic cube.
pub const BIOCLIM_LEN: usize = 4 * 19 * 12;

/// What to do with non-finite cube values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NanPolicy {
    /// The seed's `torch.nan_to_num`: NaN -> 0, +inf -> f32::MAX, -inf -> f32::MIN.
    #[default]
    Zero,
    /// Keep values as stored.
    Keep,
}

impl std::str::FromStr for NanPolicy {
    type Err = crate::DataError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "zero" => Ok(NanPolicy::Zero),
            "keep" => Ok(NanPolicy::Keep),
            _ => Err(crate::DataError::Invalid(format!(
                "unknown NaN policy `{s}`: expected `zero` or `keep`"
            ))),
        }
    }
}

/// Applies `policy` in place.
pub fn apply_nan(values: &mut [f32], policy: NanPolicy) {
    if policy == NanPolicy::Zero {
        for v in values.iter_mut() {
            if v.is_nan() {
                *v = 0.0;
            } else if *v == f32::INFINITY {
                *v = f32::MAX;
            } else if *v == f32::NEG_INFINITY {
                *v = f32::MIN;
            }
        }
    }
}

/// Reads a float32 cube of `shape` from `path` (C order), applying `policy`.
pub fn read_cube(
    path: &Path,
    survey: Option<u64>,
    shape: &[usize],
    policy: NanPolicy,
) -> Result<Vec<f32>> {
    let t = load_tensor_for(path, survey)?;
    t.expect(path, survey, DType::F32, shape)?;
    let mut v = t.data_f32();
    apply_nan(&mut v, policy);
    Ok(v)
}
