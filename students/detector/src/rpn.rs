//! Region Proposal Network, as torchvision's `RegionProposalNetwork` with `RPNHead`:
//! a shared 3x3 conv + ReLU on every level, then a 1x1 conv for one objectness logit per
//! anchor and a 1x1 conv for 4 deltas per anchor (class-agnostic).
//!
//! Proposal selection (per image, on CPU): per level the top `pre_nms_top_n` anchors by
//! objectness, decoded, clipped to the image, small boxes and low scores removed, NMS per
//! level, then the best `post_nms_top_n` overall. On a GPU the per-level top-k runs on the
//! device and only the chosen anchors are read back; everywhere else every anchor is read
//! back and the host selects. Losses: binary cross-entropy on a balanced sample of anchors and
//! a box loss on its positives, normalised by the sample size.

use burn::module::Module;
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::{Device, Int, Tensor, TensorData};
use ovkd_backbone::FeatureMap;
use ovkd_backbone::ops::{Conv2d, Conv2dConfig};
use ovkd_backbone::ops::{is_gpu, profiler, relu};
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
        let (pre_n, post_n) = match gt_boxes {
            Some(_) => (
                self.config.pre_nms_top_n_train,
                self.config.post_nms_top_n_train,
            ),
            None => (
                self.config.pre_nms_top_n_test,
                self.config.post_nms_top_n_test,
            ),
        };
        let coder = BoxCoder::new([1.0; 4]);
        // The losses first: their anchor matching is host work that needs nothing back from
        // the device, so on a GPU it overlaps the forward still running there, where after the
        // read-back below the device would wait for it. It draws from `rng`; the proposals
        // do not, so the order changes no result.
        let losses = gt_boxes.map(|gt| {
            let _range = profiler::range("ovkd::rpn::losses");
            self.losses(&preds, &anchors, gt, &coder, rng)
        });
        // The range keeps its name from the runs before the device top-k; off the GPU it
        // holds the host's selection too.
        let read_back = profiler::range("ovkd::rpn::read_back");
        let candidates = if is_gpu(&preds.objectness.device()) {
            device_candidates(
                preds.objectness.clone().detach(),
                preds.deltas.clone().detach(),
                &level_sizes,
                pre_n,
            )
        } else {
            host_candidates(
                preds.objectness.clone().detach(),
                preds.deltas.clone().detach(),
                &level_sizes,
                pre_n,
            )
        };
        drop(read_back);

        // Images in parallel: each one's decoding and NMS is host work the device waits for
        // (54 ms of one core a step for R50-FPN at 512 px, batch 8: BENCHMARKS, Speed, session 10).
        let config = &self.config;
        let selecting = profiler::range("ovkd::rpn::proposals");
        let (proposals, scores): (Vec<Boxes>, Vec<Vec<f32>>) = candidates
            .par_iter()
            .zip(image_sizes)
            .map(|(candidates, size)| {
                filter_proposals(config, candidates, &anchors, *size, post_n, &coder)
            })
            .unzip();
        drop(selecting);
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

/// One anchor among an image's pre-NMS candidates.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Candidate {
    /// Index into the image's anchors (all levels).
    anchor: usize,
    /// Its feature level (0 = P2).
    level: usize,
    /// Its objectness logit.
    logit: f32,
    /// Its predicted box deltas `(dx, dy, dw, dh)`.
    deltas: [f32; 4],
}

/// Each image's top `pre_n` anchors of every level by objectness, level by level and by
/// decreasing logit within a level (ties by anchor index), selected on the host from every
/// anchor read back. `objectness`: `[B, A]`, `deltas`: `[B, A, 4]`; `level_sizes` sum to `A`.
fn host_candidates(
    objectness: Tensor<2>,
    deltas: Tensor<3>,
    level_sizes: &[usize],
    pre_n: usize,
) -> Vec<Vec<Candidate>> {
    let [b, total] = objectness.dims();
    let logits = to_vec(objectness);
    let deltas = to_vec(deltas);
    (0..b)
        .into_par_iter()
        .map(|image| {
            let logits = &logits[image * total..(image + 1) * total];
            let deltas = &deltas[image * total * 4..(image + 1) * total * 4];
            let mut out = Vec::new();
            let mut start = 0;
            for (level, &n) in level_sizes.iter().enumerate() {
                for i in top_by_score_desc(logits, (start..start + n).collect(), pre_n) {
                    out.push(Candidate {
                        anchor: i,
                        level,
                        logit: logits[i],
                        deltas: [
                            deltas[4 * i],
                            deltas[4 * i + 1],
                            deltas[4 * i + 2],
                            deltas[4 * i + 3],
                        ],
                    });
                }
                start += n;
            }
            out
        })
        .collect()
}

/// [`host_candidates`]' selection made on the device: a `topk` per level, and only the
/// chosen anchors' logits, deltas and indices read back (R50-FPN at 512 px, batch 8: 1.6 MB
/// instead of every anchor's 10.5 MB, which the GPU profile showed as 7.7 ms of idle a step).
/// Ties among equal logits come in the backend's order, not necessarily by index.
fn device_candidates(
    objectness: Tensor<2>,
    deltas: Tensor<3>,
    level_sizes: &[usize],
    pre_n: usize,
) -> Vec<Vec<Candidate>> {
    let [b, _] = objectness.dims();
    let mut values = Vec::new();
    let mut picked = Vec::new();
    let mut indices = Vec::new();
    let mut levels = Vec::new();
    let mut start = 0;
    for (level, &n) in level_sizes.iter().enumerate() {
        let k = pre_n.min(n);
        if k > 0 {
            let (v, i) = objectness
                .clone()
                .slice([0..b, start..start + n])
                .topk_with_indices(k, 1);
            let at = i.clone().unsqueeze_dim::<3>(2).expand([b, k, 4]);
            picked.push(
                deltas
                    .clone()
                    .slice([0..b, start..start + n, 0..4])
                    .gather(1, at),
            );
            values.push(v.unsqueeze_dim::<3>(2));
            indices.push(i.add_scalar(start as i64));
            levels.extend(std::iter::repeat_n(level, k));
        }
        start += n;
    }
    let k = levels.len();
    if k == 0 {
        return vec![Vec::new(); b];
    }
    // [B, K, 5]: logit, then the four deltas.
    let floats = to_vec(Tensor::cat(
        vec![Tensor::cat(values, 1), Tensor::cat(picked, 1)],
        2,
    ));
    let anchors: Vec<i64> = Tensor::cat(indices, 1).into_data().iter::<i64>().collect();
    (0..b)
        .map(|image| {
            (0..k)
                .map(|j| {
                    let row = &floats[(image * k + j) * 5..(image * k + j + 1) * 5];
                    Candidate {
                        anchor: anchors[image * k + j] as usize,
                        level: levels[j],
                        logit: row[0],
                        deltas: [row[1], row[2], row[3], row[4]],
                    }
                })
                .collect()
        })
        .collect()
}

/// One image's proposals from its pre-NMS `candidates`: decoded, clipped, filtered by size and
/// score, NMS per level, the best `post_n`.
fn filter_proposals(
    config: &RpnConfig,
    candidates: &[Candidate],
    anchors: &Boxes,
    image_size: [usize; 2],
    post_n: usize,
    coder: &BoxCoder,
) -> (Boxes, Vec<f32>) {
    let (h, w) = (image_size[0] as f32, image_size[1] as f32);
    let mut boxes = Vec::new();
    let mut probs = Vec::new();
    let mut levels = Vec::new();
    for c in candidates {
        let bx = clip_box(coder.decode_one(&c.deltas, &anchors.0[c.anchor]), h, w);
        let p = sigmoid(c.logit);
        if is_large_enough(&bx, config.min_size) && p >= config.score_thresh {
            boxes.push(bx);
            probs.push(p);
            levels.push(c.level);
        }
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

    /// The device's top-k picks the host's candidates: same anchors, levels, logits and
    /// deltas in the same order (random logits have no ties). One level holds fewer anchors
    /// than `pre_n`, and `pre_n = 0` selects nothing.
    fn check_device_candidates(device: Device) {
        let level_sizes = [300usize, 75, 20];
        let total: usize = level_sizes.iter().sum();
        let objectness = Tensor::<2>::random([3, total], Distribution::Normal(0.0, 2.0), &device);
        let deltas = Tensor::<3>::random([3, total, 4], Distribution::Normal(0.0, 1.0), &device);
        for pre_n in [50, 0] {
            let host = host_candidates(objectness.clone(), deltas.clone(), &level_sizes, pre_n);
            let dev = device_candidates(objectness.clone(), deltas.clone(), &level_sizes, pre_n);
            assert_eq!(host.len(), 3);
            assert_eq!(host[0].len(), 2 * pre_n.min(75) + pre_n.min(20));
            assert_eq!(dev, host, "pre_n {pre_n}");
        }
    }

    #[test]
    fn device_top_k_selects_the_host_candidates() {
        check_device_candidates(Device::default());
    }

    #[cfg(feature = "tch")]
    #[allow(deprecated)] // burn-tch's device
    #[test]
    fn device_top_k_selects_the_host_candidates_on_libtorch() {
        check_device_candidates(Device::libtorch());
    }

    /// The same where LibTorch sees a GPU (where the RPN takes this route).
    #[cfg(feature = "tch")]
    #[allow(deprecated)] // burn-tch's CUDA device
    #[test]
    fn device_top_k_selects_the_host_candidates_on_libtorch_cuda() {
        if !tch::Cuda::is_available() {
            eprintln!("no CUDA device: the RPN's device top-k is not checked on CUDA here");
            return;
        }
        assert!(is_gpu(&Device::libtorch_cuda(0)));
        check_device_candidates(Device::libtorch_cuda(0));
    }
}
