//! ResNet body + FPN, as torchvision's `BackboneWithFPN` (`body`, `fpn`).

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::BackboneError;
use crate::features::FeatureMap;
use crate::fpn::{Fpn, FpnConfig};
use crate::resnet::{ResNet, ResNetConfig};

/// A ResNet with an FPN on C2..C5.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackboneConfig {
    /// The ResNet body.
    pub resnet: ResNetConfig,
    /// FPN output channels.
    pub fpn_channels: usize,
    /// Add P6 (for the RPN) by max-pooling P5.
    #[serde(default = "default_true")]
    pub p6: bool,
}

fn default_true() -> bool {
    true
}

impl BackboneConfig {
    /// Tiny ResNet (16/32/64/128) with a 64-channel FPN, P2–P6.
    pub fn tiny() -> Self {
        Self {
            resnet: ResNetConfig::tiny(),
            fpn_channels: 64,
            p6: true,
        }
    }

    /// torchvision's `resnet50` + 256-channel FPN, P2–P6 (`fasterrcnn_resnet50_fpn`).
    pub fn resnet50_fpn() -> Self {
        Self {
            resnet: ResNetConfig::resnet50(),
            fpn_channels: 256,
            p6: true,
        }
    }

    /// Builds the backbone.
    pub fn init(&self, device: &Device) -> Result<Backbone, BackboneError> {
        let body = self.resnet.init(device)?;
        let fpn = FpnConfig {
            in_channels: self.resnet.out_channels().to_vec(),
            out_channels: self.fpn_channels,
            extra_max_pool: self.p6,
        }
        .init(device)?;
        Ok(Backbone { body, fpn })
    }

    /// Strides of the outputs: `[4, 8, 16, 32]` plus 64 with P6.
    pub fn strides(&self) -> Vec<usize> {
        let mut s = self.resnet.strides().to_vec();
        if self.p6 {
            s.push(64);
        }
        s
    }

    /// The largest output stride; inputs should be padded to a multiple of it.
    pub fn size_divisibility(&self) -> usize {
        32
    }
}

/// ResNet body + FPN.
#[derive(Module, Debug)]
pub struct Backbone {
    /// The ResNet.
    pub body: ResNet,
    /// The FPN.
    pub fpn: Fpn,
}

impl Backbone {
    /// `[B, 3, H, W]` (H, W multiples of 32) → P2..P5 (+P6), finest first, each
    /// `[B, fpn_channels, H / s, W / s]`.
    pub fn forward(&self, images: Tensor<4>) -> Vec<FeatureMap> {
        self.fpn.forward(self.body.forward(images))
    }

    /// The ResNet's C2..C5 without the FPN (for heads with their own decoder).
    pub fn forward_body(&self, images: Tensor<4>) -> Vec<FeatureMap> {
        self.body.forward(images)
    }
}

/// The torchvision state-dict key of a parameter of this crate's modules, given its Burn path
/// (dot-separated, as Burn's module visitors and stores name it), so that a loader can map a
/// torchvision checkpoint (`resnet*`, or `fasterrcnn_resnet50_fpn`'s `backbone.*`) key for
/// key: enum variant segments (`Basic`, `Bottleneck`, `Frozen`, `Batch`) are dropped,
/// `downsample.conv`/`downsample.bn` become `downsample.0`/`downsample.1`, Burn's batch-norm
/// `gamma`/`beta` become `weight`/`bias`, and the FPN's convs gain torchvision's `.0`
/// (`inner_blocks.{i}.0.weight`).
pub fn torchvision_key(burn_path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let parts: Vec<&str> = burn_path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        match *part {
            "Basic" | "Bottleneck" | "Frozen" | "Batch" => continue,
            "conv" if i > 0 && parts[i - 1] == "downsample" => out.push("0"),
            "bn" if i > 0 && parts[i - 1] == "downsample" => out.push("1"),
            "gamma" => out.push("weight"),
            "beta" => out.push("bias"),
            _ => {
                out.push(part);
                if i >= 1 && matches!(parts[i - 1], "inner_blocks" | "layer_blocks") {
                    out.push("0");
                }
            }
        }
    }
    out.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn tiny_backbone_outputs_p2_to_p6() {
        let device = Device::default();
        let cfg = BackboneConfig::tiny();
        let bb = cfg.init(&device).unwrap();
        let x = Tensor::<4>::random([1, 3, 64, 64], Distribution::Default, &device);
        let out = bb.forward(x);
        assert_eq!(
            out.iter().map(|f| f.stride).collect::<Vec<_>>(),
            cfg.strides()
        );
        assert_eq!(
            out.iter().map(|f| f.level()).collect::<Vec<_>>(),
            vec![2, 3, 4, 5, 6]
        );
        assert_eq!(out[0].tensor.dims(), [1, 64, 16, 16]);
        assert_eq!(out[4].tensor.dims(), [1, 64, 1, 1]);
    }
}
