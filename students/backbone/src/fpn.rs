//! Feature Pyramid Network (Lin et al. 2017), as torchvision's `FeaturePyramidNetwork` with
//! `LastLevelMaxPool`: lateral 1x1 convs, top-down nearest upsampling, 3x3 output convs, and
//! P6 as a stride-2 max-pool (kernel 1) of P5.
//!
//! Parameter names follow torchvision (`inner_blocks.{i}`, `layer_blocks.{i}`; torchvision
//! wraps each conv in a `Conv2dNormActivation`, hence its extra `.0`).

use crate::ops::{Conv2d, Conv2dConfig};
use burn::module::Module;
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::module::{interpolate, max_pool2d};
use burn::tensor::ops::{InterpolateMode, InterpolateOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::BackboneError;
use crate::features::FeatureMap;

/// FPN settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FpnConfig {
    /// Channels of the inputs, finest first (C2..C5).
    pub in_channels: Vec<usize>,
    /// Channels of every output level (256 in torchvision; 64 for the tiny config).
    pub out_channels: usize,
    /// Add P6 = max-pool(kernel 1, stride 2) of the last output (torchvision's
    /// `LastLevelMaxPool`), used by the RPN only.
    #[serde(default = "default_true")]
    pub extra_max_pool: bool,
}

fn default_true() -> bool {
    true
}

impl FpnConfig {
    /// Builds the FPN with torchvision's initialisation (Kaiming-uniform with `a = 1`, zero
    /// bias).
    pub fn init(&self, device: &Device) -> Result<Fpn, BackboneError> {
        if self.in_channels.is_empty() || self.in_channels.contains(&0) || self.out_channels == 0 {
            return Err(BackboneError::InvalidConfig {
                field: "fpn.in_channels".into(),
                reason: "needs at least one level and positive channel counts".into(),
            });
        }
        let conv = |c_in: usize, k: usize| {
            let p = k / 2;
            Conv2dConfig::new([c_in, self.out_channels], [k, k])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .with_initializer(Initializer::KaimingUniform {
                    gain: 1.0,
                    fan_out_only: false,
                })
                .init(device)
        };
        let zero_bias = |mut c: Conv2d| {
            c.bias = c.bias.map(|b| b.map(|t| t.zeros_like()));
            c
        };
        Ok(Fpn {
            inner_blocks: self
                .in_channels
                .iter()
                .map(|&c| zero_bias(conv(c, 1)))
                .collect(),
            layer_blocks: self
                .in_channels
                .iter()
                .map(|_| zero_bias(conv(self.out_channels, 3)))
                .collect(),
            extra_max_pool: self.extra_max_pool,
        })
    }
}

/// The FPN module.
#[derive(Module, Debug)]
pub struct Fpn {
    /// Lateral 1x1 convs, finest level first.
    pub inner_blocks: Vec<Conv2d>,
    /// Output 3x3 convs, finest level first.
    pub layer_blocks: Vec<Conv2d>,
    /// Whether P6 is produced.
    pub extra_max_pool: bool,
}

impl Fpn {
    /// C2..C5 (finest first) → P2..P5 (+ P6), each `[B, out_channels, H_i, W_i]` with the
    /// input's spatial size; P6 has stride `2 * stride(P5)`.
    pub fn forward(&self, inputs: Vec<FeatureMap>) -> Vec<FeatureMap> {
        let n = inputs.len();
        assert_eq!(
            n,
            self.inner_blocks.len(),
            "FPN built for {} levels",
            self.inner_blocks.len()
        );
        let mut outs: Vec<Option<FeatureMap>> = (0..n).map(|_| None).collect();
        let mut last_inner: Option<Tensor<4>> = None;
        for (idx, input) in inputs.into_iter().enumerate().rev() {
            let lateral = self.inner_blocks[idx].forward(input.tensor);
            let inner = match last_inner.take() {
                None => lateral,
                Some(top) => {
                    let [_, _, h, w] = lateral.dims();
                    lateral.add(upsample_nearest(top, [h, w]))
                }
            };
            outs[idx] = Some(FeatureMap {
                stride: input.stride,
                tensor: self.layer_blocks[idx].forward(inner.clone()),
            });
            last_inner = Some(inner);
        }
        let mut outs: Vec<FeatureMap> = outs.into_iter().flatten().collect();
        if self.extra_max_pool {
            if let Some(last) = outs.last() {
                let p6 = max_pool2d(
                    last.tensor.clone(),
                    MaxPoolOptions::new([1, 1]).with_stride([2, 2]),
                );
                outs.push(FeatureMap {
                    stride: last.stride * 2,
                    tensor: p6,
                });
            }
        }
        outs
    }
}

/// PyTorch's `F.interpolate(x, size, mode="nearest")`. An exact 2x upsample (the FPN case
/// for inputs padded to a multiple of the largest stride) is a broadcast copy, much cheaper
/// than the general kernel in forward and backward.
fn upsample_nearest(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    if size == [2 * h, 2 * w] {
        return x
            .reshape([b, c, h, 1, w, 1])
            .expand([b, c, h, 2, w, 2])
            .reshape([b, c, 2 * h, 2 * w]);
    }
    let mut opts = InterpolateOptions::new(InterpolateMode::Nearest);
    opts.output_size = Some(size);
    interpolate(x, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn shapes_and_p6() {
        let device = Device::default();
        let fpn = FpnConfig {
            in_channels: vec![4, 8, 16, 32],
            out_channels: 8,
            extra_max_pool: true,
        }
        .init(&device)
        .unwrap();
        let feats = [(4, 4usize, 16usize), (8, 8, 8), (16, 16, 4), (32, 32, 2)]
            .into_iter()
            .map(|(s, c, h)| FeatureMap {
                stride: s,
                tensor: Tensor::random([2, c, h, h + 1], Distribution::Default, &device),
            })
            .collect();
        let outs = fpn.forward(feats);
        let got: Vec<(usize, [usize; 4])> =
            outs.iter().map(|f| (f.stride, f.tensor.dims())).collect();
        assert_eq!(
            got,
            vec![
                (4, [2, 8, 16, 17]),
                (8, [2, 8, 8, 9]),
                (16, [2, 8, 4, 5]),
                (32, [2, 8, 2, 3]),
                (64, [2, 8, 1, 2]),
            ]
        );
    }

    /// The fast 2x path and the general kernel agree with PyTorch's nearest rule
    /// `src = floor(dst * in / out)`.
    #[test]
    fn nearest_upsample_matches_pytorch_rule() {
        let device = Device::default();
        let x = Tensor::<4>::from_data(
            TensorData::new((0..6).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 2, 3]),
            &device,
        );
        let up = upsample_nearest(x.clone(), [4, 6])
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let odd = upsample_nearest(x, [3, 5])
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let rule = |oh: usize, ow: usize| {
            let mut v = Vec::new();
            for i in 0..oh {
                for j in 0..ow {
                    v.push(((i * 2 / oh) * 3 + j * 3 / ow) as f32);
                }
            }
            v
        };
        assert_eq!(up, rule(4, 6));
        assert_eq!(odd, rule(3, 5));
    }
}
