//! Per-backend convolution kernels: a forward that can keep what its backward needs, and that
//! backward. [`super::extension`] builds the differentiable operation on top of them.

use burn::backend::Backend;
use burn::backend::TensorMetadata;
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, TensorData};

use super::conv2d_cpu::{self, ConvGeometry};

/// Which gradients a backward pass must produce: input, weight, bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GradMask {
    /// `∂L/∂x` is needed.
    pub input: bool,
    /// `∂L/∂W` is needed.
    pub weight: bool,
    /// `∂L/∂b` is needed.
    pub bias: bool,
}

/// The gradients a backward pass produced; `None` where the mask did not ask.
pub struct ConvGrads<B: Backend> {
    /// `[B, Ci, H, W]`
    pub input: Option<FloatTensor<B>>,
    /// `[Co, Ci/g, kh, kw]`
    pub weight: Option<FloatTensor<B>>,
    /// `[Co]`
    pub bias: Option<FloatTensor<B>>,
}

/// A backend's own 2-D convolution, forward and backward.
pub trait ConvKernels: Backend {
    /// What the forward keeps for the backward.
    type Saved: Clone + Send + core::fmt::Debug + 'static;

    /// `x`: `[B, Ci, H, W]`, `weight`: `[Co, Ci/g, kh, kw]`, `bias`: `[Co]` → `[B, Co, oh, ow]`.
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// The forward, also returning what [`Self::conv2d_backward`] needs to produce the gradients
    /// in `mask`.
    fn conv2d_forward_saving(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: ConvOptions<2>,
        mask: GradMask,
    ) -> (FloatTensor<Self>, Self::Saved);

    /// The gradients in `mask`, from the output gradient `grad` (`[B, Co, oh, ow]`).
    fn conv2d_backward(
        saved: Self::Saved,
        grad: FloatTensor<Self>,
        mask: GradMask,
    ) -> ConvGrads<Self>;
}

/// What burn-flex's backward needs: the forward's inputs and options.
#[derive(Debug, Clone)]
pub struct FlexSaved {
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: ConvOptions<2>,
}

/// The geometry of `x` (`[B, Ci, H, W]`) convolved with `weight` (`[Co, Ci/g, kh, kw]`).
fn geometry(x: &[usize], w: &[usize], options: &ConvOptions<2>) -> ConvGeometry {
    let out = |i: usize| {
        let (pb, pe) = options.padding[i];
        let span = options.dilation[i] * (w[2 + i] - 1) + 1;
        (x[2 + i] + pb + pe).saturating_sub(span) / options.stride[i] + 1
    };
    ConvGeometry {
        batch: x[0],
        channels_in: x[1],
        in_hw: [x[2], x[3]],
        channels_out: w[0],
        kernel: [w[2], w[3]],
        stride: options.stride,
        pad_begin: options.padding_begin(),
        dilation: options.dilation,
        groups: options.groups,
        out_hw: [out(0), out(1)],
    }
}

/// The tensor with a contiguous, offset-free-or-not layout `as_slice` accepts.
fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    }
}

fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("a contiguous float32 flex tensor")
}

fn flex(data: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// Whether the fast kernels apply: float32 everywhere and a spatially valid convolution.
fn fast_path(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: Option<&FlexTensor>,
    options: &ConvOptions<2>,
) -> bool {
    let xs = x.shape();
    let ws = w.shape();
    x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && bias.is_none_or(|b| b.dtype() == DType::F32)
        && xs.num_dims() == 4
        && ws.num_dims() == 4
        && xs[1] == ws[1] * options.groups
        && (0..2).all(|i| {
            xs[2 + i] + options.padding[i].0 + options.padding[i].1
                >= options.dilation[i] * (ws[2 + i] - 1) + 1
        })
}

impl ConvKernels for Flex {
    type Saved = FlexSaved;

    fn conv2d_forward(
        x: FlexTensor,
        weight: FlexTensor,
        bias: Option<FlexTensor>,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        if !fast_path(&x, &weight, bias.as_ref(), &options) {
            return <Flex as ModuleOps<Flex>>::conv2d(x, weight, bias, options);
        }
        let (x, weight) = (contiguous(x), contiguous(weight));
        let bias = bias.map(contiguous);
        let g = geometry(&x.shape(), &weight.shape(), &options);
        let y = conv2d_cpu::conv2d_forward(f32s(&x), f32s(&weight), bias.as_ref().map(f32s), &g);
        flex(y, [g.batch, g.channels_out, g.out_hw[0], g.out_hw[1]])
    }

    fn conv2d_forward_saving(
        x: FlexTensor,
        weight: FlexTensor,
        bias: Option<FlexTensor>,
        options: ConvOptions<2>,
        _mask: GradMask,
    ) -> (FlexTensor, FlexSaved) {
        let (x, weight) = (contiguous(x), contiguous(weight));
        let saved = FlexSaved {
            x: x.clone(),
            weight: weight.clone(),
            bias: bias.clone(),
            options: options.clone(),
        };
        (Self::conv2d_forward(x, weight, bias, options), saved)
    }

    fn conv2d_backward(saved: FlexSaved, grad: FlexTensor, mask: GradMask) -> ConvGrads<Flex> {
        let FlexSaved {
            x,
            weight,
            bias,
            options,
        } = saved;
        if !fast_path(&x, &weight, bias.as_ref(), &options) || grad.dtype() != DType::F32 {
            // Burn's generic rules, exactly what the autodiff backend would have run.
            let gb = |bias: FlexTensor| {
                <Flex as ModuleOps<Flex>>::conv2d_bias_backward(x.clone(), bias, grad.clone())
            };
            return ConvGrads {
                input: mask.input.then(|| {
                    <Flex as ModuleOps<Flex>>::conv2d_x_backward(
                        x.clone(),
                        weight.clone(),
                        grad.clone(),
                        options.clone(),
                    )
                }),
                weight: mask.weight.then(|| {
                    <Flex as ModuleOps<Flex>>::conv2d_weight_backward(
                        x.clone(),
                        weight.clone(),
                        grad.clone(),
                        options.clone(),
                    )
                }),
                bias: if mask.bias { bias.map(gb) } else { None },
            };
        }
        let grad = contiguous(grad);
        let ws = weight.shape();
        let g = geometry(&x.shape(), &ws, &options);
        let dy = f32s(&grad);
        let (input, weight_grad) = rayon::join(
            || {
                mask.input.then(|| {
                    let dx = conv2d_cpu::conv2d_input_grad(f32s(&weight), dy, &g);
                    flex(dx, [g.batch, g.channels_in, g.in_hw[0], g.in_hw[1]])
                })
            },
            || {
                mask.weight.then(|| {
                    let dw = conv2d_cpu::conv2d_weight_grad(f32s(&x), dy, &g);
                    flex(dw, [ws[0], ws[1], ws[2], ws[3]])
                })
            },
        );
        let bias = (mask.bias && bias.is_some()).then(|| {
            let db = conv2d_cpu::conv2d_bias_grad(dy, &g);
            FlexTensor::from_data(TensorData::new(db, [g.channels_out]))
        });
        ConvGrads {
            input,
            weight: weight_grad,
            bias,
        }
    }
}
