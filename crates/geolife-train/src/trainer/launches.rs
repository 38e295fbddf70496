//! Kernel launches counted while a pass runs: a speed figure that does not depend on the
//! hardware. On a GPU each launch costs a few microseconds of host and device time whatever the
//! kernel does, so a step of many small element-wise kernels is slow however fast the device.
//! The count comes from cubecl's launch observer (called on the issuing thread for every
//! kernel a cubecl runtime launches), so it is the same on an H200 and on llvmpipe; a build
//! that loses operation fusion shows up as several times more launches per step.
//! The CPU backend (flex) launches no cubecl kernels: there the count is `None`.

use std::collections::BTreeMap;

/// Kernels launched while a [`LaunchWatch`] was held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchCounts {
    /// All launches.
    pub total: usize,
    /// Launches per kernel, by cubecl's short kernel name (`ElemwiseFuse`, `MatmulEntry`).
    pub by_kernel: BTreeMap<String, usize>,
    /// Launches per kernel by its full type name, element types included (the short name
    /// drops them: `geolife_model::kernels::norm_gpu::bn_forward::BnForward<f32,
    /// half::binary16::f16>` is `BnForward`).
    pub by_type: BTreeMap<String, usize>,
}

impl LaunchCounts {
    /// The `n` kernels launched most often, most first (ties by name).
    pub fn top(&self, n: usize) -> Vec<(&str, usize)> {
        let mut v: Vec<(&str, usize)> = self
            .by_kernel
            .iter()
            .map(|(k, c)| (k.as_str(), *c))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v.truncate(n);
        v
    }
}

#[cfg(feature = "wgpu")]
mod observe {
    use std::sync::{Arc, Mutex};

    use cubecl_runtime::config::{TypeNameFormatLevel, type_name_format};
    use cubecl_runtime::logging::{LaunchObservation, LaunchObserver};
    use fnv::FnvHashMap;

    use super::LaunchCounts;

    #[derive(Default)]
    pub(super) struct Counter(Mutex<FnvHashMap<&'static str, usize>>);

    impl LaunchObserver for Counter {
        fn launched(&self, kernel: &'static str) {
            let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
            *m.entry(kernel).or_default() += 1;
        }
    }

    /// Counts every cubecl kernel the process launches until [`LaunchWatch::finish`].
    pub struct LaunchWatch {
        counter: Arc<Counter>,
        _guard: LaunchObservation,
    }

    impl LaunchWatch {
        /// Starts counting (process-wide: one watch at a time).
        pub fn start() -> Self {
            let counter = Arc::new(Counter::default());
            let guard = LaunchObservation::new(counter.clone());
            Self {
                counter,
                _guard: guard,
            }
        }

        /// Stops counting and returns what was launched (the caller syncs the device first,
        /// so that kernels queued by operation fusion have been issued).
        pub fn finish(self) -> LaunchCounts {
            let LaunchWatch { counter, _guard } = self;
            drop(_guard);
            let m = counter.0.lock().unwrap_or_else(|e| e.into_inner());
            let mut out = LaunchCounts::default();
            for (k, c) in m.iter() {
                out.total += c;
                *out.by_type.entry(k.to_string()).or_default() += c;
                *out.by_kernel
                    .entry(type_name_format(k, TypeNameFormatLevel::Short))
                    .or_default() += c;
            }
            out
        }
    }
}

#[cfg(feature = "wgpu")]
pub use observe::LaunchWatch;

/// Without a GPU backend compiled in nothing launches cubecl kernels: the watch counts none.
#[cfg(not(feature = "wgpu"))]
pub struct LaunchWatch;

#[cfg(not(feature = "wgpu"))]
impl LaunchWatch {
    /// Starts counting (nothing to count in a build without `wgpu`).
    pub fn start() -> Self {
        LaunchWatch
    }

    /// The empty count.
    pub fn finish(self) -> LaunchCounts {
        LaunchCounts::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_orders_by_count_then_name() {
        let c = LaunchCounts {
            total: 6,
            by_kernel: [("b", 2), ("a", 2), ("c", 1), ("d", 1)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            ..LaunchCounts::default()
        };
        assert_eq!(c.top(3), vec![("a", 2), ("b", 2), ("c", 1)]);
    }
}
