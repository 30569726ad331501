//! ReLU with LibTorch's own backward.
//!
//! Burn's autodiff differentiates ReLU as `mask_fill(grad, output <= 0, 0)`: on LibTorch that is
//! a comparison plus a boolean `masked_fill`, whose CPU kernel is a scalar loop. In a profile of
//! the small conv net on `tch-cpu` (256², batch 8) that pair took 5.4 % of all samples, where
//! PyTorch runs one vectorised `threshold_backward` (BENCHMARKS, Speed, session 8). With the
//! `tch` feature [`relu`] runs that kernel on LibTorch devices; everywhere else it is
//! [`burn::tensor::activation::relu`].

use burn::tensor::Tensor;

/// `max(x, 0)`, element-wise; any shape. Same values and gradient as
/// [`burn::tensor::activation::relu`], with LibTorch's `threshold_backward` as the backward on
/// LibTorch devices (feature `tch`).
pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "tch")]
    if super::libtorch::is_libtorch(&x.device()) {
        return libtorch::relu(x);
    }
    burn::tensor::activation::relu(x)
}

#[cfg(feature = "tch")]
mod libtorch {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::libtorch::TchTensor;
    use burn::backend::ops::ActivationOps;
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, LibTorch, backend_extension};
    use burn::tensor::Tensor;

    /// ReLU routed to the tensor's backend (LibTorch only; [`super::relu`] checks the device).
    #[backend_extension(LibTorch, Autodiff)]
    pub trait ReluBackend: Backend {
        /// `max(x, 0)`, any shape.
        fn threshold_relu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    }

    impl ReluBackend for LibTorch {
        fn threshold_relu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            <Self as ActivationOps<Self>>::relu(x)
        }
    }

    #[derive(Debug)]
    struct ReluBackward;

    impl Backward<LibTorch, 1> for ReluBackward {
        /// The forward's output.
        type State = TchTensor;

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let grad = grads.consume::<LibTorch>(&ops.node);
            if let Some(parent) = ops.parents[0].as_ref() {
                // `grad` where the output is positive, else 0: one vectorised kernel.
                let dx = ops.state.tensor.threshold_backward(&grad.tensor, 0.0);
                grads.register::<LibTorch>(parent.id, TchTensor::new(dx));
            }
        }
    }

    impl<C: CheckpointStrategy> ReluBackend for Autodiff<LibTorch, C> {
        fn threshold_relu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            let relu = <LibTorch as ActivationOps<LibTorch>>::relu;
            match ReluBackward
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let y = relu(x.into_primitive());
                    prep.finish(y.clone(), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(relu(x.into_primitive())),
            }
        }
    }

    pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
        type Dp = burn::backend::Dispatch;
        Tensor::from_dispatch(<Dp as ReluBackend>::threshold_relu(x.into_dispatch()))
    }
}

// On burn-flex `relu` is Burn's own, so only the LibTorch path has something to check.
#[cfg(all(test, feature = "tch"))]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// Values and input gradient equal Burn's ReLU under autodiff, for an upstream gradient that
    /// is not uniform.
    fn check_on(device: Device) {
        device.seed(3);
        let x0 = Tensor::<4>::random([2, 3, 5, 7], Distribution::Normal(0.0, 1.0), &device);
        let up = Tensor::<4>::random([2, 3, 5, 7], Distribution::Normal(0.0, 1.0), &device);
        let run = |ours: bool| {
            let x = x0.clone().require_grad();
            let y = if ours {
                relu(x.clone())
            } else {
                burn::tensor::activation::relu(x.clone())
            };
            let grads = y.clone().mul(up.clone()).sum().backward();
            let dx = x.grad(&grads).expect("x has a gradient");
            (
                y.into_data().try_into_vec::<f32>().unwrap(),
                dx.into_data().try_into_vec::<f32>().unwrap(),
            )
        };
        let (y, dx) = run(true);
        let (y_ref, dx_ref) = run(false);
        assert_eq!(y, y_ref);
        assert_eq!(dx, dx_ref);
        assert!(y.iter().any(|&v| v == 0.0) && y.iter().any(|&v| v > 0.0));
        assert!(dx.iter().any(|&v| v == 0.0) && dx.iter().any(|&v| v != 0.0));
    }

    #[test]
    fn relu_and_its_gradient_equal_burns_on_libtorch() {
        check_on(Device::libtorch().autodiff());
        // Without autodiff: LibTorch's own ReLU.
        let device = Device::libtorch();
        let x = Tensor::<2>::random([4, 9], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(
            relu(x.clone()).into_data().try_into_vec::<f32>().unwrap(),
            burn::tensor::activation::relu(x)
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        );
    }
}
