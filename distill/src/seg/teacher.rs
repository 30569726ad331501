//! What segmentation distillation needs from a teacher: text embeddings of class names and
//! MaskCLIP dense features of images. The built-in CLIP teacher implements it; tests use small
//! hand-made teachers.

use burn::tensor::{Device, Tensor};
use image::RgbImage;

/// MaskCLIP dense features of one image.
#[derive(Debug, Clone)]
pub struct DenseMaps {
    /// L2-normalised projected value-path features per patch `[D, h, w]`.
    pub embeds: Tensor<3>,
    /// The last block's key features per patch `[Dk, h, w]` (for key smoothing).
    pub keys: Tensor<3>,
}

/// A frozen vision-language teacher with dense features.
pub trait DenseTeacher {
    /// The joint embedding size D.
    fn dim(&self) -> usize;
    /// Pixels per patch: an input of side `s` gives a `s / p` grid.
    fn patch_size(&self) -> usize;
    /// Where its tensors live.
    fn device(&self) -> Device;
    /// Identifies the weights (part of the feature cache's key).
    fn fingerprint(&self) -> String;
    /// One L2-normalised embedding per class from its names and the prompt templates (`{}` is
    /// the name), averaged and renormalised: `[K, D]`.
    fn class_embeds(&self, classes: &[Vec<String>], templates: &[String])
    -> Result<Tensor<2>, String>;
    /// Dense features of each image resized to `size` x `size` (a multiple of the patch size).
    fn dense(&self, images: &[RgbImage], size: usize) -> Result<Vec<DenseMaps>, String>;
}
