//! The dense decoder: multi-level backbone features fused top-down (FPN lateral 1x1 convs,
//! bilinear upsampling and a 3x3 fusion block per level, as DPT's fusion stages), refined at
//! 1/4 resolution, projected per pixel to the teacher's embedding dimension and L2-normalised.
//!
//! The output is what LSeg calls the pixel embeddings: comparing them by cosine with the text
//! embeddings of any label set gives per-pixel logits (see [`crate::segmenter`]).

use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, PaddingConfig2d};
use burn::tensor::{Device, Tensor, TensorData};
use ovkd_backbone::FeatureMap;
use ovkd_backbone::ops::{Conv2d, Conv2dConfig};
use ovkd_backbone::ops::{batch_norm, relu};
use serde::{Deserialize, Serialize};

use crate::SegmenterError;

/// Decoder settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    /// Channels of each input level, finest first (e.g. C2..C5 of the backbone).
    pub in_channels: Vec<usize>,
    /// Stride of each input level, finest first; the finest must be 4.
    pub in_strides: Vec<usize>,
    /// Width of the fusion path.
    #[serde(default = "default_channels")]
    pub channels: usize,
    /// 3x3 conv-norm-ReLU blocks applied at 1/4 resolution after fusion.
    #[serde(default = "default_refine")]
    pub refine_layers: usize,
    /// Output embedding dimension (the teacher's joint embedding size D).
    pub embed_dim: usize,
}

fn default_channels() -> usize {
    64
}
fn default_refine() -> usize {
    2
}

impl DecoderConfig {
    /// Checks the numbers make a decoder.
    pub fn validate(&self) -> Result<(), SegmenterError> {
        let bad = |field: &str, reason: &str| {
            Err(SegmenterError::InvalidConfig {
                field: format!("decoder.{field}"),
                reason: reason.into(),
            })
        };
        if self.in_channels.is_empty() || self.in_channels.contains(&0) {
            return bad("in_channels", "needs at least one level, all positive");
        }
        if self.in_strides.len() != self.in_channels.len() {
            return bad("in_strides", "needs one stride per input level");
        }
        if self.in_strides[0] != 4 {
            return bad("in_strides", "the finest level must have stride 4");
        }
        if self.in_strides.windows(2).any(|w| w[1] <= w[0]) {
            return bad("in_strides", "must increase from the finest level");
        }
        if self.channels == 0 {
            return bad("channels", "must be positive");
        }
        if self.embed_dim == 0 {
            return bad("embed_dim", "must be positive");
        }
        Ok(())
    }

    /// Builds the decoder (Kaiming-normal convs, identity batch norm).
    pub fn init(&self, device: &Device) -> Result<Decoder, SegmenterError> {
        self.validate()?;
        let c = self.channels;
        let laterals = self
            .in_channels
            .iter()
            .map(|&ci| conv(ci, c, 1, true, device))
            .collect();
        let fuse = (0..self.in_channels.len())
            .map(|_| ConvBnRelu::new(c, c, device))
            .collect();
        let refine = (0..self.refine_layers)
            .map(|_| ConvBnRelu::new(c, c, device))
            .collect();
        Ok(Decoder {
            laterals,
            fuse,
            refine,
            project: conv(c, self.embed_dim, 1, true, device),
        })
    }
}

fn conv(c_in: usize, c_out: usize, k: usize, bias: bool, device: &Device) -> Conv2d {
    let p = k / 2;
    Conv2dConfig::new([c_in, c_out], [k, k])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(bias)
        .with_initializer(Initializer::KaimingNormal {
            gain: std::f64::consts::SQRT_2,
            fan_out_only: true,
        })
        .init(device)
}

/// 3x3 conv, batch norm, ReLU.
#[derive(Module, Debug)]
pub struct ConvBnRelu {
    /// The 3x3 conv (no bias: the norm has one).
    pub conv: Conv2d,
    /// Its batch norm.
    pub bn: BatchNorm,
}

impl ConvBnRelu {
    fn new(c_in: usize, c_out: usize, device: &Device) -> Self {
        Self {
            conv: conv(c_in, c_out, 3, false, device),
            bn: BatchNormConfig::new(c_out).init(device),
        }
    }

    /// `[B, C_in, H, W]` → `[B, C_out, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(batch_norm(&self.bn, self.conv.forward(x)))
    }
}

/// The dense decoder.
#[derive(Module, Debug)]
pub struct Decoder {
    /// Lateral 1x1 convs to the fusion width, finest level first.
    pub laterals: Vec<Conv2d>,
    /// One fusion block per level, applied after adding the upsampled coarser path.
    pub fuse: Vec<ConvBnRelu>,
    /// Refinement blocks at 1/4 resolution.
    pub refine: Vec<ConvBnRelu>,
    /// Per-pixel projection to the embedding dimension.
    pub project: Conv2d,
}

impl Decoder {
    /// Multi-level features (finest first, finest at stride 4, each `[B, C_i, H_i, W_i]`) →
    /// L2-normalised pixel embeddings `[B, D, H_0, W_0]` at the finest level's resolution.
    pub fn forward(&self, features: Vec<FeatureMap>) -> Tensor<4> {
        assert_eq!(
            features.len(),
            self.laterals.len(),
            "decoder built for {} levels",
            self.laterals.len()
        );
        let mut top: Option<Tensor<4>> = None;
        for (i, f) in features.into_iter().enumerate().rev() {
            let lateral = self.laterals[i].forward(f.tensor);
            let x = match top.take() {
                None => lateral,
                Some(t) => {
                    let [_, _, h, w] = lateral.dims();
                    lateral.add(upsample_bilinear(t, [h, w]))
                }
            };
            top = Some(self.fuse[i].forward(x));
        }
        let mut x = top.expect("at least one level");
        for block in &self.refine {
            x = block.forward(x);
        }
        l2_normalize_channels(self.project.forward(x))
    }
}

/// Bilinear resize with half-pixel centres (`align_corners=False`, as mmsegmentation's
/// `resize` and PyTorch's `F.interpolate`, without antialiasing): `[B, C, h, w]` →
/// `[B, C, size[0], size[1]]`.
///
/// Computed as `A_h · x · A_wᵀ` with the two interpolation matrices ([`bilinear_weights`],
/// two non-zeros per row): two small matmuls, whose backward is two more. burn-flex's own
/// `interpolate` backward is a scalar loop that took 7.7 % of the segmenter's training step
/// (BENCHMARKS, Speed, session 10).
pub fn upsample_bilinear(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    if [h, w] == size {
        return x;
    }
    let device = x.device();
    let [oh, ow] = size;
    let matrix = |out: usize, inp: usize| {
        Tensor::<2>::from_data(
            TensorData::new(bilinear_weights(out, inp), [out, inp]),
            &device,
        )
    };
    let (a_h, a_w) = (matrix(oh, h), matrix(ow, w));
    // Along the width: [B*C*h, w] · [w, ow].
    let t = x.reshape([b * c * h, w]).matmul(a_w.transpose());
    // Along the height: [1, oh, h] · [B*C, h, ow] (matmul broadcasts the batch).
    a_h.unsqueeze::<3>()
        .matmul(t.reshape([b * c, h, ow]))
        .reshape([b, c, oh, ow])
}

/// PyTorch's `align_corners=False` linear interpolation from `inp` samples to `out` as a dense
/// `[out, inp]` row-major matrix: output `i` reads source position `(i + 0.5) · inp / out -
/// 0.5`, clamped at 0, from its floor and the next sample (the last one at the edge).
pub fn bilinear_weights(out: usize, inp: usize) -> Vec<f32> {
    let scale = inp as f32 / out as f32;
    let mut m = vec![0f32; out * inp];
    for i in 0..out {
        let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let i0 = (src as usize).min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        let l1 = src - i0 as f32;
        m[i * inp + i0] += 1.0 - l1;
        m[i * inp + i1] += l1;
    }
    m
}

/// Divides every pixel's channel vector by its L2 norm (floored at 1e-6, so a zero vector
/// stays zero instead of becoming NaN): `[B, D, H, W]` → `[B, D, H, W]`.
pub fn l2_normalize_channels(x: Tensor<4>) -> Tensor<4> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-6);
    x.div(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn features(b: usize, h: usize, w: usize, device: &Device) -> Vec<FeatureMap> {
        [(4usize, 8usize), (8, 16), (16, 24), (32, 32)]
            .into_iter()
            .map(|(s, c)| FeatureMap {
                stride: s,
                tensor: Tensor::random(
                    [b, c, h.div_ceil(s), w.div_ceil(s)],
                    Distribution::Default,
                    device,
                ),
            })
            .collect()
    }

    fn config() -> DecoderConfig {
        DecoderConfig {
            in_channels: vec![8, 16, 24, 32],
            in_strides: vec![4, 8, 16, 32],
            channels: 16,
            refine_layers: 2,
            embed_dim: 12,
        }
    }

    /// `F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False)` of `[[1, 2], [3,
    /// 4]]`, as PyTorch prints it.
    #[test]
    fn bilinear_upsample_matches_pytorch() {
        let device = Device::default();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1f32, 2.0, 3.0, 4.0], [1, 1, 2, 2]),
            &device,
        );
        let got = upsample_bilinear(x, [4, 4])
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let want = [
            1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0,
        ];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{got:?}");
        }
    }

    /// Values and input gradient equal Burn's `interpolate` (bilinear, `align_corners=False`)
    /// for up- and downsampling at integer and fractional ratios.
    #[test]
    fn bilinear_resize_and_its_gradient_equal_burns_interpolate() {
        use burn::tensor::module::interpolate;
        use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
        let device = Device::default().autodiff();
        device.seed(5);
        for (from, to) in [([4, 6], [16, 24]), ([5, 7], [12, 9]), ([9, 10], [4, 6])] {
            let x0 = Tensor::<4>::random([2, 3, from[0], from[1]], Distribution::Default, &device);
            let up = Tensor::<4>::random([2, 3, to[0], to[1]], Distribution::Default, &device);
            let run = |ours: bool| {
                let x = x0.clone().require_grad();
                let y = if ours {
                    upsample_bilinear(x.clone(), to)
                } else {
                    interpolate(
                        x.clone(),
                        InterpolateOptions::new(InterpolateMode::Bilinear)
                            .with_align_corners(false)
                            .with_output_size(to),
                    )
                };
                let grads = y.clone().mul(up.clone()).sum().backward();
                let v = |t: Tensor<4>| t.into_data().try_into_vec::<f32>().unwrap();
                (v(y), v(x.grad(&grads).expect("x has a gradient")))
            };
            let (y, dx) = run(true);
            let (y_ref, dx_ref) = run(false);
            for (what, a, b) in [("y", &y, &y_ref), ("dx", &dx, &dx_ref)] {
                for (p, q) in a.iter().zip(b.iter()) {
                    assert!(
                        (p - q).abs() < 1e-5,
                        "{from:?} -> {to:?} {what}: {p} vs {q}"
                    );
                }
            }
        }
    }

    #[test]
    fn output_is_quarter_resolution_with_unit_norm() {
        let device = Device::default();
        let dec = config().init(&device).unwrap();
        let out = dec.forward(features(2, 64, 96, &device));
        assert_eq!(out.dims(), [2, 12, 16, 24]);
        let norms = out
            .square()
            .sum_dim(1)
            .sqrt()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(norms.len(), 2 * 16 * 24);
        for n in norms {
            assert!((n - 1.0).abs() < 1e-4, "{n}");
        }
    }

    #[test]
    fn trains_on_an_autodiff_device() {
        // Batch norm takes the training path there; the embeddings must still be unit norm and
        // gradients must reach the first lateral conv.
        let device = Device::default().autodiff();
        let dec = config().init(&device).unwrap();
        let out = dec.forward(features(2, 32, 32, &device));
        let grads = out.clone().slice([0..1, 0..1]).sum().backward();
        let g = dec.laterals[0].weight.val().grad(&grads).expect("gradient");
        assert!(g.abs().sum().into_scalar::<f32>() > 0.0);
        let n = out.square().sum_dim(1).sqrt().mean().into_scalar::<f32>();
        assert!((n - 1.0).abs() < 1e-4, "{n}");
    }

    #[test]
    fn rejects_bad_configs() {
        let mut c = config();
        c.in_strides = vec![8, 16, 32, 64];
        assert!(c.validate().unwrap_err().to_string().contains("stride 4"));
        let mut c = config();
        c.in_strides.pop();
        assert!(c.validate().is_err());
        let mut c = config();
        c.embed_dim = 0;
        assert!(c.validate().unwrap_err().to_string().contains("embed_dim"));
    }
}
