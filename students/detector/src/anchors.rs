//! Anchors per feature level, as torchvision's `AnchorGenerator`: for each level a set of
//! "cell anchors" (every aspect ratio × every size, ratio-major, half-sizes rounded half to
//! even as `torch.round`), repeated at every cell of the level's grid.
//!
//! As torchvision, anchors sit on the cell corners `(x * stride, y * stride)` with `offset =
//! 0`; `offset = 0.5` puts them on cell centres instead. The stride of a level is the padded
//! image size divided by the grid size, rounded down (torchvision's rule).

use serde::{Deserialize, Serialize};

use crate::boxes::Boxes;

/// Anchor sizes and aspect ratios per feature level.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnchorConfig {
    /// Anchor sizes (sqrt of area, input pixels) per level, finest first.
    pub sizes: Vec<Vec<f32>>,
    /// Aspect ratios (height / width) per level.
    pub aspect_ratios: Vec<Vec<f32>>,
    /// Where anchors sit inside a cell, as a fraction of the stride (0 = corner, as
    /// torchvision; 0.5 = centre).
    #[serde(default)]
    pub offset: f32,
}

impl AnchorConfig {
    /// torchvision's FPN default: sizes 32..512 on P2..P6, ratios 0.5/1/2.
    pub fn torchvision_fpn() -> Self {
        Self::fpn([32.0, 64.0, 128.0, 256.0, 512.0])
    }

    /// Sizes 16..256 on P2..P6, ratios 0.5/1/2: for images of a few hundred pixels.
    pub fn small_images() -> Self {
        Self::fpn([16.0, 32.0, 64.0, 128.0, 256.0])
    }

    fn fpn(sizes: [f32; 5]) -> Self {
        Self {
            sizes: sizes.iter().map(|&s| vec![s]).collect(),
            aspect_ratios: vec![vec![0.5, 1.0, 2.0]; 5],
            offset: 0.0,
        }
    }

    /// Anchors per cell on each level.
    pub fn num_anchors_per_location(&self) -> Vec<usize> {
        self.sizes
            .iter()
            .zip(&self.aspect_ratios)
            .map(|(s, r)| s.len() * r.len())
            .collect()
    }

    /// The anchors of one level centred on the origin, `[ratios × sizes]` ratio-major
    /// (torchvision's `generate_anchors`).
    pub fn cell_anchors(&self, level: usize) -> Vec<[f32; 4]> {
        let mut out = Vec::new();
        for &ratio in &self.aspect_ratios[level] {
            let h_ratio = ratio.sqrt();
            let w_ratio = 1.0 / h_ratio;
            for &size in &self.sizes[level] {
                let ws = w_ratio * size;
                let hs = h_ratio * size;
                out.push([-ws, -hs, ws, hs].map(|v| (v / 2.0).round_ties_even()));
            }
        }
        out
    }

    /// All anchors of one image, levels concatenated finest first; within a level the order
    /// is `(y, x, anchor)`, the order of the RPN head's flattened outputs.
    ///
    /// `grid_sizes[l] = [H_l, W_l]` are the feature sizes, `image_size = [H, W]` the padded
    /// input size.
    pub fn grid_anchors(&self, grid_sizes: &[[usize; 2]], image_size: [usize; 2]) -> Boxes {
        assert_eq!(
            grid_sizes.len(),
            self.sizes.len(),
            "anchors configured for {} levels, got {} feature maps",
            self.sizes.len(),
            grid_sizes.len()
        );
        let mut all = Vec::new();
        for (level, &[gh, gw]) in grid_sizes.iter().enumerate() {
            let stride_h = (image_size[0] / gh.max(1)) as f32;
            let stride_w = (image_size[1] / gw.max(1)) as f32;
            let base = self.cell_anchors(level);
            all.reserve(gh * gw * base.len());
            for y in 0..gh {
                let sy = (y as f32 + self.offset) * stride_h;
                for x in 0..gw {
                    let sx = (x as f32 + self.offset) * stride_w;
                    for a in &base {
                        all.push([sx + a[0], sy + a[1], sx + a[2], sy + a[3]]);
                    }
                }
            }
        }
        Boxes(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_anchors_round_half_to_even() {
        let cfg = AnchorConfig {
            sizes: vec![vec![25.0, 32.0]],
            aspect_ratios: vec![vec![0.5, 1.0]],
            offset: 0.0,
        };
        // ratio 0.5: w = 45.25/35.36 ... ; ratio 1, size 25: 12.5 → 12 (half to even).
        let a = cfg.cell_anchors(0);
        assert_eq!(a[2], [-12.0, -12.0, 12.0, 12.0]);
        assert_eq!(a[3], [-16.0, -16.0, 16.0, 16.0]);
        assert_eq!(a[1], [-23.0, -11.0, 23.0, 11.0]);
    }

    #[test]
    fn grid_order_is_y_x_anchor() {
        let cfg = AnchorConfig {
            sizes: vec![vec![8.0]],
            aspect_ratios: vec![vec![1.0]],
            offset: 0.0,
        };
        let b = cfg.grid_anchors(&[[2, 3]], [8, 12]);
        assert_eq!(b.len(), 6);
        assert_eq!(b.0[1], [0.0, -4.0, 8.0, 4.0]);
        assert_eq!(b.0[3], [-4.0, 0.0, 4.0, 8.0]);
    }
}
