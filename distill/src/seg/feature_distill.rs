//! Feature distillation: pull the student's pixel embeddings towards the teacher's dense
//! (MaskCLIP) embeddings, with an L1 loss (summed over dimensions, as ViLD-image) or one minus
//! the cosine similarity, averaged over the valid positions.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// The distance between student and teacher embeddings.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FeatureLoss {
    /// Sum over dimensions of |s - t|.
    L1,
    /// 1 - cos(s, t).
    #[default]
    Cosine,
}

/// Feature-distillation settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct FeatureDistillConfig {
    /// Weight of the term; 0 turns it off.
    #[serde(default)]
    pub weight: f64,
    /// The distance.
    #[serde(default)]
    pub loss: FeatureLoss,
}

/// Mean distance between student `[B, D, h, w]` and teacher `[B, D, h, w]` embeddings (both
/// L2-normalised) over the positions where `valid` `[B, 1, h, w]` is 1. Returns `[1]`.
pub fn feature_distill_loss(
    student: Tensor<4>,
    teacher: Tensor<4>,
    valid: Tensor<4>,
    loss: FeatureLoss,
) -> Tensor<1> {
    let per_pos = match loss {
        FeatureLoss::L1 => student.sub(teacher).abs().sum_dim(1),
        FeatureLoss::Cosine => student.mul(teacher).sum_dim(1).neg().add_scalar(1.0),
    }; // [B, 1, h, w]
    let n = valid.clone().sum().into_scalar::<f32>().max(1.0);
    per_pos.mul(valid).sum().div_scalar(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn l1_and_cosine_over_valid_positions() {
        let device = Device::default();
        // D = 2, two positions: equal at 0, orthogonal at 1.
        let s = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 1.0, 0.0, 0.0], [1, 2, 1, 2]),
            &device,
        );
        let t = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [1, 2, 1, 2]),
            &device,
        );
        let both = Tensor::<4>::ones([1, 1, 1, 2], &device);
        let first =
            Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 0.0], [1, 1, 1, 2]), &device);
        let l1 = feature_distill_loss(s.clone(), t.clone(), both.clone(), FeatureLoss::L1);
        assert_eq!(l1.into_scalar::<f32>(), 1.0); // (0 + 2) / 2
        let cos = feature_distill_loss(s.clone(), t.clone(), both, FeatureLoss::Cosine);
        assert_eq!(cos.into_scalar::<f32>(), 0.5); // (0 + 1) / 2
        let masked = feature_distill_loss(s, t, first, FeatureLoss::Cosine);
        assert_eq!(masked.into_scalar::<f32>(), 0.0);
    }
}
