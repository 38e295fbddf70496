//! Resumable training checkpoints: one file holding the training position (JSON), the ids of
//! the model's parameters (the optimiser state is keyed by them), the optimiser record
//! (burnpack) and the full state dict (safetensors), with a CRC-32 of everything before it.
//! Written to a temporary name then renamed, so a failed write keeps the previous file.
//! Checkpoints of the previous layout (`v2`: the whole burn model record instead of the ids,
//! FNV-1a checksum) are still read, so a run started by an older geolife resumes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

const MAGIC: &[u8; 16] = b"GEOLIFE-CKPT-v3\n";
/// The previous layout: sections (state, burn model record, optimiser, weights), FNV-1a 64.
const MAGIC_V2: &[u8; 16] = b"GEOLIFE-CKPT-v2\n";

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
    /// The dynamic loss scale of an f16 run (absent in other runs and older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScale>,
}

/// PyTorch `GradScaler`'s dynamic loss scale, with its defaults: start at `train.loss_scale`
/// (2^16), halve on a step whose gradients overflow (that step is skipped), double after 2,000
/// steps in a row without.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LossScale {
    pub scale: f32,
    /// Steps since the last overflow or growth.
    pub good_steps: u32,
    /// Steps skipped for overflow so far in the run.
    pub skipped: u64,
}

impl LossScale {
    const GROWTH_INTERVAL: u32 = 2000;

    /// A run's first scale (`train.loss_scale`).
    pub fn start(scale: f32) -> Self {
        Self {
            scale,
            good_steps: 0,
            skipped: 0,
        }
    }

    /// After a step whose gradients were `finite` (or overflowed).
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps == Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale * 0.5).max(f32::MIN_POSITIVE);
            self.good_steps = 0;
            self.skipped += 1;
        }
    }
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
            loss_scale: None,
        }
    }
}

/// FNV-1a 64 of the payload (the `fnv` crate): the checksum of `v2` checkpoints.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    std::hash::Hasher::write(&mut h, bytes);
    std::hash::Hasher::finish(&h)
}

/// CRC-32 of the payload (the `crc32fast` crate, vectorised: FNV-1a, one byte per multiply,
/// took half a second of the writer's time on each `last.ckpt` of the paper preset).
fn crc(bytes: &[u8]) -> u64 {
    u64::from(crc32fast::hash(bytes))
}

/// Write a checkpoint atomically: the training position, the ids of the model's float
/// parameters in visiting order (`geolife_model::state::param_ids`), the optimiser record and
/// `weights`, the full state dict (safetensors, with BatchNorm running statistics).
pub fn save(
    path: &Path,
    state: &TrainState,
    param_ids: &[u64],
    optim: &[u8],
    weights: &[u8],
) -> Result<(), TrainError> {
    let json = serde_json::to_vec(state).map_err(|e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("cannot serialise the training state: {e}"),
    })?;
    let ids: Vec<u8> = param_ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    // Streamed into the file and the checksum together: no second copy of the sections.
    let mut hash = crc32fast::Hasher::new();
    geolife_io::atomic::write_with(path, |w| {
        let mut put = |bytes: &[u8]| {
            hash.update(bytes);
            w.write_all(bytes)
        };
        put(MAGIC)?;
        for part in [&json[..], &ids, optim, weights] {
            put(&(part.len() as u64).to_le_bytes())?;
            put(part)?;
        }
        w.write_all(&u64::from(hash.clone().finalize()).to_le_bytes())
    })
    .map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// How a checkpoint names the model's parameters for the optimiser state.
#[derive(Debug, PartialEq)]
pub enum ParamIds {
    /// The ids in visiting order (current layout).
    Listed(Vec<u64>),
    /// The burn model record of a `v2` checkpoint (it holds the ids).
    Record(Vec<u8>),
}

/// A checkpoint's sections.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    pub state: TrainState,
    pub ids: ParamIds,
    /// The optimiser record (burnpack).
    pub optim: Vec<u8>,
    /// The full state dict (safetensors).
    pub weights: Vec<u8>,
}

/// Read a checkpoint (this layout or `v2`), verifying its header and checksum.
pub fn load(path: &Path) -> Result<LoadedCheckpoint, TrainError> {
    let bad = |message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let buf = std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let head = buf.get(..MAGIC.len());
    let v2 = head == Some(&MAGIC_V2[..]);
    if buf.len() < MAGIC.len() + 8 || !(v2 || head == Some(&MAGIC[..])) {
        return Err(bad("not a geolife training checkpoint (bad header)".into()));
    }
    let (body, tail) = buf.split_at(buf.len() - 8);
    let stored = u64::from_le_bytes(tail.try_into().unwrap_or([0; 8]));
    let sum = if v2 { fnv(body) } else { crc(body) };
    if sum != stored {
        return Err(bad(
            "checksum mismatch: the file is truncated or corrupted".into()
        ));
    }
    let mut pos = MAGIC.len();
    let mut section = |name: &str| -> Result<Vec<u8>, TrainError> {
        let len_bytes: [u8; 8] = body
            .get(pos..pos + 8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| bad(format!("truncated before the {name} section")))?;
        let len = u64::from_le_bytes(len_bytes) as usize;
        pos += 8;
        let part = body
            .get(pos..pos.saturating_add(len))
            .ok_or_else(|| bad(format!("truncated {name} section")))?;
        pos += len;
        Ok(part.to_vec())
    };
    let state_json = section("state")?;
    let ids = match v2 {
        true => ParamIds::Record(section("model")?),
        false => {
            let bytes = section("parameter ids")?;
            if bytes.len() % 8 != 0 {
                return Err(bad(format!(
                    "the parameter-id section holds {} bytes, not a whole number of 8-byte ids",
                    bytes.len()
                )));
            }
            ParamIds::Listed(
                bytes
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            )
        }
    };
    let optim = section("optimizer")?;
    let weights = section("weights")?;
    let state: TrainState = serde_json::from_slice(&state_json)
        .map_err(|e| bad(format!("unreadable training state: {e}")))?;
    Ok(LoadedCheckpoint {
        state,
        ids,
        optim,
        weights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_scale_halves_on_overflow_and_doubles_after_2000_good_steps() {
        let mut s = LossScale::start(1024.0);
        for _ in 0..1999 {
            s.update(true);
        }
        assert_eq!((s.scale, s.good_steps), (1024.0, 1999));
        s.update(true);
        assert_eq!((s.scale, s.good_steps), (2048.0, 0));
        s.update(true);
        s.update(false);
        assert_eq!((s.scale, s.good_steps, s.skipped), (1024.0, 0, 1));
        // An old checkpoint's state (no loss_scale key) reads as None; a new one round-trips.
        let mut state = TrainState::start();
        let old = serde_json::to_string(&state).unwrap();
        assert!(!old.contains("loss_scale"), "{old}");
        state.loss_scale = Some(s);
        let back: TrainState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(back, state);
        let plain: TrainState = serde_json::from_str(&old).unwrap();
        assert_eq!(plain.loss_scale, None);
    }

    #[test]
    fn round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.ckpt");
        let mut state = TrainState::start();
        state.epoch = 3;
        state.loss_sum = 1.25;
        let ids = [7u64, u64::MAX, 0, 123_456_789_012];
        save(&path, &state, &ids, b"optim", b"w").unwrap();
        let c = load(&path).unwrap();
        assert_eq!(c.weights, b"w");
        assert_eq!(c.state, state);
        assert_eq!(c.ids, ParamIds::Listed(ids.to_vec()));
        assert_eq!(c.optim, b"optim");
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        std::fs::write(&path, &bytes[..20]).unwrap();
        assert!(load(&path).is_err());
    }

    /// A `v2` file (written here by hand in that layout: sections state, model record,
    /// optimiser, weights, then FNV-1a 64) still loads, its model section as the record.
    #[test]
    fn a_v2_checkpoint_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.ckpt");
        let state = TrainState::start();
        let mut body = MAGIC_V2.to_vec();
        for part in [
            &serde_json::to_vec(&state).unwrap()[..],
            b"record",
            b"optim",
            b"w",
        ] {
            body.extend((part.len() as u64).to_le_bytes());
            body.extend(part);
        }
        let sum = fnv(&body);
        body.extend(sum.to_le_bytes());
        std::fs::write(&path, &body).unwrap();
        let c = load(&path).unwrap();
        assert_eq!(c.state, state);
        assert_eq!(c.ids, ParamIds::Record(b"record".to_vec()));
        assert_eq!(
            (c.optim.as_slice(), c.weights.as_slice()),
            (&b"optim"[..], &b"w"[..])
        );
        // The same bytes under the current header fail the (CRC-32) checksum.
        body[..MAGIC.len()].copy_from_slice(MAGIC);
        std::fs::write(&path, &body).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("checksum"));
    }

    /// A write that fails (here: the target is a folder, so the final rename fails) leaves
    /// no temporary file behind and the target untouched; the mechanism itself (a failed
    /// write keeps the previous file) is tested in `geolife_io::atomic`.
    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.ckpt");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), b"blocker").unwrap();
        let e = save(&path, &TrainState::start(), &[1], b"o", b"w").unwrap_err();
        assert!(e.to_string().contains("last.ckpt"), "{e}");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["last.ckpt"]);
        assert_eq!(std::fs::read(path.join("x")).unwrap(), b"blocker");
    }

    #[test]
    fn checksums_match_reference_vectors() {
        // FNV-1a 64 of "a" (the FNV specification's test vectors) and the CRC-32 check value
        // of "123456789" (the CRC catalogue's CRC-32/ISO-HDLC entry).
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(crc(b"123456789"), 0xcbf4_3926);
    }
}
