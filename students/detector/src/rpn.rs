//! Region Proposal Network, as torchvision's `RegionProposalNetwork` with `RPNHead`:
//! a shared 3x3 conv + ReLU on every level, then a 1x1 conv for one objectness logit per
//! anchor and a 1x1 conv for 4 deltas per anchor (class-agnostic).
//!
//! Proposal selection (per image, on CPU): per level the top `pre_nms_top_n` anchors by
//! objectness, decoded, clipped to the image, small boxes and low scores removed, NMS per
//! level, then the best `post_nms_top_n` overall. Losses: binary cross-entropy on a balanced
//! sample of anchors and a box loss on its positives, normalised by the sample size.

use burn::module::Module;
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::{Device, Int, Tensor, TensorData};
use ovkd_backbone::FeatureMap;
use ovkd_backbone::ops::{Conv2d, Conv2dConfig};
use ovkd_backbone::ops::{profiler, relu};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::anchors::AnchorConfig;
use crate::box_coder::BoxCoder;
use crate::boxes::{Boxes, clip_box, iou_matrix, is_large_enough};
use crate::losses::{BoxLoss, bce_with_logits_mean};
use crate::matcher::{Match, Matcher};
use crate::nms::{batched_nms, top_by_score_desc};
use crate::sampler::{BalancedSampler, Candidates, Role};
use rayon::prelude::*;

/// RPN settings (torchvision's defaults unless noted).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RpnConfig {
    /// Anchor sizes and ratios per level (P2..P6).
    pub anchors: AnchorConfig,
    /// Candidates kept per level before NMS, training (2000).
    pub pre_nms_top_n_train: usize,
    /// Proposals kept per image after NMS, training (2000).
    pub post_nms_top_n_train: usize,
    /// Candidates kept per level before NMS, inference (1000).
    pub pre_nms_top_n_test: usize,
    /// Proposals kept per image after NMS, inference (1000).
    pub post_nms_top_n_test: usize,
    /// NMS IoU threshold (0.7).
    pub nms_thresh: f32,
    /// Anchors with IoU ≥ this are positive (0.7).
    pub fg_iou_thresh: f32,
    /// Anchors with IoU < this are negative (0.3).
    pub bg_iou_thresh: f32,
    /// Anchors sampled per image for the loss (256).
    pub batch_size_per_image: usize,
    /// Largest share of positives in the sample (0.5).
    pub positive_fraction: f32,
    /// Proposals with objectness probability below this are dropped (0.0).
    pub score_thresh: f32,
    /// Proposals with a side shorter than this (pixels) are dropped (1e-3).
    pub min_size: f32,
    /// Box-regression loss (smooth L1 with beta 1/9).
    #[serde(default)]
    pub box_loss: BoxLoss,
}

impl RpnConfig {
    /// torchvision's `fasterrcnn_resnet50_fpn` RPN.
    pub fn torchvision() -> Self {
        Self {
            anchors: AnchorConfig::torchvision_fpn(),
            pre_nms_top_n_train: 2000,
            post_nms_top_n_train: 2000,
            pre_nms_top_n_test: 1000,
            post_nms_top_n_test: 1000,
            nms_thresh: 0.7,
            fg_iou_thresh: 0.7,
            bg_iou_thresh: 0.3,
            batch_size_per_image: 256,
            positive_fraction: 0.5,
            score_thresh: 0.0,
            min_size: 1e-3,
            box_loss: BoxLoss::default(),
        }
    }

    /// For small images (OV-Shapes): anchors 16..256 and fewer proposals.
    pub fn small_images() -> Self {
        Self {
            anchors: AnchorConfig::small_images(),
            pre_nms_top_n_train: 1000,
            post_nms_top_n_train: 500,
            pre_nms_top_n_test: 500,
            post_nms_top_n_test: 300,
            ..Self::torchvision()
        }
    }

    /// Builds the head for `in_channels`-channel feature maps.
    pub fn init_head(&self, in_channels: usize, device: &Device) -> RpnHead {
        let a = self.anchors.num_anchors_per_location();
        assert!(
            a.windows(2).all(|w| w[0] == w[1]),
            "the RPN head is shared across levels: every level needs the same anchor count"
        );
        let a = a.first().copied().unwrap_or(0);
        let conv = |c_out: usize, k: usize| {
            let p = k / 2;
            let mut c = Conv2dConfig::new([in_channels, c_out], [k, k])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.01,
                })
                .init(device);
            c.bias = c.bias.map(|b| b.map(|t| t.zeros_like()));
            c
        };
        RpnHead {
            conv: conv(in_channels, 3),
            cls_logits: conv(a, 1),
            bbox_pred: conv(4 * a, 1),
        }
    }
}

/// The RPN's convolutional head (torchvision names: `conv`, `cls_logits`, `bbox_pred`).
#[derive(Module, Debug)]
pub struct RpnHead {
    /// Shared 3x3 conv (+ ReLU).
    pub conv: Conv2d,
    /// 1x1 conv → one objectness logit per anchor.
    pub cls_logits: Conv2d,
    /// 1x1 conv → 4 deltas per anchor.
    pub bbox_pred: Conv2d,
}

/// Dense RPN predictions, flattened in anchor order (levels finest first, then `(y, x, a)`).
#[derive(Clone, Debug)]
pub struct RpnPredictions {
    /// Objectness logits `[B, A_total]`.
    pub objectness: Tensor<2>,
    /// Box deltas `[B, A_total, 4]`.
    pub deltas: Tensor<3>,
    /// Feature size `[H_l, W_l]` of each level.
    pub grid_sizes: Vec<[usize; 2]>,
}

impl RpnHead {
    /// Runs the head on every level and flattens the outputs.
    pub fn forward(&self, features: &[FeatureMap]) -> RpnPredictions {
        let mut obj = Vec::with_capacity(features.len());
        let mut del = Vec::with_capacity(features.len());
        let mut grid_sizes = Vec::with_capacity(features.len());
        for f in features {
            let t = relu(self.conv.forward(f.tensor.clone()));
            let logits = self.cls_logits.forward(t.clone());
            let deltas = self.bbox_pred.forward(t);
            let [b, a, h, w] = logits.dims();
            grid_sizes.push([h, w]);
            obj.push(logits.permute([0, 2, 3, 1]).reshape([b, h * w * a]));
            del.push(
                deltas
                    .reshape([b, a, 4, h, w])
                    .permute([0, 3, 4, 1, 2])
                    .reshape([b, h * w * a, 4]),
            );
        }
        RpnPredictions {
            objectness: Tensor::cat(obj, 1),
            deltas: Tensor::cat(del, 1),
            grid_sizes,
        }
    }
}

/// RPN losses, each `[1]`.
#[derive(Clone, Debug)]
pub struct RpnLosses {
    /// Mean binary cross-entropy over the sampled anchors.
    pub objectness: Tensor<1>,
    /// Box loss summed over the positive anchors, divided by the number sampled.
    pub box_reg: Tensor<1>,
}

/// What the RPN returns.
#[derive(Clone, Debug)]
pub struct RpnOutput {
    /// Proposals per image, by decreasing objectness (detached: constants downstream).
    pub proposals: Vec<Boxes>,
    /// Objectness probability of each proposal.
    pub scores: Vec<Vec<f32>>,
    /// Present when targets were given.
    pub losses: Option<RpnLosses>,
}

/// The RPN: head plus the proposal and loss logic.
#[derive(Module, Debug)]
pub struct Rpn {
    /// The convolutional head.
    pub head: RpnHead,
    /// Settings.
    #[module(skip)]
    pub config: RpnConfig,
}

impl Rpn {
    /// An RPN with a fresh head.
    pub fn new(config: RpnConfig, in_channels: usize, device: &Device) -> Self {
        Self {
            head: config.init_head(in_channels, device),
            config,
        }
    }

    /// Proposals (and, with `gt_boxes`, losses and the training top-n numbers) for a batch.
    ///
    /// `features`: P2..P6; `image_sizes[b] = [h, w]` before padding; `padded_size` the batch
    /// tensor's `[H, W]`; `gt_boxes` one entry per image.
    pub fn forward<R: Rng + ?Sized>(
        &self,
        features: &[FeatureMap],
        image_sizes: &[[usize; 2]],
        padded_size: [usize; 2],
        gt_boxes: Option<&[Boxes]>,
        rng: &mut R,
    ) -> RpnOutput {
        let preds = self.head.forward(features);
        let anchoring = profiler::range("ovkd::rpn::anchors");
        let anchors = self
            .config
            .anchors
            .grid_anchors(&preds.grid_sizes, padded_size);
        drop(anchoring);
        let level_sizes: Vec<usize> = preds
            .grid_sizes
            .iter()
            .zip(self.config.anchors.num_anchors_per_location())
            .map(|(g, a)| g[0] * g[1] * a)
            .collect();
        let training = gt_boxes.is_some();
        let read_back = profiler::range("ovkd::rpn::read_back");
        let objectness = to_vec(preds.objectness.clone().detach());
        let deltas = to_vec(preds.deltas.clone().detach());
        drop(read_back);
        let total = anchors.len();
        let coder = BoxCoder::new([1.0; 4]);

        // Images in parallel: each one's decoding and NMS is host work the device waits for
        // (54 ms of one core a step for R50-FPN at 512 px, batch 8: BENCHMARKS, Speed, session 10).
        let config = &self.config;
        let selecting = profiler::range("ovkd::rpn::proposals");
        let (proposals, scores): (Vec<Boxes>, Vec<Vec<f32>>) = image_sizes
            .par_iter()
            .enumerate()
            .map(|(b, size)| {
                filter_proposals(
                    config,
                    &objectness[b * total..(b + 1) * total],
                    &deltas[b * total * 4..(b + 1) * total * 4],
                    &anchors,
                    &level_sizes,
                    *size,
                    training,
                    &coder,
                )
            })
            .unzip();
        drop(selecting);
        let losses = gt_boxes.map(|gt| {
            let _range = profiler::range("ovkd::rpn::losses");
            self.losses(&preds, &anchors, gt, &coder, rng)
        });
        RpnOutput {
            proposals,
            scores,
            losses,
        }
    }

    fn losses<R: Rng + ?Sized>(
        &self,
        preds: &RpnPredictions,
        anchors: &Boxes,
        gt_boxes: &[Boxes],
        coder: &BoxCoder,
        rng: &mut R,
    ) -> RpnLosses {
        let matcher = Matcher::new(self.config.fg_iou_thresh, self.config.bg_iou_thresh, true);
        let sampler = BalancedSampler {
            batch_size_per_image: self.config.batch_size_per_image,
            positive_fraction: self.config.positive_fraction,
        };
        let total = anchors.len();
        let mut sampled = Vec::new();
        let mut labels = Vec::new();
        let mut pos_idx = Vec::new();
        let mut targets = Vec::new();
        // Matching is deterministic, so images run in parallel; sampling draws from `rng` in
        // image order, as before.
        let matched: Vec<(Vec<Match>, Candidates)> = gt_boxes
            .par_iter()
            .map(|gt| {
                let matches = matcher.assign(&iou_matrix(gt.as_slice(), anchors.as_slice()), total);
                let candidates = Candidates::of(matches.iter().map(Role::from));
                (matches, candidates)
            })
            .collect();
        for (b, (gt, (matches, candidates))) in gt_boxes.iter().zip(matched).enumerate() {
            let s = sampler.draw(&candidates, rng);
            for &i in &s.positive {
                let Match::Gt(g) = matches[i] else {
                    unreachable!("sampled positives are matched")
                };
                pos_idx.push((b * total + i) as i64);
                targets.extend(coder.encode_one(&gt.0[g], &anchors.0[i]));
                sampled.push((b * total + i) as i64);
                labels.push(1.0f32);
            }
            for &i in &s.negative {
                sampled.push((b * total + i) as i64);
                labels.push(0.0);
            }
        }
        let device = preds.objectness.device();
        let [bsz, _] = preds.objectness.dims();
        let n_sampled = sampled.len().max(1);
        let objectness = if sampled.is_empty() {
            zero_loss(&device)
        } else {
            let logits = preds
                .objectness
                .clone()
                .reshape([bsz * total])
                .select(0, int1(sampled, &device));
            bce_with_logits_mean(logits, float1(labels, &device))
        };
        let box_reg = if pos_idx.is_empty() {
            zero_loss(&device)
        } else {
            let n_pos = pos_idx.len();
            let pred = preds
                .deltas
                .clone()
                .reshape([bsz * total, 4])
                .select(0, int1(pos_idx, &device));
            let target = Tensor::<2>::from_data(TensorData::new(targets, [n_pos, 4]), &device);
            self.config
                .box_loss
                .sum(pred, target)
                .div_scalar(n_sampled as f32)
        };
        RpnLosses {
            objectness,
            box_reg,
        }
    }
}

/// One image's proposals: the top `pre_nms_top_n` anchors of each level by objectness,
/// decoded, clipped, filtered by size and score, NMS per level, the best `post_nms_top_n`.
#[allow(clippy::too_many_arguments)]
fn filter_proposals(
    config: &RpnConfig,
    logits: &[f32],
    deltas: &[f32],
    anchors: &Boxes,
    level_sizes: &[usize],
    image_size: [usize; 2],
    training: bool,
    coder: &BoxCoder,
) -> (Boxes, Vec<f32>) {
    let (pre_n, post_n) = if training {
        (config.pre_nms_top_n_train, config.post_nms_top_n_train)
    } else {
        (config.pre_nms_top_n_test, config.post_nms_top_n_test)
    };
    let (h, w) = (image_size[0] as f32, image_size[1] as f32);
    let mut boxes = Vec::new();
    let mut probs = Vec::new();
    let mut levels = Vec::new();
    let mut start = 0;
    for (level, &n) in level_sizes.iter().enumerate() {
        for i in top_by_score_desc(logits, (start..start + n).collect(), pre_n) {
            let d = [
                deltas[4 * i],
                deltas[4 * i + 1],
                deltas[4 * i + 2],
                deltas[4 * i + 3],
            ];
            let bx = clip_box(coder.decode_one(&d, &anchors.0[i]), h, w);
            let p = sigmoid(logits[i]);
            if is_large_enough(&bx, config.min_size) && p >= config.score_thresh {
                boxes.push(bx);
                probs.push(p);
                levels.push(level);
            }
        }
        start += n;
    }
    let keep = batched_nms(&boxes, &probs, &levels, config.nms_thresh);
    let keep = &keep[..keep.len().min(post_n)];
    (
        Boxes(keep.iter().map(|&i| boxes[i]).collect()),
        keep.iter().map(|&i| probs[i]).collect(),
    )
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

pub(crate) fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_to_vec::<f32>()
        .expect("a float tensor reads back as f32")
}

pub(crate) fn int1(v: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

pub(crate) fn float1(v: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

pub(crate) fn zero_loss(device: &Device) -> Tensor<1> {
    Tensor::zeros([1], device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn features(device: &Device) -> Vec<FeatureMap> {
        [(4usize, 16usize), (8, 8), (16, 4), (32, 2), (64, 1)]
            .into_iter()
            .map(|(s, h)| FeatureMap {
                stride: s,
                tensor: Tensor::random([2, 8, h, h], Distribution::Normal(0.0, 1.0), device),
            })
            .collect()
    }

    #[test]
    fn proposals_are_clipped_sorted_and_capped() {
        let device = Device::default();
        let cfg = RpnConfig {
            post_nms_top_n_test: 50,
            ..RpnConfig::small_images()
        };
        let rpn = Rpn::new(cfg, 8, &device);
        let out = rpn.forward(
            &features(&device),
            &[[64, 64], [50, 40]],
            [64, 64],
            None,
            &mut ChaCha8Rng::seed_from_u64(0),
        );
        assert!(out.losses.is_none());
        for (b, (p, s)) in out.proposals.iter().zip(&out.scores).enumerate() {
            assert!(!p.is_empty() && p.len() <= 50);
            assert!(s.windows(2).all(|w| w[0] >= w[1]));
            let [h, w] = [[64.0f32, 64.0], [50.0, 40.0]][b];
            for bx in p.as_slice() {
                assert!(
                    bx[0] >= 0.0 && bx[2] <= w && bx[1] >= 0.0 && bx[3] <= h,
                    "{bx:?}"
                );
            }
        }
    }

    #[test]
    fn losses_are_finite_and_differentiable() {
        let device = Device::default().autodiff();
        let rpn = Rpn::new(RpnConfig::small_images(), 8, &device);
        let gt = vec![
            Boxes(vec![[4.0, 4.0, 30.0, 20.0]]),
            Boxes(vec![[10.0, 10.0, 60.0, 60.0], [0.0, 30.0, 16.0, 50.0]]),
        ];
        let out = rpn.forward(
            &features(&device),
            &[[64, 64], [64, 64]],
            [64, 64],
            Some(&gt),
            &mut ChaCha8Rng::seed_from_u64(0),
        );
        let l = out.losses.unwrap();
        let total = l.objectness.clone().add(l.box_reg.clone());
        let v = to_vec(total.clone());
        assert!(v[0].is_finite() && v[0] > 0.0);
        let grads = total.backward();
        assert!(rpn.head.cls_logits.weight.val().grad(&grads).is_some());
        assert!(rpn.head.bbox_pred.weight.val().grad(&grads).is_some());
    }
}
