//! GPU memory as the device's allocator reports it (cubecl's pools, read through burn): the
//! largest single buffer, which a wgpu storage binding caps at 2^31 - 1 bytes (the limit that
//! stopped the paper configs' batch of 256), and the peak memory reserved on the device. The
//! allocator serves the same requests on an H200 as on llvmpipe when the same kernels run, so
//! these figures, like the kernel launches, can be measured without a GPU. The CPU backend
//! (flex) reports none.

use burn::tensor::{Device, MemoryPoolUsage, SlicedPoolReport};

/// The largest buffer the wgpu build can bind: wgpu-hal caps Vulkan's
/// `max_storage_buffer_binding_size` at 2^31 - 1 bytes, and cubecl sizes its pages from it.
pub const BINDING_LIMIT: u64 = (1 << 31) - 1;

/// One reading of a GPU device's allocator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuMemory {
    /// The largest single allocation the dynamic pools ever served, in requested bytes:
    /// activations, gradients, optimiser state and kernel workspaces (the weights sit in the
    /// persistent pool and are allocated once).
    pub largest_alloc: u64,
    /// The dynamic pools at their peak: each pool's most pages held at once times its page
    /// size, summed.
    pub dynamic_peak: u64,
    /// The dynamic pools' pages held now.
    pub dynamic_now: u64,
    /// Bytes reserved on the device now, every pool.
    pub reserved: u64,
    /// Bytes the live allocations use now (after a step: weights and optimiser state).
    pub in_use: u64,
}

impl GpuMemory {
    /// The allocator of `device` now (the caller syncs first); `None` on the CPU backend.
    pub fn read(device: &Device) -> Option<Self> {
        Some(Self::from_report(
            &device.memory_pool_report()?,
            device.memory_pool_usage()?,
        ))
    }

    /// The figures of one report: `pools` are the dynamic pools, `usage` every pool.
    pub fn from_report(pools: &[SlicedPoolReport], usage: MemoryPoolUsage) -> Self {
        let sum = |f: fn(&SlicedPoolReport) -> u64| pools.iter().map(|p| f(p) * p.page_size).sum();
        Self {
            largest_alloc: pools.iter().map(|p| p.largest_alloc).max().unwrap_or(0),
            dynamic_peak: sum(|p| p.pages_peak),
            dynamic_now: sum(|p| p.pages),
            reserved: usage.bytes_reserved,
            in_use: usage.bytes_in_use,
        }
    }

    /// The most memory reserved at once: the other pools (weights) as they are now, and the
    /// dynamic pools at their peak.
    pub fn peak(&self) -> u64 {
        self.reserved.saturating_sub(self.dynamic_now) + self.dynamic_peak
    }

    /// Upper bounds at batch `to` from this reading, taken after steps at batch `from`
    /// (`to >= from`), for buffers whose sizes are `a + c * batch` with `a, c >= 0` (weights,
    /// activations, their gradients, patch matrices): such a buffer is at most `to / from`
    /// times its size at `from`. The peak scales the same way, except the memory still in
    /// use after the step (weights and optimiser state), which does not grow with the batch.
    /// Both are bounds, not estimates: the batch-independent part of the largest buffer and
    /// of the peak's transient memory (weight gradients) is scaled too.
    pub fn bounds_at(&self, from: usize, to: usize) -> (u64, u64) {
        let r = to as f64 / from.max(1) as f64;
        let kept = self.in_use.min(self.peak());
        (
            (self.largest_alloc as f64 * r).ceil() as u64,
            kept + ((self.peak() - kept) as f64 * r).ceil() as u64,
        )
    }
}

/// Bytes as GB (10^9) with two decimals, or MB (10^6) with one below 1 GB.
pub fn gb(bytes: u64) -> String {
    match bytes >= 1_000_000_000 {
        true => format!("{:.2} GB", bytes as f64 / 1e9),
        false => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(page_size: u64, pages: u64, pages_peak: u64, largest_alloc: u64) -> SlicedPoolReport {
        SlicedPoolReport {
            page_size,
            pages,
            pages_peak,
            largest_alloc,
        }
    }

    /// Hand-computed: two pools, 3 of 5 pages of 100 bytes and 1 of 2 of 1,000 now.
    #[test]
    fn peak_adds_the_dynamic_pools_peak_to_the_rest() {
        let usage = MemoryPoolUsage {
            number_allocs: 4,
            bytes_in_use: 1_500,
            bytes_padding: 0,
            bytes_reserved: 4_300,
        };
        let m = GpuMemory::from_report(&[pool(100, 3, 5, 90), pool(1_000, 1, 2, 700)], usage);
        assert_eq!(m.largest_alloc, 700);
        assert_eq!(m.dynamic_now, 1_300);
        assert_eq!(m.dynamic_peak, 2_500);
        // 4,300 reserved, 1,300 of it dynamic: 3,000 elsewhere, plus the dynamic peak.
        assert_eq!(m.peak(), 5_500);
        // At 8x the batch: 700 * 8; the 1,500 kept, the other 4,000 times 8.
        assert_eq!(m.bounds_at(32, 256), (5_600, 1_500 + 32_000));
        assert_eq!(GpuMemory::from_report(&[], usage).largest_alloc, 0);
    }

    #[test]
    fn sizes_print_in_gb_or_mb() {
        assert_eq!(gb(2_147_483_648), "2.15 GB");
        assert_eq!(gb(16_777_216), "16.8 MB");
    }
}
