//! Optimiser settings with PyTorch's defaults (Burn's AdamW defaults differ: eps 1e-5 and weight
//! decay 1e-4; AdamW is [`ovkd_backbone::ops::AdamW`], in place on LibTorch), and clipping by the global gradient norm as `torch.nn.utils.clip_grad_norm_`
//! does (Burn clips each tensor on its own).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::Tensor;
use ovkd_backbone::ops::AdamWConfig;
use serde::{Deserialize, Serialize};

/// Which optimiser, and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// Decoupled weight decay Adam (PyTorch's `AdamW`).
    Adamw {
        /// Decoupled weight decay (PyTorch's default 0.01).
        #[serde(default = "default_adamw_wd")]
        weight_decay: f64,
        /// First-moment decay.
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Second-moment decay.
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Denominator epsilon (PyTorch's default 1e-8).
        #[serde(default = "default_eps")]
        eps: f64,
    },
    /// SGD with (optionally Nesterov) momentum and L2 weight decay, as detectron2 trains.
    Sgd {
        /// Momentum factor.
        #[serde(default = "default_momentum")]
        momentum: f64,
        /// L2 penalty added to the gradient.
        #[serde(default = "default_sgd_wd")]
        weight_decay: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
    },
}

fn default_adamw_wd() -> f64 {
    0.01
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_momentum() -> f64 {
    0.9
}
fn default_sgd_wd() -> f64 {
    1e-4
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self::Adamw {
            weight_decay: default_adamw_wd(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
        }
    }
}

impl OptimizerConfig {
    /// Builds the Burn optimiser (without clipping: see [`clip_global_norm`]).
    pub fn init(&self) -> ModuleOptimizer {
        match *self {
            Self::Adamw {
                weight_decay,
                beta1,
                beta2,
                eps,
            } => AdamWConfig::new()
                .with_beta_1(beta1 as f32)
                .with_beta_2(beta2 as f32)
                .with_epsilon(eps as f32)
                .with_weight_decay(weight_decay as f32)
                .init(),
            Self::Sgd {
                momentum,
                weight_decay,
                nesterov,
            } => SgdConfig::new()
                .with_momentum((momentum > 0.0).then_some(MomentumConfig {
                    momentum,
                    dampening: 0.0,
                    nesterov,
                }))
                .with_weight_decay((weight_decay > 0.0).then_some(WeightDecayConfig {
                    penalty: weight_decay as f32,
                }))
                .init(),
        }
    }
}

struct SquaredNorms<'a> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorms<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.parts.push(g.square().sum());
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// The global L2 norm of all gradients of `module`'s parameters.
pub fn global_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    let mut v = SquaredNorms {
        grads,
        parts: Vec::new(),
    };
    module.visit(&mut v);
    if v.parts.is_empty() {
        return 0.0;
    }
    let total: f64 = Tensor::cat(v.parts, 0).sum().into_scalar::<f64>();
    total.sqrt()
}

/// Scales all gradients so that their global norm is at most `max_norm`, as
/// `clip_grad_norm_` does (factor `max_norm / (norm + 1e-6)` when above). Returns the norm
/// before clipping.
pub fn clip_global_norm<M: Module>(module: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let norm = global_grad_norm(module, grads);
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        module.visit(&mut Scale { grads, factor });
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Device, TensorData};

    #[test]
    fn global_norm_clipping_scales_all_gradients_together() {
        let device = Device::flex().autodiff();
        let lin: Linear = LinearConfig::new(2, 1).init(&device);
        let x = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &device);
        let loss = lin.forward(x).sum();
        let mut grads = GradientsParams::from_grads(loss.backward(), &lin);
        // d/dw = x = (3, 4), d/db = 1: global norm sqrt(26).
        let before = clip_global_norm(&lin, &mut grads, 1.0);
        assert!((before - 26f64.sqrt()).abs() < 1e-5, "{before}");
        let after = global_grad_norm(&lin, &grads);
        assert!((after - 1.0).abs() < 1e-4, "{after}");
        let w = grads
            .get::<2>(lin.weight.id)
            .unwrap()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert!((w[0] / w[1] - 0.75).abs() < 1e-5);
    }
}
