//! The detector student: backbone + FPN → RPN → multi-level RoIAlign → embedding box head.
//!
//! Training returns the RPN and Fast R-CNN losses (the classification loss is ViLD-text's
//! cross-entropy over cosine logits), the sampled RoIs with their logits and embeddings, and,
//! for boxes the caller supplies (the cached proposals of ViLD-image), the embeddings the
//! distillation loss compares with the teacher's. Inference returns refined boxes and region
//! embeddings per image, so the caller can score them against any text embeddings.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use ovkd_backbone::{Backbone, BackboneConfig, FeatureMap};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::DetectorError;
use crate::box_head::{BoxHeadConfig, BoxHeadOutput, EmbeddingBoxHead};
use crate::boxes::{Boxes, clip_box};
use crate::roi_align::{MultiScaleRoiAlign, Roi, RoiAlignConfig};
use crate::roi_heads::{RoiHeadsConfig, RoiSample, Targets};
use crate::rpn::{Rpn, RpnConfig, RpnLosses, to_vec};

/// Everything that defines a detector.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// ResNet + FPN (P2..P6).
    pub backbone: BackboneConfig,
    /// Region proposal network.
    pub rpn: RpnConfig,
    /// RoI pooling on P2..P5.
    pub roi_align: RoiAlignConfig,
    /// Training RoI sampling and the head's box coding.
    pub roi_heads: RoiHeadsConfig,
    /// The embedding box head (`in_channels` = the FPN's channels, `pooled_size` = the
    /// RoIAlign output size).
    pub box_head: BoxHeadConfig,
    /// Per-channel mean subtracted from RGB inputs in `[0, 1]` (ImageNet's, as torchvision).
    pub pixel_mean: [f32; 3],
    /// Per-channel standard deviation the inputs are divided by.
    pub pixel_std: [f32; 3],
}

impl DetectorConfig {
    /// The small CPU configuration (tests and OV-Shapes): tiny ResNet, 64-channel FPN,
    /// anchors 16..256, 128 RoIs per image, a 256-wide 2-FC head, teacher dimension
    /// `embed_dim`.
    pub fn tiny(embed_dim: usize) -> Self {
        let backbone = BackboneConfig::tiny();
        Self {
            box_head: BoxHeadConfig::new(backbone.fpn_channels, 256, embed_dim),
            backbone,
            rpn: RpnConfig::small_images(),
            roi_align: RoiAlignConfig::default(),
            roi_heads: RoiHeadsConfig {
                batch_size_per_image: 128,
                ..RoiHeadsConfig::default()
            },
            pixel_mean: IMAGENET_MEAN,
            pixel_std: IMAGENET_STD,
        }
    }

    /// torchvision's `fasterrcnn_resnet50_fpn` layout with the embedding head.
    pub fn resnet50_fpn(embed_dim: usize) -> Self {
        let backbone = BackboneConfig::resnet50_fpn();
        Self {
            box_head: BoxHeadConfig::new(backbone.fpn_channels, 1024, embed_dim),
            backbone,
            rpn: RpnConfig::torchvision(),
            roi_align: RoiAlignConfig::default(),
            roi_heads: RoiHeadsConfig::default(),
            pixel_mean: IMAGENET_MEAN,
            pixel_std: IMAGENET_STD,
        }
    }

    /// Checks that the parts fit together.
    pub fn validate(&self) -> Result<(), DetectorError> {
        let bad = |field: &str, reason: String| {
            Err(DetectorError::InvalidConfig {
                field: field.into(),
                reason,
            })
        };
        if self.box_head.in_channels != self.backbone.fpn_channels {
            return bad(
                "box_head.in_channels",
                format!(
                    "must equal backbone.fpn_channels ({})",
                    self.backbone.fpn_channels
                ),
            );
        }
        if self.box_head.pooled_size != self.roi_align.output_size {
            return bad(
                "box_head.pooled_size",
                format!(
                    "must equal roi_align.output_size ({:?})",
                    self.roi_align.output_size
                ),
            );
        }
        let levels = self.backbone.strides().len();
        if self.rpn.anchors.sizes.len() != levels || self.rpn.anchors.aspect_ratios.len() != levels
        {
            return bad(
                "rpn.anchors",
                format!("needs sizes and aspect ratios for {levels} levels"),
            );
        }
        if self.box_head.temperature <= 0.0 {
            return bad("box_head.temperature", "must be positive".into());
        }
        if self.box_head.pseudo_words > 0 && self.box_head.word_dim == 0 {
            return bad(
                "box_head.word_dim",
                "must be positive when box_head.pseudo_words > 0".into(),
            );
        }
        if self.pixel_std.iter().any(|&s| s <= 0.0) {
            return bad("pixel_std", "must be positive".into());
        }
        Ok(())
    }

    /// Builds the detector with fresh weights on `device`.
    pub fn init(&self, device: &Device) -> Result<Detector, DetectorError> {
        self.validate()?;
        let backbone = self.backbone.init(device)?;
        Ok(Detector {
            backbone,
            rpn: Rpn::new(self.rpn.clone(), self.backbone.fpn_channels, device),
            box_head: self.box_head.init(device),
            config: self.clone(),
        })
    }
}

/// ImageNet channel means (torchvision's `GeneralizedRCNNTransform`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A batch of images of possibly different sizes.
#[derive(Clone, Debug)]
pub struct ImageBatch {
    /// `[B, 3, H, W]` RGB in `[0, 1]`, each image in the top-left corner, the rest zero.
    pub images: Tensor<4>,
    /// `[h, w]` of each image before padding.
    pub sizes: Vec<[usize; 2]>,
}

impl ImageBatch {
    /// Pads CHW images (`3 * h * w` values each, RGB in `[0, 1]`) to a common size that is a
    /// multiple of `size_divisible` (32 for the FPN) and stacks them.
    pub fn from_chw(
        images: &[(&[f32], [usize; 2])],
        size_divisible: usize,
        device: &Device,
    ) -> Result<Self, DetectorError> {
        if images.is_empty() {
            return Err(DetectorError::EmptyBatch);
        }
        for (i, (data, [h, w])) in images.iter().enumerate() {
            if data.len() != 3 * h * w || *h == 0 || *w == 0 {
                return Err(DetectorError::BadImage {
                    index: i,
                    reason: format!("{} values for a 3x{h}x{w} image", data.len()),
                });
            }
        }
        let round = |v: usize| v.div_ceil(size_divisible) * size_divisible;
        let hh = round(images.iter().map(|(_, s)| s[0]).max().unwrap_or(0));
        let ww = round(images.iter().map(|(_, s)| s[1]).max().unwrap_or(0));
        let b = images.len();
        let mut buf = vec![0f32; b * 3 * hh * ww];
        for (i, (data, [h, w])) in images.iter().enumerate() {
            for c in 0..3 {
                for y in 0..*h {
                    let src = &data[(c * h + y) * w..(c * h + y) * w + w];
                    let dst = ((i * 3 + c) * hh + y) * ww;
                    buf[dst..dst + w].copy_from_slice(src);
                }
            }
        }
        Ok(Self {
            images: Tensor::from_data(TensorData::new(buf, [b, 3, hh, ww]), device),
            sizes: images.iter().map(|(_, s)| *s).collect(),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// `[H, W]` of the padded tensor.
    pub fn padded_size(&self) -> [usize; 2] {
        let [_, _, h, w] = self.images.dims();
        [h, w]
    }
}

/// The detector's training losses, each `[1]`.
#[derive(Clone, Debug)]
pub struct DetectorLosses {
    /// RPN objectness (binary cross-entropy).
    pub rpn_objectness: Tensor<1>,
    /// RPN box regression.
    pub rpn_box_reg: Tensor<1>,
    /// Box-head classification: cross-entropy over the cosine logits (ViLD-text).
    pub classification: Tensor<1>,
    /// Box-head box regression (class-agnostic).
    pub box_reg: Tensor<1>,
}

impl DetectorLosses {
    /// Unweighted sum of the four terms.
    pub fn total(&self) -> Tensor<1> {
        self.rpn_objectness
            .clone()
            .add(self.rpn_box_reg.clone())
            .add(self.classification.clone())
            .add(self.box_reg.clone())
    }

    /// The four values, named, for logging.
    pub fn values(&self) -> [(&'static str, f32); 4] {
        let v = |t: &Tensor<1>| to_vec(t.clone().detach())[0];
        [
            ("rpn_objectness", v(&self.rpn_objectness)),
            ("rpn_box_reg", v(&self.rpn_box_reg)),
            ("classification", v(&self.classification)),
            ("box_reg", v(&self.box_reg)),
        ]
    }
}

/// What a training forward returns.
#[derive(Clone, Debug)]
pub struct TrainOutput {
    /// The losses.
    pub losses: DetectorLosses,
    /// Sampled RoIs per image (boxes, labels: 0 background / class + 1, targets).
    pub samples: Vec<RoiSample>,
    /// Cosine logits of the sampled RoIs `[R, 1 + C]` (column 0 background), `R` = total
    /// sampled RoIs, images in order.
    pub roi_logits: Tensor<2>,
    /// Region embeddings of the sampled RoIs `[R, D]`.
    pub roi_region_embeds: Tensor<2>,
    /// For the caller's `distill_boxes` (images in order, `Q` in all): the embeddings the
    /// ViLD-image loss compares with the teacher's, `[Q, D]` — from the image branch when the
    /// head has one, else the region embeddings. `None` when no boxes were given.
    pub distill_embeds: Option<Tensor<2>>,
    /// Pseudo-words of the sampled RoIs `[R, P · W]`, when the head makes them (BARON).
    pub roi_pseudo_words: Option<Tensor<2>>,
    /// Pseudo-words of the caller's `distill_boxes` `[Q, P · W]`, when the head makes them
    /// and boxes were given.
    pub distill_pseudo_words: Option<Tensor<2>>,
    /// RPN proposals per image (before sampling).
    pub proposals: Vec<Boxes>,
}

/// Per-image inference output: boxes and embeddings, not yet classified.
#[derive(Clone, Debug)]
pub struct RegionPredictions {
    /// RPN proposals `N`.
    pub proposals: Boxes,
    /// Their objectness probabilities.
    pub proposal_scores: Vec<f32>,
    /// Proposals refined by the box head (class-agnostic) and clipped to the image.
    pub boxes: Boxes,
    /// L2-normalised region embeddings `[N, D]` (text head).
    pub region_embeds: Tensor<2>,
    /// L2-normalised image-branch embeddings `[N, D]`, when the head has an image branch.
    pub image_embeds: Option<Tensor<2>>,
    /// Pseudo-words `[N, P · W]`, when the head makes them (BARON classifies through them).
    pub pseudo_words: Option<Tensor<2>>,
}

/// The detector student.
#[derive(Module, Debug)]
pub struct Detector {
    /// ResNet + FPN.
    pub backbone: Backbone,
    /// Region proposal network.
    pub rpn: Rpn,
    /// Embedding box head.
    pub box_head: EmbeddingBoxHead,
    /// The configuration it was built from.
    #[module(skip)]
    pub config: DetectorConfig,
}

impl Detector {
    /// Normalises (ImageNet statistics, padding kept at zero), pads to a multiple of 32 and
    /// runs backbone + FPN: P2..P6, each `[B, C, H / s, W / s]`.
    pub fn features(&self, batch: &ImageBatch) -> Vec<FeatureMap> {
        self.backbone.forward(self.normalize(batch))
    }

    fn normalize(&self, batch: &ImageBatch) -> Tensor<4> {
        let device = batch.images.device();
        let [b, c, h, w] = batch.images.dims();
        let div = self.config.backbone.size_divisibility();
        let (hp, wp) = (h.div_ceil(div) * div, w.div_ceil(div) * div);
        let mean = Tensor::<4>::from_data(
            TensorData::new(self.config.pixel_mean.to_vec(), [1, 3, 1, 1]),
            &device,
        );
        let std = Tensor::<4>::from_data(
            TensorData::new(self.config.pixel_std.to_vec(), [1, 3, 1, 1]),
            &device,
        );
        let mut mask = vec![0f32; b * hp * wp];
        for (i, [ih, iw]) in batch.sizes.iter().enumerate() {
            for y in 0..(*ih).min(hp) {
                let row = (i * hp + y) * wp;
                mask[row..row + (*iw).min(wp)].fill(1.0);
            }
        }
        let mask = Tensor::<4>::from_data(TensorData::new(mask, [b, 1, hp, wp]), &device);
        let x = batch.images.clone().sub(mean).div(std);
        let x = if (hp, wp) == (h, w) {
            x
        } else {
            Tensor::zeros([b, c, hp, wp], &device).slice_assign([0..b, 0..c, 0..h, 0..w], x)
        };
        x.mul(mask)
    }

    /// P2..P5: the levels RoIAlign pools from (P6 feeds only the RPN).
    fn pool_levels<'a>(&self, features: &'a [FeatureMap]) -> &'a [FeatureMap] {
        let n = features.iter().filter(|f| f.stride <= 32).count();
        &features[..n]
    }

    /// Pools `rois` from `features` (as returned by [`features`](Self::features)) and runs
    /// the box head. `rois` must not be empty.
    pub fn embed_regions(&self, features: &[FeatureMap], rois: &[Roi]) -> BoxHeadOutput {
        let pooler = MultiScaleRoiAlign::new(self.config.roi_align.clone());
        self.box_head
            .forward(pooler.forward(self.pool_levels(features), rois))
    }

    /// Training forward. `targets` (one per image; labels index `text_embeds`),
    /// `text_embeds` `[C, D]` L2-normalised text embeddings of the training classes,
    /// `distill_boxes` optional boxes per image whose embeddings the ViLD-image loss needs.
    /// `rng` drives the anchor and RoI sampling.
    pub fn forward_train<R: Rng + ?Sized>(
        &self,
        batch: &ImageBatch,
        targets: &[Targets],
        text_embeds: Tensor<2>,
        distill_boxes: Option<&[Boxes]>,
        rng: &mut R,
    ) -> Result<TrainOutput, DetectorError> {
        if batch.is_empty() {
            return Err(DetectorError::EmptyBatch);
        }
        if targets.len() != batch.len() {
            return Err(DetectorError::BatchMismatch {
                what: "targets",
                got: targets.len(),
                want: batch.len(),
            });
        }
        let num_classes = text_embeds.dims()[0];
        for (i, t) in targets.iter().enumerate() {
            if let Some(&l) = t.labels.iter().find(|&&l| l >= num_classes) {
                return Err(DetectorError::BadTarget {
                    index: i,
                    reason: format!("label {l} but only {num_classes} text embeddings"),
                });
            }
            if t.labels.len() != t.boxes.len() {
                return Err(DetectorError::BadTarget {
                    index: i,
                    reason: format!("{} boxes but {} labels", t.boxes.len(), t.labels.len()),
                });
            }
        }
        if let Some(d) = distill_boxes {
            if d.len() != batch.len() {
                return Err(DetectorError::BatchMismatch {
                    what: "distill_boxes",
                    got: d.len(),
                    want: batch.len(),
                });
            }
        }

        let features = self.features(batch);
        let gt: Vec<Boxes> = targets.iter().map(|t| t.boxes.clone()).collect();
        let rpn = self
            .rpn
            .forward(&features, &batch.sizes, batch.padded_size(), Some(&gt), rng);
        let sampling = ovkd_backbone::ops::profiler::range("ovkd::roi_heads::sample");
        let samples = self
            .config
            .roi_heads
            .select_training_samples(&rpn.proposals, targets, rng);
        drop(sampling);

        let mut rois: Vec<Roi> = Vec::new();
        for (b, s) in samples.iter().enumerate() {
            rois.extend(
                s.boxes
                    .as_slice()
                    .iter()
                    .map(|&bbox| Roi { batch: b, bbox }),
            );
        }
        let r = rois.len();
        if let Some(d) = distill_boxes {
            for (b, boxes) in d.iter().enumerate() {
                rois.extend(boxes.as_slice().iter().map(|&bbox| Roi { batch: b, bbox }));
            }
        }
        let q = rois.len() - r;
        let out = self.embed_regions(&features, &rois);
        let [_, dim] = out.region_embeds.dims();
        let head_rows = |t: Tensor<2>, range: std::ops::Range<usize>| {
            let [_, cols] = t.dims();
            t.slice([range, 0..cols])
        };
        let roi_region_embeds = head_rows(out.region_embeds.clone(), 0..r);
        let roi_logits = self.box_head.logits(roi_region_embeds.clone(), text_embeds);
        let (classification, box_reg) = self.config.roi_heads.losses(
            roi_logits.clone(),
            head_rows(out.box_deltas.clone(), 0..r),
            &samples,
        );
        let distill_embeds = (q > 0).then(|| {
            let src = out
                .image_embeds
                .clone()
                .unwrap_or(out.region_embeds.clone());
            head_rows(src, r..r + q)
        });
        debug_assert!(distill_embeds.as_ref().is_none_or(|t| t.dims() == [q, dim]));
        let roi_pseudo_words = out.pseudo_words.clone().map(|t| head_rows(t, 0..r));
        let distill_pseudo_words = out
            .pseudo_words
            .clone()
            .filter(|_| q > 0)
            .map(|t| head_rows(t, r..r + q));
        let RpnLosses {
            objectness,
            box_reg: rpn_box_reg,
        } = rpn.losses.expect("targets were given");
        Ok(TrainOutput {
            losses: DetectorLosses {
                rpn_objectness: objectness,
                rpn_box_reg,
                classification,
                box_reg,
            },
            samples,
            roi_logits,
            roi_region_embeds,
            distill_embeds,
            roi_pseudo_words,
            distill_pseudo_words,
            proposals: rpn.proposals,
        })
    }

    /// RPN-only training forward (the class-agnostic proposal network of the `proposals`
    /// stage): backbone, FPN and RPN with their losses; the box head is not run. `gt` holds
    /// one box list per image (any class); `rng` drives the anchor sampling.
    pub fn forward_rpn_train<R: Rng + ?Sized>(
        &self,
        batch: &ImageBatch,
        gt: &[Boxes],
        rng: &mut R,
    ) -> Result<(Tensor<1>, Tensor<1>), DetectorError> {
        if batch.is_empty() {
            return Err(DetectorError::EmptyBatch);
        }
        if gt.len() != batch.len() {
            return Err(DetectorError::BatchMismatch {
                what: "gt boxes",
                got: gt.len(),
                want: batch.len(),
            });
        }
        let features = self.features(batch);
        let rpn = self
            .rpn
            .forward(&features, &batch.sizes, batch.padded_size(), Some(gt), rng);
        let RpnLosses {
            objectness,
            box_reg,
        } = rpn.losses.expect("targets were given");
        Ok((objectness, box_reg))
    }

    /// RPN proposals per image at inference (`post_nms_top_n_test` at most, best first), with
    /// their objectness probabilities; the box head is not run.
    pub fn propose(&self, batch: &ImageBatch) -> Vec<(Boxes, Vec<f32>)> {
        let features = self.features(batch);
        let rpn = self.rpn.forward(
            &features,
            &batch.sizes,
            batch.padded_size(),
            None,
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0),
        );
        rpn.proposals.into_iter().zip(rpn.scores).collect()
    }

    /// Inference forward: proposals, refined boxes and region embeddings per image. Score the
    /// embeddings with [`class_probs`](Self::class_probs) against any text embeddings and
    /// select detections with [`crate::postprocess::select_detections`].
    pub fn forward_inference(&self, batch: &ImageBatch) -> Vec<RegionPredictions> {
        let features = self.features(batch);
        let rpn = self.rpn.forward(
            &features,
            &batch.sizes,
            batch.padded_size(),
            None,
            // Without targets the RPN draws nothing; any generator will do.
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0),
        );
        let mut rois = Vec::new();
        for (b, p) in rpn.proposals.iter().enumerate() {
            rois.extend(p.as_slice().iter().map(|&bbox| Roi { batch: b, bbox }));
        }
        let device = batch.images.device();
        let dim = self.config.box_head.embed_dim;
        if rois.is_empty() {
            return rpn
                .proposals
                .into_iter()
                .zip(rpn.scores)
                .map(|(proposals, proposal_scores)| RegionPredictions {
                    proposals,
                    proposal_scores,
                    boxes: Boxes::new(),
                    region_embeds: Tensor::zeros([0, dim], &device),
                    image_embeds: None,
                    pseudo_words: None,
                })
                .collect();
        }
        let out = self.embed_regions(&features, &rois);
        let deltas = to_vec(out.box_deltas.clone().detach());
        let coder = self.config.roi_heads.box_coder();
        let mut preds = Vec::with_capacity(batch.len());
        let mut start = 0;
        for (b, (proposals, proposal_scores)) in
            rpn.proposals.into_iter().zip(rpn.scores).enumerate()
        {
            let n = proposals.len();
            let [h, w] = batch.sizes[b];
            let boxes = Boxes(
                proposals
                    .as_slice()
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let k = 4 * (start + i);
                        let d = [deltas[k], deltas[k + 1], deltas[k + 2], deltas[k + 3]];
                        clip_box(coder.decode_one(&d, p), h as f32, w as f32)
                    })
                    .collect(),
            );
            let rows = |t: &Tensor<2>| t.clone().slice([start..start + n, 0..dim]);
            preds.push(RegionPredictions {
                proposals,
                proposal_scores,
                boxes,
                region_embeds: rows(&out.region_embeds),
                image_embeds: out.image_embeds.as_ref().map(rows),
                pseudo_words: out.pseudo_words.as_ref().map(|t| {
                    let [_, pw] = t.dims();
                    t.clone().slice([start..start + n, 0..pw])
                }),
            });
            start += n;
        }
        preds
    }

    /// Class probabilities `[N, C]` of region embeddings `[N, D]` against `text_embeds`
    /// `[C, D]`: softmax over (learned background, classes) of the cosine logits, background
    /// dropped.
    pub fn class_probs(&self, embeds: Tensor<2>, text_embeds: Tensor<2>) -> Tensor<2> {
        self.box_head.class_probs(embeds, text_embeds)
    }
}
