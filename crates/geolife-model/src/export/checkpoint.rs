//! geolife checkpoints: one safetensors file with torchvision/seed-compatible tensor names
//! (loadable by PyTorch's `load_state_dict`) and the model config as JSON in its metadata.
//! Files are written atomically (temporary name in the same folder, then rename).
//! Kept over burn-store 0.22.1's `SafetensorsStore`: its hash-ordered, version-stamped metadata
//! makes the bytes irreproducible, and it never writes `num_batches_tracked`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use burn::tensor::Device;
use safetensors::{Dtype, tensor::TensorView};

use crate::error::ModelError;
use crate::fusion::{FusionConfig, FusionModel};
use crate::import::parse_safetensors;
use crate::state::{LoadReport, StateDict, TorchNamed, load_state_dict, state_dict};

/// Metadata key holding the config JSON.
pub const CONFIG_KEY: &str = "geolife_config";
/// Metadata key holding the model kind (`fusion`, or a backbone registry name).
pub const KIND_KEY: &str = "geolife_model";
/// Metadata key holding the input transforms the weights were trained with, as JSON (the
/// training crate's `[transforms]` section, e.g. `{"mode":"seed",...}`), so that prediction
/// feeds the model what it learned from.
pub const TRANSFORMS_KEY: &str = "geolife_transforms";
/// Metadata key holding the tabular feature names in the order the model's tabular input takes
/// them, as a JSON list: `predict` and `train --resume` map a cache's columns onto them by name.
pub const FEATURES_KEY: &str = "geolife_features";
/// Metadata key holding the location-prior settings of a model that takes the prior as an input
/// (the training crate's `[location]` section as JSON), so `predict --weights` rebuilds the same
/// prior without a config.
pub const LOCATION_KEY: &str = "geolife_location";
/// Metadata key holding the real species id of every output column, as a JSON list, for models
/// trained with a compact vocabulary (without it, column = species id, as in the seed).
pub const SPECIES_KEY: &str = "geolife_species";

/// What a fusion checkpoint records besides its config: how its inputs were built.
#[derive(Debug, Clone, Copy, Default)]
pub struct InputsMeta<'a> {
    /// The input transforms as JSON ([`TRANSFORMS_KEY`]).
    pub transforms_json: Option<&'a str>,
    /// The tabular feature names in input order ([`FEATURES_KEY`]).
    pub feature_names: Option<&'a [String]>,
    /// The location-prior settings as JSON ([`LOCATION_KEY`]).
    pub location_json: Option<&'a str>,
    /// The species id of every output column ([`SPECIES_KEY`]).
    pub species: Option<&'a [u32]>,
}

/// One tensor to serialise: name, bytes (borrowed from the state dict when they can be), shape
/// and dtype.
type Entry<'a> = (String, Cow<'a, [u8]>, Vec<usize>, Dtype);

/// Write a state dict (plus a zero `num_batches_tracked` for each BatchNorm, as PyTorch expects)
/// as safetensors with `metadata`, atomically.
pub fn write_state_dict(
    dict: &StateDict,
    metadata: HashMap<String, String>,
    path: &Path,
) -> Result<(), ModelError> {
    let buffer = serialize_state_dict(dict, metadata, path)?;
    atomic_write(path, &buffer).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The safetensors bytes [`write_state_dict`] writes, in memory (for training checkpoints,
/// which bundle them with the optimiser state). `path` only names the file in errors.
pub fn serialize_state_dict(
    dict: &StateDict,
    metadata: HashMap<String, String>,
    path: &Path,
) -> Result<Vec<u8>, ModelError> {
    // safetensors stores little-endian values: on a little-endian machine the f32 values are
    // their own bytes (borrowed, not copied).
    let bytes: Vec<Entry> = dict
        .iter()
        .map(|(k, t)| {
            let b = if cfg!(target_endian = "little") {
                Cow::Borrowed(bytemuck::cast_slice(&t.data))
            } else {
                Cow::Owned(t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
            };
            (k.clone(), b, t.shape.clone(), Dtype::F32)
        })
        .chain(
            dict.keys()
                .filter_map(|k| k.strip_suffix("running_mean"))
                .map(|p| {
                    let k = format!("{p}num_batches_tracked");
                    (
                        k,
                        Cow::Owned(0i64.to_le_bytes().to_vec()),
                        vec![],
                        Dtype::I64,
                    )
                }),
        )
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (k, b, shape, dtype) in &bytes {
        let view =
            TensorView::new(*dtype, shape.clone(), b).map_err(|e| ModelError::BadWeightFile {
                path: path.to_path_buf(),
                reason: format!("cannot serialise `{k}`: {e}"),
            })?;
        views.push((k.clone(), view));
    }
    let mut meta = metadata;
    meta.entry("format".into()).or_insert_with(|| "pt".into());
    let mut buffer =
        safetensors::serialize(views, &Some(meta)).map_err(|e| ModelError::BadWeightFile {
            path: path.to_path_buf(),
            reason: format!("serialisation failed: {e}"),
        })?;
    geolife_io::reproducible::sort_safetensors_header(&mut buffer);
    Ok(buffer)
}

/// Write `bytes` to `path` atomically ([`geolife_io::atomic`]).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    geolife_io::atomic::write_bytes(path, bytes)
}

/// Save any torch-named module with the given metadata.
pub fn save_module<M: TorchNamed>(
    model: &M,
    metadata: HashMap<String, String>,
    path: &Path,
) -> Result<(), ModelError> {
    write_state_dict(&state_dict(model), metadata, path)
}

/// Save a fusion model and its config (geolife checkpoint = seed-compatible state dict).
pub fn save_safetensors(
    model: &FusionModel,
    config: &FusionConfig,
    path: &Path,
) -> Result<(), ModelError> {
    save_safetensors_with(model, config, InputsMeta::default(), path)
}

/// [`save_safetensors`] that also records how the inputs were built (transforms, feature names).
pub fn save_safetensors_with(
    model: &FusionModel,
    config: &FusionConfig,
    inputs: InputsMeta<'_>,
    path: &Path,
) -> Result<(), ModelError> {
    let meta = fusion_metadata(config, inputs, path)?;
    save_module(model, meta, path)
}

/// The bytes of the checkpoint [`save_safetensors_with`] writes, in memory.
pub fn fusion_to_bytes(
    model: &FusionModel,
    config: &FusionConfig,
    inputs: InputsMeta<'_>,
    path: &Path,
) -> Result<Vec<u8>, ModelError> {
    let meta = fusion_metadata(config, inputs, path)?;
    serialize_state_dict(&state_dict(model), meta, path)
}

/// Checkpoint metadata of a fusion model: its config, kind and what `inputs` records.
fn fusion_metadata(
    config: &FusionConfig,
    inputs: InputsMeta<'_>,
    path: &Path,
) -> Result<HashMap<String, String>, ModelError> {
    let bad = |e: serde_json::Error| ModelError::BadCheckpointConfig {
        path: path.to_path_buf(),
        reason: format!("cannot serialise the metadata: {e}"),
    };
    if let Some(names) = inputs.feature_names
        && config.use_tabular
        && names.len() != config.num_features
    {
        return Err(ModelError::BadCheckpointConfig {
            path: path.to_path_buf(),
            reason: format!(
                "{} tabular feature names for a model with {} tabular inputs",
                names.len(),
                config.num_features
            ),
        });
    }
    let mut meta = HashMap::from([
        (
            CONFIG_KEY.to_string(),
            serde_json::to_string(config).map_err(bad)?,
        ),
        (KIND_KEY.to_string(), "fusion".to_string()),
    ]);
    if let Some(t) = inputs.transforms_json {
        meta.insert(TRANSFORMS_KEY.to_string(), t.to_string());
    }
    if let Some(names) = inputs.feature_names {
        meta.insert(
            FEATURES_KEY.to_string(),
            serde_json::to_string(names).map_err(bad)?,
        );
    }
    if let Some(l) = inputs.location_json {
        meta.insert(LOCATION_KEY.to_string(), l.to_string());
    }
    if let Some(species) = inputs.species {
        if species.len() != config.num_classes {
            return Err(ModelError::BadCheckpointConfig {
                path: path.to_path_buf(),
                reason: format!(
                    "{} species for a model with {} outputs",
                    species.len(),
                    config.num_classes
                ),
            });
        }
        meta.insert(
            SPECIES_KEY.to_string(),
            serde_json::to_string(species).map_err(bad)?,
        );
    }
    Ok(meta)
}

/// What a fusion checkpoint records about its inputs ([`InputsMeta`], owned), read from its
/// header once. Each field is `None` when the checkpoint predates it or does not apply:
/// without `species`, column = species id (imported seed models, older geolife runs); without
/// `feature_names`, the tabular inputs are in an unknown order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordedInputs {
    /// [`TRANSFORMS_KEY`], as JSON (the training crate parses it).
    pub transforms_json: Option<String>,
    /// [`FEATURES_KEY`]: the tabular feature names in input order.
    pub feature_names: Option<Vec<String>>,
    /// [`LOCATION_KEY`], as JSON.
    pub location_json: Option<String>,
    /// [`SPECIES_KEY`]: the species id of every output column.
    pub species: Option<Vec<u32>>,
}

impl RecordedInputs {
    /// The recorded inputs of the checkpoint at `path` (only its header is read).
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let mut meta = read_metadata(path)?;
        fn parse<T: serde::de::DeserializeOwned>(
            json: Option<String>,
            key: &str,
            path: &Path,
        ) -> Result<Option<T>, ModelError> {
            json.map(|j| {
                serde_json::from_str(&j).map_err(|e| ModelError::BadCheckpointConfig {
                    path: path.to_path_buf(),
                    reason: format!("unreadable `{key}` metadata: {e}"),
                })
            })
            .transpose()
        }
        Ok(Self {
            transforms_json: meta.remove(TRANSFORMS_KEY),
            feature_names: parse(meta.remove(FEATURES_KEY), FEATURES_KEY, path)?,
            location_json: meta.remove(LOCATION_KEY),
            species: parse(meta.remove(SPECIES_KEY), SPECIES_KEY, path)?,
        })
    }

    /// As [`InputsMeta`], to write them again (e.g. `import-weights` of a geolife file).
    pub fn as_meta(&self) -> InputsMeta<'_> {
        InputsMeta {
            transforms_json: self.transforms_json.as_deref(),
            feature_names: self.feature_names.as_deref(),
            location_json: self.location_json.as_deref(),
            species: self.species.as_deref(),
        }
    }
}

/// The metadata of a safetensors file (empty when it has none). Reads only the 8-byte length
/// and the JSON header, not the tensors: `predict --weights` asks for the config and the
/// transforms of checkpoints of hundreds of MB before loading them once.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>, ModelError> {
    use std::io::Read;
    /// safetensors' own bound on the header.
    const MAX_HEADER: u64 = 100_000_000;
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |reason: String| ModelError::BadWeightFile {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n)
        .map_err(|_| bad(format!("{len} bytes: too short for a safetensors header")))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || n > len - 8 {
        return Err(bad(format!(
            "header length {n} does not fit the file ({len} bytes, at most {MAX_HEADER})"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    match header.get("__metadata__") {
        None | Some(serde_json::Value::Null) => Ok(HashMap::new()),
        Some(m) => serde_json::from_value(m.clone())
            .map_err(|e| bad(format!("`__metadata__` is not a map of strings: {e}"))),
    }
}

/// The fusion config stored in a geolife checkpoint.
pub fn read_config(path: &Path) -> Result<FusionConfig, ModelError> {
    let meta = read_metadata(path)?;
    let json = meta
        .get(CONFIG_KEY)
        .ok_or_else(|| ModelError::BadCheckpointConfig {
            path: path.to_path_buf(),
            reason: format!(
                "no `{CONFIG_KEY}` metadata: not a geolife checkpoint (use `geolife import-weights`)"
            ),
        })?;
    let config: FusionConfig =
        serde_json::from_str(json).map_err(|e| ModelError::BadCheckpointConfig {
            path: path.to_path_buf(),
            reason: format!("unreadable `{CONFIG_KEY}` metadata: {e}"),
        })?;
    config.validate()?;
    Ok(config)
}

/// Load a fusion checkpoint into a model built from `config`. Every parameter must be present
/// with its shape; extra keys are reported, not fatal.
pub fn load_safetensors(
    config: &FusionConfig,
    path: &Path,
    device: &Device,
) -> Result<(FusionModel, LoadReport), ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_safetensors_bytes(config, &bytes, path, device)
}

/// [`load_safetensors`] from bytes in memory; `path` only names the source in errors.
pub fn load_safetensors_bytes(
    config: &FusionConfig,
    bytes: &[u8],
    path: &Path,
    device: &Device,
) -> Result<(FusionModel, LoadReport), ModelError> {
    let dict = parse_safetensors(path, bytes)?;
    let model = config.try_init(device)?;
    let (model, report) = load_state_dict(model, &dict);
    if let Some((key, found, expected)) = report.mismatched.first() {
        return Err(ModelError::ShapeMismatch {
            path: path.to_path_buf(),
            key: key.clone(),
            found: found.clone(),
            expected: expected.clone(),
        });
    }
    if !report.missing.is_empty() {
        return Err(ModelError::MissingKeys {
            path: path.to_path_buf(),
            missing: report.missing.clone(),
        });
    }
    Ok((model, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NamedTensor;

    /// The header-only reader gives what safetensors' own parser of the whole file gives, and
    /// a header length that does not fit the file is an error, not a huge allocation.
    #[test]
    fn metadata_from_the_header_equals_the_full_parse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let dict = StateDict::from([(
            "fc.weight".to_string(),
            NamedTensor {
                shape: vec![2, 3],
                data: vec![0.5; 6],
            },
        )]);
        let meta = HashMap::from([("a".to_string(), "1".to_string())]);
        write_state_dict(&dict, meta, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (_, full) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let got = read_metadata(&path).unwrap();
        assert_eq!(Some(&got), full.metadata().as_ref());
        assert_eq!(got["a"], "1");

        let mut lie = bytes.clone();
        lie[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&path, &lie).unwrap();
        let e = read_metadata(&path).unwrap_err().to_string();
        assert!(e.contains("does not fit the file"), "{e}");
        std::fs::write(&path, &bytes[..5]).unwrap();
        assert!(read_metadata(&path).is_err());
    }
}
