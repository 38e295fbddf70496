//! The overflow check of a mixed-precision step: whether a gradient holds a NaN or an infinity.
//! Each tensor is read by one kernel that sets a shared one-value flag when it finds one, so the
//! check of a whole model is one launch per parameter tensor and one value read back (burn's
//! `sum` of each gradient, the check before, ran two to three kernels per tensor on a GPU, plus
//! the additions of the sums). Only values that are not finite count, as in PyTorch's
//! `GradScaler`.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Shape, Tensor};
use rayon::prelude::*;

use super::shared::{slice, tensor};

/// The finite check, as a backend operation (flex, and the GPU build's cubecl backend through
/// operation fusion).
#[backend_extension(Flex, Cube: cfg(feature = "wgpu"), Fusion: cfg(feature = "wgpu"))]
pub trait FiniteBackend: Backend {
    /// `flag` (one f32 value), set to 1 when `values` (f32) holds a value that is not finite,
    /// as it was otherwise.
    #[fusion(dtype = flag, shape = flag)]
    fn flag_non_finite(values: FloatTensor<Self>, flag: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Whether every value of the tensors [`add`](FiniteCheck::add)ed is finite: one flag for all
/// of them, one value read back by [`finish`](FiniteCheck::finish). Tensors of another type
/// than f32 (none in a training step: gradients are f32) are checked through the sum of their
/// values, which is not finite when one of them is not (or when the sum overflows).
#[derive(Default)]
pub struct FiniteCheck {
    flag: Option<Tensor<1>>,
}

impl FiniteCheck {
    /// Queues the check of `t` (no wait: on a GPU its kernel runs in order with the rest).
    pub fn add<const D: usize>(&mut self, t: Tensor<D>) {
        let flag = self
            .flag
            .take()
            .unwrap_or_else(|| Tensor::zeros([1], &t.device()));
        self.flag = Some(match t.dtype() {
            DType::F32 => Tensor::from_dispatch(Dispatch::flag_non_finite(
                t.into_dispatch(),
                flag.into_dispatch(),
            )),
            _ => flag + t.sum().cast(DType::F32).reshape([1]).mul_scalar(0.0),
        });
    }

    /// Whether every value added was finite (true when none was added); waits for the checks.
    pub fn finish(self) -> Result<bool, String> {
        let Some(flag) = self.flag else {
            return Ok(true);
        };
        let value: f32 = flag.try_into_scalar().map_err(|e| format!("{e:?}"))?;
        Ok(value == 0.0)
    }
}

impl FiniteBackend for Flex {
    fn flag_non_finite(values: FlexTensor, flag: FlexTensor) -> FlexTensor {
        let values = values.to_contiguous();
        match slice(&values).par_iter().any(|v| !v.is_finite()) {
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

    /// Sets `flag[0]` to 1 when a value of `values` is a NaN or an infinity (one unit per
    /// value, read through the tensor's strides, so that a permuted or sliced gradient needs no
    /// copy; every unit that finds one writes the same 1).
    #[cube(launch)]
    fn flag_non_finite_kernel(values: &Tensor<f32>, flag: &mut [f32], len: usize) {
        let k = ABSOLUTE_POS;
        if k >= len {
            terminate!();
        }
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
        if f32::is_nan(v) || f32::is_inf(v) {
            flag[0] = 1.0;
        }
    }

    impl FiniteBackend for CubeBackend {
        fn flag_non_finite(values: CubeTensor, flag: CubeTensor) -> CubeTensor {
            assert_eq!(
                values.dtype,
                DType::F32,
                "the finite check's kernel takes f32 values"
            );
            let flag = f32_contiguous(flag, "the finite check's flag");
            // Written in place when nothing else holds the flag (the check's chain hands each
            // one on), into a copy otherwise.
            let flag = match flag.can_mut() {
                true => flag,
                false => flag.copy(),
            };
            let len = values.meta.num_elements();
            let (cubes, dim) = per_item(&values, len);
            flag_non_finite_kernel::launch(
                &values.client,
                cubes,
                dim,
                values.clone().into_tensor_arg(),
                arg(&flag),
                len,
            );
            flag
        }
    }
}
