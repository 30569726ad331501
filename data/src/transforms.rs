//! Augmentation that keeps images, boxes, instance masks and semantic masks consistent: resize,
//! horizontal flip, scale jitter; then normalisation to a `[3, H, W]` float image.
//!
//! Images are resampled with a triangle (bilinear, antialiased when shrinking) filter, label maps
//! with nearest-neighbour at pixel centres, instance masks with [`BitMask::resize`] (nearest
//! when growing, any-coverage when shrinking, so thin parts are never lost), and boxes by the
//! same scale factors, so the tight box of a transformed mask equals the transformed box to
//! within a pixel.

use crate::boxes::Boxes;
use crate::mask::BitMask;
use crate::semantic::SemanticMask;
use image::RgbImage;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// ImageNet channel means (RGB, 0-1 scale), for ImageNet-style backbones.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// CLIP's channel means (RGB, 0-1 scale).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's channel standard deviations.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// One decoded example with its targets, before batching.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The image id (COCO `id`, or the position in a segmentation list).
    pub image_id: u64,
    /// RGB pixels, after any transforms so far.
    pub image: RgbImage,
    /// Boxes `[x1, y1, x2, y2]` in the current image's pixels, `[N, 4]`.
    pub boxes: Boxes,
    /// Contiguous label index of each box (position in the dataset's class list), `[N]`.
    pub labels: Vec<usize>,
    /// Category id of each box as in the file, `[N]`.
    pub category_ids: Vec<u64>,
    /// Instance masks, one per box, each the current image's size (when loaded).
    pub masks: Option<Vec<BitMask>>,
    /// Semantic label map, the current image's size (when loaded); 255 = ignore.
    pub semantic: Option<SemanticMask>,
    /// `[height, width]` of the image as decoded.
    pub orig_size: [usize; 2],
    /// Current size over original size, `[sy, sx]`: divide predicted boxes by it to get back to
    /// the original image.
    pub scale: [f32; 2],
    /// True when the sample was mirrored (odd number of flips).
    pub flipped: bool,
}

impl Sample {
    /// A sample with only an image.
    pub fn from_image(image_id: u64, image: RgbImage) -> Self {
        let orig_size = [image.height() as usize, image.width() as usize];
        Self {
            image_id,
            image,
            boxes: Boxes::empty(),
            labels: Vec::new(),
            category_ids: Vec::new(),
            masks: None,
            semantic: None,
            orig_size,
            scale: [1.0, 1.0],
            flipped: false,
        }
    }

    /// Current `[height, width]`.
    pub fn size(&self) -> [usize; 2] {
        [self.image.height() as usize, self.image.width() as usize]
    }
}

/// Resizes image, boxes and masks to `width x height`.
pub fn resize(s: &mut Sample, width: usize, height: usize) {
    let [h, w] = s.size();
    if [h, w] == [height, width] {
        return;
    }
    let (sx, sy) = (width as f32 / w as f32, height as f32 / h as f32);
    s.image = image::imageops::resize(
        &s.image,
        width as u32,
        height as u32,
        image::imageops::FilterType::Triangle,
    );
    s.boxes.scale(sx, sy);
    if let Some(masks) = &mut s.masks {
        for m in masks.iter_mut() {
            *m = m.resize(width, height);
        }
    }
    if let Some(sem) = &mut s.semantic {
        *sem = sem.resize_nearest(width, height);
    }
    s.scale = [s.scale[0] * sy, s.scale[1] * sx];
}

/// Mirrors image, boxes and masks left-right.
pub fn hflip(s: &mut Sample) {
    let w = s.image.width() as f32;
    image::imageops::flip_horizontal_in_place(&mut s.image);
    s.boxes.hflip(w);
    if let Some(masks) = &mut s.masks {
        for m in masks.iter_mut() {
            *m = m.hflip();
        }
    }
    if let Some(sem) = &mut s.semantic {
        *sem = sem.hflip();
    }
    s.flipped = !s.flipped;
}

/// The size that fits `[h, w]` into `max_side` on its longer side, keeping the aspect ratio.
pub fn fit_longer_side(size: [usize; 2], max_side: usize) -> [usize; 2] {
    let [h, w] = size;
    let long = h.max(w).max(1) as f64;
    let f = max_side as f64 / long;
    [
        ((h as f64 * f).round() as usize).max(1),
        ((w as f64 * f).round() as usize).max(1),
    ]
}

/// Augmentation and normalisation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Resize so the longer side is this many pixels (keeping aspect); `None` keeps the size.
    pub size: Option<usize>,
    /// Scale jitter: the target size is further multiplied by a factor drawn uniformly from
    /// `[lo, hi]` (e.g. `[0.8, 1.2]`); `None` for none.
    pub scale_jitter: Option<[f32; 2]>,
    /// Probability of a horizontal flip.
    pub hflip_prob: f32,
    /// Channel means on the 0-1 scale, subtracted after dividing by 255.
    pub mean: [f32; 3],
    /// Channel standard deviations on the 0-1 scale.
    pub std: [f32; 3],
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            size: None,
            scale_jitter: None,
            hflip_prob: 0.0,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

impl AugmentConfig {
    /// Training defaults: flip with probability 0.5, scale jitter 0.8-1.2.
    pub fn train() -> Self {
        Self {
            hflip_prob: 0.5,
            scale_jitter: Some([0.8, 1.2]),
            ..Default::default()
        }
    }

    /// Applies resize, scale jitter and flip, drawing from `rng`.
    pub fn apply(&self, s: &mut Sample, rng: &mut ChaCha8Rng) {
        let mut target = match self.size {
            Some(side) => fit_longer_side(s.size(), side),
            None => s.size(),
        };
        if let Some([lo, hi]) = self.scale_jitter {
            let f = lo + (hi - lo) * rng.random::<f32>();
            target = [
                ((target[0] as f32 * f).round() as usize).max(1),
                ((target[1] as f32 * f).round() as usize).max(1),
            ];
        }
        resize(s, target[1], target[0]);
        if self.hflip_prob > 0.0 && rng.random::<f32>() < self.hflip_prob {
            hflip(s);
        }
    }
}

/// The image as normalised floats `[3, H, W]` (channel-major): `(x / 255 - mean) / std`.
pub fn normalise(image: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut out = vec![0f32; 3 * h * w];
    let inv = std.map(|s| 1.0 / s);
    for (k, px) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * h * w + k] = (px[c] as f32 / 255.0 - mean[c]) * inv[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ov_shapes::{Preset, SynthConfig};
    use rand::SeedableRng;

    /// A sample from a real OV-Shapes scene (the generator's masks and boxes).
    fn scene_sample() -> Sample {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SynthConfig::preset(Preset::Quick);
        cfg.train_images = 1;
        cfg.val_images = 3;
        cfg.pretrain_images = 0;
        cfg.image_size = 80;
        cfg.seed = 11;
        let out = dir.path().join("d");
        crate::ov_shapes::generate(&out, &cfg).unwrap();
        let d = crate::DatasetDir::open(&out).unwrap();
        let ds = crate::loader::DetectionDataset::of_dir(&d, "val").unwrap();
        use crate::loader::Dataset;
        let s = ds.get(2).unwrap();
        assert!(s.boxes.len() >= 2);
        s
    }

    fn check(s: &Sample, tol: f32, what: &str) {
        let masks = s.masks.as_ref().unwrap();
        for (i, m) in masks.iter().enumerate() {
            assert_eq!([m.height(), m.width()], s.size());
            let mb = m.bbox().expect("objects stay visible");
            let b = s.boxes.get(i).unwrap();
            for k in 0..4 {
                assert!(
                    (mb[k] - b[k]).abs() <= tol,
                    "{what}: box {i} mask box {mb:?} vs transformed box {b:?}"
                );
            }
        }
        let sem = s.semantic.as_ref().unwrap();
        assert_eq!([sem.height(), sem.width()], s.size());
        // Every labelled pixel lies in an instance mask of its class (masks never shrink
        // below the label map's nearest-neighbour sampling).
        for y in 0..sem.height() {
            for x in 0..sem.width() {
                let k = sem.get(x, y) as u64;
                if k != 0 {
                    assert!(
                        masks
                            .iter()
                            .zip(&s.category_ids)
                            .any(|(m, &c)| c == k && m.get(x, y)),
                        "{what}: label {k} at ({x}, {y}) outside its masks"
                    );
                }
            }
        }
    }

    #[test]
    fn boxes_follow_masks_under_every_augmentation() {
        let base = scene_sample();
        check(&base, 0.0, "identity");

        let mut s = base.clone();
        hflip(&mut s);
        check(&s, 0.0, "flip");
        hflip(&mut s);
        assert_eq!(s.boxes, base.boxes);
        assert_eq!(s.masks, base.masks);

        for &(w, h) in &[(160, 160), (120, 100), (57, 63), (200, 41)] {
            let mut s = base.clone();
            resize(&mut s, w, h);
            check(&s, 1.0, &format!("resize {w}x{h}"));
            assert_eq!(s.scale, [h as f32 / 80.0, w as f32 / 80.0]);
        }

        let cfg = AugmentConfig {
            size: Some(100),
            scale_jitter: Some([0.6, 1.5]),
            hflip_prob: 0.5,
            ..Default::default()
        };
        let mut flips = 0;
        for seed in 0..12 {
            let mut s = base.clone();
            cfg.apply(&mut s, &mut ChaCha8Rng::seed_from_u64(seed));
            flips += s.flipped as u32;
            check(&s, 1.0, &format!("augment seed {seed}"));
        }
        assert!((1..12).contains(&flips), "flips {flips}");
    }

    #[test]
    fn normalise_is_channel_major() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([255, 0, 51]));
        img.put_pixel(1, 0, image::Rgb([0, 255, 102]));
        let v = normalise(&img, [0.5, 0.5, 0.0], [0.5, 0.25, 1.0]);
        assert_eq!(v, vec![1.0, -1.0, -2.0, 2.0, 0.2, 0.4]);
        assert_eq!(fit_longer_side([50, 100], 200), [100, 200]);
    }
}
