//! Training-mode batch norm with its own kernels on burn-flex and LibTorch.
//!
//! Burn's generic `batch_norm_train` and its backward swap the batch and channel axes (a copy),
//! then reduce each channel's row on one thread. In a profile of the segmenter's training step
//! on burn-flex, half the wall time ran on the main thread alone, and batch norm was the largest
//! part of it (6.6 s of 45 s over 250 steps; BENCHMARKS, Speed, session 11). [`batch_norm`]
//! computes the same statistics, output and gradients one channel (or one `[B, C]` plane) per
//! task.
//!
//! On LibTorch Burn's generic form is about thirty element-wise kernels per layer, forward and
//! backward, each a pass over the activation; on the GPU the ResNet-50-FPN detector's step took
//! twice torchvision's (BENCHMARKS, Speed, session 12). With the `tch` feature the same four
//! kernels are LibTorch's: the statistics by `var_mean`, the output by inference-mode
//! `batch_norm` on them, and on CUDA the gradients by the two kernels PyTorch's
//! `SyncBatchNorm` backward runs (`batch_norm_backward_reduce` / `_elemt`), a fused pass each.
//! Other backends, and inference, use Burn's own [`BatchNorm::forward`].

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, TensorMetadata, backend_extension};
use burn::nn::BatchNorm;
use burn::tensor::{Slice, Tensor};
use rayon::prelude::*;

use super::flex_f32::{contiguous_f32, from_f32, values};

/// `bn.forward(x)` for `x` `[B, C, H, W]`: in training (an autodiff device and `bn` not
/// frozen) on burn-flex or LibTorch, this module's kernels, with the running statistics updated
/// exactly as Burn does (momentum, biased variance); otherwise Burn's own forward.
pub fn batch_norm(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    let device = x.device();
    if !(has_kernels(&device) && device.is_autodiff() && bn.training.is_enabled()) {
        return bn.forward(x);
    }
    let [_, c, _, _] = x.dims();
    type D = burn::backend::Dispatch;
    let stats: Tensor<2> = Tensor::from_dispatch(<D as BatchNormBackend>::bn_stats(
        x.clone().detach().into_dispatch(),
    ));
    let out = Tensor::from_dispatch(<D as BatchNormBackend>::bn_train(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        stats.clone().into_dispatch(),
        bn.epsilon,
    ));
    let mean = stats.clone().slice([0..1, 0..c]).reshape([c]);
    let var = stats.slice([1..2, 0..c]).reshape([c]);
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    let m = bn.momentum;
    bn.running_mean.update(
        running_mean
            .mul_scalar(1.0 - m)
            .add(mean.mul_scalar(m))
            .detach(),
    );
    bn.running_var.update(
        running_var
            .mul_scalar(1.0 - m)
            .add(var.mul_scalar(m))
            .detach(),
    );
    out
}

/// Whether `device`'s backend implements [`BatchNormBackend`]: burn-flex, and LibTorch with the
/// `tch` feature.
fn has_kernels(device: &burn::tensor::Device) -> bool {
    #[cfg(feature = "tch")]
    if super::libtorch::is_libtorch(device) {
        return true;
    }
    super::is_flex(device)
}

/// Training-mode batch norm routed to the tensor's backend. `stats` `[2, C]` are `x`'s own
/// (from [`Self::bn_stats`]), computed once per layer and step: they get no gradient of their
/// own, the input gradient accounts for them.
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait BatchNormBackend: Backend {
    /// `x` `[B, C, ...]` → `[2, C]`: each channel's mean and biased variance.
    fn bn_stats(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `x` `[B, C, ...]` normalised by its batch statistics `stats`, times `gamma` `[C]`, plus
    /// `beta` `[C]`; differentiable in `x`, `gamma` and `beta`.
    fn bn_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
    /// `[2, C]`: the gradients of [`Self::bn_train`] with respect to `gamma` (Σ g · x̂) and
    /// `beta` (Σ g), given the output's `grad`.
    fn bn_grad_affine(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
    /// The gradient with respect to `x`, from the same sums (`affine`, from
    /// [`Self::bn_grad_affine`]).
    fn bn_grad_input(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        affine: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

fn sizes(dims: &[usize]) -> (usize, usize, usize) {
    let (b, c) = (dims[0], dims[1]);
    (b, c, dims[2..].iter().product())
}

/// Per channel `(mean, 1 / sqrt(var + eps))` from a `[2, C]` statistics tensor.
fn mean_inv(stats: FlexTensor, eps: f64) -> Vec<(f64, f64)> {
    let st = contiguous_f32(stats);
    let st = values(&st);
    let c = st.len() / 2;
    (0..c)
        .map(|ch| {
            (
                f64::from(st[ch]),
                1.0 / (f64::from(st[c + ch]) + eps).sqrt(),
            )
        })
        .collect()
}

/// Per channel: mean and biased variance (two passes, accumulated in f64).
fn channel_stats(x: &[f32], b: usize, c: usize, s: usize) -> Vec<(f64, f64)> {
    let n = (b * s).max(1) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = (0..b).map(|i| &x[(i * c + ch) * s..(i * c + ch + 1) * s]);
            let mean = planes
                .clone()
                .map(|p| p.iter().map(|&v| f64::from(v)).sum::<f64>())
                .sum::<f64>()
                / n;
            let var = planes
                .map(|p| {
                    p.iter()
                        .map(|&v| (f64::from(v) - mean).powi(2))
                        .sum::<f64>()
                })
                .sum::<f64>()
                / n;
            (mean, var)
        })
        .collect()
}

impl BatchNormBackend for Flex {
    fn bn_stats(x: FlexTensor) -> FlexTensor {
        let dtype = x.dtype();
        let dims = x.shape().to_vec();
        let x = contiguous_f32(x);
        let (b, c, s) = sizes(&dims);
        let st = channel_stats(values(&x), b, c, s);
        let mut out: Vec<f32> = st.iter().map(|&(m, _)| m as f32).collect();
        out.extend(st.iter().map(|&(_, v)| v as f32));
        from_f32(out, vec![2, c], dtype)
    }

    fn bn_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        stats: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        let dtype = x.dtype();
        let dims = x.shape().to_vec();
        let (x, gamma, beta) = (
            contiguous_f32(x),
            contiguous_f32(gamma),
            contiguous_f32(beta),
        );
        let (x, gamma, beta) = (values(&x), values(&gamma), values(&beta));
        let (_, c, s) = sizes(&dims);
        // Scale and shift per channel, so the plane loop is one multiply-add.
        let affine: Vec<(f32, f32)> = mean_inv(stats, epsilon)
            .iter()
            .enumerate()
            .map(|(ch, &(mean, inv))| {
                let k = f64::from(gamma[ch]) * inv;
                (k as f32, (f64::from(beta[ch]) - mean * k) as f32)
            })
            .collect();
        let mut out = vec![0f32; x.len()];
        if s > 0 {
            out.par_chunks_mut(s)
                .zip(x.par_chunks(s))
                .enumerate()
                .for_each(|(plane, (o, xp))| {
                    let (k, d) = affine[plane % c];
                    for (o, &v) in o.iter_mut().zip(xp) {
                        *o = v * k + d;
                    }
                });
        }
        from_f32(out, dims, dtype)
    }

    fn bn_grad_affine(
        x: FlexTensor,
        grad: FlexTensor,
        stats: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        let dtype = x.dtype();
        let dims = x.shape().to_vec();
        let (x, g) = (contiguous_f32(x), contiguous_f32(grad));
        let (x, g) = (values(&x), values(&g));
        let (b, c, s) = sizes(&dims);
        let sums: Vec<(f64, f64)> = mean_inv(stats, epsilon)
            .into_par_iter()
            .enumerate()
            .map(|(ch, (mean, inv))| {
                let (mut sg, mut sgx) = (0f64, 0f64);
                for i in 0..b {
                    let r = (i * c + ch) * s..(i * c + ch + 1) * s;
                    for (&xv, &gv) in x[r.clone()].iter().zip(&g[r]) {
                        sg += f64::from(gv);
                        sgx += f64::from(gv) * (f64::from(xv) - mean) * inv;
                    }
                }
                (sgx, sg)
            })
            .collect();
        let mut out: Vec<f32> = sums.iter().map(|&(sgx, _)| sgx as f32).collect();
        out.extend(sums.iter().map(|&(_, sg)| sg as f32));
        from_f32(out, vec![2, c], dtype)
    }

    fn bn_grad_input(
        x: FlexTensor,
        gamma: FlexTensor,
        grad: FlexTensor,
        stats: FlexTensor,
        affine: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        let dtype = x.dtype();
        let dims = x.shape().to_vec();
        let (x, gamma, g, affine) = (
            contiguous_f32(x),
            contiguous_f32(gamma),
            contiguous_f32(grad),
            contiguous_f32(affine),
        );
        let (x, gamma, g, affine) = (values(&x), values(&gamma), values(&g), values(&affine));
        let (b, c, s) = sizes(&dims);
        let n = (b * s).max(1) as f64;
        // dx = γ/σ · (g − mean(g) − x̂ · mean(g · x̂)), as a · g + k · x + d per channel.
        let coef: Vec<(f32, f32, f32)> = mean_inv(stats, epsilon)
            .iter()
            .enumerate()
            .map(|(ch, &(mean, inv))| {
                let (sgx, sg) = (f64::from(affine[ch]), f64::from(affine[c + ch]));
                let a = f64::from(gamma[ch]) * inv;
                let k = -a * inv * sgx / n;
                let d = -a * sg / n - k * mean;
                (a as f32, k as f32, d as f32)
            })
            .collect();
        let mut out = vec![0f32; x.len()];
        if s > 0 {
            out.par_chunks_mut(s)
                .zip(x.par_chunks(s).zip(g.par_chunks(s)))
                .enumerate()
                .for_each(|(plane, (o, (xp, gp)))| {
                    let (a, k, d) = coef[plane % c];
                    for ((o, &xv), &gv) in o.iter_mut().zip(xp).zip(gp) {
                        *o = a * gv + k * xv + d;
                    }
                });
        }
        from_f32(out, dims, dtype)
    }
}

#[derive(Debug)]
struct BatchNormTrainBackward;

impl<B: BatchNormBackend> Backward<B, 3> for BatchNormTrainBackward {
    /// `x`, `gamma`, the statistics and epsilon of the forward.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, gamma, stats, eps) = ops.state;
        let [px, pg, pb] = ops.parents;
        // The input gradient needs the same per-channel sums as gamma's and beta's.
        let affine = B::bn_grad_affine(x.clone(), grad.clone(), stats.clone(), eps);
        let c = gamma.shape()[0];
        let row = |r: usize| {
            let t = B::float_slice(affine.clone(), &[Slice::from(r..r + 1), Slice::from(0..c)]);
            B::float_reshape(t, [c].into())
        };
        if let Some(p) = pg {
            grads.register::<B>(p.id, row(0));
        }
        if let Some(p) = pb {
            grads.register::<B>(p.id, row(1));
        }
        if let Some(p) = px {
            grads.register::<B>(
                p.id,
                B::bn_grad_input(x, gamma, grad, stats, affine.clone(), eps),
            );
        }
    }
}

impl<B: BatchNormBackend, C: CheckpointStrategy> BatchNormBackend for Autodiff<B, C> {
    fn bn_stats(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::bn_stats(x.into_primitive()))
    }

    fn bn_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let stats = stats.into_primitive();
        match BatchNormTrainBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, gamma) = (x.into_primitive(), gamma.into_primitive());
                let y = B::bn_train(
                    x.clone(),
                    gamma.clone(),
                    beta.into_primitive(),
                    stats.clone(),
                    epsilon,
                );
                prep.finish((x, gamma, stats, epsilon), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::bn_train(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                stats,
                epsilon,
            )),
        }
    }

    fn bn_grad_affine(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: f64,
    ) -> FloatTensor<Self> {
        unreachable!("the gradients are taken by the inner backend")
    }

    fn bn_grad_input(
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: FloatTensor<Self>,
        _: f64,
    ) -> FloatTensor<Self> {
        unreachable!("the gradients are taken by the inner backend")
    }
}

#[cfg(feature = "tch")]
mod libtorch {
    use burn::backend::LibTorch;
    use burn::backend::libtorch::TchTensor;
    use tch::{Kind, Tensor as T};

    use super::BatchNormBackend;

    /// The axes a channel's statistics run over: all but 1.
    fn axes(x: &T) -> Vec<i64> {
        std::iter::once(0).chain(2..x.dim() as i64).collect()
    }

    /// A `[C]` tensor shaped `[1, C, 1, ...]` to broadcast against `x`.
    fn per_channel(v: &T, x: &T) -> T {
        let mut shape = vec![1i64; x.dim()];
        shape[1] = -1;
        v.reshape(shape)
    }

    /// `(mean, 1 / sqrt(var + eps))`, each `[C]`, from `[2, C]` statistics.
    fn mean_invstd(stats: &T, eps: f64) -> (T, T) {
        (stats.get(0), (stats.get(1) + eps).rsqrt())
    }

    /// Elements per channel.
    fn count(x: &T) -> i64 {
        let size = x.size();
        size.iter().product::<i64>() / size[1].max(1)
    }

    impl BatchNormBackend for LibTorch {
        fn bn_stats(x: TchTensor) -> TchTensor {
            let (var, mean) = x
                .tensor
                .var_mean_dim(axes(&x.tensor).as_slice(), false, false);
            TchTensor::new(T::stack(&[mean, var], 0))
        }

        fn bn_train(
            x: TchTensor,
            gamma: TchTensor,
            beta: TchTensor,
            stats: TchTensor,
            epsilon: f64,
        ) -> TchTensor {
            // Inference-mode batch norm with the batch's own statistics as the running ones:
            // one element-wise pass (cuDNN's on CUDA).
            let (mean, var) = (stats.tensor.get(0), stats.tensor.get(1));
            TchTensor::new(x.tensor.batch_norm(
                Some(&gamma.tensor),
                Some(&beta.tensor),
                Some(&mean),
                Some(&var),
                false,
                0.0,
                epsilon,
                true,
            ))
        }

        fn bn_grad_affine(
            x: TchTensor,
            grad: TchTensor,
            stats: TchTensor,
            epsilon: f64,
        ) -> TchTensor {
            let (x, g) = (x.tensor.contiguous(), grad.tensor.contiguous());
            let (mean, invstd) = mean_invstd(&stats.tensor, epsilon);
            // Σ g and Σ g · (x − mean), per channel.
            let (sum_g, sum_gxmu) = if x.device().is_cuda() {
                let (sum_g, sum_gxmu, _, _) = x
                    .batch_norm_backward_reduce(&g, &mean, &invstd, None::<&T>, true, false, false);
                (sum_g, sum_gxmu)
            } else {
                let axes = axes(&x);
                let sum_g = g.sum_dim_intlist(axes.as_slice(), false, None::<Kind>);
                let xmu = &x - per_channel(&mean, &x);
                let sum_gxmu = (&g * xmu).sum_dim_intlist(axes.as_slice(), false, None::<Kind>);
                (sum_g, sum_gxmu)
            };
            TchTensor::new(T::stack(&[sum_gxmu * invstd, sum_g], 0))
        }

        fn bn_grad_input(
            x: TchTensor,
            gamma: TchTensor,
            grad: TchTensor,
            stats: TchTensor,
            affine: TchTensor,
            epsilon: f64,
        ) -> TchTensor {
            let (x, g) = (x.tensor.contiguous(), grad.tensor.contiguous());
            let (mean, invstd) = mean_invstd(&stats.tensor, epsilon);
            let (sum_gxhat, sum_g) = (affine.tensor.get(0), affine.tensor.get(1));
            let n = count(&x);
            if x.device().is_cuda() {
                // The kernel takes Σ g · (x − mean) and the element count of each replica.
                let sum_gxmu = sum_gxhat / &invstd;
                let counts = T::full([1], n, (Kind::Int, x.device()));
                return TchTensor::new(x.batch_norm_backward_elemt(
                    &g,
                    &mean,
                    &invstd,
                    Some(&gamma.tensor),
                    &sum_g,
                    &sum_gxmu,
                    &counts,
                ));
            }
            // dx = γ/σ · (g − mean(g) − x̂ · mean(g · x̂)) = a · g + k · x + d per channel.
            let n = n.max(1) as f64;
            let a = &gamma.tensor * &invstd;
            let k = -(&a * &invstd * sum_gxhat / n);
            let d = -(&a * sum_g / n) - &k * &mean;
            let dx = &g * per_channel(&a, &x) + &x * per_channel(&k, &x);
            TchTensor::new(dx + per_channel(&d, &x))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::BatchNormConfig;
    use burn::tensor::{Device, Distribution, TensorData};

    /// Output, input / gamma / beta gradients and the running statistics after two training
    /// steps on `device` (an autodiff one) equal Burn's own training-mode batch norm.
    fn check_training(device: Device) {
        let mut a = BatchNormConfig::new(3).init(&device);
        a.gamma = burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![1.5f32, -0.7, 0.3], [3]),
            &device,
        ));
        a.beta = burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![0.2f32, -1.0, 0.5], [3]),
            &device,
        ));
        let b = a.clone();
        for step in 0..2 {
            let x0 = Tensor::<4>::random([4, 3, 5, 6], Distribution::Normal(1.0, 2.0), &device)
                .mul_scalar(1.0 + step as f64);
            let w = Tensor::<4>::random([4, 3, 5, 6], Distribution::Default, &device);
            let run = |bn: &BatchNorm, ours: bool| {
                let x = x0.clone().detach().require_grad();
                let y = if ours {
                    batch_norm(bn, x.clone())
                } else {
                    bn.forward(x.clone())
                };
                let g = y.clone().mul(w.clone()).sum().backward();
                let gx = x.grad(&g).unwrap();
                let gg = bn.gamma.val().grad(&g).unwrap();
                let gb = bn.beta.val().grad(&g).unwrap();
                (y.detach(), gx, gg, gb)
            };
            let (y1, x1, g1, b1) = run(&a, true);
            let (y2, x2, g2, b2) = run(&b, false);
            let tol = burn::tensor::Tolerance::<f32>::absolute(1e-4);
            y1.into_data().assert_approx_eq::<f32>(&y2.into_data(), tol);
            x1.into_data().assert_approx_eq::<f32>(&x2.into_data(), tol);
            g1.into_data().assert_approx_eq::<f32>(&g2.into_data(), tol);
            b1.into_data().assert_approx_eq::<f32>(&b2.into_data(), tol);
        }
        for (s, t) in [
            (a.running_mean.value(), b.running_mean.value()),
            (a.running_var.value(), b.running_var.value()),
        ] {
            s.into_data()
                .assert_approx_eq::<f32>(&t.into_data(), burn::tensor::Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn matches_burns_batch_norm_in_training() {
        check_training(Device::flex().autodiff());
        // Inference (a plain device) goes through Burn's forward with the running statistics.
        let plain = BatchNormConfig::new(3).init(&Device::flex());
        let x = Tensor::<4>::random([2, 3, 4, 4], Distribution::Default, &Device::flex());
        batch_norm(&plain, x.clone())
            .into_data()
            .assert_eq(&plain.forward(x).into_data(), true);
    }

    #[cfg(feature = "tch")]
    #[test]
    fn matches_burns_batch_norm_in_training_on_libtorch() {
        check_training(Device::libtorch().autodiff());
    }

    /// The CUDA kernels (`batch_norm_backward_reduce` / `_elemt`) where LibTorch sees a GPU.
    #[cfg(feature = "tch")]
    #[allow(deprecated)] // burn-tch's CUDA device
    #[test]
    fn matches_burns_batch_norm_in_training_on_libtorch_cuda() {
        if !tch::Cuda::is_available() {
            eprintln!("no CUDA device: the LibTorch CUDA batch norm is not checked here");
            return;
        }
        check_training(Device::libtorch_cuda(0).autodiff());
    }
}
