//! LSeg's loss (Li et al., ICLR 2022): per-pixel cross-entropy of the cosine logits against the
//! labels, skipping the ignore index.
//!
//! Ground-truth and pseudo-labelled pixels are scored by the same cross-entropy; they are kept as
//! separate terms (for the metrics table and for weighting) but both are divided by the number of
//! supervised pixels of the batch, so that with weight 1 their sum is exactly the single
//! cross-entropy of MaskCLIP+ over every labelled pixel.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor};

/// The ignore index of label maps.
pub const IGNORE: i64 = 255;

/// Sum over the pixels selected by `mask` of the negative log-likelihood of `targets`.
///
/// `logits` `[B, C, H, W]`; `targets` `[B, H, W]` channel indices (any value where `mask` is
/// false); `mask` `[B, H, W]`. Returns `[1]`.
pub fn nll_sum(logits: Tensor<4>, targets: Tensor<3, Int>, mask: Tensor<3, Bool>) -> Tensor<1> {
    let [b, c, h, w] = logits.dims();
    if ovkd_backbone::ops::is_flex(&logits.device()) {
        // The fused, parallel kernel (Burn's log-softmax runs on one thread there).
        let t = targets
            .try_into_vec_as::<i64>()
            .expect("burn-flex reads its integer tensors back");
        let m = mask
            .into_data()
            .try_into_vec::<bool>()
            .expect("burn-flex reads its boolean tensors back");
        let target = t
            .iter()
            .zip(&m)
            .map(|(&t, &m)| {
                if m {
                    t.clamp(0, c as i64 - 1) as i32
                } else {
                    -1
                }
            })
            .collect();
        return ovkd_backbone::ops::pixel_nll_sum(
            logits,
            std::sync::Arc::new(ovkd_backbone::ops::PixelLabels { target }),
        );
    }
    let safe = targets
        .mask_fill(mask.clone().bool_not(), 0)
        .clamp(0, c as i64 - 1);
    let logp = log_softmax(logits, 1)
        .gather(1, safe.reshape([b, 1, h, w]))
        .reshape([b, h, w]);
    logp.mul(mask.float()).sum().neg()
}

/// Mean cross-entropy over the pixels whose target is not [`IGNORE`]: `logits` `[B, C, H, W]`,
/// `targets` `[B, H, W]` with values in `0..C` or [`IGNORE`]. Returns `[1]`; zero (still
/// attached to the graph) when every pixel is ignored.
pub fn cross_entropy_ignore(logits: Tensor<4>, targets: Tensor<3, Int>) -> Tensor<1> {
    let mask = targets.clone().not_equal_elem(IGNORE);
    let n = mask.clone().int().sum().into_scalar::<i64>().max(1);
    nll_sum(logits, targets, mask).div_scalar(n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn matches_a_hand_computed_cross_entropy_and_skips_255() {
        let device = Device::default();
        // Two pixels, three classes; the second pixel is ignored.
        let logits = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 5.0, 2.0, 0.0, 0.5, -1.0], [1, 3, 1, 2]),
            &device,
        );
        let targets =
            Tensor::<3, Int>::from_data(TensorData::new(vec![0i64, 255], [1, 1, 2]), &device);
        let got = cross_entropy_ignore(logits.clone(), targets).into_scalar::<f32>();
        // Pixel 0's logits are (1, 2, 0.5) (layout [B, C, H, W]).
        let lse = (1f32.exp() + 2f32.exp() + 0.5f32.exp()).ln();
        assert!((got - (lse - 1.0)).abs() < 1e-5, "{got}");
        // Changing the ignored pixel's logits changes nothing.
        let other = logits.clone().slice_assign(
            [0..1, 0..3, 0..1, 1..2],
            Tensor::from_data(
                TensorData::new(vec![9.0f32, -9.0, 3.0], [1, 3, 1, 1]),
                &device,
            ),
        );
        let targets =
            Tensor::<3, Int>::from_data(TensorData::new(vec![0i64, 255], [1, 1, 2]), &device);
        let again = cross_entropy_ignore(other, targets).into_scalar::<f32>();
        assert_eq!(got, again);
    }

    #[test]
    fn all_ignored_is_zero_and_gradients_skip_ignored_pixels() {
        let device = Device::default().autodiff();
        let logits = Tensor::<4>::from_data(
            TensorData::new(vec![0.3f32, -0.2, 1.0, 0.7], [1, 2, 1, 2]),
            &device,
        )
        .require_grad();
        let none =
            Tensor::<3, Int>::from_data(TensorData::new(vec![255i64, 255], [1, 1, 2]), &device);
        assert_eq!(
            cross_entropy_ignore(logits.clone(), none).into_scalar::<f32>(),
            0.0
        );
        let t = Tensor::<3, Int>::from_data(TensorData::new(vec![1i64, 255], [1, 1, 2]), &device);
        let grads = cross_entropy_ignore(logits.clone(), t).backward();
        let g = logits
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        // Layout [c0p0, c0p1, c1p0, c1p1]: the ignored pixel p1 has zero gradient.
        assert_eq!(g[1], 0.0);
        assert_eq!(g[3], 0.0);
        assert!(g[0] > 0.0 && g[2] < 0.0, "{g:?}");
    }
}
