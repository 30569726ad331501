//! ovkd-backbone: ResNet-style backbones and the FPN, shared by the detector and segmenter
//! students.
//!
//! - [`resnet`]: ResNet body (basic or bottleneck blocks, standard or light stem, frozen or
//!   trainable batch norm, freezing of the first stages) → C2..C5.
//! - [`fpn`]: Feature Pyramid Network → P2..P5 (+ P6 by max-pool).
//! - [`backbone`]: both together, torchvision's `BackboneWithFPN`.
//! - [`norm`]: `FrozenBatchNorm2d` and the norm switch.
//! - [`ops`]: fast convolution with its own backward (burn-flex im2col+GEMM, LibTorch's
//!   convolution backward under the `tch` feature).
//!
//! Every level travels as a [`FeatureMap`] (tensor + stride), so a head can pick the levels it
//! needs without knowing the body.

pub mod backbone;
pub mod features;
pub mod fpn;
pub mod norm;
pub mod ops;
pub mod resnet;

pub use backbone::{Backbone, BackboneConfig, torchvision_key};
pub use features::FeatureMap;
pub use fpn::{Fpn, FpnConfig};
pub use norm::{FrozenBatchNorm2d, Norm2d, NormKind};
pub use resnet::{BlockKind, ResNet, ResNetConfig, StemKind};

/// Errors from building a backbone.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    /// A config field has an unusable value.
    #[error("invalid backbone config: `{field}`: {reason}")]
    InvalidConfig {
        /// Dotted path of the field, e.g. `resnet.layers`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}
