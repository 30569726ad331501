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
    fn class_embeds(
        &self,
        classes: &[Vec<String>],
        templates: &[String],
    ) -> Result<Tensor<2>, String>;
    /// Dense features of each image resized to `size` x `size` (a multiple of the patch size).
    fn dense(&self, images: &[RgbImage], size: usize) -> Result<Vec<DenseMaps>, String>;
    /// One L2-normalised image embedding per box `[x1, y1, x2, y2]` (pixels) of `image`, from
    /// the teacher's ordinary (pooled) image path on crops: `[N, D]`. Teachers without one
    /// refuse.
    fn region_embeds(&self, image: &RgbImage, boxes: &[[f32; 4]]) -> Result<Tensor<2>, String> {
        let _ = (image, boxes);
        Err("this teacher cannot embed image regions".into())
    }
}

impl DenseTeacher for ovkd_teacher::embed::Teacher {
    fn dim(&self) -> usize {
        ovkd_teacher::embed::Teacher::dim(self)
    }

    fn patch_size(&self) -> usize {
        self.model.config.vision_config.patch_size
    }

    fn device(&self) -> Device {
        self.device.clone()
    }

    fn fingerprint(&self) -> String {
        self.checkpoint_hash.clone()
    }

    fn class_embeds(
        &self,
        classes: &[Vec<String>],
        templates: &[String],
    ) -> Result<Tensor<2>, String> {
        ovkd_teacher::embed::Teacher::class_embeds(self, classes, templates)
            .map_err(|e| e.to_string())
    }

    fn region_embeds(&self, image: &RgbImage, boxes: &[[f32; 4]]) -> Result<Tensor<2>, String> {
        ovkd_teacher::embed::Teacher::region_embeds(self, image, boxes).map_err(|e| e.to_string())
    }

    fn dense(&self, images: &[RgbImage], size: usize) -> Result<Vec<DenseMaps>, String> {
        let p = DenseTeacher::patch_size(self);
        if size < p || size % p != 0 {
            return Err(format!(
                "dense input size {size} must be a positive multiple of the patch size {p}"
            ));
        }
        let mut px = Vec::with_capacity(images.len() * 3 * size * size);
        for img in images {
            px.extend(
                self.preprocess
                    .resize_to(img, size as u32, size as u32)
                    .map_err(|e| e.to_string())?,
            );
        }
        let x = Tensor::<4>::from_data(
            burn::tensor::TensorData::new(px, [images.len(), 3, size, size]),
            &self.device,
        );
        let (e, k) = self.dense_pixels(x);
        let [b, d, h, w] = e.dims();
        let dk = k.dims()[1];
        Ok((0..b)
            .map(|i| DenseMaps {
                embeds: e.clone().slice([i..i + 1]).reshape([d, h, w]),
                keys: k.clone().slice([i..i + 1]).reshape([dk, h, w]),
            })
            .collect())
    }
}
