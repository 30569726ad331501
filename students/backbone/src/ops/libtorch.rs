//! The LibTorch kernels: forward by `torch.conv2d`, backward by LibTorch's own convolution
//! backward (cuDNN / oneDNN), instead of Burn's generic rules.
//!
//! tch 0.22 does not bind `convolution_backward`, so the forward records a one-node LibTorch
//! autograd graph on detached leaves of the inputs, and the backward runs LibTorch's autograd
//! engine on it: `run_backward` seeds the roots with ones, so the root is `<y, dy>`, whose
//! gradient with respect to `y` is `dy`. LibTorch then calls the same `convolution_backward`
//! PyTorch's `loss.backward()` would, asking only for the gradients Burn needs.

use std::sync::{Arc, Mutex};

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use burn::tensor::ops::ConvOptions;

use super::kernels::{ConvGrads, ConvKernels, GradMask};

/// Whether `device` is LibTorch's, with or without autodiff.
pub fn is_libtorch(device: &burn::tensor::Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::LibTorch(_)
    )
}

/// The recorded LibTorch graph of one forward, consumed by its backward.
struct Graph {
    /// Burn's handles on the inputs: while they live, burn-tch never writes into this storage
    /// in place, which LibTorch's saved tensors share.
    _inputs: (TchTensor, TchTensor, Option<TchTensor>),
    /// The autograd leaves, in the order input, weight, bias; `None` where no gradient is
    /// needed.
    leaves: [Option<tch::Tensor>; 3],
    /// The graph's output (Burn got a detached alias of it).
    y: tch::Tensor,
}

/// What the LibTorch backward needs: the recorded graph (taken by the one backward call).
#[derive(Clone)]
pub struct TchSaved(Arc<Mutex<Option<Graph>>>);

impl core::fmt::Debug for TchSaved {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TchSaved")
    }
}

/// `torch.conv2d` with Burn's `(begin, end)` padding: symmetric padding goes to the
/// convolution, asymmetric padding is applied to the input first (inside the graph, so the
/// input gradient comes back cropped).
fn conv(
    x: &tch::Tensor,
    w: &tch::Tensor,
    b: Option<&tch::Tensor>,
    options: &ConvOptions<2>,
) -> tch::Tensor {
    let stride = options.stride.map(|v| v as i64);
    let dilation = options.dilation.map(|v| v as i64);
    let groups = options.groups as i64;
    if options.is_asymmetric() {
        let [(t, bo), (l, r)] = options.padding;
        let xp = x.constant_pad_nd([l as i64, r as i64, t as i64, bo as i64]);
        tch::Tensor::conv2d(&xp, w, b, stride, [0, 0], dilation, groups)
    } else {
        let padding = options.padding_begin().map(|v| v as i64);
        tch::Tensor::conv2d(x, w, b, stride, padding, dilation, groups)
    }
}

impl ConvKernels for LibTorch {
    type Saved = TchSaved;

    fn conv2d_forward(
        x: TchTensor,
        weight: TchTensor,
        bias: Option<TchTensor>,
        options: ConvOptions<2>,
    ) -> TchTensor {
        let _no_grad = tch::no_grad_guard();
        TchTensor::new(conv(
            &x.tensor,
            &weight.tensor,
            bias.as_ref().map(|b| &b.tensor),
            &options,
        ))
    }

    fn conv2d_forward_saving(
        x: TchTensor,
        weight: TchTensor,
        bias: Option<TchTensor>,
        options: ConvOptions<2>,
        mask: GradMask,
    ) -> (TchTensor, TchSaved) {
        let leaf = |t: &TchTensor, grad: bool| t.tensor.detach().set_requires_grad(grad);
        let xl = leaf(&x, mask.input);
        let wl = leaf(&weight, mask.weight);
        let bl = bias.as_ref().map(|b| leaf(b, mask.bias));
        let y = tch::with_grad(|| conv(&xl, &wl, bl.as_ref(), &options));
        let out = TchTensor::new(y.detach());
        let leaves = [
            mask.input.then_some(xl),
            mask.weight.then_some(wl),
            bl.filter(|_| mask.bias),
        ];
        let graph = Graph {
            _inputs: (x, weight, bias),
            leaves,
            y,
        };
        (out, TchSaved(Arc::new(Mutex::new(Some(graph)))))
    }

    fn conv2d_backward(saved: TchSaved, grad: TchTensor, mask: GradMask) -> ConvGrads<LibTorch> {
        let graph = saved
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("the convolution backward runs once per forward");
        let wanted = [mask.input, mask.weight, mask.bias];
        let inputs: Vec<&tch::Tensor> = graph
            .leaves
            .iter()
            .zip(wanted)
            .filter_map(|(leaf, want)| leaf.as_ref().filter(|_| want))
            .collect();
        let mut out: [Option<TchTensor>; 3] = [None, None, None];
        if !inputs.is_empty() {
            // A scalar root, so that the engine's seed (ones) is one element: <y, dy>, whose
            // gradient with respect to y is dy. The dot product of the flattened tensors reads
            // each once and writes nothing; `y ⊙ dy` as the root cost three passes over the
            // output (the product, the seed, and its backward) per convolution.
            let root = tch::with_grad(|| {
                if graph.y.is_contiguous() && grad.tensor.is_contiguous() {
                    graph.y.reshape([-1]).dot(&grad.tensor.reshape([-1]))
                } else {
                    (&graph.y * &grad.tensor).sum(None::<tch::Kind>)
                }
            });
            let mut grads = tch::Tensor::run_backward(&[root], &inputs, false, false).into_iter();
            for (i, leaf) in graph.leaves.iter().enumerate() {
                if leaf.is_some() && wanted[i] {
                    out[i] = grads.next().map(TchTensor::new);
                }
            }
        }
        let [input, weight, bias] = out;
        ConvGrads {
            input,
            weight,
            bias,
        }
    }
}
