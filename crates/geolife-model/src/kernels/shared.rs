//! What the kernel modules share, in the one module that imports none of them: the strided f32
//! matrix products (the `gemm` crate), parallel fills and per-task reductions, running loops
//! compiled for the widest vector instructions the CPU has, flex tensor and autodiff plumbing.

use std::mem::MaybeUninit;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend};
use burn::tensor::{Bytes, DType, Device, Shape, Tensor};
use rayon::prelude::*;

/// Whether the CPU kernels (and the channels-last layouts built on them) run; see
/// [`set_cpu_kernels`].
static CPU_KERNELS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the CPU kernels on (the default) or off for the whole process. Off, every layer, the
/// loss and AdamW run burn's own operations: the reference a whole training run with the
/// kernels is tested against (`geolife-train/tests/kernels_vs_burn.rs`).
pub fn set_cpu_kernels(on: bool) {
    CPU_KERNELS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the kernels are on ([`set_cpu_kernels`]; the switch also covers the GPU build's
/// norm kernels, so that a run can be compared with burn's own layers on either device).
pub fn kernels_on() -> bool {
    CPU_KERNELS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether `t` lives on burn flex (with or without autodiff) and holds f32 values: the tensors
/// these kernels take (while they are on, see [`set_cpu_kernels`]).
pub(crate) fn on_cpu_f32<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && t.device().without_autodiff() == Device::flex() && kernels_on()
}

/// Whether `t` holds f32 values on the GPU build's device, with the kernels on: the tensors
/// its cubecl kernels take (`norm_gpu.rs`, `depthwise.rs`).
#[cfg(feature = "wgpu")]
pub(crate) fn on_gpu_f32<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && kernels_on() && t.device().without_autodiff() != Device::flex()
}

/// Without the GPU build, no tensor is on its device.
#[cfg(not(feature = "wgpu"))]
pub(crate) fn on_gpu_f32<const D: usize>(_: &Tensor<D>) -> bool {
    false
}

/// Whether `t` holds f16 values on the GPU build's device, with the kernels on: the
/// activations of an f16 autocast scope that the GPU norm kernels read and write
/// (`norm::half_for_norm`).
#[cfg(feature = "wgpu")]
pub(crate) fn on_gpu_f16<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F16 && kernels_on() && t.device().without_autodiff() != Device::flex()
}

/// Without the GPU build, no tensor is on its device.
#[cfg(not(feature = "wgpu"))]
pub(crate) fn on_gpu_f16<const D: usize>(_: &Tensor<D>) -> bool {
    false
}

/// Values per parallel task of the element-wise loops.
pub(super) const CHUNK: usize = 1 << 14;

/// The values of a contiguous f32 flex tensor (`to_contiguous` first), in row-major order.
pub(super) fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .unwrap_or_else(|| unreachable!("a contiguous f32 tensor has a slice"))
}

/// A contiguous f32 flex tensor of shape `shape` holding `v`.
pub(super) fn tensor(v: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(v),
        Layout::contiguous(shape.into()),
        DType::F32,
    )
}

/// `dst = lhs * rhs` (`m x k` times `k x n`), or `dst += lhs * rhs` when `accumulate`, each
/// matrix given by its row and column strides.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_strides: [isize; 2],
    lhs: &[f32],
    lhs_strides: [isize; 2],
    rhs: &[f32],
    rhs_strides: [isize; 2],
    parallelism: gemm::Parallelism,
    accumulate: bool,
) {
    check_fits(
        m,
        n,
        k,
        dst.len(),
        dst_strides,
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
    );
    if accumulate && k == 0 {
        return; // nothing to add (gemm would scale the destination by its alpha)
    }
    // SAFETY: `check_fits` keeps every element the strides reach inside its slice, the
    // destination is borrowed mutably (no overlap with the inputs) and its values are
    // initialised, so reading them (`accumulate`) is sound.
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_strides,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            parallelism,
            accumulate,
        )
    }
}

/// `lhs * rhs` as a new row-major `m x n` vector, written by the product itself (no zero-fill
/// of the destination first).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_new(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_strides: [isize; 2],
    rhs: &[f32],
    rhs_strides: [isize; 2],
    parallelism: gemm::Parallelism,
) -> Vec<f32> {
    if k == 0 || m * n == 0 {
        return vec![0f32; m * n];
    }
    let dst_strides = [n as isize, 1];
    check_fits(
        m,
        n,
        k,
        m * n,
        dst_strides,
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
    );
    let mut v = Vec::with_capacity(m * n);
    // SAFETY: `check_fits` keeps every element the strides reach inside its buffer (the
    // capacity is `m * n`); with `k > 0` the product writes all `m * n` values of the dense
    // row-major destination and reads none of them (`read_dst` false), so every value is
    // initialised before `set_len`.
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            v.as_mut_ptr(),
            dst_strides,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            parallelism,
            false,
        );
        v.set_len(m * n);
    }
    v
}

/// `lhs * rhs` written into `dst`, an `m x n` matrix with strides `dst_strides` covering all
/// of `dst`, not yet initialised (every value is written, none read).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_into(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [MaybeUninit<f32>],
    dst_strides: [isize; 2],
    lhs: &[f32],
    lhs_strides: [isize; 2],
    rhs: &[f32],
    rhs_strides: [isize; 2],
    parallelism: gemm::Parallelism,
) {
    assert_eq!(
        dst.len(),
        m * n,
        "matmul_into: the destination is the whole matrix"
    );
    if k == 0 || m * n == 0 {
        for v in dst.iter_mut() {
            v.write(0.0);
        }
        return;
    }
    check_fits(
        m,
        n,
        k,
        dst.len(),
        dst_strides,
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
    );
    // SAFETY: `check_fits` keeps every element the strides reach inside its buffer; with
    // `k > 0` the product writes all `m * n` elements and reads none (`read_dst` false), and
    // the `m * n` elements are the whole buffer (asserted), so every value is written.
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            dst_strides,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            parallelism,
            false,
        );
    }
}

/// Panics unless each matrix's last element, as its strides reach it, lies inside its buffer.
#[allow(clippy::too_many_arguments)]
fn check_fits(
    m: usize,
    n: usize,
    k: usize,
    dst_len: usize,
    dst_strides: [isize; 2],
    lhs: &[f32],
    lhs_strides: [isize; 2],
    rhs: &[f32],
    rhs_strides: [isize; 2],
) {
    let last = |s: [isize; 2], rows: usize, cols: usize| {
        (rows.saturating_sub(1)) as isize * s[0] + (cols.saturating_sub(1)) as isize * s[1]
    };
    assert!(
        m * n == 0
            || (last(dst_strides, m, n) < dst_len as isize
                && last(lhs_strides, m, k) < lhs.len() as isize
                && last(rhs_strides, k, n) < rhs.len() as isize),
        "matmul: a matrix does not fit its buffer"
    );
}

/// The `gemm` call: `dst = lhs * rhs`, or `dst += lhs * rhs` when `accumulate` (otherwise
/// the destination's previous values are not read).
///
/// # Safety
/// Every element `dst`'s strides reach for an `m x n` matrix must be writable and not
/// overlap `lhs` or `rhs` (see `check_fits`), and initialised when `accumulate`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_strides: [isize; 2],
    lhs: &[f32],
    lhs_strides: [isize; 2],
    rhs: &[f32],
    rhs_strides: [isize; 2],
    parallelism: gemm::Parallelism,
    accumulate: bool,
) {
    // SAFETY: the caller's contract; the inputs are slices the strides stay inside.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_strides[1],
            dst_strides[0],
            accumulate,
            lhs.as_ptr(),
            lhs_strides[1],
            lhs_strides[0],
            rhs.as_ptr(),
            rhs_strides[1],
            rhs_strides[0],
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `n` values, each chunk of `chunk` values written in parallel by `fill(chunk index, chunk)`,
/// without zeroing them first (on the calling thread, that was a serial memset of every
/// output). `fill` must write every value of its chunk.
pub(super) fn par_filled(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| {
            widest(
                #[inline(always)]
                || fill(i, c),
            )
        });
    // SAFETY: the capacity is `n`, and `fill` wrote all `n` values (its contract).
    unsafe { v.set_len(n) };
    v
}

/// Per-channel sums over rows of `c` values (channels-last): each task adds its rows' terms
/// `f(x row, y row, acc1, acc2)` into two f32 accumulators of `c` lanes (vectorised over the
/// channels, a few hundred rows each), and the tasks' shares are added in f64 in order.
pub(super) fn row_sums(
    x: &[f32],
    y: &[f32],
    c: usize,
    f: impl Fn(&[f32], &[f32], &mut [f32], &mut [f32]) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let c = c.max(1);
    let per = task_rows(c) * c;
    let shares: Vec<Vec<f32>> = x
        .par_chunks(per)
        .zip(y.par_chunks(per))
        .map(|(x, y)| {
            widest(
                #[inline(always)]
                || {
                    let mut acc = vec![0f32; 2 * c];
                    let (a1, a2) = acc.split_at_mut(c);
                    for (x, y) in x.chunks_exact(c).zip(y.chunks_exact(c)) {
                        f(x, y, a1, a2);
                    }
                    acc
                },
            )
        })
        .collect();
    let mut total = add_shares(&shares, 2 * c);
    let second = total.split_off(c);
    (total, second)
}

/// The element-wise sum of parallel tasks' f32 partial sums (each `len` long), added in f64 in
/// task order: the last step of every per-task reduction here (a task sums a few hundred rows
/// in f32 lanes, vectorised; the tasks' shares are few).
pub(super) fn add_shares(shares: &[Vec<f32>], len: usize) -> Vec<f64> {
    let mut total = vec![0f64; len];
    for share in shares {
        for (t, v) in total.iter_mut().zip(share) {
            *t += f64::from(*v);
        }
    }
    total
}

/// Rows of `c` values per parallel task of the row loops (LayerNorm, channels-last BatchNorm,
/// [`row_sums`]): at least one.
pub(super) fn task_rows(c: usize) -> usize {
    (CHUNK / c.max(1)).max(1)
}

/// Runs `f` compiled for AVX-512F or AVX2 when the CPU has them (the loops `f` inlines are
/// vectorised that wide), else for baseline x86-64. The arithmetic is the same either way.
#[inline(always)]
pub(super) fn widest<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { run_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { run_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Registers each gradient for its parent node, skipping parents that track none.
pub(super) fn register_grads<B: Backend, const N: usize>(
    grads: &mut Gradients,
    parents: [Option<NodeId>; N],
    values: [FloatTensor<B>; N],
) {
    for (id, g) in parents.into_iter().zip(values) {
        if let Some(id) = id {
            grads.register::<B>(id, g);
        }
    }
}

/// The inner primitive of an autodiff tensor, as a constant (no gradient flows through it).
pub(super) fn constant<B: Backend, C: CheckpointStrategy>(
    t: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<B> {
    t.into_primitive()
}

/// An autodiff tensor that tracks no gradient (the module of `AutodiffTensor` is private, so it
/// is named through the backend's primitive type).
pub(super) fn untracked<B: Backend, C: CheckpointStrategy>(
    t: FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    FloatTensor::<Autodiff<B, C>>::new(t)
}
