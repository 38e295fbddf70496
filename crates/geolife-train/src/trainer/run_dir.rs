//! The run folder: its files, the resolved config written first, `run.json`, the log, the
//! per-epoch metrics table, validation outputs and plots. Everything a run writes is written
//! here, atomically.

use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use geolife_metrics::ScoreFile;
use geolife_model::fusion::FusionConfig;
use serde::{Deserialize, Serialize};

use crate::checkpoint::EpochMetrics;
use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::transform::InputStats;

/// File names inside a run folder.
pub mod files {
    pub const CONFIG: &str = "config.toml";
    pub const RUN: &str = "run.json";
    pub const METRICS: &str = "metrics.csv";
    pub const LOG: &str = "train.log";
    pub const LAST: &str = "last.ckpt";
    pub const BEST: &str = "best.safetensors";
    pub const VAL_SCORES: &str = "val_scores.safetensors";
    /// Labels of the validation surveys in the solution format (`surveyId,predictions`), for
    /// `calibrate`, `ensemble --fit` and `evaluate --labels-from RUN`.
    pub const VAL_LABELS: &str = "val_labels.csv";
    pub const CURVES: &str = "curves.png";
    /// Where this process's epochs spent their time (see `trainer::RunTimes`).
    pub const PROFILE: &str = "profile.json";
    pub const F1_AT_K: &str = "val_f1_at_k.png";
    /// GPU runs: the kernel choices autotuning made during the run (one JSON object a line).
    pub const AUTOTUNE: &str = "autotune.jsonl";
}

/// What prediction needs besides the weights: vocabulary, normalisation, model config and the
/// identity of the data the run was trained on. Saved as `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub geolife_version: String,
    pub dataset_fingerprint: String,
    pub feature_names: Vec<String>,
    /// Real species id of every output column.
    pub species: Vec<u32>,
    pub stats: InputStats,
    pub fusion: FusionConfig,
    /// Validation surveys (ids), for calibrating policies on the same split.
    pub val_survey_ids: Vec<u64>,
}

impl RunInfo {
    /// The description of a run on `manifest`'s data with these outputs, normalisation, model
    /// and validation surveys.
    pub fn new(
        manifest: &geolife_data::cache::Manifest,
        vocab: &crate::vocab::Vocabulary,
        stats: &InputStats,
        fusion: &FusionConfig,
        val_survey_ids: Vec<u64>,
    ) -> Self {
        Self {
            geolife_version: env!("CARGO_PKG_VERSION").into(),
            dataset_fingerprint: manifest.dataset_fingerprint.clone(),
            feature_names: manifest.feature_names.clone(),
            species: vocab.species().to_vec(),
            stats: stats.clone(),
            fusion: fusion.clone(),
            val_survey_ids,
        }
    }

    pub fn load(run_dir: &Path) -> Result<Self, TrainError> {
        read_json(&run_dir.join(files::RUN))
    }

    fn save(&self, run_dir: &Path) -> Result<(), TrainError> {
        write_json(&run_dir.join(files::RUN), self)
    }
}

/// Reads a JSON file of the run (or pipeline) folder; the error names the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| TrainError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `value` as pretty JSON with a final newline, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|source| TrainError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push(b'\n');
    write_atomic(path, &text)
}

/// Atomic write through a temporary file in the same folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    geolife_io::atomic::write_bytes(path, bytes).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    /// Only the log file.
    Quiet,
}

/// An open run folder.
pub struct RunDir {
    root: PathBuf,
    log: std::fs::File,
    /// Log lines also go to stdout (progress `Auto` when stdout is not a terminal).
    echo: bool,
    /// A progress bar is drawn (progress `Auto` on a terminal).
    pub bar: bool,
}

impl RunDir {
    /// Open `root` for a new run (refused when it already holds one; the resolved config is
    /// written first) or for resuming (refused when it holds no run, or one with another
    /// config).
    pub fn open(
        root: &Path,
        cfg: &TrainConfig,
        resume: bool,
        progress: Progress,
    ) -> Result<Self, TrainError> {
        std::fs::create_dir_all(root).map_err(|source| TrainError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let config_path = root.join(files::CONFIG);
        let last_path = root.join(files::LAST);
        if resume {
            if !config_path.is_file() {
                return Err(TrainError::Invalid(format!(
                    "--resume: {} holds no run to resume (no {}); drop --resume to start a new run there",
                    root.display(),
                    files::CONFIG
                )));
            }
            if &TrainConfig::load(&config_path)? != cfg {
                return Err(TrainError::Invalid(format!(
                    "--resume: the config differs from the run's {}; resume with that config (omit --config) or start a new run",
                    config_path.display()
                )));
            }
            if !last_path.is_file() {
                return Err(TrainError::Checkpoint {
                    path: last_path,
                    message: "no checkpoint to resume from".into(),
                });
            }
        } else {
            if last_path.exists() {
                return Err(TrainError::Invalid(format!(
                    "{} already holds a run (last.ckpt exists): use --resume or another --out",
                    root.display()
                )));
            }
            write_atomic(&config_path, cfg.to_toml_string()?.as_bytes())?;
        }
        let log_path = root.join(files::LOG);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| TrainError::Io {
                path: log_path,
                source,
            })?;
        let terminal = std::io::stdout().is_terminal();
        Ok(Self {
            root: root.to_path_buf(),
            log,
            echo: progress == Progress::Auto && !terminal,
            bar: progress == Progress::Auto && terminal,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A file of the run ([`files`]).
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// One line to `train.log` (and stdout when echoing).
    pub fn log(&mut self, text: &str) {
        let _ = writeln!(self.log, "{text}");
        let _ = self.log.flush();
        if self.echo {
            tracing::info!(target: crate::PROGRESS, "{text}");
        }
    }

    /// GPU runs: appends the autotune decisions made since the last call to
    /// [`files::AUTOTUNE`] and says in the log how many there were and where cubecl keeps
    /// them for later runs.
    #[cfg(feature = "wgpu")]
    pub fn record_autotune(&mut self, when: &str) {
        use std::io::Write as _;
        let lines = super::device::autotune::drain();
        let cache = super::device::autotune::cache_dir().map_or_else(
            || "cubecl's configured cache".into(),
            |d| d.display().to_string(),
        );
        if !lines.is_empty() {
            let path = self.path(files::AUTOTUNE);
            let wrote = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all((lines.join("\n") + "\n").as_bytes()));
            if let Err(e) = wrote {
                self.log(&format!("warning: cannot write {}: {e}", path.display()));
            }
        }
        self.log(&format!(
            "autotune {when}: {} kernel choices tuned ({}); choices already in the cache at {cache} were reused",
            lines.len(),
            match lines.is_empty() {
                true => "none new",
                false => files::AUTOTUNE,
            }
        ));
    }

    /// Writes `run.json` for a new run; on resume checks that the data is the run's.
    pub fn record_info(
        &self,
        info: &RunInfo,
        resume: bool,
        cache: &Path,
    ) -> Result<(), TrainError> {
        if !resume {
            return info.save(&self.root);
        }
        let old = RunInfo::load(&self.root)?;
        if old.dataset_fingerprint != info.dataset_fingerprint || old.species != info.species {
            return Err(TrainError::Invalid(format!(
                "--resume: the cache {} was built from another dataset than the run (fingerprint {} vs {})",
                cache.display(),
                info.dataset_fingerprint,
                old.dataset_fingerprint
            )));
        }
        Ok(())
    }

    /// Rewrites `metrics.csv` from the history.
    pub fn write_metrics(&self, history: &[EpochMetrics]) -> Result<(), TrainError> {
        let path = self.path(files::METRICS);
        let bad = |source: csv::Error| TrainError::Csv {
            path: path.clone(),
            source,
        };
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record([
            "epoch",
            "train_loss",
            "val_loss",
            "best_k",
            "val_f1_at_best_k",
            "threshold",
            "threshold_f1",
            "lr",
            "seconds",
        ])
        .map_err(bad)?;
        for r in history {
            w.write_record([
                r.epoch.to_string(),
                format!("{:.6}", r.train_loss),
                format!("{:.6}", r.val_loss),
                r.best_k.to_string(),
                format!("{:.6}", r.val_f1),
                format!("{:.6}", r.threshold),
                format!("{:.6}", r.threshold_f1),
                format!("{:.6e}", r.lr),
                format!("{:.2}", r.seconds),
            ])
            .map_err(bad)?;
        }
        let bytes = w.into_inner().map_err(|e| bad(e.into_error().into()))?;
        write_atomic(&path, &bytes)
    }

    /// The best epoch's validation outputs: scores, labels (solution format) and the F1@K plot.
    pub fn write_validation(
        &self,
        scores: &ScoreFile,
        labels: &[Vec<u32>],
        curve: &[f64],
        epoch: usize,
    ) -> Result<(), TrainError> {
        scores.write(&self.path(files::VAL_SCORES))?;
        write_labels(&self.path(files::VAL_LABELS), &scores.survey_ids, labels)?;
        // A plot is a convenience: a failure to draw it does not stop training.
        let _ = geolife_metrics::plot::plot_f1_at_k(
            &self.path(files::F1_AT_K),
            curve,
            &format!("validation F1@K, epoch {epoch}"),
        );
        Ok(())
    }

    /// `profile.json`: the time breakdown of this process's epochs.
    pub fn write_profile(&self, times: &super::RunTimes) -> Result<(), TrainError> {
        write_json(&self.path(files::PROFILE), times)
    }

    /// `curves.png` of the history; a failure is logged, not fatal.
    pub fn plot_curves(&mut self, history: &[EpochMetrics]) {
        if let Err(e) = crate::plot::plot_curves(&self.path(files::CURVES), history) {
            self.log(&format!("warning: no curves plot: {e}"));
        }
    }
}

/// Label sets in the solution format (`surveyId,predictions`, ids space-separated), atomically.
pub fn write_labels(path: &Path, ids: &[u64], labels: &[Vec<u32>]) -> Result<(), TrainError> {
    let bad = |e: String| TrainError::Invalid(format!("{}: {e}", path.display()));
    if ids.len() != labels.len() {
        return Err(bad(format!(
            "{} survey ids but {} label sets",
            ids.len(),
            labels.len()
        )));
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["surveyId", "predictions"])
        .map_err(|e| bad(e.to_string()))?;
    for (id, l) in ids.iter().zip(labels) {
        let joined = l.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
        w.write_record([id.to_string(), joined])
            .map_err(|e| bad(e.to_string()))?;
    }
    let bytes = w.into_inner().map_err(|e| bad(e.to_string()))?;
    write_atomic(path, &bytes)
}
