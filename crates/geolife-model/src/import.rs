//! Weight import: reads safetensors and PyTorch `.pth` state dicts (the latter through the safe
//! reader in `geolife_io::torchfile`), adapts pretrained RGB stems to other channel counts and
//! loads torchvision backbones or the seed's `MultimodalEnsemble` into geolife modules.
//! Kept over burn-store 0.22.1's `PytorchStore`: stem channel adaptation, Lightning and wrapper
//! unwrapping, and no index renumbering (which would break torchvision's names).

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::ModelError;
use crate::state::{LoadReport, NamedTensor, StateDict, TorchNamed, load_state_dict, slots};

/// Read every floating-point tensor of a safetensors file (f32, f16, bf16, f64 -> f32).
/// Integer tensors (BatchNorm `num_batches_tracked`) are skipped.
pub fn read_safetensors(path: &Path) -> Result<StateDict, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_safetensors(path, &bytes)
}

/// [`read_safetensors`] on bytes already in memory (`path` only names them in errors).
pub fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<StateDict, ModelError> {
    let bad = |reason: String| ModelError::BadWeightFile {
        path: path.to_path_buf(),
        reason,
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("{e}")))?;
    let mut dict = StateDict::new();
    for (key, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    f64::from_le_bytes(b) as f32
                })
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => continue,
        };
        dict.insert(
            key,
            NamedTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(dict)
}

/// Read a state dict from `.safetensors` or a PyTorch zip checkpoint (`.pth`, `.pt`, `.bin`).
/// A checkpoint wrapping the state dict under `state_dict`/`model` is not unwrapped here.
pub fn read_state_dict(path: &Path) -> Result<StateDict, ModelError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "safetensors" => read_safetensors(path),
        "pth" | "pt" | "bin" | "ckpt" => read_torch(path),
        _ => Err(ModelError::BadWeightFile {
            path: path.to_path_buf(),
            reason: format!(
                "unknown extension `{ext}`: expected .safetensors, .pth, .pt, .bin or .ckpt"
            ),
        }),
    }
}

/// Wrapper prefixes that training frameworks put in front of every model key: PyTorch
/// Lightning's `model.` (a `LightningModule` attribute), `DataParallel`'s `module.`,
/// `torch.compile`'s `_orig_mod.`, and `net.`.
pub const WRAPPER_PREFIXES: [&str; 4] = ["model.", "module.", "_orig_mod.", "net."];

/// Finds the model's state dict inside a training checkpoint and strips wrapper prefixes.
///
/// A PyTorch Lightning `.ckpt` is a dict whose weights sit under `state_dict` (read here as
/// keys `state_dict.<key>`) next to `epoch`, `global_step`, optimizer states and callbacks;
/// every key then carries the `LightningModule` attribute name (`model.fc2.weight`). Returns
/// the unwrapped dict and what was stripped, in order (`["state_dict.", "model."]`), so the
/// caller can report it. A plain state dict comes back unchanged with nothing stripped.
pub fn unwrap_checkpoint(dict: StateDict) -> (StateDict, Vec<String>) {
    let mut stripped = Vec::new();
    let mut dict = dict;
    if dict.keys().any(|k| k.starts_with("state_dict.")) {
        dict = dict
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("state_dict.").map(|k| (k.to_string(), v)))
            .collect();
        stripped.push("state_dict.".to_string());
    }
    while let Some(prefix) = WRAPPER_PREFIXES
        .iter()
        .find(|p| !dict.is_empty() && dict.keys().all(|k| k.starts_with(*p)))
    {
        dict = dict
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_string(), v))
            .collect();
        stripped.push(prefix.to_string());
    }
    (dict, stripped)
}

/// A `torch.save` state dict read with the safe, opcode-restricted reader of `geolife-io`
/// (nothing in the file is executed). Integer tensors are skipped.
fn read_torch(path: &Path) -> Result<StateDict, ModelError> {
    use geolife_io::torchfile::{DType, load_state_dict};
    let entries = load_state_dict(path).map_err(|e| ModelError::BadWeightFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(entries
        .into_iter()
        .filter(|(_, t)| matches!(t.dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64))
        .map(|(k, t)| {
            let data = t.data_f32();
            (
                k,
                NamedTensor {
                    shape: t.shape.clone(),
                    data,
                },
            )
        })
        .collect())
}

/// Adapt a pretrained first-convolution weight `[out, in, kh, kw]` to `in_channels` inputs,
/// keeping what the pretrained filters learned:
/// - 1 channel: the sum of the input filters (a grey image gets the RGB response);
/// - fewer than the source: the first `in_channels` filters, rescaled by `src / in_channels`;
/// - more: the source filters copied, each extra channel the mean of the source filters, all
///   rescaled by `src / in_channels` (3 -> 4 for RGB+NIR: RGB copied, NIR = mean, times 3/4),
///   so a input with equal channels keeps the same pre-activation.
pub fn adapt_input_channels(weight: &NamedTensor, in_channels: usize) -> NamedTensor {
    let (out, src, kh, kw) = match weight.shape.as_slice() {
        [o, i, h, w] => (*o, *i, *h, *w),
        _ => return weight.clone(),
    };
    if src == in_channels || src == 0 || in_channels == 0 {
        return weight.clone();
    }
    let k = kh * kw;
    let at = |o: usize, i: usize, j: usize| weight.data[(o * src + i) * k + j];
    let mut data = Vec::with_capacity(out * in_channels * k);
    let scale = src as f32 / in_channels as f32;
    for o in 0..out {
        for c in 0..in_channels {
            for j in 0..k {
                let v = if in_channels == 1 {
                    (0..src).map(|i| at(o, i, j)).sum::<f32>()
                } else if c < src {
                    at(o, c, j) * scale
                } else {
                    (0..src).map(|i| at(o, i, j)).sum::<f32>() / src as f32 * scale
                };
                data.push(v);
            }
        }
    }
    NamedTensor {
        shape: vec![out, in_channels, kh, kw],
        data,
    }
}

/// Whether `key` is the first convolution of a network (adaptable stem).
pub fn is_stem_key(key: &str) -> bool {
    const STEMS: [&str; 3] = ["conv1.weight", "features.0.0.weight", "stem.0.0.weight"];
    STEMS.iter().any(|s| {
        key == *s
            || key
                .strip_suffix(s)
                .is_some_and(|p| p.ends_with("_model.") && !p[..p.len() - 1].contains('.'))
    })
}

/// Adapt, in `dict`, every stem weight whose input-channel count differs from the model's.
pub fn adapt_stems<M: TorchNamed>(
    model: &M,
    dict: &mut StateDict,
) -> Vec<(String, Vec<usize>, Vec<usize>)> {
    let mut adapted = Vec::new();
    for slot in slots(model) {
        if !is_stem_key(&slot.torch_key) || slot.shape.len() != 4 {
            continue;
        }
        if let Some(w) = dict.get(&slot.torch_key) {
            let s = &w.shape;
            if s.len() == 4
                && s[0] == slot.shape[0]
                && s[2..] == slot.shape[2..]
                && s[1] != slot.shape[1]
            {
                let new = adapt_input_channels(w, slot.shape[1]);
                adapted.push((slot.torch_key.clone(), w.shape.clone(), new.shape.clone()));
                dict.insert(slot.torch_key.clone(), new);
            }
        }
    }
    adapted
}

/// Load a state dict into `model` with stem adaptation. `prefix` (e.g. `"sentinel_model."`) is
/// prepended to every file key, so a torchvision backbone file fills one branch of a fusion
/// model; `missing` then only lists parameters under that prefix.
pub fn import_into<M: TorchNamed>(model: M, dict: &StateDict, prefix: &str) -> (M, LoadReport) {
    let mut dict: StateDict = dict
        .iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
        .collect();
    let adapted = adapt_stems(&model, &mut dict);
    let (model, mut report) = load_state_dict(model, &dict);
    report.missing.retain(|k| k.starts_with(prefix));
    let adapted_keys: Vec<&String> = adapted.iter().map(|(k, _, _)| k).collect();
    report.loaded.retain(|k| !adapted_keys.contains(&k));
    report.adapted = adapted;
    (model, report)
}
