//! The summed negative log-likelihood of per-pixel class labels, fused, on burn-flex.
//!
//! A segmenter's loss is `−Σ log_softmax(logits)[target]` over the labelled pixels. Written with
//! Burn's operations it materialises the log-softmax of the whole `[B, C, H, W]` logits (an
//! exponential in the forward and another in the backward of `exp`), each on one thread on
//! burn-flex: 7 s of the segmenter's 43 s over 250 steps ran there alone (BENCHMARKS, Speed,
//! session 11). [`pixel_nll_sum`] computes the sum and its gradient `softmax − one-hot` in one
//! parallel pass over blocks of pixels each.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, TensorMetadata, backend_extension};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::flex_f32::{contiguous_f32, from_f32, values};

/// Pixels per parallel task.
const BLOCK: usize = 1024;

/// The channel each pixel of a `[B, H, W]` batch is labelled with, or none.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelLabels {
    /// `[B, H, W]` row-major: a channel index, or −1 for a pixel outside the loss.
    pub target: Vec<i32>,
}

/// `−Σ log softmax(logits)[target]` over the labelled pixels: `logits` `[B, C, H, W]`,
/// `labels` `B·H·W` targets. Returns `[1]`, differentiable in `logits`. burn-flex only: callers
/// check [`super::is_flex`] and use Burn's `log_softmax` elsewhere.
///
/// # Panics
/// When `labels` does not have `B·H·W` entries or a target is not below `C`.
pub fn pixel_nll_sum(logits: Tensor<4>, labels: Arc<PixelLabels>) -> Tensor<1> {
    let [b, c, h, w] = logits.dims();
    assert_eq!(labels.target.len(), b * h * w, "pixel_nll_sum: label count");
    assert!(
        labels.target.iter().all(|&t| t < c as i32),
        "pixel_nll_sum: a target is not below the {c} channels"
    );
    type D = burn::backend::Dispatch;
    Tensor::from_dispatch(<D as PixelNllBackend>::pixel_nll_sum(
        logits.into_dispatch(),
        labels,
    ))
}

/// The fused loss routed to the tensor's backend.
#[backend_extension(Flex, Autodiff)]
pub trait PixelNllBackend: Backend {
    /// `[B, C, H, W]` logits → `[1]` summed negative log-likelihood of `labels`.
    fn pixel_nll_sum(logits: FloatTensor<Self>, labels: Arc<PixelLabels>) -> FloatTensor<Self>;
    /// Its gradient with respect to the logits, given the `[1]` gradient of the sum.
    fn pixel_nll_grad(
        logits: FloatTensor<Self>,
        labels: Arc<PixelLabels>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// Per pixel of one block: log Σ exp over the channels (`x` `[C, P]` of one image, pixels
/// `start..start + n`).
fn block_lse(x: &[f32], c: usize, p: usize, start: usize, n: usize) -> Vec<f32> {
    let mut max = vec![f32::NEG_INFINITY; n];
    for ch in 0..c {
        let row = &x[ch * p + start..ch * p + start + n];
        for (m, &v) in max.iter_mut().zip(row) {
            *m = m.max(v);
        }
    }
    let mut sum = vec![0f32; n];
    for ch in 0..c {
        let row = &x[ch * p + start..ch * p + start + n];
        for ((s, &v), &m) in sum.iter_mut().zip(row).zip(&max) {
            *s += (v - m).exp();
        }
    }
    sum.iter().zip(&max).map(|(s, m)| s.ln() + m).collect()
}

/// `(image, first pixel, pixels)` of every block.
fn blocks(b: usize, p: usize) -> Vec<(usize, usize, usize)> {
    (0..b)
        .flat_map(|i| (0..p).step_by(BLOCK).map(move |s| (i, s, BLOCK.min(p - s))))
        .collect()
}

impl PixelNllBackend for Flex {
    fn pixel_nll_sum(logits: FlexTensor, labels: Arc<PixelLabels>) -> FlexTensor {
        let dtype = logits.dtype();
        let dims = logits.shape().to_vec();
        let (b, c, p) = (dims[0], dims[1], dims[2] * dims[3]);
        let x = contiguous_f32(logits);
        let x = values(&x);
        let total: f64 = blocks(b, p)
            .into_par_iter()
            .map(|(i, s, n)| {
                let img = &x[i * c * p..(i + 1) * c * p];
                let targets = &labels.target[i * p + s..i * p + s + n];
                if targets.iter().all(|&t| t < 0) {
                    return 0.0;
                }
                let lse = block_lse(img, c, p, s, n);
                targets
                    .iter()
                    .zip(&lse)
                    .enumerate()
                    .filter(|(_, (t, _))| **t >= 0)
                    .map(|(k, (&t, &l))| f64::from(l - img[t as usize * p + s + k]))
                    .sum()
            })
            .sum();
        from_f32(vec![total as f32], vec![1], dtype)
    }

    fn pixel_nll_grad(
        logits: FlexTensor,
        labels: Arc<PixelLabels>,
        grad: FlexTensor,
    ) -> FlexTensor {
        let dtype = logits.dtype();
        let dims = logits.shape().to_vec();
        let (b, c, p) = (dims[0], dims[1], dims[2] * dims[3]);
        let g = values(&contiguous_f32(grad))[0];
        let x = contiguous_f32(logits);
        let x = values(&x);
        // Each block's gradient, then scattered into the `[B, C, H, W]` layout per image.
        let parts: Vec<Vec<f32>> = blocks(b, p)
            .into_par_iter()
            .map(|(i, s, n)| {
                let img = &x[i * c * p..(i + 1) * c * p];
                let targets = &labels.target[i * p + s..i * p + s + n];
                let mut d = vec![0f32; c * n];
                if targets.iter().all(|&t| t < 0) {
                    return d;
                }
                let lse = block_lse(img, c, p, s, n);
                for ch in 0..c {
                    let row = &img[ch * p + s..ch * p + s + n];
                    let out = &mut d[ch * n..(ch + 1) * n];
                    for k in 0..n {
                        let t = targets[k];
                        if t >= 0 {
                            let onehot = if t as usize == ch { 1.0 } else { 0.0 };
                            out[k] = g * ((row[k] - lse[k]).exp() - onehot);
                        }
                    }
                }
                d
            })
            .collect();
        let mut out = vec![0f32; b * c * p];
        for ((i, s, n), d) in blocks(b, p).into_iter().zip(parts) {
            for ch in 0..c {
                let at = (i * c + ch) * p + s;
                out[at..at + n].copy_from_slice(&d[ch * n..(ch + 1) * n]);
            }
        }
        from_f32(out, dims, dtype)
    }
}

#[derive(Debug)]
struct PixelNllBackward;

impl<B: PixelNllBackend> Backward<B, 1> for PixelNllBackward {
    /// The logits and labels of the forward.
    type State = (FloatTensor<B>, Arc<PixelLabels>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        if let Some(parent) = ops.parents[0].as_ref() {
            let (logits, labels) = ops.state;
            grads.register::<B>(parent.id, B::pixel_nll_grad(logits, labels, grad));
        }
    }
}

impl<B: PixelNllBackend, C: CheckpointStrategy> PixelNllBackend for Autodiff<B, C> {
    fn pixel_nll_sum(logits: FloatTensor<Self>, labels: Arc<PixelLabels>) -> FloatTensor<Self> {
        match PixelNllBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = logits.into_primitive();
                let y = B::pixel_nll_sum(x.clone(), labels.clone());
                prep.finish((x, labels), y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::pixel_nll_sum(logits.into_primitive(), labels))
            }
        }
    }

    fn pixel_nll_grad(
        _: FloatTensor<Self>,
        _: Arc<PixelLabels>,
        _: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        unreachable!("the gradient is taken by the inner backend")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Device, Distribution, Int, TensorData};

    /// The sum and its gradient equal `−Σ log_softmax(x)[t]` over the labelled pixels written
    /// with Burn's operations, with images whose pixel count is not a multiple of the block.
    #[test]
    fn matches_log_softmax_and_gather() {
        let device = Device::flex().autodiff();
        let (b, c, h, w) = (2, 5, 37, 41);
        let x0 = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 3.0), &device);
        let target: Vec<i32> = (0..b * h * w)
            .map(|i| if i % 7 == 3 { -1 } else { (i * 31 % c) as i32 })
            .collect();
        let labels = Arc::new(PixelLabels {
            target: target.clone(),
        });

        let x = x0.clone().detach().require_grad();
        let ours = pixel_nll_sum(x.clone(), labels).mul_scalar(0.7);
        let g = ours.clone().backward();
        let g_ours = x.grad(&g).unwrap();

        let x = x0.detach().require_grad();
        let safe: Vec<i64> = target.iter().map(|&t| i64::from(t.max(0))).collect();
        let mask: Vec<f32> = target.iter().map(|&t| f32::from(t >= 0)).collect();
        let safe = Tensor::<4, Int>::from_data(TensorData::new(safe, [b, 1, h, w]), &device);
        let mask = Tensor::<4>::from_data(TensorData::new(mask, [b, 1, h, w]), &device);
        let theirs = log_softmax(x.clone(), 1)
            .gather(1, safe)
            .mul(mask)
            .sum()
            .neg()
            .mul_scalar(0.7);
        let g = theirs.clone().backward();
        let g_theirs = x.grad(&g).unwrap();

        let (a, e) = (ours.into_scalar::<f32>(), theirs.into_scalar::<f32>());
        assert!((a - e).abs() <= 1e-5 * e.abs(), "{a} vs {e}");
        g_ours.into_data().assert_approx_eq::<f32>(
            &g_theirs.into_data(),
            burn::tensor::Tolerance::absolute(1e-6),
        );
    }
}
