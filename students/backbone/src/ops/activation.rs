//! Activations with LibTorch's own kernels: ReLU's backward and SiLU in one pass.
//!
//! - ReLU: Burn's autodiff differentiates it as `mask_fill(grad, output <= 0, 0)`: on LibTorch
//!   that is a comparison plus a boolean `masked_fill`, whose CPU kernel is a scalar loop. In a
//!   profile of the small conv net on `tch-cpu` (256², batch 8) that pair took 5.4 % of all
//!   samples, where PyTorch runs one vectorised `threshold_backward` (BENCHMARKS, Speed, session
//!   8).
//! - SiLU: Burn composes `x · sigmoid(x)` from two kernels and a temporary. The teacher's
//!   QuickGELU (`x · sigmoid(1.702 x)`, three kernels: 6.1 ms of the ViT-B/32 tower's 36.5 ms
//!   bf16 step on the H200, BENCHMARKS, Speed, session 13) becomes one SiLU once its slope is
//!   folded into the weights around it.
//!
//! With the `tch` feature [`relu`] and [`silu`] run LibTorch's kernels (`relu` /
//! `threshold_backward`, `silu` / `silu_backward`) on LibTorch devices; everywhere else they are
//! Burn's own.

use burn::tensor::Tensor;

/// `max(x, 0)`, element-wise; any shape. Same values and gradient as
/// [`burn::tensor::activation::relu`], with LibTorch's `threshold_backward` as the backward on
/// LibTorch devices (feature `tch`).
pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "tch")]
    if super::libtorch::is_libtorch(&x.device()) {
        return libtorch::unary(x, libtorch::Unary::Relu);
    }
    burn::tensor::activation::relu(x)
}

/// `x · sigmoid(x)`, element-wise; any shape. Same values and gradient as
/// [`burn::tensor::activation::silu`] up to float rounding (LibTorch's kernel computes it in one
/// pass), LibTorch's kernels on LibTorch devices (feature `tch`).
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "tch")]
    if super::libtorch::is_libtorch(&x.device()) {
        return libtorch::unary(x, libtorch::Unary::Silu);
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
    use burn::backend::ops::ActivationOps;
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, LibTorch, backend_extension};
    use burn::tensor::Tensor;

    /// Which activation.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Unary {
        /// `max(x, 0)`; its backward needs the output.
        Relu,
        /// `x · sigmoid(x)`; its backward needs the input.
        Silu,
    }

    /// The activations routed to the tensor's backend (LibTorch only; the callers check).
    #[backend_extension(LibTorch, Autodiff)]
    pub trait UnaryBackend: Backend {
        /// `op` applied element-wise, any shape.
        fn libtorch_unary(x: FloatTensor<Self>, op: Unary) -> FloatTensor<Self>;
    }

    impl UnaryBackend for LibTorch {
        fn libtorch_unary(x: TchTensor, op: Unary) -> TchTensor {
            match op {
                Unary::Relu => <Self as ActivationOps<Self>>::relu(x),
                Unary::Silu => TchTensor::new(x.tensor.silu()),
            }
        }
    }

    #[derive(Debug)]
    struct UnaryBackward;

    impl Backward<LibTorch, 1> for UnaryBackward {
        /// ReLU's output or SiLU's input, and which.
        type State = (TchTensor, Unary);

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let grad = grads.consume::<LibTorch>(&ops.node);
            if let Some(parent) = ops.parents[0].as_ref() {
                let (saved, op) = &ops.state;
                let dx = match op {
                    // `grad` where the output is positive, else 0: one vectorised kernel.
                    Unary::Relu => saved.tensor.threshold_backward(&grad.tensor, 0.0),
                    Unary::Silu => saved.tensor.silu_backward(&grad.tensor),
                };
                grads.register::<LibTorch>(parent.id, TchTensor::new(dx));
            }
        }
    }

    impl<C: CheckpointStrategy> UnaryBackend for Autodiff<LibTorch, C> {
        fn libtorch_unary(x: FloatTensor<Self>, op: Unary) -> FloatTensor<Self> {
            let inner = <LibTorch as UnaryBackend>::libtorch_unary;
            match UnaryBackward
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let x = x.into_primitive();
                    let y = inner(x.clone(), op);
                    let saved = match op {
                        Unary::Relu => y.clone(),
                        Unary::Silu => x,
                    };
                    prep.finish((saved, op), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(inner(x.into_primitive(), op)),
            }
        }
    }

    pub fn unary<const D: usize>(x: Tensor<D>, op: Unary) -> Tensor<D> {
        type Dp = burn::backend::Dispatch;
        Tensor::from_dispatch(<Dp as UnaryBackend>::libtorch_unary(x.into_dispatch(), op))
    }
}

// On burn-flex both are Burn's own, so only the LibTorch path has something to check.
#[cfg(all(test, feature = "tch"))]
#[allow(deprecated)] // burn-tch's devices
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= tol * (1.0 + b.abs()),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    type Act = fn(Tensor<4>) -> Tensor<4>;

    /// Values and input gradient equal Burn's activation under autodiff, for an upstream
    /// gradient that is not uniform, within `tol` (0 for ReLU: the same numbers bit for bit);
    /// without autodiff the values too.
    fn check_on(device: Device, ours: Act, burns: Act, tol: f32) {
        device.seed(3);
        let ad = device.clone().autodiff();
        let x0 = Tensor::<4>::random([2, 3, 5, 7], Distribution::Normal(0.0, 2.0), &ad);
        let up = Tensor::<4>::random([2, 3, 5, 7], Distribution::Normal(0.0, 1.0), &ad);
        let run = |f: Act| {
            let x = x0.clone().require_grad();
            let y = f(x.clone());
            let grads = y.clone().mul(up.clone()).sum().backward();
            (values(y), values(x.grad(&grads).expect("x has a gradient")))
        };
        let (y, dx) = run(ours);
        let (y_ref, dx_ref) = run(burns);
        assert_close("y", &y, &y_ref, tol);
        assert_close("dx", &dx, &dx_ref, tol);
        let x = Tensor::<4>::random([1, 2, 4, 9], Distribution::Normal(0.0, 2.0), &device);
        assert_close(
            "y (inference)",
            &values(ours(x.clone())),
            &values(burns(x)),
            tol,
        );
    }

    fn check_both(device: Device) {
        check_on(device.clone(), relu, burn::tensor::activation::relu, 0.0);
        check_on(device, silu, burn::tensor::activation::silu, 1e-6);
    }

    #[test]
    fn relu_and_silu_equal_burns_on_libtorch() {
        check_both(Device::libtorch());
        // ReLU's gradient is exactly zero where the input is negative.
        let x =
            Tensor::<1>::from_floats([-1.0, 2.0], &Device::libtorch().autodiff()).require_grad();
        let g = relu(x.clone()).sum().backward();
        assert_eq!(values(x.grad(&g).unwrap().unsqueeze::<4>()), vec![0.0, 1.0]);
    }

    #[test]
    fn relu_and_silu_equal_burns_on_libtorch_cuda() {
        if !tch::Cuda::is_available() {
            eprintln!("no CUDA device: the LibTorch CUDA activations are not checked here");
            return;
        }
        check_both(Device::libtorch_cuda(0));
    }
}
