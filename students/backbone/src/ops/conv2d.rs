//! `Conv2d`: a drop-in for `burn::nn::conv::Conv2d` (same config, same parameter names, same
//! initialisation, same record) whose forward runs [`super::conv2d`], the convolution with its
//! own backward. Switching a module over is one line:
//! `use ovkd_backbone::ops::{Conv2d, Conv2dConfig};` instead of `burn::nn::conv::{...}`.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};

/// Configuration of a [`Conv2d`]; the fields and defaults of `burn::nn::conv::Conv2dConfig`.
#[derive(Config, Debug)]
pub struct Conv2dConfig {
    /// Input and output channels.
    pub channels: [usize; 2],
    /// Kernel height and width.
    pub kernel_size: [usize; 2],
    /// Stride (height, width).
    #[config(default = "[1, 1]")]
    pub stride: [usize; 2],
    /// Dilation (height, width).
    #[config(default = "[1, 1]")]
    pub dilation: [usize; 2],
    /// Groups.
    #[config(default = "1")]
    pub groups: usize,
    /// Padding.
    #[config(default = "PaddingConfig2d::Valid")]
    pub padding: PaddingConfig2d,
    /// Whether there is a bias.
    #[config(default = true)]
    pub bias: bool,
    /// Initialiser of weight and bias.
    #[config(default = "Initializer::KaimingUniform{gain:1.0/f64::sqrt(3.0),fan_out_only:false}")]
    pub initializer: Initializer,
}

/// A 2-D convolution. `weight`: `[Co, Ci/g, kh, kw]`, `bias`: `[Co]`.
#[derive(Module, Debug)]
pub struct Conv2d {
    /// `[Co, Ci/g, kh, kw]`
    pub weight: Param<Tensor<4>>,
    /// `[Co]`
    pub bias: Option<Param<Tensor<1>>>,
    /// Stride (height, width).
    pub stride: [usize; 2],
    /// Kernel height and width.
    pub kernel_size: [usize; 2],
    /// Dilation (height, width).
    pub dilation: [usize; 2],
    /// Groups.
    pub groups: usize,
    /// Padding.
    #[module(skip)]
    pub padding: PaddingConfig2d,
}

impl Conv2dConfig {
    /// Initialises the module exactly as `burn::nn::conv::Conv2dConfig::init` does (it calls it).
    pub fn init(&self, device: &Device) -> Conv2d {
        burn::nn::conv::Conv2dConfig::new(self.channels, self.kernel_size)
            .with_stride(self.stride)
            .with_dilation(self.dilation)
            .with_groups(self.groups)
            .with_padding(self.padding.clone())
            .with_bias(self.bias)
            .with_initializer(self.initializer.clone())
            .init(device)
            .into()
    }
}

impl From<burn::nn::conv::Conv2d> for Conv2d {
    fn from(c: burn::nn::conv::Conv2d) -> Self {
        Self {
            weight: c.weight,
            bias: c.bias,
            stride: c.stride,
            kernel_size: c.kernel_size,
            dilation: c.dilation,
            groups: c.groups,
            padding: c.padding,
        }
    }
}

/// `PaddingConfig2d::Same`'s split: the extra pixel goes at the end, as in Burn.
fn same_padding(kernel: usize, stride: usize, size: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = if out > 0 {
        ((out - 1) * stride + kernel).saturating_sub(size)
    } else {
        0
    };
    (total / 2, total - total / 2)
}

impl Conv2d {
    /// The convolution options for an input of `height × width`.
    pub fn options(&self, height: usize, width: usize) -> ConvOptions<2> {
        let pairs = match &self.padding {
            PaddingConfig2d::Valid => [(0, 0), (0, 0)],
            PaddingConfig2d::Same => [
                same_padding(self.kernel_size[0], self.stride[0], height),
                same_padding(self.kernel_size[1], self.stride[1], width),
            ],
            PaddingConfig2d::Explicit(top, left, bottom, right) => {
                [(*top, *bottom), (*left, *right)]
            }
        };
        ConvOptions::new_with_padding(self.stride, pairs, self.dilation, self.groups)
    }

    /// `[B, Ci, H, W]` → `[B, Co, oh, ow]`.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = input.dims();
        super::conv2d(
            input,
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            self.options(h, w),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Same seed → the same weights as Burn's `Conv2d`, and the same output, with `Same`
    /// (asymmetric at stride 2) padding.
    #[test]
    fn initialises_and_computes_like_burns_conv2d() {
        let device = Device::flex();
        let ours_cfg = Conv2dConfig::new([3, 5], [3, 3])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Same);
        let burn_cfg = burn::nn::conv::Conv2dConfig::new([3, 5], [3, 3])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Same);
        let w = |t: Tensor<4>| t.into_data().try_into_vec::<f32>().unwrap();
        let b = |t: Tensor<1>| t.into_data().try_into_vec::<f32>().unwrap();
        // Parameters initialise lazily, on first use: read each right after seeding. The
        // device's RNG is process-wide and the other tests in this binary draw from it in
        // parallel, so a draw can land between a seed and an init: seed again and retry. A real
        // difference in initialisation fails every attempt.
        let mut attempts = 0;
        let (ours, theirs) = loop {
            attempts += 1;
            device.seed(11);
            let ours = ours_cfg.init(&device);
            let ours_w = (w(ours.weight.val()), b(ours.bias.as_ref().unwrap().val()));
            device.seed(11);
            let theirs = burn_cfg.init(&device);
            let theirs_w = (
                w(theirs.weight.val()),
                b(theirs.bias.as_ref().unwrap().val()),
            );
            if ours_w == theirs_w || attempts == 5 {
                assert_eq!(ours_w, theirs_w, "after {attempts} attempts");
                break (ours, theirs);
            }
        };
        let x = Tensor::<4>::random([2, 3, 10, 9], Distribution::Normal(0.0, 1.0), &device);
        let a = w(ours.forward(x.clone()));
        let c = w(theirs.forward(x));
        assert_eq!(a.len(), c.len());
        for (p, q) in a.iter().zip(&c) {
            assert!((p - q).abs() < 1e-4, "{p} vs {q}");
        }
    }
}
