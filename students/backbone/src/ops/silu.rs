//! SiLU (`x · sigmoid(x)`) as one LibTorch kernel.
//!
//! Burn composes SiLU from a sigmoid and a product, two kernels and a temporary. The teacher's
//! QuickGELU (`x · sigmoid(1.702 x)`, three kernels: 6.1 ms of the ViT-B/32 tower's 36.5 ms bf16
//! step on the H200, BENCHMARKS, Speed, session 13) becomes one SiLU once its 1.702 is folded
//! into the weights around it. With the `tch` feature [`silu`] runs LibTorch's `silu` (and
//! `silu_backward` under autodiff) on LibTorch devices; everywhere else it is
//! [`burn::tensor::activation::silu`].

use burn::tensor::Tensor;

/// `x · sigmoid(x)`, element-wise; any shape. Same values and gradient as
/// [`burn::tensor::activation::silu`] up to float rounding (LibTorch's kernel computes it in one
/// pass), LibTorch's kernels on LibTorch devices (feature `tch`).
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "tch")]
    if super::libtorch::is_libtorch(&x.device()) {
        return libtorch::silu(x);
    }
    burn::tensor::activation::silu(x)
}

#[cfg(feature = "tch")]
mod libtorch {
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::libtorch::TchTensor;
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, LibTorch, backend_extension};
    use burn::tensor::Tensor;

    /// SiLU routed to the tensor's backend (LibTorch only; [`super::silu`] checks the device).
    #[backend_extension(LibTorch, Autodiff)]
    pub trait SiluBackend: Backend {
        /// `x · sigmoid(x)`, any shape.
        fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    }

    impl SiluBackend for LibTorch {
        fn fused_silu(x: TchTensor) -> TchTensor {
            TchTensor::new(x.tensor.silu())
        }
    }

    #[derive(Debug)]
    struct SiluBackward;

    impl Backward<LibTorch, 1> for SiluBackward {
        /// The forward's input.
        type State = TchTensor;

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let grad = grads.consume::<LibTorch>(&ops.node);
            if let Some(parent) = ops.parents[0].as_ref() {
                let dx = ops.state.tensor.silu_backward(&grad.tensor);
                grads.register::<LibTorch>(parent.id, TchTensor::new(dx));
            }
        }
    }

    impl<C: CheckpointStrategy> SiluBackend for Autodiff<LibTorch, C> {
        fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
            let inner = <LibTorch as SiluBackend>::fused_silu;
            match SiluBackward
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let x = x.into_primitive();
                    let y = inner(x.clone());
                    prep.finish(x, y)
                }
                OpsKind::UnTracked(prep) => prep.finish(inner(x.into_primitive())),
            }
        }
    }

    pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
        type Dp = burn::backend::Dispatch;
        Tensor::from_dispatch(<Dp as SiluBackend>::fused_silu(x.into_dispatch()))
    }
}

// On burn-flex `silu` is Burn's own, so only the LibTorch path has something to check.
#[cfg(all(test, feature = "tch"))]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    /// Values and input gradient equal Burn's composition under autodiff, for an upstream
    /// gradient that is not uniform; without autodiff the values too.
    fn check_on(device: Device) {
        device.seed(4);
        let ad = device.clone().autodiff();
        let x0 = Tensor::<3>::random([2, 5, 7], Distribution::Normal(0.0, 3.0), &ad);
        let up = Tensor::<3>::random([2, 5, 7], Distribution::Normal(0.0, 1.0), &ad);
        let run = |ours: bool| {
            let x = x0.clone().require_grad();
            let y = if ours {
                silu(x.clone())
            } else {
                burn::tensor::activation::silu(x.clone())
            };
            let grads = y.clone().mul(up.clone()).sum().backward();
            (values(y), values(x.grad(&grads).expect("x has a gradient")))
        };
        let (y, dx) = run(true);
        let (y_ref, dx_ref) = run(false);
        assert_close("y", &y, &y_ref);
        assert_close("dx", &dx, &dx_ref);
        let x = Tensor::<2>::random([4, 9], Distribution::Normal(0.0, 3.0), &device);
        assert_close(
            "y (inference)",
            &values(silu(x.clone())),
            &values(burn::tensor::activation::silu(x)),
        );
    }

    #[allow(deprecated)] // burn-tch's device
    #[test]
    fn silu_and_its_gradient_equal_burns_on_libtorch() {
        check_on(Device::libtorch());
    }

    #[allow(deprecated)] // burn-tch's CUDA device
    #[test]
    fn silu_and_its_gradient_equal_burns_on_libtorch_cuda() {
        if !tch::Cuda::is_available() {
            eprintln!("no CUDA device: the LibTorch CUDA SiLU is not checked here");
            return;
        }
        check_on(Device::libtorch_cuda(0));
    }
}
