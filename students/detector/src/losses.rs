//! The loss functions the RPN and the box head use, written with differentiable tensor ops.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// Box-regression loss.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum BoxLoss {
    /// Smooth L1 (Huber) with transition `beta` (torchvision uses 1/9 for both RPN and head).
    SmoothL1 {
        /// Quadratic below, linear above.
        beta: f32,
    },
    /// Plain L1 (detectron2's default for the box head).
    L1,
}

impl Default for BoxLoss {
    fn default() -> Self {
        Self::SmoothL1 { beta: 1.0 / 9.0 }
    }
}

impl BoxLoss {
    /// Sum over all elements of the loss between `pred` `[P, 4]` and constant `target`
    /// `[P, 4]` → `[1]`.
    pub fn sum(&self, pred: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
        let ad = pred.sub(target).abs();
        match *self {
            Self::L1 => ad.sum(),
            Self::SmoothL1 { beta } if beta <= 0.0 => ad.sum(),
            Self::SmoothL1 { beta } => {
                // 0.5 q^2 / beta + (|d| - q), q = min(|d|, beta): quadratic below beta, linear
                // (|d| - beta / 2) above, without a branch.
                let q = ad.clone().clamp_max(beta);
                q.clone()
                    .powi_scalar(2)
                    .mul_scalar(0.5 / beta)
                    .add(ad.sub(q))
                    .sum()
            }
        }
    }
}

/// Mean binary cross-entropy with logits: `logits` `[N]`, `targets` `[N]` in {0, 1} → `[1]`.
/// Stable form `max(x, 0) - x * y + log(1 + exp(-|x|))`.
pub fn bce_with_logits_mean(logits: Tensor<1>, targets: Tensor<1>) -> Tensor<1> {
    let relu = logits.clone().clamp_min(0.0);
    let softplus = logits.clone().abs().neg().exp().log1p();
    relu.sub(logits.mul(targets)).add(softplus).mean()
}

/// Mean cross-entropy: `logits` `[N, K]`, `labels[i] < K` → `[1]`.
pub fn cross_entropy_mean(logits: Tensor<2>, labels: &[usize]) -> Tensor<1> {
    let [n, _] = logits.dims();
    assert_eq!(n, labels.len(), "cross_entropy: one label per row");
    let device = logits.device();
    let idx = Tensor::<2, Int>::from_data(
        TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [n, 1]),
        &device,
    );
    log_softmax(logits, 1).gather(1, idx).mean().neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn t1(v: Vec<f32>) -> Tensor<1> {
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), &Device::default())
    }

    fn t2(v: Vec<f32>, cols: usize) -> Tensor<2> {
        let n = v.len() / cols;
        Tensor::from_data(TensorData::new(v, [n, cols]), &Device::default())
    }

    fn scalar(t: Tensor<1>) -> f32 {
        t.into_data().try_to_vec::<f32>().unwrap()[0]
    }

    #[test]
    fn smooth_l1_matches_definition() {
        let pred = t2(vec![0.0, 0.05, -0.5, 2.0], 4);
        let target = t2(vec![0.0; 4], 4);
        let beta = 1.0f32 / 9.0;
        let want = 0.0 + 0.5 * 0.05f32.powi(2) / beta + (0.5 - 0.5 * beta) + (2.0 - 0.5 * beta);
        let got = scalar(BoxLoss::SmoothL1 { beta }.sum(pred.clone(), target.clone()));
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert!((scalar(BoxLoss::L1.sum(pred, target)) - 2.55).abs() < 1e-6);
    }

    #[test]
    fn bce_and_ce_match_closed_forms() {
        let got = scalar(bce_with_logits_mean(
            t1(vec![2.0, -1.0, 30.0]),
            t1(vec![1.0, 1.0, 0.0]),
        ));
        let sp = |x: f32| (1.0 + x.exp()).ln();
        let want = (sp(-2.0) + sp(1.0) + sp(30.0)) / 3.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");

        let logits = t2(vec![1.0, 2.0, 3.0, 0.0, 0.0, 0.0], 3);
        let got = scalar(cross_entropy_mean(logits, &[2, 0]));
        let lse = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        let want = ((lse - 3.0) + 3f32.ln()) / 2.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}
