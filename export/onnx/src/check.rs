//! The parity check's files: the inputs fed to the ONNX graph and the outputs the Burn model
//! computes for them, as safetensors named like the graph's inputs and outputs, for
//! `bench/onnx_check.py` to compare with onnxruntime's.

use std::path::Path;

use burn::tensor::{Int, Tensor};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use crate::ExportError;

/// A named host tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// The graph input or output it belongs to.
    pub name: String,
    /// Shape.
    pub dims: Vec<usize>,
    /// Values.
    pub data: HostData,
}

/// Host values of a [`NamedTensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    /// float32.
    F32(Vec<f32>),
    /// int64.
    I64(Vec<i64>),
}

impl NamedTensor {
    /// A float tensor's values.
    pub fn from_float<const D: usize>(name: &str, t: Tensor<D>) -> Result<Self, ExportError> {
        let (dims, v) = crate::graph::tensor_values(t)?;
        Ok(Self {
            name: name.into(),
            dims,
            data: HostData::F32(v),
        })
    }

    /// An int tensor's values.
    pub fn from_int<const D: usize>(name: &str, t: Tensor<D, Int>) -> Result<Self, ExportError> {
        let dims = t.dims().to_vec();
        let v = t
            .into_data()
            .try_into_vec_as::<i64>()
            .map_err(|e| ExportError::Tensor(format!("{e:?}")))?;
        Ok(Self {
            name: name.into(),
            dims,
            data: HostData::I64(v),
        })
    }

    fn bytes(&self) -> Vec<u8> {
        match &self.data {
            HostData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// Writes `tensors` to a safetensors file (atomically).
pub fn write_safetensors(path: &Path, tensors: &[NamedTensor]) -> Result<(), ExportError> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(NamedTensor::bytes).collect();
    let mut views = Vec::with_capacity(tensors.len());
    for (t, b) in tensors.iter().zip(&bytes) {
        let dtype = match t.data {
            HostData::F32(_) => Dtype::F32,
            HostData::I64(_) => Dtype::I64,
        };
        let view = TensorView::new(dtype, t.dims.clone(), b)
            .map_err(|e| ExportError::Tensor(format!("{}: {e}", t.name)))?;
        views.push((t.name.clone(), view));
    }
    let data = safetensors::serialize(views, None)
        .map_err(|e| ExportError::Tensor(format!("{}: {e}", path.display())))?;
    ovkd_data::io::write_atomic(path, &data)
        .map_err(|e| ExportError::Io(format!("{}: {e}", path.display())))
}

/// A deterministic image `[1, 3, H, W]` in `[0, 1]` (smooth gradients plus a hash pattern, so
/// every channel and position differs) for parity checks that have no real image.
pub fn test_image(size: [usize; 2], device: &burn::tensor::Device) -> Tensor<4> {
    let [h, w] = size;
    let mut v = Vec::with_capacity(3 * h * w);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let hash = ((x * 73 + y * 151 + c * 31) % 97) as f32 / 97.0;
                let smooth = (x as f32 / w as f32 + y as f32 / h as f32 * (c as f32 + 1.0))
                    / (c as f32 + 2.0);
                v.push(0.5 * hash + 0.5 * smooth);
            }
        }
    }
    Tensor::from_data(burn::tensor::TensorData::new(v, [1, 3, h, w]), device)
}
