//! Fast operations with their own backward passes, as Burn backend extensions.
//!
//! - [`Conv2d`] / [`Conv2dConfig`]: drop-in for `burn::nn::conv::{Conv2d, Conv2dConfig}`.
//! - [`conv2d`]: drop-in for `burn::tensor::module::conv2d`.
//! - [`AdamW`] / [`AdamWConfig`]: AdamW with PyTorch's defaults, in place on LibTorch.
//! - [`sparse_matmul`]: a constant [`SparseMatrix`] times a dense tensor (RoIAlign's core).
//! - [`roi_align_device`]: RoIAlign's taps computed on a LibTorch GPU (the detector's route
//!   there), the same product as a host-built [`SparseMatrix`].
//! - [`batch_norm`]: drop-in for `BatchNorm::forward` (channel-parallel training on burn-flex).
//! - [`pixel_nll_sum`]: a segmenter's per-pixel cross-entropy, fused (burn-flex).
//! - [`linear`]: drop-in for `Linear::forward` (one `addmm` on LibTorch).
//! - [`silu`]: drop-in for `burn::tensor::activation::silu` (one LibTorch kernel).
//! - [`relu`]: drop-in for `burn::tensor::activation::relu` (LibTorch's fused backward).
//! - [`profiler`]: PyTorch's Kineto profiler, a Chrome trace of LibTorch work (feature `tch`),
//!   and [`profiler::range`], named ranges of host work in it.
//! - [`heap::retain_freed_memory`]: keep freed tensor buffers for reuse (call once at start).
//!
//! On burn-flex the forward and both gradients run im2col + GEMM kernels
//! ([`conv2d_cpu`]); on LibTorch (feature `tch`) the backward is LibTorch's own convolution
//! backward. Other backends fall back to Burn's convolution.

#[cfg_attr(feature = "tch", allow(deprecated))] // burn-tch's `LibTorch`, see `libtorch`
mod activation;
#[cfg_attr(feature = "tch", allow(deprecated))] // burn-tch's `LibTorch`, see `libtorch`
mod adamw;
#[cfg_attr(feature = "tch", allow(deprecated))] // burn-tch's `LibTorch`, see `libtorch`
mod batch_norm;
mod conv2d;
pub mod conv2d_cpu;
#[cfg_attr(feature = "tch", allow(deprecated))] // burn-tch's `LibTorch`, see `libtorch`
mod extension;
mod flex_f32;
pub mod heap;
mod kernels;
#[cfg_attr(feature = "tch", allow(deprecated))] // burn-tch's `LibTorch`, see `libtorch`
mod linear;
mod pixel_nll;
#[cfg_attr(feature = "tch", allow(deprecated))] // burn-tch's `LibTorch`, see `libtorch`
pub mod roi_align_device;
#[cfg_attr(feature = "tch", allow(deprecated))] // burn-tch's `LibTorch`, see `libtorch`
mod spmm;
// burn-tch is marked deprecated in Burn 0.22 (in favour of CubeCL backends), but it is the
// backend that links LibTorch's cuDNN / oneDNN kernels, which is what `--device tch-*` is for.
#[cfg(feature = "tch")]
#[allow(deprecated)]
mod libtorch;
/// PyTorch's profiler around LibTorch work (feature `tch`) and named ranges of host work.
pub mod profiler;

pub use activation::{relu, silu};
pub use adamw::{AdamW, AdamWConfig};
pub use batch_norm::{BatchNormBackend, batch_norm};
pub use conv2d::{Conv2d, Conv2dConfig};
pub use extension::{FastConvBackend, conv2d, is_flex, is_gpu, supports};
pub use kernels::{ConvGrads, ConvKernels, GradMask};
pub use linear::{linear, with_torch_weight_layout};
pub use pixel_nll::{PixelLabels, PixelNllBackend, pixel_nll_sum};
pub use spmm::{SparseMatrix, SparseMatrixBuilder, SpmmBackend, sparse_matmul};
