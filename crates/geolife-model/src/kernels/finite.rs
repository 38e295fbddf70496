//! The overflow check of a mixed-precision step: whether a gradient holds a NaN or an infinity.
//! One kernel reads up to [`TENSORS_PER_KERNEL`] tensors and sets a shared one-value flag when
//! it finds one, so the check of a whole model is one launch per 8 parameter tensors and one
//! value read back, like PyTorch's multi-tensor `_amp_foreach_non_finite_check_and_unscale_`
//! (burn's `sum` of each gradient, the check before, ran two to three kernels per tensor on a
//! GPU, plus the additions of the sums). Only values that are not finite count, as in
//! PyTorch's `GradScaler`.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Device, Shape, Tensor};
use rayon::prelude::*;

use super::shared::{slice, tensor};

/// Tensors one check kernel reads (the unused places take a one-value zero tensor).
pub const TENSORS_PER_KERNEL: usize = 8;

/// The finite check, as a backend operation (flex, and the GPU build's cubecl backend through
/// operation fusion).
#[backend_extension(Flex, Cube: cfg(feature = "wgpu"), Fusion: cfg(feature = "wgpu"))]
pub trait FiniteBackend: Backend {
    /// `flag` (one f32 value), set to 1 when one of the eight f32 tensors holds a value that
    /// is not finite, as it was otherwise.
    #[fusion(dtype = flag, shape = flag)]
    #[allow(clippy::too_many_arguments)]
    fn flag_non_finite(
        v0: FloatTensor<Self>,
        v1: FloatTensor<Self>,
        v2: FloatTensor<Self>,
        v3: FloatTensor<Self>,
        v4: FloatTensor<Self>,
        v5: FloatTensor<Self>,
        v6: FloatTensor<Self>,
        v7: FloatTensor<Self>,
        flag: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// Whether every value of the tensors [`add`](FiniteCheck::add)ed is finite: one flag for all
/// of them, set by one kernel per [`TENSORS_PER_KERNEL`] tensors, one value read back by
/// [`finish`](FiniteCheck::finish). Tensors of another type than f32 (none in a training step:
/// gradients are f32) are checked through the sum of their values, which is not finite when
/// one of them is not (or when the sum overflows).
#[derive(Default)]
pub struct FiniteCheck {
    flag: Option<Tensor<1>>,
    /// f32 tensors waiting for a kernel (fewer than [`TENSORS_PER_KERNEL`]).
    pending: Vec<FloatTensor<Dispatch>>,
    /// The zero tensor of the unused places, made once.
    pad: Option<Tensor<1>>,
}

impl FiniteCheck {
    /// Queues the check of `t` (no wait: on a GPU its kernel runs in order with the rest).
    pub fn add<const D: usize>(&mut self, t: Tensor<D>) {
        let device = t.device();
        match t.dtype() {
            DType::F32 => {
                self.pending.push(t.into_dispatch());
                if self.pending.len() == TENSORS_PER_KERNEL {
                    self.launch(&device);
                }
            }
            _ => {
                let flag = self.take_flag(&device);
                self.flag = Some(flag + t.sum().cast(DType::F32).reshape([1]).mul_scalar(0.0));
            }
        }
    }

    /// The flag, zero before the first check.
    fn take_flag(&mut self, device: &Device) -> Tensor<1> {
        self.flag
            .take()
            .unwrap_or_else(|| Tensor::zeros([1], device))
    }

    /// One kernel over the pending tensors.
    fn launch(&mut self, device: &Device) {
        if self.pending.is_empty() {
            return;
        }
        let flag = self.take_flag(device);
        let pad = self
            .pad
            .get_or_insert_with(|| Tensor::zeros([1], device))
            .clone();
        let mut v = std::mem::take(&mut self.pending).into_iter();
        let mut next = || v.next().unwrap_or_else(|| pad.clone().into_dispatch());
        let [v0, v1, v2, v3, v4, v5, v6, v7] = std::array::from_fn(|_| next());
        self.flag = Some(Tensor::from_dispatch(Dispatch::flag_non_finite(
            v0,
            v1,
            v2,
            v3,
            v4,
            v5,
            v6,
            v7,
            flag.into_dispatch(),
        )));
    }

    /// Whether every value added was finite (true when none was added); waits for the checks.
    pub fn finish(mut self) -> Result<bool, String> {
        if let Some(t) = self.pending.first() {
            let device = Tensor::<1>::from_dispatch(t.clone()).device();
            self.launch(&device);
        }
        let Some(flag) = self.flag else {
            return Ok(true);
        };
        let value: f32 = flag.try_into_scalar().map_err(|e| format!("{e:?}"))?;
        Ok(value == 0.0)
    }
}

impl FiniteBackend for Flex {
    fn flag_non_finite(
        v0: FlexTensor,
        v1: FlexTensor,
        v2: FlexTensor,
        v3: FlexTensor,
        v4: FlexTensor,
        v5: FlexTensor,
        v6: FlexTensor,
        v7: FlexTensor,
        flag: FlexTensor,
    ) -> FlexTensor {
        let bad = [v0, v1, v2, v3, v4, v5, v6, v7].into_iter().any(|v| {
            let v = v.to_contiguous();
            slice(&v).par_iter().any(|x| !x.is_finite())
        });
        match bad {
            true => tensor(vec![1.0], Shape::new([1])),
            false => flag,
        }
    }
}

#[cfg(feature = "wgpu")]
mod gpu {
    use burn::tensor::DType;
    use burn_cubecl::CubeBackend;
    use burn_cubecl::tensor::CubeTensor;
    use cubecl::prelude::*;

    use super::super::norm_gpu::{arg, f32_contiguous, per_item};
    use super::FiniteBackend;

    /// Whether value `k` of `values` (read through the tensor's strides, so that a permuted or
    /// sliced gradient needs no copy) is a NaN or an infinity.
    #[cube]
    fn non_finite_at(values: &Tensor<f32>, k: usize) -> bool {
        let rank = values.rank();
        let mut rest = k;
        let mut at = 0;
        for i in 0..rank {
            let dim = rank - 1 - i;
            let size = values.shape(dim);
            at += (rest % size) * values.stride(dim);
            rest /= size;
        }
        let v = values[at];
        f32::is_nan(v) || f32::is_inf(v)
    }

    /// Sets `flag[0]` to 1 when a value of the eight tensors is a NaN or an infinity: one unit
    /// per value of their concatenation (tensor `i` ends at `e_i`; every unit that finds one
    /// writes the same 1).
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    fn flag_non_finite_kernel(
        v0: &Tensor<f32>,
        v1: &Tensor<f32>,
        v2: &Tensor<f32>,
        v3: &Tensor<f32>,
        v4: &Tensor<f32>,
        v5: &Tensor<f32>,
        v6: &Tensor<f32>,
        v7: &Tensor<f32>,
        flag: &mut [f32],
        e0: usize,
        e1: usize,
        e2: usize,
        e3: usize,
        e4: usize,
        e5: usize,
        e6: usize,
        e7: usize,
    ) {
        let k = ABSOLUTE_POS;
        if k >= e7 {
            terminate!();
        }
        let bad = if k < e0 {
            non_finite_at(v0, k)
        } else if k < e1 {
            non_finite_at(v1, k - e0)
        } else if k < e2 {
            non_finite_at(v2, k - e1)
        } else if k < e3 {
            non_finite_at(v3, k - e2)
        } else if k < e4 {
            non_finite_at(v4, k - e3)
        } else if k < e5 {
            non_finite_at(v5, k - e4)
        } else if k < e6 {
            non_finite_at(v6, k - e5)
        } else {
            non_finite_at(v7, k - e6)
        };
        if bad {
            flag[0] = 1.0;
        }
    }

    impl FiniteBackend for CubeBackend {
        fn flag_non_finite(
            v0: CubeTensor,
            v1: CubeTensor,
            v2: CubeTensor,
            v3: CubeTensor,
            v4: CubeTensor,
            v5: CubeTensor,
            v6: CubeTensor,
            v7: CubeTensor,
            flag: CubeTensor,
        ) -> CubeTensor {
            let values = [v0, v1, v2, v3, v4, v5, v6, v7];
            for v in &values {
                assert_eq!(
                    v.dtype,
                    DType::F32,
                    "the finite check's kernel takes f32 values"
                );
            }
            let flag = f32_contiguous(flag, "the finite check's flag");
            // Written in place when nothing else holds the flag (the check's chain hands each
            // one on), into a copy otherwise.
            let flag = match flag.can_mut() {
                true => flag,
                false => flag.copy(),
            };
            let mut end = 0;
            let ends = values.each_ref().map(|v| {
                end += v.meta.num_elements();
                end
            });
            let (cubes, dim) = per_item(&flag, end);
            let [v0, v1, v2, v3, v4, v5, v6, v7] = values.map(|v| v.into_tensor_arg());
            flag_non_finite_kernel::launch(
                &flag.client,
                cubes,
                dim,
                v0,
                v1,
                v2,
                v3,
                v4,
                v5,
                v6,
                v7,
                arg(&flag),
                ends[0],
                ends[1],
                ends[2],
                ends[3],
                ends[4],
                ends[5],
                ends[6],
                ends[7],
            );
            flag
        }
    }
}
