//! A linear layer as one `addmm` on LibTorch.
//!
//! Burn's `Linear` runs a (batched) matmul and then adds the bias as a separate broadcast
//! addition. On LibTorch that addition is TensorIterator's generic strided kernel (the bias
//! broadcasts with stride 0): in the profile of the ViT-B/32 image tower in bfloat16 on the H200
//! it took 10.3 ms of a 49 ms step, where transformers' `nn.Linear` runs cuBLAS with the bias
//! fused into the matrix product's epilogue (BENCHMARKS, Speed, session 13). With the `tch`
//! feature [`linear`] folds the leading dimensions into rows and calls `addmm` on LibTorch
//! devices, with its own backward under autodiff; everywhere else it is `Linear::forward`.

use burn::nn::Linear;
use burn::tensor::Tensor;

/// `x @ weight + bias` for `x` `[..., d_in]` → `[..., d_out]`: the same values and gradients as
/// [`Linear::forward`], as one `addmm` on LibTorch devices (feature `tch`).
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "tch")]
    if let Some(bias) = &layer.bias
        && super::libtorch::is_libtorch(&x.device())
    {
        let dims = x.dims();
        let [d_in, d_out] = layer.weight.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let y = libtorch::addmm(x.reshape([rows, d_in]), layer.weight.val(), bias.val());
        let mut out = dims;
        out[D - 1] = d_out;
        return y.reshape(out);
    }
    layer.forward(x)
}

/// `layer` with its weight held as PyTorch's `nn.Linear` holds it: an `[out, in]` row-major
/// buffer, which Burn sees as its `[in, out]` weight through a transposed view. Same values.
/// On LibTorch [`linear`]'s `addmm` then passes cuBLAS the operand layout `F.linear` does; with
/// Burn's row-major `[in, out]` weight cuBLAS picks other kernels (the bf16 ViT-B/32 tower's
/// products took 14.4 ms a step against transformers' 13.2 on the H200, BENCHMARKS, Speed,
/// session 13). For inference on LibTorch: casts keep the layout, and on burn-flex a strided
/// weight would only slow the product down.
pub fn with_torch_weight_layout(mut layer: Linear) -> Linear {
    layer.weight = layer.weight.map(|w| {
        let [d_in, d_out] = w.dims();
        // The flattening copies the transposed view into a fresh `[out, in]` row-major buffer.
        w.transpose()
            .reshape([d_in * d_out])
            .reshape([d_out, d_in])
            .transpose()
    });
    layer
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

    /// `bias + x @ weight` routed to the tensor's backend (LibTorch only; [`super::linear`]
    /// checks the device).
    #[backend_extension(LibTorch, Autodiff)]
    pub trait AddmmBackend: Backend {
        /// `x` `[N, I]`, `weight` `[I, O]`, `bias` `[O]` → `[N, O]`.
        fn linear_addmm(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
        ) -> FloatTensor<Self>;
    }

    impl AddmmBackend for LibTorch {
        fn linear_addmm(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            TchTensor::new(bias.tensor.addmm(&x.tensor, &weight.tensor))
        }
    }

    #[derive(Debug)]
    struct AddmmBackward;

    impl Backward<LibTorch, 3> for AddmmBackward {
        /// The forward's `x` and `weight`.
        type State = (TchTensor, TchTensor);

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let grad = grads.consume::<LibTorch>(&ops.node);
            let (x, w) = ops.state;
            let [px, pw, pb] = ops.parents;
            let g = &grad.tensor;
            if let Some(p) = px {
                grads.register::<LibTorch>(p.id, TchTensor::new(g.matmul(&w.tensor.tr())));
            }
            if let Some(p) = pw {
                grads.register::<LibTorch>(p.id, TchTensor::new(x.tensor.tr().matmul(g)));
            }
            if let Some(p) = pb {
                let db = g.sum_dim_intlist([0i64].as_slice(), false, g.kind());
                grads.register::<LibTorch>(p.id, TchTensor::new(db));
            }
        }
    }

    impl<C: CheckpointStrategy> AddmmBackend for Autodiff<LibTorch, C> {
        fn linear_addmm(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            let inner = <LibTorch as AddmmBackend>::linear_addmm;
            match AddmmBackward
                .prepare::<C>([x.node(), weight.node(), bias.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (x, w) = (x.into_primitive(), weight.into_primitive());
                    let y = inner(x.clone(), w.clone(), bias.into_primitive());
                    prep.finish((x, w), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(inner(
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                )),
            }
        }
    }

    pub fn addmm(x: Tensor<2>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<2> {
        type Dp = burn::backend::Dispatch;
        Tensor::from_dispatch(<Dp as AddmmBackend>::linear_addmm(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
        ))
    }
}

// On burn-flex `linear` is Burn's own, so only the LibTorch path has something to check.
#[cfg(all(test, feature = "tch"))]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::tensor::{Device, Distribution};

    fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        let a = a.into_data().to_vec::<f32>().unwrap();
        let b = b.into_data().to_vec::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Values and all three gradients equal `Linear::forward`'s under autodiff, for a 3-D input
    /// and an upstream gradient that is not uniform; without autodiff the values too.
    fn check_on(device: Device) {
        device.seed(5);
        let ad = device.clone().autodiff();
        let layer = LinearConfig::new(24, 40).init(&ad);
        let x = Tensor::<3>::random([3, 5, 24], Distribution::Normal(0.0, 1.0), &ad).require_grad();
        let up = Tensor::<3>::random([3, 5, 40], Distribution::Normal(0.0, 1.0), &ad);

        let ours = linear(&layer, x.clone());
        let burns = layer.forward(x.clone());
        assert!(max_diff(ours.clone(), burns.clone()) < 1e-4);
        let g1 = (ours * up.clone()).sum().backward();
        let g2 = (burns * up).sum().backward();
        let grad_of = |g: &burn::tensor::Gradients, t: &Tensor<3>| t.grad(g).unwrap();
        assert!(max_diff(grad_of(&g1, &x), grad_of(&g2, &x)) < 1e-4);
        let w = layer.weight.val();
        assert!(max_diff(w.grad(&g1).unwrap(), w.grad(&g2).unwrap()) < 1e-4);
        let b = layer.bias.as_ref().unwrap().val();
        assert!(max_diff(b.grad(&g1).unwrap(), b.grad(&g2).unwrap()) < 1e-4);

        // Without autodiff: the plain LibTorch `addmm`.
        let plain = LinearConfig::new(24, 40).init(&device);
        let x = Tensor::<3>::random([3, 5, 24], Distribution::Normal(0.0, 1.0), &device);
        assert!(max_diff(linear(&plain, x.clone()), plain.forward(x)) < 1e-4);
    }

    #[test]
    fn linear_equals_burns_on_libtorch_cpu() {
        check_on(Device::libtorch());
        check_torch_layout(Device::libtorch());
    }

    /// The weight in PyTorch's layout: the same outputs, and underneath an `[out, in]`
    /// row-major buffer (strides `[1, in]` for Burn's `[in, out]`), also after a cast to bf16.
    fn check_torch_layout(device: Device) {
        device.seed(6);
        let layer = LinearConfig::new(24, 40).init(&device);
        let x = Tensor::<3>::random([3, 5, 24], Distribution::Normal(0.0, 1.0), &device);
        let want = linear(&layer, x.clone());
        let torch = with_torch_weight_layout(layer);
        assert!(max_diff(linear(&torch, x), want) < 1e-5);
        let strides = |w: Tensor<2>| {
            let burn::backend::DispatchTensorKind::LibTorch(t) = w.into_dispatch().kind else {
                panic!("a LibTorch tensor")
            };
            t.float().tensor.stride()
        };
        assert_eq!(strides(torch.weight.val()), [1, 24]);
        let half = torch.weight.val().cast(burn::tensor::FloatDType::BF16);
        assert_eq!(strides(half), [1, 24]);
    }

    /// cuBLAS where LibTorch sees a GPU (TF32 off by default in LibTorch's matmuls).
    #[allow(deprecated)] // burn-tch's CUDA device
    #[test]
    fn linear_equals_burns_on_libtorch_cuda() {
        if !tch::Cuda::is_available() {
            eprintln!("no CUDA device: the LibTorch CUDA linear is not checked here");
            return;
        }
        check_on(Device::libtorch_cuda(0));
        check_torch_layout(Device::libtorch_cuda(0));
    }
}
