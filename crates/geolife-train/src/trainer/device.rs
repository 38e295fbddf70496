//! Devices by name: flex (CPU) always, wgpu (GPU, or a software Vulkan device) in builds with
//! the `wgpu` feature.

use burn::tensor::Device;

use crate::config::{DeviceKind, Precision};
use crate::error::TrainError;

/// The wgpu device as it came up (`None`: not known, the device was brought up elsewhere).
#[cfg(feature = "wgpu")]
#[derive(Clone)]
struct WgpuUp {
    device: Device,
    adapter: String,
    /// Whether its shaders take f16.
    f16: Option<bool>,
    /// The largest buffer a kernel can bind (`max_storage_buffer_binding_size`).
    binding_limit: Option<u64>,
}

/// The wgpu device as [`make_device`] brought it up, once per process.
#[cfg(feature = "wgpu")]
static WGPU: std::sync::OnceLock<Result<WgpuUp, String>> = std::sync::OnceLock::new();

/// What a device runs on, for run logs: `CPU` for flex, the adapter for wgpu.
pub fn device_description(kind: DeviceKind) -> String {
    #[cfg(feature = "wgpu")]
    if kind == DeviceKind::Wgpu
        && let Some(Ok(up)) = WGPU.get()
    {
        return format!("adapter {}", up.adapter);
    }
    match kind {
        DeviceKind::Flex => "CPU".into(),
        DeviceKind::Wgpu => "wgpu".into(),
    }
}

/// The largest buffer a kernel can bind on `kind`'s device (brought up by [`make_device`]
/// first): a GPU's is 2^31 - 1 bytes in the wgpu build, Mesa's llvmpipe 2^27 (128 MiB).
/// `None` on the CPU, or when not known.
pub fn binding_limit(kind: DeviceKind) -> Option<u64> {
    #[cfg(feature = "wgpu")]
    if kind == DeviceKind::Wgpu
        && let Some(Ok(up)) = WGPU.get()
    {
        return up.binding_limit;
    }
    let _ = kind;
    None
}

/// The device named in the config.
///
/// `wgpu` brings burn's wgpu runtime up on the default adapter (a GPU if there is one, else a
/// software Vulkan device such as Mesa's llvmpipe) the first time it is asked for, logs the
/// adapter (`tracing` info: name, graphics API, kind, driver) on every call, and fails with a
/// clear error, instead of a panic at the first tensor, when no adapter exists.
pub fn make_device(kind: DeviceKind) -> Result<Device, TrainError> {
    match kind {
        DeviceKind::Flex => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => {
            use burn::tensor::wgpu::WgpuInitError;
            let up = WGPU
                .get_or_init(|| {
                    // cubecl reads its configuration once, when the first device comes up.
                    autotune::configure();
                    match Device::wgpu_options().init_with_setup() {
                        Ok((device, setup)) => {
                            let i = setup.adapter.get_info();
                            let adapter = format!(
                                "{} ({:?}, {:?}, driver {} {})",
                                i.name, i.backend, i.device_type, i.driver, i.driver_info
                            );
                            let f16 = setup
                                .device
                                .features()
                                .contains(burn::tensor::wgpu::wgpu::Features::SHADER_F16);
                            let limits = setup.device.limits();
                            Ok(WgpuUp {
                                device,
                                adapter,
                                f16: Some(f16),
                                binding_limit: Some(
                                    limits
                                        .max_storage_buffer_binding_size
                                        .min(limits.max_buffer_size),
                                ),
                            })
                        }
                        // Already brought up lazily (a tensor made on `Device::wgpu` before the
                        // first call): reuse it; its identity still names the adapter.
                        Err(WgpuInitError::Registration { .. }) => {
                            let device = Device::wgpu(Default::default());
                            let adapter = device
                                .identity()
                                .map(|i| i.name)
                                .unwrap_or_else(|| "unknown adapter".into());
                            Ok(WgpuUp {
                                device,
                                adapter,
                                f16: None,
                                binding_limit: None,
                            })
                        }
                        Err(e) => Err(format!(
                            "device `wgpu`: no usable adapter: {e}. Without a GPU, install a \
                         software Vulkan driver (Debian/Ubuntu: `apt-get install \
                         mesa-vulkan-drivers`, llvmpipe) or use `--device flex`"
                        )),
                    }
                })
                .clone()
                .map_err(TrainError::Invalid)?;
            tracing::info!("device wgpu: adapter {}", up.adapter);
            Ok(up.device)
        }
        #[cfg(not(feature = "wgpu"))]
        DeviceKind::Wgpu => Err(TrainError::Invalid(
            "device `wgpu` needs a build with `--features wgpu`".into(),
        )),
    }
}

/// Whether `precision` runs on `kind` (brought up by [`make_device`] first): bf16 has no type
/// in burn's WGSL compiler (cubecl 0.11 stops the device thread on it), and f16 needs an
/// adapter whose shaders take it. A clear error naming `train.precision` instead of a panic
/// at the first step.
pub fn check_precision(kind: DeviceKind, precision: Precision) -> Result<(), TrainError> {
    if kind != DeviceKind::Wgpu {
        return Ok(());
    }
    match precision {
        Precision::F32 => Ok(()),
        Precision::Bf16 => Err(TrainError::Invalid(
            "train.precision = \"bf16\" does not run on device `wgpu`: burn's WGSL shader \
             compiler (cubecl 0.11) has no bfloat16 type; use \"f16\" there (bf16 runs on flex)"
                .into(),
        )),
        Precision::F16 => {
            #[cfg(feature = "wgpu")]
            if let Some(Ok(up)) = WGPU.get()
                && up.f16 == Some(false)
            {
                return Err(TrainError::Invalid(format!(
                    "train.precision = \"f16\": adapter {} has no f16 shader support \
                     (wgpu feature SHADER_F16); use \"f32\"",
                    up.adapter
                )));
            }
            Ok(())
        }
    }
}

/// Autotuning of the GPU build (burn's `autotune` feature): cubecl benchmarks the candidate
/// matmul and convolution kernels of each new shape once, keeps the fastest, and stores the
/// choice in its cache (`persistence` feature), so a later or resumed run on the same machine
/// uses the same kernels (and so sums in the same order) without tuning again. geolife puts
/// that cache in the user's cache directory (`~/.cache/cubecl` on Linux) instead of cubecl's
/// default, a `target/` folder found from the working directory, and has each choice made in
/// this process written to a file that [`autotune::drain`] hands to the run log.
#[cfg(feature = "wgpu")]
pub mod autotune {
    use std::io::{Read, Seek, SeekFrom};
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};

    /// This process's decisions file and cache folder, once configured.
    static SETUP: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    /// Bytes of the decisions file already handed out by [`drain`].
    static READ: AtomicU64 = AtomicU64::new(0);

    /// Sets cubecl's configuration before the first GPU device comes up: a `cubecl.toml` and
    /// the `CUBECL_*` variables are read as cubecl reads them; geolife then moves the default
    /// cache to the user's cache directory and adds a decisions file. Does nothing if cubecl's
    /// configuration was already read (a device made before `make_device`).
    pub fn configure() {
        SETUP.get_or_init(|| {
            let mut c = CubeClRuntimeConfig::from_current_dir().override_from_env();
            if matches!(c.environment.path, CacheConfig::Target) {
                c.environment.path = CacheConfig::Global;
            }
            let cache = c.environment.path.root();
            remove_stale_decision_files();
            let file =
                std::env::temp_dir().join(format!("geolife-autotune-{}.jsonl", std::process::id()));
            let _ = std::fs::remove_file(&file);
            if c.autotune.decisions.file.is_none() {
                c.autotune.decisions.file = Some(file.clone());
            }
            let file = c.autotune.decisions.file.clone().unwrap_or(file);
            CubeClRuntimeConfig::try_set(c).then_some((file, cache))
        });
    }

    /// Deletes the decisions files of geolife processes that have ended (Linux: no
    /// `/proc/PID`), so that GPU runs do not pile them up in the temporary folder.
    fn remove_stale_decision_files() {
        if !std::path::Path::new("/proc/self").exists() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix("geolife-autotune-"))
                .and_then(|n| n.strip_suffix(".jsonl"))
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(pid) = pid
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// The folder of cubecl's persistent cache (autotune choices among it), when configured.
    pub fn cache_dir() -> Option<PathBuf> {
        SETUP.get()?.as_ref().map(|(_, cache)| cache.clone())
    }

    /// The autotune decisions (one JSON object per line: the kernel key, every candidate's
    /// time, the fastest) made since the last call, in this process. Empty when nothing was
    /// tuned: every shape's choice came from the in-memory or the persistent cache.
    pub fn drain() -> Vec<String> {
        let Some(Some((file, _))) = SETUP.get() else {
            return Vec::new();
        };
        let Ok(mut f) = std::fs::File::open(file) else {
            return Vec::new();
        };
        let from = READ.load(Ordering::SeqCst);
        let mut text = String::new();
        if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_string(&mut text).is_err() {
            return Vec::new();
        }
        // Only whole lines: a decision being written is read next time.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        READ.store(from + complete as u64, Ordering::SeqCst);
        text[..complete]
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }
}
