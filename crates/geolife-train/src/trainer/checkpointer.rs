//! Checkpoints of a run: `last.ckpt` (position, model record, optimiser record and the full
//! state dict, one checksummed file) to resume from, and `best.safetensors` (the weights of the
//! best validation epoch, with their config and transforms) to predict with. Everything is
//! serialised in memory and written once, atomically. Both are hashed (`last.ckpt`, hundreds of
//! MB with the 11,255-way head and its AdamW moments), written and synced on a writer thread
//! while training goes on; each write starts when the one before has finished, so they land in
//! order, and the run waits for the last one.

use std::path::PathBuf;
use std::sync::Mutex;
use std::thread::JoinHandle;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::{Bytes, Device};
use geolife_model::fusion::{FusionConfig, FusionModel};

use crate::checkpoint::{self, TrainState};
use crate::error::TrainError;

/// Writes and reads a run's checkpoints.
pub struct Checkpointer {
    last: PathBuf,
    best: PathBuf,
    /// The run's `[transforms]` as JSON, recorded in `best.safetensors`.
    transforms_json: String,
    /// The write of the newest `last.ckpt`, if it may still be running.
    pending: Mutex<Option<JoinHandle<Result<(), TrainError>>>>,
}

impl Checkpointer {
    pub fn new(last: PathBuf, best: PathBuf, transforms_json: String) -> Self {
        Self {
            last,
            best,
            transforms_json,
            pending: Mutex::new(None),
        }
    }

    fn err(&self, message: String) -> TrainError {
        TrainError::Checkpoint {
            path: self.last.clone(),
            message,
        }
    }

    /// Writes `last.ckpt`: where training stands, and the model and optimiser to continue.
    /// The values are taken now; the file is written in the background (see [`Self::wait`]).
    pub fn save_last(
        &self,
        state: &TrainState,
        model: &FusionModel,
        fc: &FusionConfig,
        optim: &ModuleOptimizer,
    ) -> Result<(), TrainError> {
        // burn's `RunningState` (BatchNorm running mean/var) keeps the newest update pending per
        // thread and exposes the value one update behind; records read that stale value.
        // `valid()` folds pending updates into the shared value (no change to the maths: the
        // next forward would fold them the same way), so the checkpoint holds the statistics as
        // of this step and a resumed run validates exactly like an uninterrupted one.
        drop(model.valid());
        let model_bytes = model
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| self.err(format!("model record: {e}")))?;
        let optim_bytes = optim
            .into_bytes()
            .map_err(|e| self.err(format!("optimizer record: {e}")))?;
        let weights = geolife_model::checkpoint::fusion_to_bytes(model, fc, None, &self.last)
            .map_err(|e| self.err(format!("weights: {e}")))?;
        let (path, state) = (self.last.clone(), state.clone());
        self.chain(move || checkpoint::save(&path, &state, &model_bytes, &optim_bytes, &weights))
    }

    /// Runs `write` on a writer thread once the pending write (if any) has finished, so the
    /// files land in the order they were asked for (`best.safetensors` before the `last.ckpt`
    /// that records it); a failed earlier write is the new write's error.
    fn chain(
        &self,
        write: impl FnOnce() -> Result<(), TrainError> + Send + 'static,
    ) -> Result<(), TrainError> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let previous = pending.take();
        let panicked = self.err("the checkpoint writer panicked".into());
        let writer = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                if let Some(p) = previous {
                    p.join().unwrap_or(Err(panicked))?;
                }
                write()
            })
            .map_err(|e| self.err(format!("cannot start the checkpoint writer: {e}")))?;
        *pending = Some(writer);
        Ok(())
    }

    /// Waits until every checkpoint asked for is on disk; the first write error, if one failed.
    pub fn wait(&self) -> Result<(), TrainError> {
        let writer = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match writer {
            None => Ok(()),
            Some(w) => w
                .join()
                .unwrap_or_else(|_| Err(self.err("the checkpoint writer panicked".into()))),
        }
    }

    /// Reads `last.ckpt` into a model built from `fc` on `device` and into `optim`.
    pub fn load_last(
        &self,
        fc: &FusionConfig,
        device: &Device,
        optim: ModuleOptimizer,
    ) -> Result<(TrainState, FusionModel, ModuleOptimizer), TrainError> {
        self.wait()?;
        let (state, model_bytes, optim_bytes, weights) = checkpoint::load(&self.last)?;
        // Full state dict first (BatchNorm running statistics), then the burn record on top
        // (same values, plus the parameter ids the optimiser state is keyed by).
        let (model, _) =
            geolife_model::checkpoint::load_safetensors_bytes(fc, &weights, &self.last, device)
                .map_err(|e| self.err(format!("weights: {e}")))?;
        let record = burn::store::ModuleRecord::from_bytes(Bytes::from_bytes_vec(model_bytes))
            .map_err(|e| self.err(format!("model record: {e}")))?;
        let model = model
            .try_load_record(record)
            .map_err(|e| self.err(format!("model record does not fit the config: {e}")))?;
        let optim = optim
            .from_bytes(Bytes::from_bytes_vec(optim_bytes))
            .map_err(|e| self.err(format!("optimizer record: {e}")))?;
        Ok((state, model, optim))
    }

    /// Writes `best.safetensors` (inference model, config and transforms in its metadata). The
    /// values are taken now; the file is written and synced on the writer thread, before any
    /// `last.ckpt` asked for after it (see [`Self::wait`]).
    pub fn save_best(&self, model: &FusionModel, fc: &FusionConfig) -> Result<(), TrainError> {
        let err = |message: String| TrainError::Checkpoint {
            path: self.best.clone(),
            message,
        };
        let bytes = geolife_model::checkpoint::fusion_to_bytes(
            model,
            fc,
            Some(&self.transforms_json),
            &self.best,
        )
        .map_err(|e| err(e.to_string()))?;
        let path = self.best.clone();
        self.chain(move || {
            geolife_data::atomic::write_bytes(&path, &bytes).map_err(|e| TrainError::Checkpoint {
                message: format!("cannot write: {e}"),
                path,
            })
        })
    }
}

impl Drop for Checkpointer {
    /// A run that ends early (an error) still leaves its newest `last.ckpt` whole on disk.
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            tracing::error!("{e}");
        }
    }
}
