//! The feature maps a backbone hands to a head: one tensor per level, with its stride.

use burn::tensor::Tensor;

/// One level of a feature hierarchy.
#[derive(Clone, Debug)]
pub struct FeatureMap {
    /// Input pixels per feature cell along each axis (4 for C2/P2, 8 for C3/P3, ...).
    pub stride: usize,
    /// `[B, C, H, W]`, with `H = ceil(H_in / stride)` for inputs padded to a multiple of the
    /// largest stride.
    pub tensor: Tensor<4>,
}

impl FeatureMap {
    /// The pyramid level, `log2(stride)`: 2 for stride 4, ..., 6 for stride 64.
    pub fn level(&self) -> u32 {
        self.stride.trailing_zeros()
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.tensor.dims()[1]
    }
}
