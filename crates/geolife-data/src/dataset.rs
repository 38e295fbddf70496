//! The raw-dataset reader: one object over a dataset root that verifies the layout up front
//! and serves surveys, labels, tabular features, cubes and patches by split and survey id.

use std::path::{Path, PathBuf};

use crate::cubes::{BIOCLIM_SHAPE, LANDSAT_SHAPE, NanPolicy, read_cube};
use crate::env::{EnvGroup, TabularTable, group_columns, read_tabular_with};
use crate::layout::{CubeKind, Layout, PatchKind, metadata_csv};
use crate::metadata::{PaMetadata, SurveyMeta, read_pa_metadata};
use crate::patches::read_patch_pair;
use crate::{DataError, Result, Split};

/// How the dataset is read.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetOptions {
    /// Environmental groups of the tabular vector, in order (default: the seed's 46 features).
    pub env_groups: Vec<EnvGroup>,
    /// Non-finite cube values (default: the seed's NaN -> 0).
    pub cube_nan: NanPolicy,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        DatasetOptions {
            env_groups: EnvGroup::SEED.to_vec(),
            cube_nan: NanPolicy::Zero,
        }
    }
}

/// A dataset root in the official GLC24 layout.
#[derive(Debug)]
pub struct Dataset {
    layout: Layout,
    opts: DatasetOptions,
    train: PaMetadata,
    test: Option<PaMetadata>,
}

impl Dataset {
    /// Verifies the layout (train metadata required) and reads the PA metadata of both splits
    /// (test when present).
    pub fn open(root: &Path, opts: DatasetOptions) -> Result<Dataset> {
        if opts.env_groups.is_empty() {
            return Err(DataError::Invalid("env_groups is empty".into()));
        }
        let layout = Layout::scan(root)?;
        let train = read_pa_metadata(&root.join(metadata_csv(Split::Train)), Split::Train)?;
        let test = if layout.test.metadata {
            Some(read_pa_metadata(
                &root.join(metadata_csv(Split::Test)),
                Split::Test,
            )?)
        } else {
            None
        };
        Ok(Dataset {
            layout,
            opts,
            train,
            test,
        })
    }

    /// The dataset root.
    pub fn root(&self) -> &Path {
        &self.layout.root
    }

    /// What the root holds.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The options the dataset was opened with.
    pub fn options(&self) -> &DatasetOptions {
        &self.opts
    }

    /// The parsed metadata of `split` (rows, duplicates, ...).
    pub fn metadata(&self, split: Split) -> Result<&PaMetadata> {
        match split {
            Split::Train => Ok(&self.train),
            Split::Test => self.test.as_ref().ok_or_else(|| DataError::Missing {
                path: self.root().join(metadata_csv(Split::Test)),
                survey: None.into(),
                what: "PA test metadata".into(),
                hint:
                    "copy GLC24_PA_metadata_test.csv from the Kaggle download into the dataset root"
                        .into(),
            }),
        }
    }

    /// De-duplicated surveys of `split`, sorted by survey id.
    pub fn surveys(&self, split: Split) -> Result<&[SurveyMeta]> {
        Ok(&self.metadata(split)?.surveys)
    }

    /// Sorted distinct species ids per survey, aligned with [`Dataset::surveys`]; `None` for
    /// test (or a split without metadata).
    pub fn labels(&self, split: Split) -> Option<&[Vec<u32>]> {
        match split {
            Split::Train => self.train.labels.as_deref(),
            Split::Test => None,
        }
    }

    /// Index of `survey_id` in [`Dataset::surveys`].
    pub fn index_of(&self, split: Split, survey_id: u64) -> Option<usize> {
        self.metadata(split).ok()?.index_of(survey_id)
    }

    /// Tabular features of `split`: the option's groups merged on `surveyId`, raw values,
    /// aligned with [`Dataset::surveys`]. A survey absent from a CSV gets NaN and is listed in
    /// `coverage` (and counted in `missing_rows`); a missing CSV is an error, and so is a
    /// survey with two rows that disagree ([`DataError::ConflictingRows`]).
    pub fn tabular(&self, split: Split) -> Result<TabularTable> {
        let t = self.tabular_report(split)?;
        t.check_conflicts()?;
        Ok(t)
    }

    /// [`Dataset::tabular`] that lists surveys with conflicting rows in `coverage` (their
    /// first row's values in the table) instead of failing: for callers that report or skip
    /// them per survey (`prepare --skip-bad`, `inspect`).
    ///
    /// Column order is the seed's: each train CSV's header order, file after file; the test
    /// split takes the train files' order (read by name) so its columns align with train's, or
    /// its own files' order when the root has no train CSV.
    pub fn tabular_report(&self, split: Split) -> Result<TabularTable> {
        let ids: Vec<u64> = self.surveys(split)?.iter().map(|s| s.survey_id).collect();
        read_tabular_with(
            &self.opts.env_groups,
            &ids,
            |g| self.layout.require_env(g, split),
            |g| {
                let order = self
                    .layout
                    .require_env(g, Split::Train)
                    .or_else(|_| self.layout.require_env(g, split))?;
                group_columns(&order, g)
            },
        )
    }

    /// Path of the cube file of a survey (both name templates tried).
    pub fn cube_path(&self, kind: CubeKind, split: Split, survey_id: u64) -> Result<PathBuf> {
        kind.find(self.root(), split, survey_id)
    }

    /// Path of a patch file of a survey (the CD/AB rule; not checked for existence).
    pub fn patch_path(&self, kind: PatchKind, split: Split, survey_id: u64) -> PathBuf {
        kind.path(self.root(), split, survey_id)
    }

    /// The Landsat cube, 6*4*21 f32 in C order, NaN policy applied.
    pub fn read_landsat(&self, split: Split, survey_id: u64) -> Result<Vec<f32>> {
        let p = self.cube_path(CubeKind::Landsat, split, survey_id)?;
        read_cube(&p, Some(survey_id), &LANDSAT_SHAPE, self.opts.cube_nan)
    }

    /// The bioclimatic cube, 4*19*12 f32 in C order, NaN policy applied.
    pub fn read_bioclim(&self, split: Split, survey_id: u64) -> Result<Vec<f32>> {
        let p = self.cube_path(CubeKind::Bioclim, split, survey_id)?;
        read_cube(&p, Some(survey_id), &BIOCLIM_SHAPE, self.opts.cube_nan)
    }

    /// The 4x128x128 CHW patch (R, G, B, NIR).
    pub fn read_patch(&self, split: Split, survey_id: u64) -> Result<Vec<u8>> {
        read_patch_pair(
            &self.patch_path(PatchKind::Rgb, split, survey_id),
            &self.patch_path(PatchKind::Nir, split, survey_id),
            Some(survey_id),
        )
    }
}
