//! Whole-image and sliding-window inference, as mmsegmentation's `whole_inference` and
//! `slide_inference`: images of any size are padded to the body's stride, windows overlap and
//! their logits are averaged where they overlap.

use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::SegmenterError;
use crate::segmenter::{SIZE_DIVISOR, Segmenter};

/// How to run a model over an image.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum InferenceMode {
    /// The whole image at once (padded at the right and bottom to a multiple of 32).
    #[default]
    Whole,
    /// Square windows of `window` pixels every `stride` pixels; logits averaged.
    Slide {
        /// Window side, pixels.
        window: usize,
        /// Step between windows, pixels (at most `window`).
        stride: usize,
    },
}

impl InferenceMode {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), SegmenterError> {
        if let InferenceMode::Slide { window, stride } = *self {
            if window == 0 || stride == 0 || stride > window {
                return Err(SegmenterError::InvalidConfig {
                    field: "inference".into(),
                    reason: format!(
                        "slide needs 0 < stride <= window, found window {window}, stride {stride}"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Pads `[B, C, H, W]` with zeros (the mean colour after normalisation) at the right and bottom
/// to multiples of [`SIZE_DIVISOR`].
pub fn pad_to_divisor(images: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = images.dims();
    let (ph, pw) = (
        h.div_ceil(SIZE_DIVISOR) * SIZE_DIVISOR - h,
        w.div_ceil(SIZE_DIVISOR) * SIZE_DIVISOR - w,
    );
    if ph == 0 && pw == 0 {
        return images;
    }
    images.pad((0, pw, 0, ph), 0.0f32)
}

/// Logits of the whole image: `[B, 3, H, W]` (any size) and class embeddings `[K, D]` →
/// `[B, K + 1, H, W]`.
pub fn whole_logits(model: &Segmenter, images: Tensor<4>, class_embeds: Tensor<2>) -> Tensor<4> {
    let [b, _, h, w] = images.dims();
    let logits = model.forward(pad_to_divisor(images), class_embeds).logits;
    let k1 = logits.dims()[1];
    logits.slice([0..b, 0..k1, 0..h, 0..w])
}

/// Window origins along one axis, as mmsegmentation: `n = max(len - window + stride - 1, 0) /
/// stride + 1` windows, the last one shifted back to end at the edge.
fn window_starts(len: usize, window: usize, stride: usize) -> Vec<(usize, usize)> {
    let n = (len + stride).saturating_sub(window + 1) / stride + 1;
    (0..n)
        .map(|i| {
            let end = (i * stride + window).min(len);
            (end.saturating_sub(window), end)
        })
        .collect()
}

/// Logits by sliding windows: `[B, 3, H, W]` → `[B, K + 1, H, W]`, each pixel the mean of the
/// windows covering it.
pub fn slide_logits(
    model: &Segmenter,
    images: Tensor<4>,
    class_embeds: Tensor<2>,
    window: usize,
    stride: usize,
) -> Tensor<4> {
    let [b, _, h, w] = images.dims();
    let k1 = class_embeds.dims()[0] + 1;
    let device = images.device();
    let mut sum = Tensor::<4>::zeros([b, k1, h, w], &device);
    let mut count = Tensor::<4>::zeros([1, 1, h, w], &device);
    for &(y0, y1) in &window_starts(h, window, stride) {
        for &(x0, x1) in &window_starts(w, window, stride) {
            let crop = images.clone().slice([0..b, 0..3, y0..y1, x0..x1]);
            let logits = whole_logits(model, crop, class_embeds.clone());
            let pad = (x0, w - x1, y0, h - y1);
            sum = sum.add(logits.pad(pad, 0.0f32));
            count =
                count.add(Tensor::<4>::ones([1, 1, y1 - y0, x1 - x0], &device).pad(pad, 0.0f32));
        }
    }
    sum.div(count)
}

/// Logits in the chosen mode: `[B, 3, H, W]` → `[B, K + 1, H, W]`.
pub fn infer_logits(
    model: &Segmenter,
    images: Tensor<4>,
    class_embeds: Tensor<2>,
    mode: InferenceMode,
) -> Tensor<4> {
    match mode {
        InferenceMode::Whole => whole_logits(model, images, class_embeds),
        InferenceMode::Slide { window, stride } => {
            slide_logits(model, images, class_embeds, window, stride)
        }
    }
}

/// Label maps: the argmax over `[B, K + 1, H, W]` logits, `[B, H, W]` (0 = background, k =
/// class row k - 1).
pub fn predict(
    model: &Segmenter,
    images: Tensor<4>,
    class_embeds: Tensor<2>,
    mode: InferenceMode,
) -> Tensor<3, Int> {
    let logits = infer_logits(model, images, class_embeds, mode);
    let [b, _, h, w] = logits.dims();
    logits.argmax(1).reshape([b, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segmenter::SegmenterConfig;
    use burn::tensor::{Device, Distribution};
    use ovkd_backbone::ResNetConfig;

    #[test]
    fn windows_cover_the_axis_like_mmsegmentation() {
        assert_eq!(
            window_starts(100, 64, 32),
            vec![(0, 64), (32, 96), (36, 100)]
        );
        assert_eq!(window_starts(64, 64, 32), vec![(0, 64)]);
        assert_eq!(window_starts(40, 64, 32), vec![(0, 40)]);
    }

    fn model(device: &Device) -> Segmenter {
        SegmenterConfig {
            backbone: ResNetConfig {
                widths: [4, 8, 8, 8],
                stem_channels: 4,
                ..ResNetConfig::tiny()
            },
            decoder_channels: 8,
            refine_layers: 1,
            embed_dim: 6,
            ..SegmenterConfig::default()
        }
        .init(device)
        .unwrap()
    }

    #[test]
    fn any_size_gives_logits_and_labels_of_that_size() {
        let device = Device::default();
        let m = model(&device);
        let classes = Tensor::<2>::random([3, 6], Distribution::Default, &device);
        let img = Tensor::<4>::random([2, 3, 50, 70], Distribution::Default, &device);
        let whole = infer_logits(&m, img.clone(), classes.clone(), InferenceMode::Whole);
        assert_eq!(whole.dims(), [2, 4, 50, 70]);
        let mode = InferenceMode::Slide {
            window: 32,
            stride: 24,
        };
        let labels = predict(&m, img, classes, mode);
        assert_eq!(labels.dims(), [2, 50, 70]);
        let max = labels.max().into_scalar::<i64>();
        assert!((0..4).contains(&max));
    }

    #[test]
    fn one_window_equals_the_whole_image() {
        let device = Device::default();
        let m = model(&device);
        let classes = Tensor::<2>::random([3, 6], Distribution::Default, &device);
        let img = Tensor::<4>::random([1, 3, 64, 64], Distribution::Default, &device);
        let a = whole_logits(&m, img.clone(), classes.clone());
        let b = slide_logits(&m, img, classes, 64, 32);
        let diff = a.sub(b).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn slide_settings_are_checked() {
        assert!(
            InferenceMode::Slide {
                window: 32,
                stride: 48
            }
            .validate()
            .is_err()
        );
        let m: InferenceMode =
            toml::from_str("mode = \"slide\"\nwindow = 64\nstride = 32").unwrap();
        assert_eq!(
            m,
            InferenceMode::Slide {
                window: 64,
                stride: 32
            }
        );
    }
}
