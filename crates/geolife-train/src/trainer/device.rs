//! Devices by name: flex (CPU) always, wgpu (GPU, or a software Vulkan device) in builds with
//! the `wgpu` feature.

use burn::tensor::Device;

use crate::config::DeviceKind;
use crate::error::TrainError;

/// The wgpu device and its adapter, brought up once per process by [`make_device`].
#[cfg(feature = "wgpu")]
static WGPU: std::sync::OnceLock<Result<(Device, String), String>> = std::sync::OnceLock::new();

/// What a device runs on, for run logs: `CPU` for flex, the adapter for wgpu.
pub fn device_description(kind: DeviceKind) -> String {
    #[cfg(feature = "wgpu")]
    if kind == DeviceKind::Wgpu
        && let Some(Ok((_, adapter))) = WGPU.get()
    {
        return format!("adapter {adapter}");
    }
    match kind {
        DeviceKind::Flex => "CPU".into(),
        DeviceKind::Wgpu => "wgpu".into(),
    }
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
            let (device, adapter) = WGPU
                .get_or_init(|| match Device::wgpu_options().init_with_setup() {
                    Ok((device, setup)) => {
                        let i = setup.adapter.get_info();
                        let adapter = format!(
                            "{} ({:?}, {:?}, driver {} {})",
                            i.name, i.backend, i.device_type, i.driver, i.driver_info
                        );
                        Ok((device, adapter))
                    }
                    // Already brought up lazily (a tensor made on `Device::wgpu` before the
                    // first call): reuse it; its identity still names the adapter.
                    Err(WgpuInitError::Registration { .. }) => {
                        let device = Device::wgpu(Default::default());
                        let adapter = device
                            .identity()
                            .map(|i| i.name)
                            .unwrap_or_else(|| "unknown adapter".into());
                        Ok((device, adapter))
                    }
                    Err(e) => Err(format!(
                        "device `wgpu`: no usable adapter: {e}. Without a GPU, install a \
                         software Vulkan driver (Debian/Ubuntu: `apt-get install \
                         mesa-vulkan-drivers`, llvmpipe) or use `--device flex`"
                    )),
                })
                .clone()
                .map_err(TrainError::Invalid)?;
            tracing::info!("device wgpu: adapter {adapter}");
            Ok(device)
        }
        #[cfg(not(feature = "wgpu"))]
        DeviceKind::Wgpu => Err(TrainError::Invalid(
            "device `wgpu` needs a build with `--features wgpu`".into(),
        )),
    }
}
