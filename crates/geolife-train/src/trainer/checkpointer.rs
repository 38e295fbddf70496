//! Checkpoints of a run: `last.ckpt` (position, parameter ids, optimiser record and the full
//! state dict, one checksummed file) to resume from, and `best.safetensors` (the weights of the
//! best validation epoch, with their config and transforms) to predict with. Everything is
//! serialised in memory, once per epoch (an improving epoch's weights serve both files), and
//! written atomically. `last.ckpt` (hundreds of MB with the 11,255-way head and its AdamW
//! moments) is checksummed, written and synced on a writer thread while training goes on, and
//! `best.safetensors` too; each write starts when the one before has finished, so they land in
//! order, and the run waits for the last one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::{Bytes, Device};
use geolife_model::fusion::{FusionConfig, FusionModel};

use crate::checkpoint::{self, ParamIds, TrainState};
use crate::error::TrainError;

/// A model's serialised state dict, shared by the writes of one epoch.
pub type Weights = Arc<Vec<u8>>;

/// Writes and reads a run's checkpoints.
pub struct Checkpointer {
    last: PathBuf,
    best: PathBuf,
    /// The run's `[transforms]` as JSON, recorded in `best.safetensors`.
    transforms_json: String,
    /// The tabular feature names in the model's input order, recorded in `best.safetensors`.
    feature_names: Vec<String>,
    /// The `[location]` section as JSON when the model takes the prior, recorded there too.
    location_json: Option<String>,
    /// The species id of every output column, recorded there too.
    species: Option<Vec<u32>>,
    /// The write of the newest `last.ckpt`, if it may still be running.
    pending: Mutex<Option<JoinHandle<Result<(), TrainError>>>>,
}

impl Checkpointer {
    pub fn new(
        last: PathBuf,
        best: PathBuf,
        transforms_json: String,
        feature_names: Vec<String>,
    ) -> Self {
        Self {
            last,
            best,
            transforms_json,
            feature_names,
            location_json: None,
            species: None,
            pending: Mutex::new(None),
        }
    }

    /// Also records the location-prior settings (`[location]` as JSON) of a prior-input model.
    pub fn with_location(mut self, location_json: Option<String>) -> Self {
        self.location_json = location_json;
        self
    }

    /// Also records the species id of every output column.
    pub fn with_species(mut self, species: Vec<u32>) -> Self {
        self.species = Some(species);
        self
    }

    fn err(&self, message: String) -> TrainError {
        TrainError::Checkpoint {
            path: self.last.clone(),
            message,
        }
    }

    /// The state-dict bytes of `model` as `best.safetensors` holds them (config and transforms
    /// in the metadata). An epoch that improves hands the same bytes to [`Self::save_best`] and
    /// [`Self::save_last`], so the weights are serialised once, not twice.
    pub fn weights(&self, model: &FusionModel, fc: &FusionConfig) -> Result<Weights, TrainError> {
        self.serialise(model, fc, &self.best)
    }

    /// [`Self::weights`], an error naming `path` (the file the bytes are for).
    fn serialise(
        &self,
        model: &FusionModel,
        fc: &FusionConfig,
        path: &Path,
    ) -> Result<Weights, TrainError> {
        let inputs = geolife_model::checkpoint::InputsMeta {
            transforms_json: Some(&self.transforms_json),
            feature_names: Some(&self.feature_names),
            location_json: self.location_json.as_deref(),
            species: self.species.as_deref(),
        };
        geolife_model::checkpoint::fusion_to_bytes(model, fc, inputs, path)
            .map(Arc::new)
            .map_err(|e| TrainError::Checkpoint {
                path: path.to_path_buf(),
                message: format!("weights: {e}"),
            })
    }

    /// Writes `last.ckpt`: where training stands, and the model and optimiser to continue.
    /// `weights` are `model`'s from [`Self::weights`] when the caller already has them. The
    /// values are taken now; the file is written in the background (see [`Self::wait`]).
    pub fn save_last(
        &self,
        state: &TrainState,
        model: &FusionModel,
        fc: &FusionConfig,
        optim: &ModuleOptimizer,
        weights: Option<Weights>,
    ) -> Result<(), TrainError> {
        let weights = match weights {
            Some(w) => w,
            // burn's `RunningState` (BatchNorm running mean/var) keeps the newest update
            // pending per thread; the state dict folds it in first (`valid()`), so the
            // checkpoint holds the statistics as of this step and a resumed run validates
            // exactly like an uninterrupted one.
            None => self.serialise(model, fc, &self.last)?,
        };
        let ids = geolife_model::state::param_ids(model);
        // The moments are copied out now; encoding them (another copy, 300 MB for the paper
        // preset) is the writer's work.
        let record = optim.to_record();
        let (path, state) = (self.last.clone(), state.clone());
        self.chain(move || {
            let optim_bytes = record.into_bytes().map_err(|e| TrainError::Checkpoint {
                path: path.clone(),
                message: format!("optimizer record: {e}"),
            })?;
            checkpoint::save(&path, &state, &ids, &optim_bytes, &weights)
        })
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
        let loaded = checkpoint::load(&self.last)?;
        let (model, _) = geolife_model::checkpoint::load_safetensors_bytes(
            fc,
            &loaded.weights,
            &self.last,
            device,
        )
        .map_err(|e| self.err(format!("weights: {e}")))?;
        // The state dict holds the values; the optimiser state is keyed by the ids the
        // parameters had when it was written.
        let model = match loaded.ids {
            ParamIds::Listed(ids) => geolife_model::state::with_param_ids(model, &ids)
                .map_err(|e| self.err(format!("parameter ids do not fit the config: {e}")))?,
            ParamIds::Record(bytes) => {
                let record = burn::store::ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
                    .map_err(|e| self.err(format!("model record: {e}")))?;
                model
                    .try_load_record(record)
                    .map_err(|e| self.err(format!("model record does not fit the config: {e}")))?
            }
        };
        let optim = optim
            .from_bytes(Bytes::from_bytes_vec(loaded.optim))
            .map_err(|e| self.err(format!("optimizer record: {e}")))?;
        Ok((loaded.state, model, optim))
    }

    /// Writes `best.safetensors`: `weights` from [`Self::weights`] (inference model, config and
    /// transforms in its metadata). The file is written and synced on the writer thread, before
    /// any `last.ckpt` asked for after it (see [`Self::wait`]).
    pub fn save_best(&self, weights: Weights) -> Result<(), TrainError> {
        let path = self.best.clone();
        self.chain(move || {
            geolife_io::atomic::write_bytes(&path, &weights).map_err(|e| TrainError::Checkpoint {
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
            tracing::error!("{}", geolife_io::error_text(&e));
        }
    }
}
