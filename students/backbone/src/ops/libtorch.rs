//! The LibTorch kernels: forward by `torch.conv2d`, backward by LibTorch's own
//! `convolution_backward` (cuDNN / oneDNN), instead of Burn's generic rules.
//!
//! tch 0.22 does not bind `convolution_backward`; `libtorch_shim.cpp` (compiled by build.rs)
//! calls it as PyTorch's autograd does, asking only for the gradients Burn needs. Asymmetric
//! padding, which `torch.conv2d` does not take, keeps the earlier route: the forward records a
//! one-node LibTorch autograd graph (pad, then convolve) on detached leaves of the inputs, and
//! the backward runs LibTorch's autograd engine on it with the root `<y, dy>`, whose gradient
//! with respect to `y` is `dy` (`run_backward` seeds roots with ones). That root costs a dot
//! product over the output and a scaled copy of `dy` per convolution, which the direct call
//! does not (BENCHMARKS, Speed, session 12). The shim's other function, PyTorch's fused AdamW
//! step, is wrapped here too ([`fused_adamw_`], for `adamw.rs`).

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

/// What a direct `convolution_backward` needs.
struct Direct {
    /// The forward's input and weight (Burn's handles: shared, so never written in place).
    x: TchTensor,
    w: TchTensor,
    /// The bias length, when there is a bias.
    bias: Option<i64>,
    options: ConvOptions<2>,
}

/// What one forward left for its backward.
enum Saved {
    Direct(Direct),
    Graph(Graph),
}

/// What the LibTorch backward needs (taken by the one backward call).
#[derive(Clone)]
pub struct TchSaved(Arc<Mutex<Option<Saved>>>);

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
        if !options.is_asymmetric() {
            let y = Self::conv2d_forward(x.clone(), weight.clone(), bias.clone(), options.clone());
            let bias = bias.map(|b| b.tensor.size()[0]);
            let saved = Saved::Direct(Direct {
                x,
                w: weight,
                bias,
                options,
            });
            return (y, TchSaved(Arc::new(Mutex::new(Some(saved)))));
        }
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
        (
            out,
            TchSaved(Arc::new(Mutex::new(Some(Saved::Graph(graph))))),
        )
    }

    fn conv2d_backward(saved: TchSaved, grad: TchTensor, mask: GradMask) -> ConvGrads<LibTorch> {
        let saved = saved
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("the convolution backward runs once per forward");
        let graph = match saved {
            Saved::Direct(d) => return direct_backward(d, &grad, mask),
            Saved::Graph(g) => g,
        };
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

mod ffi {
    use std::os::raw::{c_char, c_int};

    use torch_sys::C_tensor;

    unsafe extern "C" {
        pub fn ovkd_conv2d_backward(
            grad: *const C_tensor,
            input: *const C_tensor,
            weight: *const C_tensor,
            bias_len: i64,
            stride: *const i64,
            padding: *const i64,
            dilation: *const i64,
            groups: i64,
            mask: *const c_int,
            out: *mut *mut C_tensor,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;

        pub fn ovkd_fused_adamw_(
            param: *mut C_tensor,
            grad: *const C_tensor,
            exp_avg: *mut C_tensor,
            exp_avg_sq: *mut C_tensor,
            step: f64,
            lr: f64,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
    }
}

/// Runs a shim function with an error buffer; LibTorch's message on failure.
pub(crate) fn try_shim(
    f: impl FnOnce(*mut std::os::raw::c_char, usize) -> std::os::raw::c_int,
) -> Result<(), String> {
    // On the stack: the shim runs for every convolution backward and every parameter's update.
    let mut err = [0 as std::os::raw::c_char; 1024];
    if f(err.as_mut_ptr(), err.len()) != 0 {
        // SAFETY: the shim writes a NUL-terminated message into the buffer on failure.
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) };
        return Err(msg.to_string_lossy().into_owned());
    }
    Ok(())
}

/// [`try_shim`] for the kernels: panics with LibTorch's message on failure (as tch's own
/// infallible bindings do).
fn call_shim(what: &str, f: impl FnOnce(*mut std::os::raw::c_char, usize) -> std::os::raw::c_int) {
    if let Err(msg) = try_shim(f) {
        panic!("LibTorch {what}: {msg}");
    }
}

/// LibTorch's `convolution_backward` for the gradients `mask` asks for.
fn direct_backward(d: Direct, grad: &TchTensor, mask: GradMask) -> ConvGrads<LibTorch> {
    let o = &d.options;
    let stride = o.stride.map(|v| v as i64);
    let padding = o.padding_begin().map(|v| v as i64);
    let dilation = o.dilation.map(|v| v as i64);
    let want = [mask.input, mask.weight, mask.bias && d.bias.is_some()];
    let flags = want.map(std::os::raw::c_int::from);
    let mut out: [*mut torch_sys::C_tensor; 3] = [std::ptr::null_mut(); 3];
    call_shim("convolution_backward", |err, len| {
        // SAFETY: the tensor handles live for the call; `out` has room for three handles, and
        // the shim writes a fresh handle exactly where `flags` is set.
        unsafe {
            ffi::ovkd_conv2d_backward(
                grad.tensor.as_ptr(),
                d.x.tensor.as_ptr(),
                d.w.tensor.as_ptr(),
                d.bias.unwrap_or(-1),
                stride.as_ptr(),
                padding.as_ptr(),
                dilation.as_ptr(),
                o.groups as i64,
                flags.as_ptr(),
                out.as_mut_ptr(),
                err,
                len,
            )
        }
    });
    // SAFETY: each non-null pointer is a handle the shim allocated for us to own.
    let [input, weight, bias] =
        out.map(|p| (!p.is_null()).then(|| TchTensor::new(unsafe { tch::Tensor::from_ptr(p) })));
    ConvGrads {
        input,
        weight,
        bias,
    }
}

/// One AdamW step of one parameter in place, by PyTorch's fused kernel (`fused=True`); `step`
/// is 1-based. `param`, `exp_avg` and `exp_avg_sq` must be exclusively held.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fused_adamw_(
    param: &mut tch::Tensor,
    grad: &tch::Tensor,
    exp_avg: &mut tch::Tensor,
    exp_avg_sq: &mut tch::Tensor,
    step: f64,
    lr: f64,
    betas: (f64, f64),
    weight_decay: f64,
    eps: f64,
) {
    call_shim("_fused_adamw_", |err, len| {
        // SAFETY: the handles live for the call; the kernel writes into the three tensors'
        // storage, which the caller holds alone.
        unsafe {
            ffi::ovkd_fused_adamw_(
                param.as_mut_ptr(),
                grad.as_ptr(),
                exp_avg.as_mut_ptr(),
                exp_avg_sq.as_mut_ptr(),
                step,
                lr,
                betas.0,
                betas.1,
                weight_decay,
                eps,
                err,
                len,
            )
        }
    });
}
