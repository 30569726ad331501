//! Turning per-region class scores into detections (torchvision's
//! `RoIHeads.postprocess_detections` with class-agnostic boxes), and the ViLD ensemble of the
//! text and image heads' scores.

use serde::{Deserialize, Serialize};

use crate::boxes::{Boxes, clip_box, is_large_enough};
use crate::nms::batched_nms;

/// Detection selection settings (torchvision's defaults).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PostprocessConfig {
    /// Keep (box, class) pairs with score strictly above this (0.05).
    pub score_thresh: f32,
    /// Per-class NMS IoU threshold (0.5).
    pub nms_thresh: f32,
    /// Detections kept per image, best first (100).
    pub detections_per_img: usize,
    /// Boxes with a side shorter than this are dropped (0.01 pixels).
    pub min_size: f32,
}

impl Default for PostprocessConfig {
    fn default() -> Self {
        Self {
            score_thresh: 0.05,
            nms_thresh: 0.5,
            detections_per_img: 100,
            min_size: 1e-2,
        }
    }
}

/// The detections of one image, best first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Detections {
    /// Boxes `[x1, y1, x2, y2]` in input pixels.
    pub boxes: Boxes,
    /// Scores.
    pub scores: Vec<f32>,
    /// Class of each detection: an index into the text embeddings that were scored.
    pub labels: Vec<usize>,
}

impl Detections {
    /// Number of detections.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// True when nothing was detected.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }
}

/// Selects detections of one image from `boxes` (`N`, class-agnostic) and `scores`
/// (`[N, C]`, row-major, background excluded): clip to `image_size = [h, w]`, drop scores
/// `<= score_thresh` and small boxes, NMS per class, keep the best `detections_per_img`.
pub fn select_detections(
    boxes: &Boxes,
    scores: &[f32],
    num_classes: usize,
    image_size: [usize; 2],
    config: &PostprocessConfig,
) -> Detections {
    assert_eq!(
        scores.len(),
        boxes.len() * num_classes,
        "scores must be [N, C]"
    );
    let (h, w) = (image_size[0] as f32, image_size[1] as f32);
    let mut cand_boxes = Vec::new();
    let mut cand_scores = Vec::new();
    let mut cand_labels = Vec::new();
    for (i, b) in boxes.as_slice().iter().enumerate() {
        let b = clip_box(*b, h, w);
        if !is_large_enough(&b, config.min_size) {
            continue;
        }
        for c in 0..num_classes {
            let s = scores[i * num_classes + c];
            if s > config.score_thresh {
                cand_boxes.push(b);
                cand_scores.push(s);
                cand_labels.push(c);
            }
        }
    }
    let keep = batched_nms(&cand_boxes, &cand_scores, &cand_labels, config.nms_thresh);
    let keep = &keep[..keep.len().min(config.detections_per_img)];
    Detections {
        boxes: Boxes(keep.iter().map(|&i| cand_boxes[i]).collect()),
        scores: keep.iter().map(|&i| cand_scores[i]).collect(),
        labels: keep.iter().map(|&i| cand_labels[i]).collect(),
    }
}

/// ViLD's ensemble of the text head's and the image head's class probabilities (both
/// `[N, C]`, row-major): a per-class geometric mean, `text^λ · image^(1-λ)` for base classes
/// and `text^(1-λ) · image^λ` for novel ones (`is_novel[c]`), with `λ = 2/3` in the paper.
pub fn vild_ensemble(
    text_probs: &[f32],
    image_probs: &[f32],
    is_novel: &[bool],
    lambda: f32,
) -> Vec<f32> {
    assert_eq!(
        text_probs.len(),
        image_probs.len(),
        "ensemble: shapes differ"
    );
    let c = is_novel.len();
    assert!(
        c > 0 && text_probs.len() % c == 0,
        "ensemble: scores must be [N, C]"
    );
    text_probs
        .iter()
        .zip(image_probs)
        .enumerate()
        .map(|(i, (&t, &im))| {
            let lt = if is_novel[i % c] {
                1.0 - lambda
            } else {
                lambda
            };
            t.max(0.0).powf(lt) * im.max(0.0).powf(1.0 - lt)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_nms_threshold_and_top_k() {
        let boxes = Boxes(vec![
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 0.0, 11.0, 10.0],
            [50.0, 50.0, 70.0, 70.0],
            [60.0, 60.0, 60.005, 70.0],
        ]);
        // 2 classes.
        let scores = [0.9, 0.8, 0.7, 0.04, 0.3, 0.6, 0.99, 0.99];
        let cfg = PostprocessConfig::default();
        let d = select_detections(&boxes, &scores, 2, [64, 64], &cfg);
        // Box 1 class 0 suppressed by box 0; box 1 class 1 (0.04) below threshold; box 3 too
        // small; box 2 clipped to the image.
        assert_eq!(d.labels, vec![0, 1, 1, 0]);
        assert_eq!(d.scores, vec![0.9, 0.8, 0.6, 0.3]);
        assert_eq!(d.boxes.0[2], [50.0, 50.0, 64.0, 64.0]);
        let top2 = select_detections(
            &boxes,
            &scores,
            2,
            [64, 64],
            &PostprocessConfig {
                detections_per_img: 2,
                ..cfg
            },
        );
        assert_eq!(top2.scores, vec![0.9, 0.8]);
    }

    #[test]
    fn ensemble_weights_base_and_novel() {
        let text = [0.8, 0.8];
        let image = [0.1, 0.1];
        let e = vild_ensemble(&text, &image, &[false, true], 2.0 / 3.0);
        assert!((e[0] - 0.8f32.powf(2.0 / 3.0) * 0.1f32.powf(1.0 / 3.0)).abs() < 1e-6);
        assert!((e[1] - 0.8f32.powf(1.0 / 3.0) * 0.1f32.powf(2.0 / 3.0)).abs() < 1e-6);
    }
}
