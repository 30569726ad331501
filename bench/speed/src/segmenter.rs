//! The segmenter student's training step: ResNet body, the FPN-style decoder, the projection to
//! pixel embeddings, cosine logits against the label set's text embeddings, bilinear upsampling
//! to the input, LSeg's per-pixel cross-entropy, backward, AdamW. `reference.py segmenter` is
//! the same network written in PyTorch.
//!
//! The label map is a fixed pattern of 16-pixel blocks (`label_at`, the same formula in
//! `reference.py`); the class text embeddings are random unit vectors.

use anyhow::Result;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use ovkd_distill::seg::cross_entropy_ignore;
use ovkd_segmenter::SegmenterConfig;

use crate::synth::unit_rows;
use crate::{PhaseTimes, Schedule, time_training};

/// Options of the `segmenter` workload.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image side in pixels.
    #[arg(long, default_value_t = 128)]
    image: usize,
    /// Images per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Classes besides the background (text embeddings).
    #[arg(long, default_value_t = 10)]
    classes: usize,
}

/// The label of pixel `(y, x)` of image `b`, background included: `0..=classes`.
pub fn label_at(b: usize, y: usize, x: usize, classes: usize) -> i64 {
    ((y / 16 * 3 + x / 16 * 5 + b) % (classes + 1)) as i64
}

/// Runs `warmup + steps` training steps; returns the timed ones.
pub fn run(args: &Args, device: &Device, schedule: &Schedule) -> Result<PhaseTimes> {
    let cfg = SegmenterConfig::default();
    let ad = device.clone().autodiff();
    ad.seed(0);
    let model = cfg.init(&ad)?;
    let (b, s) = (args.batch, args.image);
    let images = Tensor::<4>::random([b, 3, s, s], Distribution::Normal(0.0, 1.0), &ad);
    let mut labels = Vec::with_capacity(b * s * s);
    for i in 0..b {
        for y in 0..s {
            labels.extend((0..s).map(|x| label_at(i, y, x, args.classes)));
        }
    }
    let labels = Tensor::<3, Int>::from_data(TensorData::new(labels, [b, s, s]), &ad);
    let class_embeds = unit_rows(args.classes, cfg.embed_dim, device);
    time_training(model, schedule, 1e-3, &ad, |model| {
        let out = model.forward(images.clone(), class_embeds.clone());
        Ok(cross_entropy_ignore(out.logits, labels.clone()))
    })
}
