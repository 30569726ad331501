//! ovkd-onnx: ONNX export of the students' inference graphs at a fixed input size.
//!
//! - [`proto`]: a hand-written protobuf writer for the ONNX messages the export needs.
//! - [`graph`]: a graph builder (values with shapes, initializers, one helper per operator).
//! - [`layers`]: Burn layers (conv, batch norms, linear) as nodes.
//! - [`backbone`]: ResNet body, FPN and input normalisation as nodes.
//! - [`segmenter`]: the segmenter, image → logits / label map over a baked-in vocabulary.
//! - [`detector`]: the detector's dense part (backbone, FPN, RPN head per level) and RoI head
//!   (multi-level RoIAlign, box head, cosine logits) for boxes given as an input.
//! - [`check`]: the inputs and the Burn model's own outputs as safetensors, for
//!   `bench/onnx_check.py` to compare with onnxruntime.
//!
//! Batch norm is exported as it runs in inference (running statistics); export a model that
//! lives on a plain (non-autodiff) device.

pub mod backbone;
pub mod check;
pub mod detector;
pub mod graph;
pub mod layers;
pub mod proto;
pub mod segmenter;

use std::path::Path;

pub use check::{NamedTensor, test_image, write_safetensors};
pub use detector::{DetExport, export_detector};
pub use proto::ModelProto;
pub use segmenter::{SegExport, export_segmenter};

/// Inputs must be multiples of this (the backbones' largest stride).
pub const SIZE_DIVISOR: usize = 32;

/// Errors from exporting.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The input size cannot be exported.
    #[error("input size {0:?}: height and width must be positive multiples of 32")]
    Size([usize; 2]),
    /// The model and the other arguments do not fit together.
    #[error("{0}")]
    Model(String),
    /// A tensor could not be read back.
    #[error("reading a tensor: {0}")]
    Tensor(String),
    /// A file could not be written.
    #[error("writing {0}")]
    Io(String),
}

/// Checks that `[H, W]` are positive multiples of [`SIZE_DIVISOR`].
pub fn check_size(size: [usize; 2]) -> Result<(), ExportError> {
    if size.iter().any(|&s| s == 0 || s % SIZE_DIVISOR != 0) {
        return Err(ExportError::Size(size));
    }
    Ok(())
}

/// Writes `model` to `path` (atomically).
pub fn write_model(path: &Path, model: &ModelProto) -> Result<(), ExportError> {
    ovkd_data::io::write_atomic(path, &model.encode())
        .map_err(|e| ExportError::Io(format!("{}: {e}", path.display())))
}
