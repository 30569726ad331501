//! Faster R-CNN box deltas `(dx, dy, dw, dh)` with per-coordinate weights, as torchvision's
//! `BoxCoder` (f32 arithmetic in the same order, so results agree to the last bits).
//!
//! Encoding makes regression targets (constants) and decoding turns detached predictions into
//! boxes, so both work on CPU arrays.

use serde::{Deserialize, Serialize};

/// `log(1000 / 16)`: the largest `dw`/`dh` fed to `exp` when decoding.
pub const BBOX_XFORM_CLIP: f32 = 4.135_166_6;

/// Encodes boxes relative to reference boxes and back.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct BoxCoder {
    /// `(wx, wy, ww, wh)`: RPN `(1, 1, 1, 1)`, Fast R-CNN head `(10, 10, 5, 5)`.
    pub weights: [f32; 4],
    /// Upper clamp on `dw`/`dh` before `exp` when decoding.
    pub bbox_xform_clip: f32,
}

impl BoxCoder {
    /// A coder with the given weights and the standard clamp `log(1000 / 16)`.
    pub fn new(weights: [f32; 4]) -> Self {
        Self {
            weights,
            bbox_xform_clip: BBOX_XFORM_CLIP,
        }
    }

    /// Deltas that take `reference` (an anchor or proposal) to `target` (its matched ground
    /// truth).
    pub fn encode_one(&self, target: &[f32; 4], reference: &[f32; 4]) -> [f32; 4] {
        let [wx, wy, ww, wh] = self.weights;
        let ex_w = reference[2] - reference[0];
        let ex_h = reference[3] - reference[1];
        let ex_cx = reference[0] + 0.5 * ex_w;
        let ex_cy = reference[1] + 0.5 * ex_h;
        let gt_w = target[2] - target[0];
        let gt_h = target[3] - target[1];
        let gt_cx = target[0] + 0.5 * gt_w;
        let gt_cy = target[1] + 0.5 * gt_h;
        [
            wx * (gt_cx - ex_cx) / ex_w,
            wy * (gt_cy - ex_cy) / ex_h,
            ww * (gt_w / ex_w).ln(),
            wh * (gt_h / ex_h).ln(),
        ]
    }

    /// [`encode_one`](Self::encode_one) over pairs; `targets.len() == references.len()`.
    pub fn encode(&self, targets: &[[f32; 4]], references: &[[f32; 4]]) -> Vec<[f32; 4]> {
        assert_eq!(
            targets.len(),
            references.len(),
            "encode: one target per reference"
        );
        targets
            .iter()
            .zip(references)
            .map(|(t, r)| self.encode_one(t, r))
            .collect()
    }

    /// The box that `deltas` make of `reference`, with `dw`/`dh` clamped at
    /// [`bbox_xform_clip`](Self::bbox_xform_clip).
    pub fn decode_one(&self, deltas: &[f32; 4], reference: &[f32; 4]) -> [f32; 4] {
        let [wx, wy, ww, wh] = self.weights;
        let w = reference[2] - reference[0];
        let h = reference[3] - reference[1];
        let cx = reference[0] + 0.5 * w;
        let cy = reference[1] + 0.5 * h;
        let dx = deltas[0] / wx;
        let dy = deltas[1] / wy;
        let dw = (deltas[2] / ww).min(self.bbox_xform_clip);
        let dh = (deltas[3] / wh).min(self.bbox_xform_clip);
        let pcx = dx * w + cx;
        let pcy = dy * h + cy;
        let pw = dw.exp() * w;
        let ph = dh.exp() * h;
        let (hw, hh) = (0.5 * pw, 0.5 * ph);
        [pcx - hw, pcy - hh, pcx + hw, pcy + hh]
    }

    /// [`decode_one`](Self::decode_one) over pairs.
    pub fn decode(&self, deltas: &[[f32; 4]], references: &[[f32; 4]]) -> Vec<[f32; 4]> {
        assert_eq!(
            deltas.len(),
            references.len(),
            "decode: one delta per reference"
        );
        deltas
            .iter()
            .zip(references)
            .map(|(d, r)| self.decode_one(d, r))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_constant_is_log_1000_over_16() {
        assert!((BBOX_XFORM_CLIP as f64 - (1000.0f64 / 16.0).ln()).abs() < 1e-6);
    }

    #[test]
    fn decode_inverts_encode() {
        let coder = BoxCoder::new([10.0, 10.0, 5.0, 5.0]);
        let refs = [
            [0.0, 0.0, 10.0, 20.0],
            [5.5, 3.25, 40.0, 9.0],
            [-4.0, -2.0, 1.0, 100.0],
        ];
        let gts = [
            [1.0, 2.0, 12.0, 18.0],
            [0.0, 0.0, 64.0, 64.0],
            [-3.5, 10.0, 0.5, 11.0],
        ];
        let deltas = coder.encode(&gts, &refs);
        let back = coder.decode(&deltas, &refs);
        for (b, g) in back.iter().zip(&gts) {
            for k in 0..4 {
                assert!((b[k] - g[k]).abs() < 1e-4, "{b:?} vs {g:?}");
            }
        }
    }

    #[test]
    fn decode_clamps_the_exponent() {
        let coder = BoxCoder::new([1.0; 4]);
        let b = coder.decode_one(&[0.0, 0.0, 50.0, 50.0], &[0.0, 0.0, 16.0, 16.0]);
        // exp(log(1000/16)) * 16 = 1000.
        assert!(((b[2] - b[0]) - 1000.0).abs() < 1e-2, "{b:?}");
    }
}
