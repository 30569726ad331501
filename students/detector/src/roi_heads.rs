//! Training RoIs for the box head, as torchvision's `RoIHeads.select_training_samples`: the
//! ground-truth boxes are appended to each image's proposals, every proposal is matched to the
//! ground truth (IoU ≥ 0.5 foreground, < 0.5 background), a balanced sample is drawn (512 per
//! image, at most 25 % foreground), and box-regression targets are encoded with weights
//! (10, 10, 5, 5). Also the Fast R-CNN box loss (class-agnostic) and classification loss.

use burn::tensor::{Int, Tensor, TensorData};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::box_coder::BoxCoder;
use crate::boxes::{Boxes, iou_matrix};
use crate::losses::{BoxLoss, cross_entropy_mean};
use crate::matcher::{Match, Matcher};
use crate::sampler::{BalancedSampler, Role};

/// Label of a background RoI; class `c` (an index into the text embeddings) is `c + 1`.
pub const BACKGROUND: usize = 0;

/// RoI-head training settings (torchvision's defaults).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoiHeadsConfig {
    /// Proposals with IoU ≥ this are foreground (0.5).
    pub fg_iou_thresh: f32,
    /// Proposals with IoU < this are background (0.5).
    pub bg_iou_thresh: f32,
    /// RoIs sampled per image (512).
    pub batch_size_per_image: usize,
    /// Largest share of foreground (0.25).
    pub positive_fraction: f32,
    /// Box-coder weights (10, 10, 5, 5).
    pub bbox_reg_weights: [f32; 4],
    /// Box-regression loss (smooth L1, beta 1/9, as torchvision's `fastrcnn_loss`).
    #[serde(default)]
    pub box_loss: BoxLoss,
}

impl Default for RoiHeadsConfig {
    fn default() -> Self {
        Self {
            fg_iou_thresh: 0.5,
            bg_iou_thresh: 0.5,
            batch_size_per_image: 512,
            positive_fraction: 0.25,
            bbox_reg_weights: [10.0, 10.0, 5.0, 5.0],
            box_loss: BoxLoss::default(),
        }
    }
}

/// The ground truth of one image.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targets {
    /// Boxes `[x1, y1, x2, y2]` in input pixels.
    pub boxes: Boxes,
    /// Class of each box: an index into the text embeddings used for training.
    pub labels: Vec<usize>,
}

/// Sampled training RoIs of one image.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoiSample {
    /// The sampled boxes (proposals and appended ground truth), foreground first.
    pub boxes: Boxes,
    /// [`BACKGROUND`] or class + 1, per box.
    pub labels: Vec<usize>,
    /// Encoded regression target per box (zeros for background; they are not used).
    pub regression_targets: Vec<[f32; 4]>,
    /// Index of the matched ground-truth box, `None` for background.
    pub matched_gt: Vec<Option<usize>>,
}

impl RoiSample {
    /// Number of sampled RoIs.
    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    /// True when nothing was sampled.
    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }
}

impl RoiHeadsConfig {
    /// The box coder of the head.
    pub fn box_coder(&self) -> BoxCoder {
        BoxCoder::new(self.bbox_reg_weights)
    }

    /// Samples training RoIs from `proposals` (one [`Boxes`] per image) for `targets`.
    pub fn select_training_samples<R: Rng + ?Sized>(
        &self,
        proposals: &[Boxes],
        targets: &[Targets],
        rng: &mut R,
    ) -> Vec<RoiSample> {
        assert_eq!(proposals.len(), targets.len(), "one target set per image");
        let matcher = Matcher::new(self.fg_iou_thresh, self.bg_iou_thresh, false);
        let sampler = BalancedSampler {
            batch_size_per_image: self.batch_size_per_image,
            positive_fraction: self.positive_fraction,
        };
        let coder = self.box_coder();
        proposals
            .iter()
            .zip(targets)
            .map(|(props, t)| {
                assert_eq!(
                    t.boxes.len(),
                    t.labels.len(),
                    "one label per ground-truth box"
                );
                let mut all = props.0.clone();
                all.extend_from_slice(t.boxes.as_slice());
                let matches = matcher.assign(&iou_matrix(t.boxes.as_slice(), &all), all.len());
                let roles: Vec<Role> = matches.iter().map(Role::from).collect();
                let s = sampler.sample(&roles, rng);
                let mut out = RoiSample::default();
                for &i in s.positive.iter().chain(&s.negative) {
                    let bx = all[i];
                    out.boxes.0.push(bx);
                    match matches[i] {
                        Match::Gt(g) => {
                            out.labels.push(t.labels[g] + 1);
                            out.regression_targets
                                .push(coder.encode_one(&t.boxes.0[g], &bx));
                            out.matched_gt.push(Some(g));
                        }
                        _ => {
                            out.labels.push(BACKGROUND);
                            out.regression_targets.push([0.0; 4]);
                            out.matched_gt.push(None);
                        }
                    }
                }
                out
            })
            .collect()
    }

    /// Fast R-CNN losses over the concatenated samples: cross-entropy of `logits` `[R, 1 + C]`
    /// (ViLD-text when the logits are cosine logits) averaged over all `R` RoIs, and the box
    /// loss of the class-agnostic `box_deltas` `[R, 4]` on the foreground RoIs, summed and
    /// divided by `R`. Both `[1]`.
    pub fn losses(
        &self,
        logits: Tensor<2>,
        box_deltas: Tensor<2>,
        samples: &[RoiSample],
    ) -> (Tensor<1>, Tensor<1>) {
        let labels: Vec<usize> = samples
            .iter()
            .flat_map(|s| s.labels.iter().copied())
            .collect();
        let device = logits.device();
        let classification = cross_entropy_mean(logits, &labels);
        let mut fg = Vec::new();
        let mut targets = Vec::new();
        let mut row = 0i64;
        for s in samples {
            for (l, t) in s.labels.iter().zip(&s.regression_targets) {
                if *l != BACKGROUND {
                    fg.push(row);
                    targets.extend_from_slice(t);
                }
                row += 1;
            }
        }
        let box_reg = if fg.is_empty() {
            Tensor::zeros([1], &device)
        } else {
            let n = fg.len();
            let pred = box_deltas.select(
                0,
                Tensor::<1, Int>::from_data(TensorData::new(fg, [n]), &device),
            );
            let target = Tensor::<2>::from_data(TensorData::new(targets, [n, 4]), &device);
            self.box_loss
                .sum(pred, target)
                .div_scalar(labels.len().max(1) as f32)
        };
        (classification, box_reg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn gt_is_appended_and_sampled_as_foreground() {
        let cfg = RoiHeadsConfig {
            batch_size_per_image: 8,
            ..RoiHeadsConfig::default()
        };
        let proposals = vec![Boxes(vec![
            [0.0, 0.0, 10.0, 10.0],
            [50.0, 50.0, 60.0, 60.0],
            [1.0, 1.0, 11.0, 11.0],
            [30.0, 0.0, 40.0, 5.0],
        ])];
        let targets = vec![Targets {
            boxes: Boxes(vec![[0.0, 0.0, 10.0, 10.0]]),
            labels: vec![3],
        }];
        let s =
            &cfg.select_training_samples(&proposals, &targets, &mut ChaCha8Rng::seed_from_u64(1))
                [0];
        // Foreground: proposals 0 and 2 and the appended gt (capped at 8 * 0.25 = 2).
        assert_eq!(s.labels.iter().filter(|&&l| l == 4).count(), 2);
        assert_eq!(s.labels.iter().filter(|&&l| l == BACKGROUND).count(), 2);
        assert_eq!(s.len(), 4);
        for (b, (l, t)) in s
            .boxes
            .as_slice()
            .iter()
            .zip(s.labels.iter().zip(&s.regression_targets))
        {
            if *l == 4 {
                let back = cfg.box_coder().decode_one(t, b);
                for k in 0..4 {
                    assert!((back[k] - targets[0].boxes.0[0][k]).abs() < 1e-4);
                }
            }
        }
    }
}
