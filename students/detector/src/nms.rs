//! Non-maximum suppression on CPU, with torchvision's semantics: candidates are visited by
//! score, descending, ties in input order (a stable sort); a box is suppressed when its IoU
//! with a kept box is strictly greater than the threshold.

use rayon::prelude::*;

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
    // Categories in parallel (the RPN's levels: three of 2,000 boxes at R50-FPN scale); the
    // merge below orders the kept boxes the same whichever finishes first.
    let mut keep: Vec<usize> = by_cat
        .into_par_iter()
        .filter(|m| !m.is_empty())
        .flat_map_iter(|members| {
            let order = sort_by_score_desc(scores, members);
            nms_ordered(boxes, &order, iou_threshold)
        })
        .collect();
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

/// `indices` (ascending) ordered as [`sort_by_score_desc`] orders them, truncated to the first
/// `k`: a selection, then a sort of the `k` alone (the RPN keeps 2,000 of 49,152 anchors a
/// level at 512 px).
pub fn top_by_score_desc(scores: &[f32], mut indices: Vec<usize>, k: usize) -> Vec<usize> {
    // Ties by index: on ascending indices the same order as the stable sort's input order,
    // and a total order, so the unstable selection and sort give that order exactly.
    let cmp = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    if k == 0 {
        return Vec::new();
    }
    if k < indices.len() {
        indices.select_nth_unstable_by(k - 1, cmp);
        indices.truncate(k);
    }
    indices.sort_unstable_by(cmp);
    indices
}

fn nms_ordered(boxes: &[[f32; 4]], order: &[usize], iou_threshold: f32) -> Vec<usize> {
    let n = order.len();
    // The boxes in visiting order as separate coordinate arrays, so that suppressing the
    // remaining candidates is a branch-free loop the compiler vectorises. The arithmetic is
    // the scalar form's, term for term, so the kept set is the same.
    let column = |k: usize| -> Vec<f32> { order.iter().map(|&i| boxes[i][k]).collect() };
    let (x1, y1, x2, y2) = (column(0), column(1), column(2), column(3));
    let area: Vec<f32> = order.iter().map(|&i| box_area(&boxes[i])).collect();
    let mut suppressed = vec![false; n];
    let mut keep = Vec::new();
    for oi in 0..n {
        if suppressed[oi] {
            continue;
        }
        keep.push(order[oi]);
        let (bx1, by1, bx2, by2, ba) = (x1[oi], y1[oi], x2[oi], y2[oi], area[oi]);
        let rest = oi + 1..n;
        let s = &mut suppressed[rest.clone()];
        let (ax1, ay1, ax2, ay2, aa) = (
            &x1[rest.clone()],
            &y1[rest.clone()],
            &x2[rest.clone()],
            &y2[rest.clone()],
            &area[rest],
        );
        for j in 0..s.len() {
            let w = (bx2.min(ax2[j]) - bx1.max(ax1[j])).max(0.0);
            let h = (by2.min(ay2[j]) - by1.max(ay1[j])).max(0.0);
            let inter = w * h;
            let ovr = inter / (ba + aa[j] - inter);
            s[j] |= ovr > iou_threshold;
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

    /// The selection keeps the stable sort's order, ties included, for every `k`.
    #[test]
    fn top_k_is_the_stable_sort_truncated() {
        let scores = [0.3, 0.9, 0.3, 0.1, 0.9, 0.5, 0.3, 0.0, 0.9, 0.2];
        let all = sort_by_score_desc(&scores, (0..scores.len()).collect());
        assert_eq!(&all[..4], &[1, 4, 8, 5]);
        for k in 0..=scores.len() + 2 {
            let top = top_by_score_desc(&scores, (0..scores.len()).collect(), k);
            assert_eq!(top, all[..k.min(scores.len())], "k = {k}");
        }
    }
}
