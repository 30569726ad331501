//! AdamW with PyTorch's defaults, updating in place on LibTorch.
//!
//! Burn's `AdamW` composes its update from about fifteen element-wise tensor operations per
//! parameter (scale the moments, add, square, bias-correct each moment, square root, divide,
//! scale, subtract). On LibTorch each is its own pass over memory. In a profile of the small conv
//! net on `tch-cpu` (128², batch 8) the optimiser step took 14-17 ms where PyTorch's
//! `torch.optim.AdamW` took 9-11 ms (BENCHMARKS, Speed, session 9). PyTorch's CPU AdamW is the
//! single-tensor loop: `mul_`, `lerp_`, `addcmul_`, `sqrt`, `add_`, `addcdiv_`, in place. With the
//! `tch` feature [`AdamW`] runs PyTorch's fused AdamW kernel (`fused=True`, one pass per
//! parameter, called through `libtorch_shim.cpp`) on LibTorch devices; everywhere else it is
//! Burn's `AdamW` with the same settings.
//!
//! The state is Burn's [`AdamWState`], so optimiser records written by either implementation
//! load into the other.

use burn::config::Config;
use burn::optim::{AdamWState, LearningRate, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor};

/// Settings of [`AdamW`]. The defaults are PyTorch's (`torch.optim.AdamW`): Burn's own
/// `AdamWConfig` defaults to `epsilon` 1e-5 and `weight_decay` 1e-4.
#[derive(Config, Debug)]
pub struct AdamWConfig {
    /// First-moment decay.
    #[config(default = 0.9)]
    pub beta_1: f32,
    /// Second-moment decay.
    #[config(default = 0.999)]
    pub beta_2: f32,
    /// Denominator epsilon.
    #[config(default = 1e-8)]
    pub epsilon: f32,
    /// Decoupled weight decay (the parameter is scaled by `1 - lr * weight_decay`).
    #[config(default = 0.01)]
    pub weight_decay: f32,
}

impl AdamWConfig {
    /// Burn's own `AdamW` at these settings (what [`AdamW`] runs off LibTorch, and the
    /// baseline of `ovkd-speed --adamw burn`).
    pub fn burn_config(&self) -> burn::optim::AdamWConfig {
        burn::optim::AdamWConfig::new()
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_epsilon(self.epsilon)
            .with_weight_decay(self.weight_decay)
    }

    /// The optimiser for one parameter tensor at a time.
    pub fn build(&self) -> AdamW {
        AdamW {
            config: self.clone(),
            burn: self.burn_config().build(),
        }
    }

    /// The optimiser for a whole module (what `burn::optim::AdamWConfig::init` returns).
    pub fn init(&self) -> ModuleOptimizer {
        ModuleOptimizer::from(self.build())
    }
}

/// AdamW (Loshchilov & Hutter), as `torch.optim.AdamW` computes it.
#[derive(Clone)]
pub struct AdamW {
    /// The settings the LibTorch update reads.
    #[cfg_attr(not(feature = "tch"), allow(dead_code))]
    config: AdamWConfig,
    /// Burn's implementation, used on every device but LibTorch's.
    burn: burn::optim::AdamW,
}

impl Optimizer for AdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        #[cfg(feature = "tch")]
        if super::libtorch::is_libtorch(&tensor.device()) {
            let (tensor, state) = libtorch::step(&self.config, lr, tensor, grad, state);
            return (tensor, Some(state));
        }
        self.burn.step(lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <burn::optim::AdamW as Optimizer>::to_device(state, device)
    }
}

#[cfg(feature = "tch")]
mod libtorch {
    use burn::backend::libtorch::TchTensor;
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Backend, LibTorch, backend_extension};
    use burn::optim::{AdamWState, AdaptiveMomentumState};
    use burn::tensor::Tensor;

    use super::AdamWConfig;

    /// The scalars of one update.
    #[derive(Clone, Copy, Debug)]
    pub struct Scalars {
        lr: f64,
        beta_1: f64,
        beta_2: f64,
        epsilon: f64,
        weight_decay: f64,
        /// 1-based step count (for the bias corrections).
        time: i32,
    }

    /// One AdamW update, in place where the tensors are not shared.
    #[backend_extension(LibTorch)]
    pub trait AdamWBackend: Backend {
        /// `param`, `grad`, `moment_1`, `moment_2`: the same shape, any rank. Returns the new
        /// parameter and moments.
        fn adamw_update(
            param: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            moment_1: FloatTensor<Self>,
            moment_2: FloatTensor<Self>,
            scalars: Scalars,
        ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    }

    /// `t` itself when nothing else holds its storage, else a copy: writing into a buffer that
    /// a clone of the module (or of the optimiser record) still reads would change it too.
    fn exclusive(t: TchTensor) -> TchTensor {
        if t.can_mut() {
            t
        } else {
            TchTensor::new(t.tensor.copy())
        }
    }

    impl AdamWBackend for LibTorch {
        fn adamw_update(
            param: TchTensor,
            grad: TchTensor,
            moment_1: TchTensor,
            moment_2: TchTensor,
            s: Scalars,
        ) -> (TchTensor, TchTensor, TchTensor) {
            let _no_grad = tch::no_grad_guard();
            let (mut p, mut m, mut v) =
                (exclusive(param), exclusive(moment_1), exclusive(moment_2));
            // `torch.optim.AdamW(..., fused=True)`'s kernel: one pass over the four tensors,
            // where the single-tensor form is eight kernels (BENCHMARKS, Speed, session 12).
            crate::ops::libtorch::fused_adamw_(
                &mut p.tensor,
                &grad.tensor,
                &mut m.tensor,
                &mut v.tensor,
                f64::from(s.time),
                s.lr,
                (s.beta_1, s.beta_2),
                s.weight_decay,
                s.epsilon,
            );
            (p, m, v)
        }
    }

    /// One step of one parameter on LibTorch; returns the new parameter and state.
    pub fn step<const D: usize>(
        config: &AdamWConfig,
        lr: f64,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<AdamWState<D>>,
    ) -> (Tensor<D>, AdamWState<D>) {
        // PyTorch starts both moments at zero; lerping from zero gives Burn's first step.
        let (time, m, v) = match state {
            Some(s) => (s.momentum.time, s.momentum.moment_1, s.momentum.moment_2),
            None => (0, grad.zeros_like(), grad.zeros_like()),
        };
        let time = time + 1;
        let scalars = Scalars {
            lr,
            beta_1: config.beta_1 as f64,
            beta_2: config.beta_2 as f64,
            epsilon: config.epsilon as f64,
            weight_decay: config.weight_decay as f64,
            time: time as i32,
        };
        type Dp = burn::backend::Dispatch;
        let (p, m, v) = <Dp as AdamWBackend>::adamw_update(
            tensor.into_dispatch(),
            grad.into_dispatch(),
            m.into_dispatch(),
            v.into_dispatch(),
            scalars,
        );
        let momentum = AdaptiveMomentumState {
            time,
            moment_1: Tensor::from_dispatch(m),
            moment_2: Tensor::from_dispatch(v),
            max_moment_2: None,
        };
        (Tensor::from_dispatch(p), AdamWState { momentum })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsParams;
    use burn::tensor::{Distribution, TensorData};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    /// One step of a one-element parameter against `torch.optim.AdamW(lr=0.1)` with its
    /// defaults (betas 0.9/0.999, eps 1e-8, weight decay 0.01): p = 1, g = 0.5 gives
    /// m̂ = 0.5, v̂ = 0.25, p = 1 · (1 - 0.001) - 0.1 · 0.5 / (0.5 + 1e-8) = 0.899.
    fn first_step_matches_pytorch(device: Device) {
        let optim = AdamWConfig::new().build();
        let p = Tensor::<1>::from_data(TensorData::new(vec![1.0f32], [1]), &device);
        let g = Tensor::<1>::from_data(TensorData::new(vec![0.5f32], [1]), &device);
        let (p, state) = optim.step(0.1, p, g, None);
        let p = values(p)[0];
        assert!((p - 0.899).abs() < 1e-6, "{p}");
        assert_eq!(state.unwrap().momentum.time, 1);
    }

    #[test]
    fn first_step_matches_pytorch_on_burn_flex() {
        first_step_matches_pytorch(Device::flex());
    }

    /// Five steps of a `Linear` trained on a fixed batch, through `ModuleOptimizer`, with this
    /// optimiser and with Burn's `AdamW` at the same settings: the parameters agree to float
    /// rounding, and a clone of the module taken before the steps is left unchanged.
    fn agrees_with_burns_adamw(device: Device) {
        let ad = device.autodiff();
        ad.seed(7);
        let start: Linear = LinearConfig::new(6, 4).init(&ad);
        let x = Tensor::<2>::random([5, 6], Distribution::Normal(0.0, 1.0), &ad);
        let before = values(start.weight.val().inner());
        let config = AdamWConfig::new().with_weight_decay(0.05);
        let run = |mut optim: ModuleOptimizer| {
            let mut lin = start.clone();
            for _ in 0..5 {
                let loss = lin.forward(x.clone()).powf_scalar(2.0).sum();
                let grads = GradientsParams::from_grads(loss.backward(), &lin);
                lin = optim.step(0.01, lin, grads);
            }
            (
                values(lin.weight.val().inner()),
                values(lin.bias.unwrap().val().inner()),
            )
        };
        let ours = run(config.init());
        let burns = run(burn::optim::AdamWConfig::new()
            .with_epsilon(config.epsilon)
            .with_weight_decay(config.weight_decay)
            .init());
        for (a, b) in ours
            .0
            .iter()
            .chain(&ours.1)
            .zip(burns.0.iter().chain(&burns.1))
        {
            assert!((a - b).abs() < 1e-6, "ours {a} vs Burn's {b}");
        }
        assert_ne!(ours.0, before, "the steps moved the weights");
        assert_eq!(
            values(start.weight.val().inner()),
            before,
            "the clone is untouched"
        );
    }

    #[test]
    fn agrees_with_burns_adamw_on_burn_flex() {
        agrees_with_burns_adamw(Device::flex());
    }

    #[cfg(feature = "tch")]
    #[test]
    fn first_step_matches_pytorch_on_libtorch() {
        first_step_matches_pytorch(Device::libtorch());
    }

    #[cfg(feature = "tch")]
    #[test]
    fn agrees_with_burns_adamw_on_libtorch() {
        agrees_with_burns_adamw(Device::libtorch());
    }

    /// PyTorch's fused kernel on CUDA, where LibTorch sees a GPU.
    #[cfg(feature = "tch")]
    #[allow(deprecated)] // burn-tch's CUDA device
    #[test]
    fn matches_pytorch_and_burn_on_libtorch_cuda() {
        if !tch::Cuda::is_available() {
            eprintln!("no CUDA device: the fused AdamW on CUDA is not checked here");
            return;
        }
        first_step_matches_pytorch(Device::libtorch_cuda(0));
        agrees_with_burns_adamw(Device::libtorch_cuda(0));
    }
}
