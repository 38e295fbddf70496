//! Sentinel-2 patches: RGB (128x128x3) and NIR (128x128) JPEGs checked to be complete, decoded
//! with zune-jpeg (the `image` crate's decoder) in strict mode, size-checked, and stacked into
//! one 4x128x128 CHW u8 array (R, G, B, NIR). A truncated or corrupt file is an error naming
//! the file and the survey, never a silently half-grey patch.

use std::path::Path;

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

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

/// What a walk over a JPEG's marker structure found (see [`jpeg_structure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JpegStructure {
    /// Segments and compressed data run up to an end-of-image marker.
    Complete,
    /// The file ends before its end-of-image marker (inside a segment or the compressed data).
    Truncated(String),
    /// Not a JPEG, or a byte where a marker must be.
    Corrupt(String),
}

/// Walks the marker segments of `bytes` and the compressed data after each start-of-scan, as
/// a decoder that insists on a complete file does (PIL refuses a file that ends early: "image
/// file is truncated"). Trailing bytes after the end-of-image marker are allowed.
pub fn jpeg_structure(bytes: &[u8]) -> JpegStructure {
    let len = bytes.len();
    if len < 2 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return JpegStructure::Corrupt("not a JPEG (no start-of-image marker FFD8)".into());
    }
    let truncated = |what: String| {
        JpegStructure::Truncated(format!(
            "the file ends after {len} bytes, {what}, before the JPEG end-of-image marker \
             (PIL refuses it: \"image file is truncated\")"
        ))
    };
    let mut pos = 2;
    loop {
        if pos >= len {
            return truncated("between two segments".into());
        }
        if bytes[pos] != 0xFF {
            return JpegStructure::Corrupt(format!(
                "expected a JPEG marker at byte {pos}, found 0x{:02X}",
                bytes[pos]
            ));
        }
        // Fill bytes (FF FF ...) may precede a marker.
        while pos + 1 < len && bytes[pos + 1] == 0xFF {
            pos += 1;
        }
        if pos + 1 >= len {
            return truncated("inside a marker".into());
        }
        let marker = bytes[pos + 1];
        match marker {
            0xD9 => return JpegStructure::Complete,
            0xD8 | 0x00 => {
                return JpegStructure::Corrupt(format!(
                    "unexpected marker FF{marker:02X} at byte {pos}"
                ));
            }
            0x01 | 0xD0..=0xD7 => {
                pos += 2;
                continue;
            }
            _ => {}
        }
        if pos + 4 > len {
            return truncated(format!("inside the header of segment FF{marker:02X}"));
        }
        let seg = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
        if seg < 2 {
            return JpegStructure::Corrupt(format!(
                "segment FF{marker:02X} at byte {pos} declares length {seg}"
            ));
        }
        let end = pos + 2 + seg;
        if end > len {
            return truncated(format!(
                "inside segment FF{marker:02X} (which declares {seg} bytes from byte {pos})"
            ));
        }
        pos = end;
        if marker != 0xDA {
            continue;
        }
        // Compressed data of a scan: up to the next marker that is not a stuffed zero (FF00),
        // a restart marker (FFD0-FFD7) or fill (FFFF).
        loop {
            match bytes[pos..].iter().position(|&b| b == 0xFF) {
                None => return truncated("inside the compressed image data".into()),
                Some(k) => pos += k,
            }
            match bytes.get(pos + 1) {
                None => return truncated("inside the compressed image data".into()),
                Some(0x00 | 0xD0..=0xD7) => pos += 2,
                Some(0xFF) => pos += 1,
                Some(_) => break,
            }
        }
    }
}

fn image_err(path: &Path, survey: Option<u64>, reason: String) -> DataError {
    DataError::Image {
        path: path.to_path_buf(),
        survey: survey.into(),
        reason,
    }
}

/// Decodes a JPEG patch of `channels` (3: RGB, 1: grey) and side [`PATCH_SIZE`] to
/// interleaved u8 pixels. Headers that do not parse are [`DataError::Image`]; a file that
/// then ends early is [`DataError::Truncated`]; anything else the
/// decoder in strict mode refuses (bad marker, bad Huffman code, ...) is [`DataError::Image`];
/// another size or channel count is [`DataError::Shape`], checked before any pixel is decoded.
/// Pixels are those of the `image` crate (the same decoder, zune-jpeg, with the same output
/// colour space), which only differs in accepting damaged files.
fn decode(path: &Path, survey: Option<u64>, bytes: &[u8], channels: usize) -> Result<Vec<u8>> {
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(PATCH_SIZE * 64)
        .set_max_height(PATCH_SIZE * 64);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder
        .decode_headers()
        .map_err(|e| image_err(path, survey, format!("bad JPEG header: {e}")))?;
    match jpeg_structure(bytes) {
        JpegStructure::Complete => {}
        JpegStructure::Truncated(reason) => {
            return Err(DataError::Truncated {
                path: path.to_path_buf(),
                survey: survey.into(),
                reason,
            });
        }
        JpegStructure::Corrupt(reason) => return Err(image_err(path, survey, reason)),
    }
    let (width, height) = decoder.dimensions().unwrap_or((0, 0));
    let input = decoder.input_colorspace().unwrap_or(ColorSpace::Unknown);
    // The colour space the `image` crate asks for: the file's own for RGB(A)/grey(+alpha),
    // RGB for everything else (YCbCr, CMYK, ...).
    let out = match input {
        ColorSpace::RGB | ColorSpace::RGBA | ColorSpace::Luma | ColorSpace::LumaA => input,
        _ => ColorSpace::RGB,
    };
    let found = out.num_components();
    if width != PATCH_SIZE || height != PATCH_SIZE || found != channels {
        return Err(DataError::Shape {
            path: path.to_path_buf(),
            survey: survey.into(),
            expected: vec![PATCH_SIZE, PATCH_SIZE, channels],
            found: vec![height, width, found],
        });
    }
    decoder.set_options(options.jpeg_set_out_colorspace(out));
    let pixels = decoder
        .decode()
        .map_err(|e| image_err(path, survey, format!("corrupt JPEG data: {e}")))?;
    if pixels.len() != PATCH_SIZE * PATCH_SIZE * channels {
        return Err(image_err(
            path,
            survey,
            format!(
                "decoder returned {} bytes, expected {}",
                pixels.len(),
                PATCH_SIZE * PATCH_SIZE * channels
            ),
        ));
    }
    Ok(pixels)
}

/// Decodes an RGB patch to HWC u8 (128x128x3).
pub fn read_rgb(path: &Path, survey: Option<u64>) -> Result<Vec<u8>> {
    let bytes = read_bytes(path, survey, "RGB patch")?;
    decode(path, survey, &bytes, 3)
}

/// Decodes a NIR patch to HW u8 (128x128).
pub fn read_nir(path: &Path, survey: Option<u64>) -> Result<Vec<u8>> {
    let bytes = read_bytes(path, survey, "NIR patch")?;
    decode(path, survey, &bytes, 1)
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
