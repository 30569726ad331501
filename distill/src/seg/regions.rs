//! Region pseudo-labels: the teacher's ordinary (pooled) image path on crops of the unlabelled
//! regions, instead of its dense value path.
//!
//! In the zero-shot setting every pixel of a seen class or of the background carries its
//! label, so the unlabelled pixels are exactly the unseen objects: each connected region of them
//! is (one or more touching) unseen objects. Its bounding box is cropped (ViLD's 1x and 1.5x
//! crops), embedded by the teacher as the crops it was trained on, and the region takes the
//! most probable candidate class when confident. A small teacher whose dense (MaskCLIP) features
//! carry no class information still classifies crops well; this is what it can give.

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use ovkd_data::semantic::SemanticMask;

use super::SegError;
use super::dataset::NO_LABEL;
use super::lseg::IGNORE;
use super::teacher::DenseTeacher;

/// Region pseudo-label settings (`distill.pseudo.regions`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Regions with fewer pixels are left unlabelled (too small to crop meaningfully).
    #[serde(default = "default_min_pixels")]
    pub min_pixels: usize,
    /// Softmax temperature over the crop's cosine scores with the candidates (CLIP: 0.01).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
}

fn default_min_pixels() -> usize {
    16
}
fn default_temperature() -> f64 {
    0.01
}

impl Default for RegionConfig {
    fn default() -> Self {
        Self {
            min_pixels: default_min_pixels(),
            temperature: default_temperature(),
        }
    }
}

/// A 4-connected region of a mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Row-major pixel indices.
    pub pixels: Vec<usize>,
    /// Bounding box `[x1, y1, x2, y2]` in pixels (exclusive right/bottom edges).
    pub bbox: [f32; 4],
}

/// The 4-connected regions of `mask` (`[height, width]` row-major) with at least `min_pixels`
/// pixels, in the order of their first pixel.
pub fn regions(mask: &[bool], width: usize, height: usize, min_pixels: usize) -> Vec<Region> {
    assert_eq!(mask.len(), width * height, "mask size");
    let mut seen = vec![false; mask.len()];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut pixels = Vec::new();
        let (mut x1, mut y1, mut x2, mut y2) = (usize::MAX, usize::MAX, 0, 0);
        while let Some(p) = stack.pop() {
            pixels.push(p);
            let (x, y) = (p % width, p / width);
            (x1, y1, x2, y2) = (x1.min(x), y1.min(y), x2.max(x), y2.max(y));
            let mut visit = |q: usize| {
                if mask[q] && !seen[q] {
                    seen[q] = true;
                    stack.push(q);
                }
            };
            if x > 0 {
                visit(p - 1);
            }
            if x + 1 < width {
                visit(p + 1);
            }
            if y > 0 {
                visit(p - width);
            }
            if y + 1 < height {
                visit(p + width);
            }
        }
        if pixels.len() >= min_pixels {
            pixels.sort_unstable();
            out.push(Region {
                pixels,
                bbox: [x1 as f32, y1 as f32, (x2 + 1) as f32, (y2 + 1) as f32],
            });
        }
    }
    out
}

/// Region pseudo-labels of one image: every unlabelled region of `gt` ([`IGNORE`] pixels) is
/// cropped and embedded by `teacher`, scored against the candidates (`cand_embeds` `[C, D]`,
/// label values `values`), and filled with the best candidate's value where its probability
/// reaches `threshold`. Returns `[H * W]` label values, [`NO_LABEL`] where none.
pub fn region_pseudo_map(
    cfg: &RegionConfig,
    threshold: f64,
    teacher: &dyn DenseTeacher,
    image: &RgbImage,
    cand_embeds: Tensor<2>,
    values: &[i64],
    gt: &SemanticMask,
) -> Result<Vec<u8>, SegError> {
    let (h, w) = (gt.height(), gt.width());
    let mut out = vec![NO_LABEL; h * w];
    let unlabelled: Vec<bool> = gt.as_slice().iter().map(|&v| v as i64 == IGNORE).collect();
    let regs = regions(&unlabelled, w, h, cfg.min_pixels);
    if regs.is_empty() {
        return Ok(out);
    }
    let boxes: Vec<[f32; 4]> = regs.iter().map(|r| r.bbox).collect();
    let e = teacher
        .region_embeds(image, &boxes)
        .map_err(SegError::Teacher)?; // [N, D]
    let probs = softmax(
        e.matmul(cand_embeds.transpose())
            .div_scalar(cfg.temperature),
        1,
    ); // [N, C]
    let (best, idx) = probs.max_dim_with_indices(1);
    let best = best
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| SegError::Teacher(format!("reading region scores: {e:?}")))?;
    let idx = idx
        .try_into_vec_as::<i64>()
        .map_err(|e| SegError::Teacher(format!("reading region classes: {e:?}")))?;
    for ((r, &p), &c) in regs.iter().zip(&best).zip(&idx) {
        if f64::from(p) >= threshold {
            let v = values[c as usize].clamp(0, 254) as u8;
            for &q in &r.pixels {
                out[q] = v;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_four_connected_with_tight_boxes() {
        // 5 x 4 mask: an L-shaped region (5 px) at the left, a diagonal neighbour that does
        // not join it, and a single pixel dropped by min_pixels = 2.
        #[rustfmt::skip]
        let m = [
            1, 1, 0, 0, 1,
            1, 0, 0, 0, 0,
            1, 1, 0, 0, 0,
            0, 0, 1, 1, 0,
        ];
        let mask: Vec<bool> = m.iter().map(|&v| v == 1).collect();
        let r = regions(&mask, 5, 4, 2);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].pixels, vec![0, 1, 5, 10, 11]);
        assert_eq!(r[0].bbox, [0.0, 0.0, 2.0, 3.0]);
        assert_eq!(r[1].pixels, vec![17, 18]);
        assert_eq!(r[1].bbox, [2.0, 3.0, 4.0, 4.0]);
        // Every region pixel is in the mask, and no pixel is in two regions.
        let all = regions(&mask, 5, 4, 1);
        let n: usize = all.iter().map(|r| r.pixels.len()).sum();
        assert_eq!(n, mask.iter().filter(|&&b| b).count());
    }
}
