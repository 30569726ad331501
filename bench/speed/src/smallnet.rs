//! The small conv net of issue 8, trained one step at a time. `reference.py smallnet` is the
//! same net in PyTorch.
//!
//! Four stages of two 3×3 convolutions (the first with stride 2), 3→32→64→128→256 channels,
//! ReLU after each; global average pooling; a linear layer to 10 classes; cross-entropy against
//! random labels; AdamW (lr 1e-3, PyTorch's defaults: betas 0.9/0.999, eps 1e-8, weight decay
//! 1e-2).

use anyhow::Result;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use ovkd_backbone::ops::relu;
use ovkd_backbone::ops::{Conv2d, Conv2dConfig};

use crate::{PhaseTimes, Schedule, time_training};

/// Options of the `smallnet` workload.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image side in pixels.
    #[arg(long, default_value_t = 128)]
    image: usize,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Which convolution: `fast` (ovkd_backbone::ops) or `burn` (burn::tensor::module::conv2d).
    #[arg(long, default_value = "fast")]
    conv: String,
}

/// The net; `fast` picks the convolution.
#[derive(Module, Debug)]
struct SmallNet {
    convs: Vec<Conv2d>,
    head: Linear,
    #[module(skip)]
    fast: bool,
}

impl SmallNet {
    fn new(device: &Device, fast: bool) -> Self {
        let mut convs = Vec::new();
        let mut cin = 3;
        for c in [32, 64, 128, 256] {
            for (i, stride) in [2, 1].into_iter().enumerate() {
                let from = if i == 0 { cin } else { c };
                convs.push(
                    Conv2dConfig::new([from, c], [3, 3])
                        .with_stride([stride, stride])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(device),
                );
            }
            cin = c;
        }
        Self {
            convs,
            head: LinearConfig::new(256, 10).init(device),
            fast,
        }
    }

    /// `[B, 3, H, W]` → logits `[B, 10]`.
    fn forward(&self, mut x: Tensor<4>) -> Tensor<2> {
        for conv in &self.convs {
            x = if self.fast {
                conv.forward(x)
            } else {
                let [_, _, h, w] = x.dims();
                burn::tensor::module::conv2d(
                    x,
                    conv.weight.val(),
                    conv.bias.as_ref().map(|b| b.val()),
                    conv.options(h, w),
                )
            };
            x = relu(x);
        }
        let x: Tensor<2> = x.mean_dims(&[2, 3]).flatten(1, 3);
        self.head.forward(x)
    }
}

/// Runs `warmup + steps` training steps; returns the timed ones.
pub fn run(args: &Args, device: &Device, schedule: &Schedule) -> Result<PhaseTimes> {
    let fast = match args.conv.as_str() {
        "fast" => true,
        "burn" => false,
        other => anyhow::bail!("--conv {other}: expected fast or burn"),
    };
    let ad = device.clone().autodiff();
    ad.seed(0);
    let model = SmallNet::new(&ad, fast);
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let x = Tensor::<4>::random(
        [args.batch, 3, args.image, args.image],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let labels: Vec<i64> = (0..args.batch as i64).map(|i| (i * 7) % 10).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [args.batch]), &ad);
    time_training(model, schedule, 1e-3, &ad, |model| {
        let logits = model.forward(x.clone());
        Ok(loss_fn.forward(logits, y.clone()))
    })
}
