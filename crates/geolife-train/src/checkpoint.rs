//! Resumable training checkpoints: one file holding the training position (JSON), the model
//! record and the optimiser record (burnpack, parameter ids kept so the optimiser state maps
//! back). Written to a temporary name then renamed, so a failed write keeps the previous file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

const MAGIC: &[u8; 16] = b"GEOLIFE-CKPT-v2\n";

/// One epoch's row of `metrics.csv`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    /// K with the best validation samples-F1 over the F1@K curve, and that F1.
    pub best_k: usize,
    pub val_f1: f64,
    /// Best single global probability threshold and its F1.
    pub threshold: f32,
    pub threshold_f1: f64,
    pub lr: f64,
    pub seconds: f64,
}

/// Where training stands: the next epoch and batch to run, and what is needed to continue as if
/// uninterrupted (RNG streams are derived from the seed, epoch and batch index, so the position
/// is the RNG state).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    pub epoch: usize,
    pub batch: usize,
    pub optimizer_steps: usize,
    pub loss_sum: f64,
    pub loss_count: usize,
    pub best_f1: f64,
    pub best_epoch: Option<usize>,
    pub history: Vec<EpochMetrics>,
}

impl TrainState {
    pub fn start() -> Self {
        Self {
            epoch: 0,
            batch: 0,
            optimizer_steps: 0,
            loss_sum: 0.0,
            loss_count: 0,
            // F1 is in [0, 1]; -1 means "no validation yet" (JSON has no -inf).
            best_f1: -1.0,
            best_epoch: None,
            history: Vec::new(),
        }
    }
}

/// FNV-1a 64 of the payload (the `fnv` crate), to detect truncated or corrupted files.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    std::hash::Hasher::write(&mut h, bytes);
    std::hash::Hasher::finish(&h)
}

/// Write a checkpoint atomically.
/// `weights` is the full state dict (safetensors, with BatchNorm running statistics, which the
/// burn record does not hold); `model` is the burn record (parameter ids for the optimiser).
pub fn save(
    path: &Path,
    state: &TrainState,
    model: &[u8],
    optim: &[u8],
    weights: &[u8],
) -> Result<(), TrainError> {
    let json = serde_json::to_vec(state).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("cannot serialise the training state: {e}"),
    })?;
    // Streamed into the file and the checksum together: no second copy of the sections.
    let mut hash = fnv::FnvHasher::default();
    geolife_data::atomic::write_with(path, |w| {
        let mut put = |bytes: &[u8]| {
            std::hash::Hasher::write(&mut hash, bytes);
            w.write_all(bytes)
        };
        put(MAGIC)?;
        for part in [&json[..], model, optim, weights] {
            put(&(part.len() as u64).to_le_bytes())?;
            put(part)?;
        }
        w.write_all(&std::hash::Hasher::finish(&hash).to_le_bytes())
    })
    .map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A checkpoint's sections: (state, model record bytes, optimiser record bytes, state-dict bytes).
pub type LoadedCheckpoint = (TrainState, Vec<u8>, Vec<u8>, Vec<u8>);

/// Read a checkpoint, verifying its header and checksum.
pub fn load(path: &Path) -> Result<LoadedCheckpoint, TrainError> {
    let bad = |message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let buf = std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if buf.len() < MAGIC.len() + 8 || &buf[..MAGIC.len()] != MAGIC {
        return Err(bad("not a geolife training checkpoint (bad header)".into()));
    }
    let (body, tail) = buf.split_at(buf.len() - 8);
    let stored = u64::from_le_bytes(tail.try_into().unwrap_or([0; 8]));
    if fnv(body) != stored {
        return Err(bad(
            "checksum mismatch: the file is truncated or corrupted".into()
        ));
    }
    let mut pos = MAGIC.len();
    let mut parts = Vec::with_capacity(3);
    for name in ["state", "model", "optimizer", "weights"] {
        let len_bytes: [u8; 8] = body
            .get(pos..pos + 8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad(format!("truncated before the {name} section")))?;
        let len = u64::from_le_bytes(len_bytes) as usize;
        pos += 8;
        let part = body
            .get(pos..pos.saturating_add(len))
            .ok_or_else(|| bad(format!("truncated {name} section")))?;
        parts.push(part.to_vec());
        pos += len;
    }
    let weights = parts.pop().unwrap_or_default();
    let optim = parts.pop().unwrap_or_default();
    let model = parts.pop().unwrap_or_default();
    let state_json = parts.pop().unwrap_or_default();
    let state: TrainState = serde_json::from_slice(&state_json)
        .map_err(|e| bad(format!("unreadable training state: {e}")))?;
    Ok((state, model, optim, weights))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.ckpt");
        let mut state = TrainState::start();
        state.epoch = 3;
        state.loss_sum = 1.25;
        save(&path, &state, b"model-bytes", b"optim", b"w").unwrap();
        let (s, m, o, w) = load(&path).unwrap();
        assert_eq!(w, b"w");
        assert_eq!(s, state);
        assert_eq!(m, b"model-bytes");
        assert_eq!(o, b"optim");
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        std::fs::write(&path, &bytes[..20]).unwrap();
        assert!(load(&path).is_err());
    }

    /// A write that fails (here: the target is a folder, so the final rename fails) leaves
    /// no temporary file behind and the target untouched; the mechanism itself (a failed
    /// write keeps the previous file) is tested in `geolife_data::atomic`.
    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.ckpt");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), b"blocker").unwrap();
        let e = save(&path, &TrainState::start(), b"m", b"o", b"w").unwrap_err();
        assert!(e.to_string().contains("last.ckpt"), "{e}");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["last.ckpt"]);
        assert_eq!(std::fs::read(path.join("x")).unwrap(), b"blocker");
    }

    #[test]
    fn fnv_matches_reference_vector() {
        // FNV-1a 64 of "a" (reference value from the FNV specification's test vectors).
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
