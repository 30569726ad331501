//! The fast convolution as a Burn backend extension: a `Dispatch` operation with one
//! implementation per backend ovkd offers (burn-flex, LibTorch) and an autodiff implementation
//! that carries its own backward ([`ConvKernels::conv2d_backward`]) instead of Burn's generic one.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::Flex;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DispatchDevice, backend_extension};
use burn::tensor::Tensor;
use burn::tensor::ops::ConvOptions;

use super::kernels::{ConvKernels, GradMask};

/// The fast 2-D convolution, routed to the tensor's backend. (Two methods rather than an
/// `Option` bias: the 0.22.1 extension macro does not unwrap `Option` tensor arguments.)
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait FastConvBackend: Backend {
    /// `x`: `[B, Ci, H, W]`, `weight`: `[Co, Ci/g, kh, kw]` → `[B, Co, oh, ow]`.
    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// The same plus `bias`: `[Co]`.
    fn fast_conv2d_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
}

impl FastConvBackend for Flex {
    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ConvKernels>::conv2d_forward(x, weight, None, options)
    }

    fn fast_conv2d_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ConvKernels>::conv2d_forward(x, weight, Some(bias), options)
    }
}

#[cfg(feature = "tch")]
impl FastConvBackend for burn::backend::LibTorch {
    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ConvKernels>::conv2d_forward(x, weight, None, options)
    }

    fn fast_conv2d_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        <Self as ConvKernels>::conv2d_forward(x, weight, Some(bias), options)
    }
}

/// The backward step of the fast convolution; `N` = 2 without bias, 3 with.
#[derive(Debug)]
struct FastConvBackward<const N: usize>;

impl<B: ConvKernels, const N: usize> Backward<B, N> for FastConvBackward<N> {
    type State = (B::Saved, GradMask);

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let (saved, mask) = ops.state;
        let out = B::conv2d_backward(saved, grad, mask);
        let parents = ops.parents;
        for (i, g) in [out.input, out.weight, out.bias]
            .into_iter()
            .enumerate()
            .take(N)
        {
            if let (Some(node), Some(g)) = (parents[i].as_ref(), g) {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: ConvKernels, C: CheckpointStrategy> FastConvBackend for Autodiff<B, C> {
    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let mask = GradMask {
            input: x.is_tracked(),
            weight: weight.is_tracked(),
            bias: false,
        };
        match FastConvBackward::<2>
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, saved) = B::conv2d_forward_saving(
                    x.into_primitive(),
                    weight.into_primitive(),
                    None,
                    options,
                    mask,
                );
                prep.finish((saved, mask), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_forward(
                x.into_primitive(),
                weight.into_primitive(),
                None,
                options,
            )),
        }
    }

    fn fast_conv2d_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let mask = GradMask {
            input: x.is_tracked(),
            weight: weight.is_tracked(),
            bias: bias.is_tracked(),
        };
        match FastConvBackward::<3>
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, saved) = B::conv2d_forward_saving(
                    x.into_primitive(),
                    weight.into_primitive(),
                    Some(bias.into_primitive()),
                    options,
                    mask,
                );
                prep.finish((saved, mask), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_forward(
                x.into_primitive(),
                weight.into_primitive(),
                Some(bias.into_primitive()),
                options,
            )),
        }
    }
}

/// Whether `device` runs on a backend the extension implements (burn-flex or LibTorch, with or
/// without autodiff).
pub fn supports(device: &burn::tensor::Device) -> bool {
    match device.clone().inner().as_dispatch() {
        DispatchDevice::Flex(_) => true,
        #[cfg(feature = "tch")]
        DispatchDevice::LibTorch(_) => true,
        _ => false,
    }
}

/// Whether `device` is burn-flex (with or without autodiff), where the channel-parallel batch
/// norm and the fused pixel loss run.
pub fn is_flex(device: &burn::tensor::Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// Whether `device` is LibTorch on a GPU (with or without autodiff): where reading a tensor
/// back to the host waits for the device and copies over PCIe, so the detector keeps its
/// selections (RoIAlign's taps, the RPN's top-k) on the device. Without `tch`: never.
pub fn is_gpu(device: &burn::tensor::Device) -> bool {
    #[cfg(feature = "tch")]
    if let DispatchDevice::LibTorch(d) = device.clone().inner().as_dispatch() {
        return !matches!(d, burn::backend::libtorch::LibTorchDevice::Cpu);
    }
    let _ = device;
    false
}

/// The 2-D convolution with its own backward where the backend has one, else
/// [`burn::tensor::module::conv2d`]. Same arguments, same result.
///
/// `x`: `[B, Ci, H, W]`, `weight`: `[Co, Ci/g, kh, kw]`, `bias`: `[Co]` → `[B, Co, oh, ow]`.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    if !supports(&x.device()) {
        return burn::tensor::module::conv2d(x, weight, bias, options);
    }
    type D = burn::backend::Dispatch;
    Tensor::from_dispatch(match bias {
        Some(b) => <D as FastConvBackend>::fast_conv2d_bias(
            x.into_dispatch(),
            weight.into_dispatch(),
            b.into_dispatch(),
            options,
        ),
        None => {
            <D as FastConvBackend>::fast_conv2d(x.into_dispatch(), weight.into_dispatch(), options)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, TensorData};

    /// One case: input `[b, ci, h, w]`, weight `[co, ci/g, kh, kw]`, options, bias or not.
    struct Case {
        x: [usize; 4],
        co: usize,
        k: [usize; 2],
        options: ConvOptions<2>,
        bias: bool,
        x_grad: bool,
        w_grad: bool,
    }

    fn case(
        x: [usize; 4],
        co: usize,
        k: [usize; 2],
        stride: usize,
        pad: usize,
        dil: usize,
    ) -> Case {
        Case {
            x,
            co,
            k,
            options: ConvOptions::new([stride; 2], [pad; 2], [dil; 2], 1),
            bias: true,
            x_grad: true,
            w_grad: true,
        }
    }

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= rel * scale + 1e-6,
                "{what}[{i}]: {a} vs {b} (scale {scale})"
            );
        }
    }

    /// Forward and input / weight / bias gradients of [`conv2d`] equal Burn's convolution
    /// under autodiff, on burn-flex (and on LibTorch's CPU with the `tch` feature, and its
    /// CUDA where LibTorch sees a GPU: there cuDNN's convolutions run in TF32, whose 10-bit
    /// mantissa the tolerance allows for).
    fn check(c: Case) {
        #[cfg(feature = "tch")]
        {
            check_on(&c, Device::libtorch().autodiff(), 2e-5);
            if tch::Cuda::is_available() {
                #[allow(deprecated)] // burn-tch's CUDA device
                check_on(&c, Device::libtorch_cuda(0).autodiff(), 5e-3);
            }
        }
        check_on(&c, Device::flex().autodiff(), 2e-5);
    }

    fn check_on(c: &Case, device: Device, rel: f32) {
        device.seed(7);
        let groups = c.options.groups;
        let x0 = Tensor::<4>::random(c.x, Distribution::Normal(0.0, 1.0), &device);
        let w0 = Tensor::<4>::random(
            [c.co, c.x[1] / groups, c.k[0], c.k[1]],
            Distribution::Normal(0.0, 0.5),
            &device,
        );
        let b0 = Tensor::<1>::random([c.co], Distribution::Normal(0.0, 1.0), &device);
        let run = |fast: bool| {
            let x = if c.x_grad {
                x0.clone().require_grad()
            } else {
                x0.clone()
            };
            let w = if c.w_grad {
                w0.clone().require_grad()
            } else {
                w0.clone()
            };
            let b = c.bias.then(|| b0.clone().require_grad());
            let y = if fast {
                assert!(supports(&device));
                conv2d(x.clone(), w.clone(), b.clone(), c.options.clone())
            } else {
                burn::tensor::module::conv2d(x.clone(), w.clone(), b.clone(), c.options.clone())
            };
            // A fixed, non-uniform upstream gradient.
            let n = y.shape().num_elements();
            let r: Vec<f32> = (0..n).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
            let r = Tensor::<4>::from_data(TensorData::new(r, y.shape()), &device);
            let grads = (y.clone() * r).sum().backward();
            (
                values(y),
                x.grad(&grads).map(values),
                w.grad(&grads).map(values),
                b.and_then(|b| b.grad(&grads))
                    .map(|g| g.into_data().try_into_vec::<f32>().unwrap()),
            )
        };
        let (y, dx, dw, db) = run(true);
        let (y_ref, dx_ref, dw_ref, db_ref) = run(false);
        assert_close("y", &y, &y_ref, rel);
        assert_eq!(dx.is_some(), c.x_grad);
        assert_eq!(dw.is_some(), c.w_grad);
        assert_eq!(db.is_some(), c.bias);
        if let (Some(a), Some(b)) = (dx, dx_ref) {
            assert_close("dx", &a, &b, rel);
        }
        if let (Some(a), Some(b)) = (dw, dw_ref) {
            assert_close("dw", &a, &b, rel);
        }
        if let (Some(a), Some(b)) = (db, db_ref) {
            assert_close("db", &a, &b, rel);
        }
    }

    #[test]
    fn grads_3x3_stride1_padded() {
        check(case([2, 3, 8, 8], 4, [3, 3], 1, 1, 1));
    }

    #[test]
    fn grads_3x3_stride2_non_square() {
        check(case([3, 4, 9, 7], 5, [3, 3], 2, 1, 1));
    }

    #[test]
    fn grads_3x3_dilated() {
        check(case([2, 6, 10, 11], 4, [3, 3], 1, 2, 2));
    }

    #[test]
    fn grads_1x1_pointwise_and_strided() {
        check(case([2, 8, 5, 6], 6, [1, 1], 1, 0, 1));
        check(case([2, 4, 7, 7], 4, [1, 1], 2, 0, 1));
    }

    #[test]
    fn grads_7x7_stem() {
        check(case([2, 3, 16, 13], 4, [7, 7], 2, 3, 1));
    }

    #[test]
    fn grads_single_image_and_no_bias() {
        let mut c = case([1, 5, 6, 9], 3, [3, 2], 1, 1, 1);
        c.bias = false;
        check(c);
    }

    #[test]
    fn grads_asymmetric_padding() {
        let mut c = case([2, 3, 8, 9], 4, [3, 3], 2, 0, 1);
        c.options = ConvOptions::new_with_padding([2, 2], [(0, 1), (1, 0)], [1, 1], 1);
        check(c);
    }

    #[test]
    fn grads_groups() {
        let mut c = case([2, 4, 6, 6], 6, [3, 3], 1, 1, 1);
        c.options.groups = 2;
        check(c);
    }

    #[test]
    fn grads_constant_input_or_frozen_weight() {
        let mut c = case([4, 3, 8, 8], 8, [3, 3], 2, 1, 1);
        c.x_grad = false;
        check(c);
        let mut c = case([4, 3, 8, 8], 8, [3, 3], 2, 1, 1);
        c.w_grad = false;
        check(c);
    }

    #[test]
    fn inference_without_autodiff_matches_burn() {
        let device = Device::flex();
        let x = Tensor::<4>::random([2, 3, 9, 9], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 1.0), &device);
        let options = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
        let got = values(conv2d(x.clone(), w.clone(), None, options.clone()));
        let want = values(burn::tensor::module::conv2d(x, w, None, options));
        assert_close("y", &got, &want, 2e-5);
    }
}
