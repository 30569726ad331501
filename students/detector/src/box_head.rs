//! The embedding box head (ViLD): RoI features → a shared trunk (2 FC, or 4 conv + 1 FC) →
//! class-agnostic box deltas and a region embedding in the teacher's space, L2-normalised.
//! Classification is the cosine similarity of that embedding with text embeddings given at
//! call time (plus a learned background embedding), divided by a temperature, so the set of
//! classes can change between training and inference.
//!
//! For ViLD-ensemble a second, "image" embedding can be produced, by its own projection on the
//! shared trunk or by a separate trunk; the ViLD-image distillation loss trains it.

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Distribution, Tensor};
use ovkd_backbone::ops::relu;
use ovkd_backbone::ops::{Conv2d, Conv2dConfig};
use serde::{Deserialize, Serialize};

/// Trunk architecture.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TrunkKind {
    /// Flatten → FC → ReLU → FC → ReLU (torchvision's `TwoMLPHead`).
    TwoFc,
    /// 4 × (3x3 conv → ReLU) → flatten → FC → ReLU (detectron2's `4conv1fc`, without norm).
    FourConvOneFc,
}

/// Where the ViLD-image embedding comes from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ImageBranch {
    /// None: both ViLD losses train the one region embedding (ViLD).
    #[default]
    None,
    /// A second projection on the shared trunk.
    SharedTrunk,
    /// A second trunk and projection (ViLD-ensemble's separate head).
    SeparateTrunk,
}

/// Box-head settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BoxHeadConfig {
    /// Channels of the pooled RoI features (the FPN's).
    pub in_channels: usize,
    /// Pooled size `[7, 7]`.
    pub pooled_size: [usize; 2],
    /// Trunk architecture.
    pub trunk: TrunkKind,
    /// Width of the FC layers (1024 in torchvision).
    pub fc_dim: usize,
    /// Channels of the convs of `four_conv_one_fc` (256 in detectron2).
    pub conv_dim: usize,
    /// Dimension of the teacher's embedding space.
    pub embed_dim: usize,
    /// Softmax temperature of the cosine logits (ViLD: 0.01).
    pub temperature: f32,
    /// Source of the ViLD-image embedding.
    #[serde(default)]
    pub image_branch: ImageBranch,
    /// BARON: pseudo-words per region (0: no pseudo-word projection). The trunk's
    /// representation is mapped linearly to `pseudo_words · word_dim` values, the words a frozen
    /// text tower reads (the tower itself is not part of the student).
    #[serde(default)]
    pub pseudo_words: usize,
    /// Width of one pseudo-word (the text tower's token-embedding width).
    #[serde(default)]
    pub word_dim: usize,
}

impl BoxHeadConfig {
    /// A head for `in_channels` FPN channels and a teacher of `embed_dim`: two FCs of
    /// `fc_dim`, temperature 0.01, no image branch.
    pub fn new(in_channels: usize, fc_dim: usize, embed_dim: usize) -> Self {
        Self {
            in_channels,
            pooled_size: [7, 7],
            trunk: TrunkKind::TwoFc,
            fc_dim,
            conv_dim: 256,
            embed_dim,
            temperature: 0.01,
            image_branch: ImageBranch::None,
            pseudo_words: 0,
            word_dim: 0,
        }
    }

    fn init_trunk(&self, device: &Device) -> Trunk {
        let [ph, pw] = self.pooled_size;
        match self.trunk {
            TrunkKind::TwoFc => Trunk {
                convs: Vec::new(),
                fcs: vec![
                    LinearConfig::new(self.in_channels * ph * pw, self.fc_dim).init(device),
                    LinearConfig::new(self.fc_dim, self.fc_dim).init(device),
                ],
            },
            TrunkKind::FourConvOneFc => Trunk {
                convs: (0..4)
                    .map(|i| {
                        let c_in = if i == 0 {
                            self.in_channels
                        } else {
                            self.conv_dim
                        };
                        Conv2dConfig::new([c_in, self.conv_dim], [3, 3])
                            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                            .with_initializer(Initializer::KaimingNormal {
                                gain: std::f64::consts::SQRT_2,
                                fan_out_only: true,
                            })
                            .init(device)
                    })
                    .collect(),
                fcs: vec![LinearConfig::new(self.conv_dim * ph * pw, self.fc_dim).init(device)],
            },
        }
    }

    /// Builds the head. The box regressor starts near zero (normal, std 0.001, as detectron2)
    /// so early proposals are not thrown around.
    pub fn init(&self, device: &Device) -> EmbeddingBoxHead {
        let mut bbox_pred = LinearConfig::new(self.fc_dim, 4)
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: 0.001,
            })
            .init(device);
        bbox_pred.bias = bbox_pred.bias.map(|b| b.map(|t| t.zeros_like()));
        let (image_trunk, image_projection) = match self.image_branch {
            ImageBranch::None => (None, None),
            ImageBranch::SharedTrunk => (
                None,
                Some(LinearConfig::new(self.fc_dim, self.embed_dim).init(device)),
            ),
            ImageBranch::SeparateTrunk => (
                Some(self.init_trunk(device)),
                Some(LinearConfig::new(self.fc_dim, self.embed_dim).init(device)),
            ),
        };
        EmbeddingBoxHead {
            trunk: self.init_trunk(device),
            bbox_pred,
            projection: LinearConfig::new(self.fc_dim, self.embed_dim).init(device),
            background: Param::from_tensor(Tensor::random(
                [self.embed_dim],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
            image_trunk,
            image_projection,
            word_projection: (self.pseudo_words > 0).then(|| {
                LinearConfig::new(self.fc_dim, self.pseudo_words * self.word_dim).init(device)
            }),
            temperature: self.temperature,
        }
    }
}

/// Convs and FCs, each followed by ReLU.
#[derive(Module, Debug)]
pub struct Trunk {
    /// 3x3 convs (empty for `two_fc`).
    pub convs: Vec<Conv2d>,
    /// Fully connected layers (`fc6`, `fc7` in torchvision).
    pub fcs: Vec<Linear>,
}

impl Trunk {
    /// `[K, C, ph, pw]` → `[K, fc_dim]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for conv in &self.convs {
            x = relu(conv.forward(x));
        }
        let mut x: Tensor<2> = x.flatten(1, 3);
        for fc in &self.fcs {
            x = relu(fc.forward(x));
        }
        x
    }
}

/// The ViLD box head.
#[derive(Module, Debug)]
pub struct EmbeddingBoxHead {
    /// Shared trunk.
    pub trunk: Trunk,
    /// Class-agnostic box deltas (4 per RoI).
    pub bbox_pred: Linear,
    /// Projection to the teacher's space (the ViLD-text region embedding).
    pub projection: Linear,
    /// Learned background embedding `[D]` (normalised at use).
    pub background: Param<Tensor<1>>,
    /// Separate trunk of the image branch, if any.
    pub image_trunk: Option<Trunk>,
    /// Projection of the image branch, if any.
    pub image_projection: Option<Linear>,
    /// BARON's pseudo-word projection: trunk → `[P · W]`.
    pub word_projection: Option<Linear>,
    /// Softmax temperature of the cosine logits.
    pub temperature: f32,
}

/// Box-head outputs for `K` RoIs.
#[derive(Clone, Debug)]
pub struct BoxHeadOutput {
    /// Class-agnostic deltas `[K, 4]` (Fast R-CNN coding, weights 10/10/5/5).
    pub box_deltas: Tensor<2>,
    /// L2-normalised region embeddings `[K, D]` (ViLD-text).
    pub region_embeds: Tensor<2>,
    /// L2-normalised image-branch embeddings `[K, D]`, when the head has an image branch.
    pub image_embeds: Option<Tensor<2>>,
    /// Pseudo-words `[K, P · W]` (word-major), when the head has a pseudo-word projection.
    pub pseudo_words: Option<Tensor<2>>,
}

impl EmbeddingBoxHead {
    /// Pooled RoI features `[K, C, ph, pw]` → deltas and embeddings.
    pub fn forward(&self, roi_features: Tensor<4>) -> BoxHeadOutput {
        let rep = self.trunk.forward(roi_features.clone());
        let image_embeds = self.image_projection.as_ref().map(|proj| {
            let rep = match &self.image_trunk {
                Some(t) => t.forward(roi_features),
                None => rep.clone(),
            };
            l2_normalize(proj.forward(rep))
        });
        let pseudo_words = self
            .word_projection
            .as_ref()
            .map(|p| p.forward(rep.clone()));
        BoxHeadOutput {
            pseudo_words,
            box_deltas: self.bbox_pred.forward(rep.clone()),
            region_embeds: l2_normalize(self.projection.forward(rep)),
            image_embeds,
        }
    }

    /// Cosine logits `[K, 1 + C]` of `embeds` `[K, D]` (L2-normalised) against the background
    /// (column 0) and `text_embeds` `[C, D]` (columns `1..=C`), divided by the temperature.
    pub fn logits(&self, embeds: Tensor<2>, text_embeds: Tensor<2>) -> Tensor<2> {
        let [d] = self.background.dims();
        let bg = l2_normalize(self.background.val().reshape([1, d]));
        let classes = Tensor::cat(vec![bg, l2_normalize(text_embeds)], 0);
        embeds
            .matmul(classes.transpose())
            .div_scalar(self.temperature)
    }

    /// Class probabilities `[K, C]`: softmax over background + classes, background dropped.
    pub fn class_probs(&self, embeds: Tensor<2>, text_embeds: Tensor<2>) -> Tensor<2> {
        let p = softmax(self.logits(embeds, text_embeds), 1);
        let [k, c1] = p.dims();
        p.slice([0..k, 1..c1])
    }
}

/// Rows scaled to unit L2 norm (norm clamped at 1e-12, as `F.normalize`): `[N, D]` → `[N, D]`.
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x.div(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(device: &Device) -> Tensor<2> {
        l2_normalize(Tensor::random(
            [5, 16],
            Distribution::Normal(0.0, 1.0),
            device,
        ))
    }

    #[test]
    fn pseudo_words_have_p_times_w_columns() {
        let device = Device::default();
        let cfg = BoxHeadConfig {
            pseudo_words: 3,
            word_dim: 8,
            ..BoxHeadConfig::new(4, 32, 16)
        };
        let out = cfg.init(&device).forward(Tensor::<4>::random(
            [5, 4, 7, 7],
            Distribution::Default,
            &device,
        ));
        assert_eq!(out.pseudo_words.map(|t| t.dims()), Some([5, 24]));
    }

    #[test]
    fn shapes_norms_and_logit_scale() {
        let device = Device::default();
        for (trunk, branch) in [
            (TrunkKind::TwoFc, ImageBranch::None),
            (TrunkKind::FourConvOneFc, ImageBranch::SeparateTrunk),
            (TrunkKind::TwoFc, ImageBranch::SharedTrunk),
        ] {
            let cfg = BoxHeadConfig {
                trunk,
                conv_dim: 8,
                image_branch: branch,
                ..BoxHeadConfig::new(4, 32, 16)
            };
            let head = cfg.init(&device);
            let x = Tensor::<4>::random([3, 4, 7, 7], Distribution::Default, &device);
            let out = head.forward(x);
            assert_eq!(out.box_deltas.dims(), [3, 4]);
            assert_eq!(out.region_embeds.dims(), [3, 16]);
            assert_eq!(out.image_embeds.is_some(), branch != ImageBranch::None);
            assert!(out.pseudo_words.is_none());
            let norms = out
                .region_embeds
                .clone()
                .powi_scalar(2)
                .sum_dim(1)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5));
            let logits = head.logits(out.region_embeds.clone(), text(&device));
            assert_eq!(logits.dims(), [3, 6]);
            // |cos| ≤ 1, so |logit| ≤ 1 / temperature.
            let max = logits.abs().max().into_data().try_to_vec::<f32>().unwrap()[0];
            assert!(max <= 100.0 + 1e-3);
            let p = head.class_probs(out.region_embeds, text(&device));
            assert_eq!(p.dims(), [3, 5]);
        }
    }
}
