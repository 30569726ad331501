//! Non-maximum suppression on CPU, with torchvision's semantics: candidates are visited by
//! score, descending, ties in input order (a stable sort); a box is suppressed when its IoU
//! with a kept box is strictly greater than the threshold.

use crate::boxes::box_area;

/// Indices of the boxes `nms` keeps, by decreasing score (torchvision's `ops.nms`).
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    assert_eq!(boxes.len(), scores.len(), "nms: one score per box");
    let order = sort_by_score_desc(scores, (0..boxes.len()).collect());
    nms_ordered(boxes, &order, iou_threshold)
}

/// NMS within each category (`idxs[i]` is box `i`'s category): boxes of different categories
/// never suppress each other. Returns the kept indices by decreasing score, ties in input
/// order (torchvision's `ops.batched_nms`).
pub fn batched_nms(
    boxes: &[[f32; 4]],
    scores: &[f32],
    idxs: &[usize],
    iou_threshold: f32,
) -> Vec<usize> {
    assert_eq!(boxes.len(), scores.len(), "batched_nms: one score per box");
    assert_eq!(boxes.len(), idxs.len(), "batched_nms: one category per box");
    let n_cat = idxs.iter().copied().max().map_or(0, |m| m + 1);
    let mut by_cat: Vec<Vec<usize>> = vec![Vec::new(); n_cat];
    for (i, &c) in idxs.iter().enumerate() {
        by_cat[c].push(i);
    }
    let mut keep = Vec::new();
    for members in by_cat.into_iter().filter(|m| !m.is_empty()) {
        let order = sort_by_score_desc(scores, members);
        keep.extend(nms_ordered(boxes, &order, iou_threshold));
    }
    sort_by_score_desc(scores, {
        keep.sort_unstable();
        keep
    })
}

/// `indices` sorted by `scores[i]` descending; equal scores keep their order in `indices`.
pub fn sort_by_score_desc(scores: &[f32], mut indices: Vec<usize>) -> Vec<usize> {
    indices.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    indices
}

fn nms_ordered(boxes: &[[f32; 4]], order: &[usize], iou_threshold: f32) -> Vec<usize> {
    let mut suppressed = vec![false; order.len()];
    let mut keep = Vec::new();
    for oi in 0..order.len() {
        if suppressed[oi] {
            continue;
        }
        let i = order[oi];
        keep.push(i);
        let bi = &boxes[i];
        let area_i = box_area(bi);
        for oj in oi + 1..order.len() {
            if suppressed[oj] {
                continue;
            }
            let bj = &boxes[order[oj]];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = w * h;
            let ovr = inter / (area_i + box_area(bj) - inter);
            if ovr > iou_threshold {
                suppressed[oj] = true;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppresses_only_strictly_above_threshold() {
        // Second box has IoU exactly 0.5 with the first: kept at threshold 0.5.
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 5.0],
            [1.0, 1.0, 10.0, 10.0],
        ];
        let scores = [0.9, 0.8, 0.7];
        assert_eq!(nms(&boxes, &scores, 0.5), vec![0, 1]);
        assert_eq!(nms(&boxes, &scores, 0.49), vec![0]);
    }

    #[test]
    fn ties_keep_input_order() {
        let boxes = [
            [0.0, 0.0, 1.0, 1.0],
            [5.0, 5.0, 6.0, 6.0],
            [0.0, 0.0, 1.0, 1.0],
        ];
        assert_eq!(nms(&boxes, &[0.5, 0.5, 0.5], 0.5), vec![0, 1]);
    }

    #[test]
    fn categories_do_not_suppress_each_other() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 9.0],
        ];
        let keep = batched_nms(&boxes, &[0.6, 0.9, 0.8], &[0, 1, 1], 0.5);
        assert_eq!(keep, vec![1, 0]);
    }
}
