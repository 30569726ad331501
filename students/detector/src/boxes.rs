//! Axis-aligned boxes `[x1, y1, x2, y2]` in input-image pixels, and the box geometry the
//! detector needs (area, IoU, clipping), computed in `f32` with torchvision's formulas.
//!
//! This is the detector's boundary type until `ovkd-data` provides the shared one.

/// Boxes `[x1, y1, x2, y2]` in input-image pixels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Boxes(pub Vec<[f32; 4]>);

impl Boxes {
    /// No boxes.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Number of boxes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no boxes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The boxes as a slice.
    pub fn as_slice(&self) -> &[[f32; 4]] {
        &self.0
    }

    /// The boxes at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Self {
        Self(indices.iter().map(|&i| self.0[i]).collect())
    }

    /// Flattened `[N * 4]`, row-major, for building a `[N, 4]` tensor.
    pub fn flat(&self) -> Vec<f32> {
        self.0.iter().flatten().copied().collect()
    }

    /// From a flat `[N * 4]` slice.
    pub fn from_flat(flat: &[f32]) -> Self {
        Self(
            flat.chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect(),
        )
    }
}

impl From<Vec<[f32; 4]>> for Boxes {
    fn from(v: Vec<[f32; 4]>) -> Self {
        Self(v)
    }
}

/// `(x2 - x1) * (y2 - y1)`, as torchvision's `box_area` (negative for inverted boxes).
pub fn box_area(b: &[f32; 4]) -> f32 {
    (b[2] - b[0]) * (b[3] - b[1])
}

/// Intersection over union of two boxes, torchvision's `box_iou` formula. Zero when the union
/// is not positive (torchvision gives NaN for two empty boxes).
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = box_area(a) + box_area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// IoU matrix `[M][N]` between `a` (rows; ground truth in the matchers) and `b` (columns).
pub fn iou_matrix(a: &[[f32; 4]], b: &[[f32; 4]]) -> Vec<Vec<f32>> {
    a.iter()
        .map(|x| b.iter().map(|y| iou(x, y)).collect())
        .collect()
}

/// Clamps x to `[0, width]` and y to `[0, height]` (torchvision's `clip_boxes_to_image`).
pub fn clip_box(b: [f32; 4], height: f32, width: f32) -> [f32; 4] {
    [
        b[0].clamp(0.0, width),
        b[1].clamp(0.0, height),
        b[2].clamp(0.0, width),
        b[3].clamp(0.0, height),
    ]
}

/// True when both sides are at least `min_size` (torchvision's `remove_small_boxes` keeps
/// these).
pub fn is_large_enough(b: &[f32; 4], min_size: f32) -> bool {
    b[2] - b[0] >= min_size && b[3] - b[1] >= min_size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_known_pairs() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(iou(&a, &a), 1.0);
        assert_eq!(iou(&a, &[10.0, 10.0, 20.0, 20.0]), 0.0);
        // 5x10 overlap of two 10x10 boxes: 50 / 150.
        assert!((iou(&a, &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-7);
        assert_eq!(iou(&[1.0, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 1.0]), 0.0);
    }

    #[test]
    fn clip_and_small() {
        assert_eq!(
            clip_box([-3.0, 2.0, 50.0, 70.0], 64.0, 48.0),
            [0.0, 2.0, 48.0, 64.0]
        );
        assert!(is_large_enough(&[0.0, 0.0, 1.0, 1.0], 1.0));
        assert!(!is_large_enough(&[0.0, 0.0, 1.0, 0.5], 1.0));
    }
}
