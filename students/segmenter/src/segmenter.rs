//! The segmenter student: a ResNet body, the dense [`Decoder`], and LSeg's classifier — the
//! per-pixel logits are cosine similarities between the pixel embeddings and the frozen text
//! embeddings of the label set, divided by a temperature, upsampled bilinearly to the input.
//!
//! Label index 0 is always the background (OV-Shapes' class 0): its embedding is either learned
//! (as ViLD's background embedding) or a fixed text embedding of "background" handed in by the
//! caller. Index `k >= 1` is row `k - 1` of the class embeddings, so with OV-Shapes' classes in
//! id order the argmax is the label value directly.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Distribution, Tensor};
use ovkd_backbone::{ResNet, ResNetConfig};
use serde::{Deserialize, Serialize};

use crate::SegmenterError;
use crate::decoder::{Decoder, DecoderConfig, upsample_bilinear};

/// How the background class gets its embedding.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackgroundKind {
    /// A trained embedding (ViLD's background), L2-normalised before use.
    #[default]
    Learned,
    /// A fixed embedding given by the caller (the teacher's text embedding of "background"),
    /// frozen in the model and saved with it.
    Text,
}

/// Segmenter settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SegmenterConfig {
    /// The ResNet body (its C2..C5 feed the decoder).
    #[serde(default = "ResNetConfig::tiny")]
    pub backbone: ResNetConfig,
    /// Width of the decoder's fusion path.
    #[serde(default = "default_channels")]
    pub decoder_channels: usize,
    /// Refinement blocks at 1/4 resolution.
    #[serde(default = "default_refine")]
    pub refine_layers: usize,
    /// Pixel-embedding dimension; must equal the teacher's joint embedding size D.
    #[serde(default = "default_embed_dim")]
    pub embed_dim: usize,
    /// Softmax temperature of the cosine logits (LSeg: 0.07).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Where the background embedding comes from.
    #[serde(default)]
    pub background: BackgroundKind,
}

fn default_channels() -> usize {
    64
}
fn default_refine() -> usize {
    2
}
fn default_embed_dim() -> usize {
    64
}
fn default_temperature() -> f64 {
    0.07
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        Self {
            backbone: ResNetConfig::tiny(),
            decoder_channels: default_channels(),
            refine_layers: default_refine(),
            embed_dim: default_embed_dim(),
            temperature: default_temperature(),
            background: BackgroundKind::default(),
        }
    }
}

impl SegmenterConfig {
    /// The decoder this config builds.
    pub fn decoder(&self) -> DecoderConfig {
        DecoderConfig {
            in_channels: self.backbone.out_channels().to_vec(),
            in_strides: self.backbone.strides().to_vec(),
            channels: self.decoder_channels,
            refine_layers: self.refine_layers,
            embed_dim: self.embed_dim,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), SegmenterError> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(SegmenterError::InvalidConfig {
                field: "temperature".into(),
                reason: format!("must be a positive number, found {}", self.temperature),
            });
        }
        self.backbone.validate()?;
        self.decoder().validate()
    }

    /// Builds the segmenter; the background embedding starts random (normal) and trainable.
    pub fn init(&self, device: &Device) -> Result<Segmenter, SegmenterError> {
        self.validate()?;
        let background =
            Tensor::<2>::random([1, self.embed_dim], Distribution::Normal(0.0, 1.0), device);
        let model = Segmenter {
            body: self.backbone.init(device)?,
            decoder: self.decoder().init(device)?,
            background: Param::from_tensor(background),
            temperature: self.temperature,
        };
        // Burn draws a parameter's initial values on its first use; draw them all now, so that
        // seeding the device right before `init` is enough for reproducible weights.
        model.visit(&mut Materialise);
        Ok(model)
    }
}

struct Materialise;

impl ModuleVisitor for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// What [`Segmenter::forward`] returns.
#[derive(Debug, Clone)]
pub struct SegOutput {
    /// L2-normalised pixel embeddings at 1/4 resolution: `[B, D, H/4, W/4]`.
    pub pixel_embeds: Tensor<4>,
    /// Logits at the input resolution, background first: `[B, K + 1, H, W]`.
    pub logits: Tensor<4>,
}

/// The segmenter student.
#[derive(Module, Debug)]
pub struct Segmenter {
    /// The ResNet body.
    pub body: ResNet,
    /// The dense decoder.
    pub decoder: Decoder,
    /// The background embedding `[1, D]` (normalised when used).
    pub background: Param<Tensor<2>>,
    /// Softmax temperature of the cosine logits.
    pub temperature: f64,
}

/// Inputs must be padded to a multiple of this (the body's largest stride).
pub const SIZE_DIVISOR: usize = 32;

impl Segmenter {
    /// Replaces the background embedding by a fixed one (e.g. the teacher's text embedding of
    /// "background"), `[D]`, frozen: it receives no gradient.
    pub fn with_fixed_background(mut self, embed: Tensor<1>) -> Self {
        let [d] = embed.dims();
        let device = self.background.val().device();
        let t = Tensor::<1>::from_data(embed.into_data(), &device).reshape([1, d]);
        self.background = Param::from_tensor(t).set_require_grad(false);
        self
    }

    /// The pixel-embedding dimension D.
    pub fn embed_dim(&self) -> usize {
        self.background.val().dims()[1]
    }

    /// Pixel embeddings of images `[B, 3, H, W]` (H, W multiples of [`SIZE_DIVISOR`]):
    /// L2-normalised, `[B, D, H/4, W/4]`.
    pub fn pixel_embeds(&self, images: Tensor<4>) -> Tensor<4> {
        self.decoder.forward(self.body.forward(images))
    }

    /// The label set's embeddings: the normalised background followed by `class_embeds`
    /// `[K, D]` (already normalised, frozen text embeddings): `[K + 1, D]`.
    pub fn label_embeds(&self, class_embeds: Tensor<2>) -> Tensor<2> {
        let bg = self.background.val();
        let bg = bg
            .clone()
            .div(bg.square().sum_dim(1).sqrt().clamp_min(1e-6));
        let device = bg.device();
        // Text embeddings made on another (plain) device enter the graph as constants.
        let classes = Tensor::<2>::from_data(class_embeds.into_data(), &device);
        Tensor::cat(vec![bg, classes], 0)
    }

    /// Cosine logits at the embeddings' resolution: pixel embeddings `[B, D, h, w]` and
    /// class embeddings `[K, D]` → `[B, K + 1, h, w]` (background first), divided by the
    /// temperature.
    pub fn logits_from_embeds(
        &self,
        pixel_embeds: Tensor<4>,
        class_embeds: Tensor<2>,
    ) -> Tensor<4> {
        let [b, d, h, w] = pixel_embeds.dims();
        let labels = self.label_embeds(class_embeds);
        let [k1, dl] = labels.dims();
        assert_eq!(
            d, dl,
            "pixel embeddings have D = {d}, class embeddings D = {dl}"
        );
        labels
            .reshape([1, k1, d])
            .expand([b, k1, d])
            .matmul(pixel_embeds.reshape([b, d, h * w]))
            .reshape([b, k1, h, w])
            .div_scalar(self.temperature)
    }

    /// Pixel embeddings and logits upsampled to the input size, for images `[B, 3, H, W]`
    /// (H, W multiples of [`SIZE_DIVISOR`]) and class embeddings `[K, D]`.
    pub fn forward(&self, images: Tensor<4>, class_embeds: Tensor<2>) -> SegOutput {
        let [_, _, h, w] = images.dims();
        let pixel_embeds = self.pixel_embeds(images);
        let logits = upsample_bilinear(
            self.logits_from_embeds(pixel_embeds.clone(), class_embeds),
            [h, w],
        );
        SegOutput {
            pixel_embeds,
            logits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoder::l2_normalize_channels;
    use burn::tensor::TensorData;

    fn tiny() -> SegmenterConfig {
        SegmenterConfig {
            backbone: ResNetConfig {
                widths: [4, 8, 8, 8],
                stem_channels: 4,
                ..ResNetConfig::tiny()
            },
            decoder_channels: 8,
            refine_layers: 1,
            embed_dim: 6,
            temperature: 0.07,
            background: BackgroundKind::Learned,
        }
    }

    fn unit_rows(k: usize, d: usize, device: &Device) -> Tensor<2> {
        let t = Tensor::<2>::random([k, d], Distribution::Normal(0.0, 1.0), device);
        t.clone().div(t.square().sum_dim(1).sqrt())
    }

    #[test]
    fn logits_are_cosine_over_temperature() {
        let device = Device::default();
        let model = tiny().init(&device).unwrap();
        let pixels = l2_normalize_channels(Tensor::<4>::random(
            [2, 6, 3, 5],
            Distribution::Normal(0.0, 1.0),
            &device,
        ));
        let classes = unit_rows(4, 6, &device);
        let logits = model.logits_from_embeds(pixels.clone(), classes.clone());
        assert_eq!(logits.dims(), [2, 5, 3, 5]);
        let got = logits.into_data().try_into_vec::<f32>().unwrap();
        let px = pixels.into_data().try_into_vec::<f32>().unwrap();
        let labels = model
            .label_embeds(classes)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let bg: Vec<f32> = model
            .background
            .val()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let bg_norm = bg.iter().map(|v| v * v).sum::<f32>().sqrt();
        // The background row is the normalised parameter.
        for j in 0..6 {
            assert!((labels[j] - bg[j] / bg_norm).abs() < 1e-6);
        }
        for b in 0..2 {
            for k in 0..5 {
                for p in 0..15 {
                    let mut dot = 0.0f32;
                    let (mut na, mut nb) = (0.0f32, 0.0f32);
                    for j in 0..6 {
                        let a = px[(b * 6 + j) * 15 + p];
                        let c = labels[k * 6 + j];
                        dot += a * c;
                        na += a * a;
                        nb += c * c;
                    }
                    let cos = dot / (na.sqrt() * nb.sqrt());
                    let want = cos / 0.07;
                    let g = got[(b * 5 + k) * 15 + p];
                    assert!((g - want).abs() < 1e-4, "b{b} k{k} p{p}: {g} vs {want}");
                }
            }
        }
    }

    #[test]
    fn forward_upsamples_logits_to_the_input() {
        let device = Device::default();
        let model = tiny().init(&device).unwrap();
        let images = Tensor::<4>::random([1, 3, 64, 96], Distribution::Default, &device);
        let out = model.forward(images, unit_rows(3, 6, &device));
        assert_eq!(out.pixel_embeds.dims(), [1, 6, 16, 24]);
        assert_eq!(out.logits.dims(), [1, 4, 64, 96]);
        // Cosines over 0.07 stay within ±1/0.07 after bilinear interpolation.
        let max = out.logits.abs().max().into_scalar::<f32>();
        assert!(max <= 1.0 / 0.07 + 1e-3, "{max}");
    }

    #[test]
    fn a_fixed_background_gets_no_gradient_and_a_learned_one_does() {
        let device = Device::default().autodiff();
        let images = Tensor::<4>::random([1, 3, 32, 32], Distribution::Default, &device);
        let classes = unit_rows(2, 6, &Device::default());
        let learned = tiny().init(&device).unwrap();
        let grads = learned
            .forward(images.clone(), classes.clone())
            .logits
            .slice([0..1, 0..1])
            .sum()
            .backward();
        assert!(learned.background.val().grad(&grads).is_some());

        let bg = Tensor::<1>::from_data(TensorData::new(vec![1.0f32; 6], [6]), &device);
        let fixed = tiny().init(&device).unwrap().with_fixed_background(bg);
        let grads = fixed
            .forward(images, classes)
            .logits
            .slice([0..1, 0..1])
            .sum()
            .backward();
        assert!(fixed.background.val().grad(&grads).is_none());
        let labels = fixed
            .label_embeds(unit_rows(1, 6, &device))
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        for v in &labels[..6] {
            assert!((v - 1.0 / 6f32.sqrt()).abs() < 1e-6);
        }
    }

    #[test]
    fn config_defaults_and_validation() {
        let c: SegmenterConfig = toml::from_str("embed_dim = 32").unwrap();
        assert_eq!(c.temperature, 0.07);
        assert_eq!(c.background, BackgroundKind::Learned);
        assert_eq!(c.backbone, ResNetConfig::tiny());
        assert!(toml::from_str::<SegmenterConfig>("embed_dims = 32").is_err());
        let bad = SegmenterConfig {
            temperature: 0.0,
            ..SegmenterConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("temperature")
        );
    }
}
