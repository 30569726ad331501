//! ResNet-style backbone (He et al. 2016; torchvision's layout, "ResNet v1.5": the stride of a
//! bottleneck stage is on its 3x3 conv). Outputs C2–C5 at strides 4, 8, 16, 32.
//!
//! Parameter names follow torchvision (`conv1`, `bn1`, `layer1.0.conv1`, ...), except that a
//! block's `downsample.0` / `downsample.1` are `downsample.conv` / `downsample.bn` here and
//! Burn's trainable batch norm calls `weight`/`bias` `gamma`/`beta`.

use crate::ops::relu;
use crate::ops::{Conv2d, Conv2dConfig};
use burn::module::Module;
use burn::nn::{Initializer, PaddingConfig2d};
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::BackboneError;
use crate::features::FeatureMap;
use crate::norm::{Norm2d, NormKind};

/// Residual block type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3x3 convs (ResNet-18/34); expansion 1.
    Basic,
    /// 1x1 → 3x3 → 1x1 (ResNet-50 and deeper); expansion 4.
    Bottleneck,
}

impl BlockKind {
    /// Output channels of a block relative to its width.
    pub fn expansion(self) -> usize {
        match self {
            Self::Basic => 1,
            Self::Bottleneck => 4,
        }
    }
}

/// The layers before `layer1`; both end at stride 4.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StemKind {
    /// torchvision's: conv 7x7 stride 2, norm, ReLU, max-pool 3x3 stride 2.
    Standard,
    /// For small images and fast CPU training: conv 3x3 stride 2, norm, ReLU, max-pool 3x3
    /// stride 2 (about 20x fewer multiply-adds than the 7x7 stem at equal width).
    Light,
}

/// Depth and width of a ResNet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    /// Residual block type.
    pub block: BlockKind,
    /// Blocks in `layer1..layer4` (ResNet-50: `[3, 4, 6, 3]`).
    pub layers: [usize; 4],
    /// Block widths of `layer1..layer4`; a stage outputs `width * expansion` channels.
    pub widths: [usize; 4],
    /// Stem type.
    pub stem: StemKind,
    /// Channels out of the stem (64 in torchvision).
    pub stem_channels: usize,
    /// Image channels.
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    /// Frozen or trainable batch norm.
    #[serde(default)]
    pub norm: NormKind,
    /// Freeze the first stages, as detectron2's `FREEZE_AT`: 0 trains everything, 1 freezes
    /// the stem, 2 the stem and `layer1`, ..., 5 the whole network. Frozen stages get no
    /// gradient and their batch norm stays in inference mode.
    #[serde(default)]
    pub freeze_at: usize,
}

fn default_in_channels() -> usize {
    3
}

impl ResNetConfig {
    /// The default for tests and the OV-Shapes runs: one basic block per stage, widths
    /// 16/32/64/128, light stem, trainable batch norm (it is trained from scratch).
    pub fn tiny() -> Self {
        Self {
            block: BlockKind::Basic,
            layers: [1, 1, 1, 1],
            widths: [16, 32, 64, 128],
            stem: StemKind::Light,
            stem_channels: 16,
            in_channels: 3,
            norm: NormKind::Batch,
            freeze_at: 0,
        }
    }

    /// torchvision's `resnet18`.
    pub fn resnet18() -> Self {
        Self::standard(BlockKind::Basic, [2, 2, 2, 2])
    }

    /// torchvision's `resnet34`.
    pub fn resnet34() -> Self {
        Self::standard(BlockKind::Basic, [3, 4, 6, 3])
    }

    /// torchvision's `resnet50` (frozen batch norm, as `fasterrcnn_resnet50_fpn`).
    pub fn resnet50() -> Self {
        Self::standard(BlockKind::Bottleneck, [3, 4, 6, 3])
    }

    fn standard(block: BlockKind, layers: [usize; 4]) -> Self {
        Self {
            block,
            layers,
            widths: [64, 128, 256, 512],
            stem: StemKind::Standard,
            stem_channels: 64,
            in_channels: 3,
            norm: NormKind::Frozen,
            freeze_at: 0,
        }
    }

    /// Channels of C2..C5.
    pub fn out_channels(&self) -> [usize; 4] {
        self.widths.map(|w| w * self.block.expansion())
    }

    /// Strides of C2..C5.
    pub fn strides(&self) -> [usize; 4] {
        [4, 8, 16, 32]
    }

    /// Checks the numbers make a network.
    pub fn validate(&self) -> Result<(), BackboneError> {
        let bad = |field: &str, why: &str| {
            Err(BackboneError::InvalidConfig {
                field: format!("resnet.{field}"),
                reason: why.to_string(),
            })
        };
        if self.layers.iter().any(|&n| n == 0) {
            return bad("layers", "every stage needs at least one block");
        }
        if self.widths.iter().any(|&w| w == 0) || self.stem_channels == 0 || self.in_channels == 0 {
            return bad("widths", "channel counts must be positive");
        }
        if self.freeze_at > 5 {
            return bad("freeze_at", "must be in 0..=5");
        }
        Ok(())
    }

    /// Builds the network with torchvision's initialisation (Kaiming-normal, fan-out, for
    /// convs; identity batch norm).
    pub fn init(&self, device: &Device) -> Result<ResNet, BackboneError> {
        self.validate()?;
        let (k, pad) = match self.stem {
            StemKind::Standard => (7, 3),
            StemKind::Light => (3, 1),
        };
        let mut conv1 = conv(self.in_channels, self.stem_channels, k, 2, pad, device);
        let mut bn1 = Norm2d::new(self.norm, self.stem_channels, device);
        if self.freeze_at >= 1 {
            conv1 = conv1.freeze();
            bn1 = bn1.freeze();
        }
        let mut in_ch = self.stem_channels;
        let mut stages = Vec::with_capacity(4);
        for s in 0..4 {
            let stride = if s == 0 { 1 } else { 2 };
            let mut blocks = Vec::with_capacity(self.layers[s]);
            for b in 0..self.layers[s] {
                let block = Block::new(
                    self.block,
                    in_ch,
                    self.widths[s],
                    if b == 0 { stride } else { 1 },
                    self.norm,
                    device,
                );
                in_ch = self.widths[s] * self.block.expansion();
                blocks.push(if self.freeze_at >= s + 2 {
                    block.freeze()
                } else {
                    block
                });
            }
            stages.push(blocks);
        }
        let mut it = stages.into_iter();
        let mut next = || it.next().unwrap_or_default();
        Ok(ResNet {
            conv1,
            bn1,
            layer1: next(),
            layer2: next(),
            layer3: next(),
            layer4: next(),
        })
    }
}

fn conv(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: std::f64::consts::SQRT_2,
            fan_out_only: true,
        })
        .init(device)
}

/// 1x1 projection on the shortcut when the shape changes.
#[derive(Module, Debug)]
pub struct Downsample {
    /// 1x1 conv with the block's stride (torchvision `downsample.0`).
    pub conv: Conv2d,
    /// Its norm (torchvision `downsample.1`).
    pub bn: Norm2d,
}

impl Downsample {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }
}

/// Two 3x3 convs with a residual connection.
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// 3x3, carries the stride.
    pub conv1: Conv2d,
    /// Norm after `conv1`.
    pub bn1: Norm2d,
    /// 3x3.
    pub conv2: Conv2d,
    /// Norm after `conv2`.
    pub bn2: Norm2d,
    /// Shortcut projection, when channels or stride change.
    pub downsample: Option<Downsample>,
}

/// 1x1 → 3x3 → 1x1 with a residual connection.
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// 1x1 reduce.
    pub conv1: Conv2d,
    /// Norm after `conv1`.
    pub bn1: Norm2d,
    /// 3x3, carries the stride.
    pub conv2: Conv2d,
    /// Norm after `conv2`.
    pub bn2: Norm2d,
    /// 1x1 expand.
    pub conv3: Conv2d,
    /// Norm after `conv3`.
    pub bn3: Norm2d,
    /// Shortcut projection, when channels or stride change.
    pub downsample: Option<Downsample>,
}

/// A residual block of either type.
#[derive(Module, Debug)]
pub enum Block {
    /// See [`BasicBlock`].
    Basic(BasicBlock),
    /// See [`Bottleneck`].
    Bottleneck(Bottleneck),
}

impl Block {
    fn new(
        kind: BlockKind,
        in_ch: usize,
        width: usize,
        stride: usize,
        norm: NormKind,
        device: &Device,
    ) -> Self {
        let out_ch = width * kind.expansion();
        let downsample = (stride != 1 || in_ch != out_ch).then(|| Downsample {
            conv: conv(in_ch, out_ch, 1, stride, 0, device),
            bn: Norm2d::new(norm, out_ch, device),
        });
        match kind {
            BlockKind::Basic => Self::Basic(BasicBlock {
                conv1: conv(in_ch, width, 3, stride, 1, device),
                bn1: Norm2d::new(norm, width, device),
                conv2: conv(width, width, 3, 1, 1, device),
                bn2: Norm2d::new(norm, width, device),
                downsample,
            }),
            BlockKind::Bottleneck => Self::Bottleneck(Bottleneck {
                conv1: conv(in_ch, width, 1, 1, 0, device),
                bn1: Norm2d::new(norm, width, device),
                conv2: conv(width, width, 3, stride, 1, device),
                bn2: Norm2d::new(norm, width, device),
                conv3: conv(width, out_ch, 1, 1, 0, device),
                bn3: Norm2d::new(norm, out_ch, device),
                downsample,
            }),
        }
    }

    /// `[B, C_in, H, W]` → `[B, C_out, H / stride, W / stride]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Basic(b) => {
                let out = relu(b.bn1.forward(b.conv1.forward(x.clone())));
                let out = b.bn2.forward(b.conv2.forward(out));
                let identity = match &b.downsample {
                    Some(d) => d.forward(x),
                    None => x,
                };
                relu(out.add(identity))
            }
            Self::Bottleneck(b) => {
                let out = relu(b.bn1.forward(b.conv1.forward(x.clone())));
                let out = relu(b.bn2.forward(b.conv2.forward(out)));
                let out = b.bn3.forward(b.conv3.forward(out));
                let identity = match &b.downsample {
                    Some(d) => d.forward(x),
                    None => x,
                };
                relu(out.add(identity))
            }
        }
    }
}

/// The ResNet body (no pooling or classifier).
#[derive(Module, Debug)]
pub struct ResNet {
    /// Stem conv (7x7 or 3x3, stride 2).
    pub conv1: Conv2d,
    /// Stem norm.
    pub bn1: Norm2d,
    /// Stage C2 (stride 4).
    pub layer1: Vec<Block>,
    /// Stage C3 (stride 8).
    pub layer2: Vec<Block>,
    /// Stage C4 (stride 16).
    pub layer3: Vec<Block>,
    /// Stage C5 (stride 32).
    pub layer4: Vec<Block>,
}

impl ResNet {
    /// `[B, C_in, H, W]` → C2..C5, `[B, C_i, ceil(H / s_i), ceil(W / s_i)]` for strides
    /// 4, 8, 16, 32 when `H` and `W` are multiples of 32.
    pub fn forward(&self, images: Tensor<4>) -> Vec<FeatureMap> {
        let x = relu(self.bn1.forward(self.conv1.forward(images)));
        let mut x = max_pool2d(
            x,
            MaxPoolOptions {
                kernel_size: [3, 3],
                stride: [2, 2],
                padding: [(1, 1), (1, 1)],
                dilation: [1, 1],
                ceil_mode: false,
            },
        );
        let mut out = Vec::with_capacity(4);
        for (i, stage) in [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .enumerate()
        {
            for block in stage {
                x = block.forward(x);
            }
            out.push(FeatureMap {
                stride: 4 << i,
                tensor: x.clone(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn tiny_shapes_and_strides() {
        let device = Device::default();
        let cfg = ResNetConfig::tiny();
        let net = cfg.init(&device).unwrap();
        let x = Tensor::<4>::random([2, 3, 64, 96], Distribution::Default, &device);
        let feats = net.forward(x);
        let dims: Vec<[usize; 4]> = feats.iter().map(|f| f.tensor.dims()).collect();
        assert_eq!(
            dims,
            vec![
                [2, 16, 16, 24],
                [2, 32, 8, 12],
                [2, 64, 4, 6],
                [2, 128, 2, 3]
            ]
        );
        assert_eq!(
            feats.iter().map(|f| f.stride).collect::<Vec<_>>(),
            cfg.strides()
        );
    }

    /// Parameter count equals torchvision's resnet18 without its fc classifier (11,176,512
    /// learnable values), plus the two running statistics per frozen batch-norm channel that
    /// Burn counts as (gradient-free) parameters.
    #[test]
    fn parameter_counts_match_torchvision() {
        let device = Device::default();
        // torchvision: sum(p.numel() for p in resnet18().parameters()) - fc = 11,176,512
        // learnable; buffers add 2 per BN channel. Burn counts every float param, so frozen BN
        // contributes 4 per channel.
        let r18 = ResNetConfig::resnet18().init(&device).unwrap();
        let bn_channels_18 =
            64 + 2 * (64 * 2) + (128 * 4 + 128) + (256 * 4 + 256) + (512 * 4 + 512);
        assert_eq!(r18.num_params(), 11_176_512 + 2 * bn_channels_18);
    }

    #[test]
    fn freeze_at_freezes_the_first_stages() {
        let device = Device::default().autodiff();
        let cfg = ResNetConfig {
            freeze_at: 2,
            ..ResNetConfig::tiny()
        };
        let net = cfg.init(&device).unwrap();
        let x = Tensor::<4>::random([1, 3, 32, 32], Distribution::Default, &device);
        let loss = net
            .forward(x)
            .into_iter()
            .map(|f| f.tensor.mean())
            .reduce(|a, b| a.add(b))
            .unwrap();
        let grads = loss.backward();
        assert!(net.conv1.weight.val().grad(&grads).is_none());
        let Block::Basic(b1) = &net.layer1[0] else {
            panic!("tiny uses basic blocks")
        };
        assert!(b1.conv1.weight.val().grad(&grads).is_none());
        let Block::Basic(b2) = &net.layer2[0] else {
            panic!("tiny uses basic blocks")
        };
        assert!(b2.conv1.weight.val().grad(&grads).is_some());
    }

    #[test]
    fn config_round_trips_through_toml() {
        let cfg = ResNetConfig::resnet50();
        let text = toml::to_string(&cfg).unwrap();
        let back: ResNetConfig = toml::from_str(&text).unwrap();
        assert_eq!(cfg, back);
        assert!(
            ResNetConfig {
                layers: [1, 0, 1, 1],
                ..ResNetConfig::tiny()
            }
            .validate()
            .is_err()
        );
    }
}
