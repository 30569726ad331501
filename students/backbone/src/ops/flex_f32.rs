//! float32 views of burn-flex tensors for the hand-written kernels of [`super`]: they compute in
//! float32 and hand back the caller's dtype.

use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{DType, FloatDType, TensorData};

/// `x` as contiguous float32: no copy when it already is.
pub(crate) fn contiguous_f32(x: FlexTensor) -> FlexTensor {
    let x = if x.dtype() == DType::F32 {
        x
    } else {
        <Flex as FloatTensorOps<Flex>>::float_cast(x, FloatDType::F32)
    };
    if x.is_contiguous() {
        x
    } else {
        x.to_contiguous()
    }
}

/// The values of a tensor from [`contiguous_f32`].
pub(crate) fn values(x: &FlexTensor) -> &[f32] {
    x.as_slice::<f32>().expect("contiguous float32")
}

/// A float32 result of shape `dims`, cast to `dtype`.
pub(crate) fn from_f32(values: Vec<f32>, dims: Vec<usize>, dtype: DType) -> FlexTensor {
    let t = FlexTensor::from_data(TensorData::new(values, dims));
    if dtype == DType::F32 {
        t
    } else {
        <Flex as FloatTensorOps<Flex>>::float_cast(t, dtype.into())
    }
}
