//! Batch normalisation for the backbone: frozen (an affine with fixed statistics, as
//! detectron2's / torchvision's `FrozenBatchNorm2d`) or trainable (Burn's `BatchNorm`).
//!
//! Detection fine-tunes with a few images per batch, where batch statistics are too noisy to
//! train on; the usual recipe freezes them. Trainable batch norm stays available for training
//! from scratch with larger batches.

use burn::module::{Module, Param};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Which batch normalisation the backbone uses.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// Fixed affine `y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`; no
    /// parameter receives a gradient and the statistics never change.
    #[default]
    Frozen,
    /// Ordinary batch normalisation: batch statistics while training (on an autodiff device),
    /// running statistics in inference; `gamma`/`beta` are trained.
    Batch,
}

/// `FrozenBatchNorm2d`: batch norm whose statistics and affine parameters are fixed.
///
/// Parameter names follow torchvision (`weight`, `bias`, `running_mean`, `running_var`), so a
/// torchvision checkpoint maps onto it key for key. All four are parameters that do not require
/// gradients (torchvision keeps them as buffers).
#[derive(Module, Debug)]
pub struct FrozenBatchNorm2d {
    /// Scale `[C]`.
    pub weight: Param<Tensor<1>>,
    /// Shift `[C]`.
    pub bias: Param<Tensor<1>>,
    /// Running mean `[C]`.
    pub running_mean: Param<Tensor<1>>,
    /// Running variance `[C]`.
    pub running_var: Param<Tensor<1>>,
    /// Added to the variance; torchvision's default is 1e-5.
    pub epsilon: f64,
}

impl FrozenBatchNorm2d {
    /// Identity statistics: weight 1, bias 0, mean 0, variance 1.
    pub fn new(num_features: usize, device: &Device) -> Self {
        let frozen = |t: Tensor<1>| Param::from_tensor(t).set_require_grad(false);
        Self {
            weight: frozen(Tensor::ones([num_features], device)),
            bias: frozen(Tensor::zeros([num_features], device)),
            running_mean: frozen(Tensor::zeros([num_features], device)),
            running_var: frozen(Tensor::ones([num_features], device)),
            epsilon: 1e-5,
        }
    }

    /// Per-channel `(scale, shift)` of the affine this layer applies, each `[C]`.
    pub fn scale_shift(&self) -> (Tensor<1>, Tensor<1>) {
        let scale = self
            .weight
            .val()
            .div(self.running_var.val().add_scalar(self.epsilon).sqrt());
        let shift = self
            .bias
            .val()
            .sub(self.running_mean.val().mul(scale.clone()));
        (scale, shift)
    }

    /// `[B, C, H, W]` → `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let (scale, shift) = self.scale_shift();
        let [c] = scale.dims();
        let scale = scale.reshape([1, c, 1, 1]);
        let shift = shift.reshape([1, c, 1, 1]);
        x.mul(scale).add(shift)
    }
}

/// A batch-norm layer of either kind.
#[derive(Module, Debug)]
pub enum Norm2d {
    /// See [`FrozenBatchNorm2d`].
    Frozen(FrozenBatchNorm2d),
    /// Burn's trainable batch norm (parameters `gamma`, `beta`, `running_mean`, `running_var`;
    /// a torchvision loader maps `weight` → `gamma` and `bias` → `beta`).
    Batch(BatchNorm),
}

impl Norm2d {
    /// A fresh layer of `kind` for `num_features` channels (identity statistics).
    pub fn new(kind: NormKind, num_features: usize, device: &Device) -> Self {
        match kind {
            NormKind::Frozen => Self::Frozen(FrozenBatchNorm2d::new(num_features, device)),
            NormKind::Batch => Self::Batch(BatchNormConfig::new(num_features).init(device)),
        }
    }

    /// `[B, C, H, W]` → `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Frozen(bn) => bn.forward(x),
            Self::Batch(bn) => crate::ops::batch_norm(bn, x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::RunningState;
    use burn::tensor::{Distribution, TensorData};

    fn stats(device: &Device) -> [Tensor<1>; 4] {
        let t = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [3]), device);
        [
            t(vec![0.5, 2.0, -1.5]),
            t(vec![0.1, -0.3, 0.7]),
            t(vec![0.2, -1.0, 3.0]),
            t(vec![0.5, 2.0, 0.01]),
        ]
    }

    /// FrozenBatchNorm2d equals Burn's BatchNorm in inference with the same statistics, and the
    /// closed formula computed here by hand.
    #[test]
    fn frozen_matches_batch_norm_inference_and_formula() {
        let device = Device::default();
        let [w, b, m, v] = stats(&device);
        let mut frozen = FrozenBatchNorm2d::new(3, &device);
        frozen.weight = Param::from_tensor(w.clone()).set_require_grad(false);
        frozen.bias = Param::from_tensor(b.clone()).set_require_grad(false);
        frozen.running_mean = Param::from_tensor(m.clone()).set_require_grad(false);
        frozen.running_var = Param::from_tensor(v.clone()).set_require_grad(false);

        let mut bn = BatchNormConfig::new(3).init(&device);
        bn.gamma = Param::from_tensor(w);
        bn.beta = Param::from_tensor(b);
        bn.running_mean = RunningState::new(m);
        bn.running_var = RunningState::new(v);
        let bn = bn.valid();

        let x = Tensor::<4>::random([2, 3, 4, 5], Distribution::Normal(0.0, 2.0), &device);
        let got = frozen
            .forward(x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let want = bn
            .forward(x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let xs = x.into_data().try_to_vec::<f32>().unwrap();
        let (wv, bv, mv, vv) = (
            [0.5f64, 2.0, -1.5],
            [0.1f64, -0.3, 0.7],
            [0.2f64, -1.0, 3.0],
            [0.5f64, 2.0, 0.01],
        );
        for (i, ((g, w2), x)) in got.iter().zip(&want).zip(&xs).enumerate() {
            let c = (i / 20) % 3;
            let formula = (*x as f64 - mv[c]) / (vv[c] + 1e-5).sqrt() * wv[c] + bv[c];
            // f32 arithmetic: a relative bound, since values reach ~100 where vv = 0.01.
            let tol = 1e-5 * formula.abs().max(1.0);
            assert!((*g as f64 - formula).abs() < tol, "{i}: {g} vs {formula}");
            assert!(
                (g - w2).abs() < 1e-4 * w2.abs().max(1.0),
                "{i}: {g} vs burn {w2}"
            );
        }
    }

    /// No gradient reaches a frozen layer's parameters, but the input still gets one.
    #[test]
    fn frozen_has_no_parameter_gradients() {
        let device = Device::default().autodiff();
        let frozen = FrozenBatchNorm2d::new(3, &device);
        let x = Tensor::<4>::random([1, 3, 2, 2], Distribution::Default, &device).require_grad();
        let grads = frozen.forward(x.clone()).sum().backward();
        assert!(frozen.weight.val().grad(&grads).is_none());
        assert!(frozen.running_var.val().grad(&grads).is_none());
        assert!(x.grad(&grads).is_some());
    }
}
