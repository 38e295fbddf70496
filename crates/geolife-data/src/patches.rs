//! Sentinel-2 patches: RGB (128x128x3) and NIR (128x128) JPEGs decoded with the `image`
//! crate, size-checked, and stacked into one 4x128x128 CHW u8 array (R, G, B, NIR).

use std::path::Path;

use image::ImageFormat;

use crate::{DataError, Result};

/// Patch side in pixels.
pub const PATCH_SIZE: usize = 128;
/// Elements of a stacked 4-channel patch.
pub const PATCH_LEN: usize = 4 * PATCH_SIZE * PATCH_SIZE;

fn read_bytes(path: &Path, survey: Option<u64>, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::Missing {
                path: path.to_path_buf(),
                survey: survey.into(),
                what: what.into(),
                hint: "patch paths are <split folder>/CD/AB/<id>.jpeg (CD = last two digits of the id); \
                       check that the patch archive is fully unzipped"
                    .into(),
            }
        } else {
            DataError::io(path, survey, e)
        }
    })
}

fn decode(path: &Path, survey: Option<u64>, bytes: &[u8]) -> Result<image::DynamicImage> {
    image::load_from_memory_with_format(bytes, ImageFormat::Jpeg).map_err(|e| DataError::Image {
        path: path.to_path_buf(),
        survey: survey.into(),
        reason: e.to_string(),
    })
}

fn shape_err(
    path: &Path,
    survey: Option<u64>,
    expected: &[usize],
    img: &image::DynamicImage,
) -> DataError {
    DataError::Shape {
        path: path.to_path_buf(),
        survey: survey.into(),
        expected: expected.to_vec(),
        found: vec![
            img.height() as usize,
            img.width() as usize,
            img.color().channel_count() as usize,
        ],
    }
}

/// Decodes an RGB patch to HWC u8 (128x128x3).
pub fn read_rgb(path: &Path, survey: Option<u64>) -> Result<Vec<u8>> {
    let bytes = read_bytes(path, survey, "RGB patch")?;
    let img = decode(path, survey, &bytes)?;
    let expected = [PATCH_SIZE, PATCH_SIZE, 3];
    match img {
        image::DynamicImage::ImageRgb8(rgb)
            if rgb.width() as usize == PATCH_SIZE && rgb.height() as usize == PATCH_SIZE =>
        {
            Ok(rgb.into_raw())
        }
        other => Err(shape_err(path, survey, &expected, &other)),
    }
}

/// Decodes a NIR patch to HW u8 (128x128).
pub fn read_nir(path: &Path, survey: Option<u64>) -> Result<Vec<u8>> {
    let bytes = read_bytes(path, survey, "NIR patch")?;
    let img = decode(path, survey, &bytes)?;
    let expected = [PATCH_SIZE, PATCH_SIZE, 1];
    match img {
        image::DynamicImage::ImageLuma8(g)
            if g.width() as usize == PATCH_SIZE && g.height() as usize == PATCH_SIZE =>
        {
            Ok(g.into_raw())
        }
        other => Err(shape_err(path, survey, &expected, &other)),
    }
}

/// Stacks an HWC RGB patch and an HW NIR patch into CHW (R, G, B, NIR).
pub fn stack_chw(rgb: &[u8], nir: &[u8]) -> Vec<u8> {
    let hw = PATCH_SIZE * PATCH_SIZE;
    let mut out = vec![0u8; PATCH_LEN];
    for (p, px) in rgb.chunks_exact(3).take(hw).enumerate() {
        out[p] = px[0];
        out[hw + p] = px[1];
        out[2 * hw + p] = px[2];
    }
    out[3 * hw..].copy_from_slice(&nir[..hw]);
    out
}

/// Reads both patches and stacks them to 4x128x128 CHW.
pub fn read_patch_pair(rgb_path: &Path, nir_path: &Path, survey: Option<u64>) -> Result<Vec<u8>> {
    let rgb = read_rgb(rgb_path, survey)?;
    let nir = read_nir(nir_path, survey)?;
    Ok(stack_chw(&rgb, &nir))
}

/// Mean of each of the 4 planes of a stacked patch (R, G, B, NIR).
pub fn channel_means(chw: &[u8]) -> [f64; 4] {
    let hw = PATCH_SIZE * PATCH_SIZE;
    let mut m = [0.0; 4];
    for (c, plane) in chw.chunks_exact(hw).take(4).enumerate() {
        m[c] = plane.iter().map(|&v| v as u64).sum::<u64>() as f64 / hw as f64;
    }
    m
}
