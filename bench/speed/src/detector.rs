//! The detector student's training step: backbone + FPN, RPN, RoI sampling, RoIAlign, the
//! embedding box head, ViLD-text's cosine cross-entropy and the box losses, backward, AdamW.
//! `reference.py detector` is torchvision's Faster R-CNN in the same configuration.
//!
//! Inputs are synthetic and identical on both sides: noise images, and `--boxes` boxes per image
//! from [`crate::synth::unit`] (the same integer hash in `reference.py`), so that the RPN and
//! RoI sampling see the same ground truth. The text embeddings the classifier scores against are
//! random unit vectors (their values do not change the work).

use anyhow::{Result, bail};
use burn::tensor::{Device, Distribution, Tensor};
use ovkd_backbone::norm::NormKind;
use ovkd_detector::{Boxes, DetectorConfig, ImageBatch, Targets};
use rand::SeedableRng;

use crate::synth::{ms, unit, unit_rows};
use crate::{PhaseTimes, Schedule, time_training};

/// Options of the `detector` workload.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `tiny` (the OV-Shapes default) or `resnet50_fpn` (torchvision's layout).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Image side in pixels (square images, no resizing).
    #[arg(long, default_value_t = 128)]
    image: usize,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Ground-truth boxes per image.
    #[arg(long, default_value_t = 4)]
    boxes: usize,
    /// Classes (text embeddings) the classifier scores.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Embedding (teacher) dimension.
    #[arg(long, default_value_t = 64)]
    embed_dim: usize,
    /// The ResNet's batch norm: `preset` (as the preset has it), `batch` (trainable, what
    /// torchvision builds with `weights=None`) or `frozen`.
    #[arg(long, default_value = "preset")]
    norm: String,
    /// Before the timed steps, time the forward's stages one by one, each closed by a sync
    /// (features, RPN with its host-side proposals, RoI sampling on the host, RoIAlign and the
    /// box head) and the backbone's own backward, and print their medians to stderr as
    /// `stages_ms {...}`: where a step's time goes, on devices no profiler reaches.
    #[arg(long)]
    stages: bool,
}

/// `--boxes` boxes per image `i` of a `size`-pixel square image, in `[x1, y1, x2, y2]`: corner
/// in the first 70 % of the side, sides 5-30 % of it; label `(i * boxes + j) % classes`.
pub fn targets(i: usize, boxes: usize, classes: usize, size: usize) -> Targets {
    let s = size as f32;
    let mut b = Vec::with_capacity(boxes);
    let mut labels = Vec::with_capacity(boxes);
    for j in 0..boxes {
        let u = |k: u64| unit(i as u64, j as u64, k) as f32;
        let (x1, y1) = (u(0) * 0.7 * s, u(1) * 0.7 * s);
        let (w, h) = ((0.05 + 0.25 * u(2)) * s, (0.05 + 0.25 * u(3)) * s);
        b.push([x1, y1, x1 + w, y1 + h]);
        labels.push((i * boxes + j) % classes);
    }
    Targets {
        boxes: Boxes(b),
        labels,
    }
}

/// Runs `warmup + steps` training steps; returns the timed ones.
pub fn run(args: &Args, device: &Device, schedule: &Schedule) -> Result<PhaseTimes> {
    let mut cfg = match args.preset.as_str() {
        "tiny" => DetectorConfig::tiny(args.embed_dim),
        "resnet50_fpn" => DetectorConfig::resnet50_fpn(args.embed_dim),
        other => bail!("--preset {other}: expected tiny or resnet50_fpn"),
    };
    match args.norm.as_str() {
        "preset" => {}
        "batch" => cfg.backbone.resnet.norm = NormKind::Batch,
        "frozen" => cfg.backbone.resnet.norm = NormKind::Frozen,
        other => bail!("--norm {other}: expected preset, batch or frozen"),
    }
    let ad = device.clone().autodiff();
    ad.seed(0);
    let model = cfg.init(&ad)?;
    let s = args.image;
    let images = Tensor::<4>::random([args.batch, 3, s, s], Distribution::Uniform(0.0, 1.0), &ad);
    let batch = ImageBatch {
        images,
        sizes: vec![[s, s]; args.batch],
    };
    let targets: Vec<Targets> = (0..args.batch)
        .map(|i| targets(i, args.boxes, args.classes, s))
        .collect();
    let text_embeds = unit_rows(args.classes, args.embed_dim, device);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    if args.stages {
        let stages = time_stages(&model, &batch, &targets, schedule, &ad, &mut rng)?;
        eprintln!("stages_ms {}", serde_json::to_string(&stages)?);
    }
    time_training(model, schedule, 1e-4, &ad, |model| {
        let out = model.forward_train(&batch, &targets, text_embeds.clone(), None, &mut rng)?;
        Ok(out.losses.total())
    })
}

/// Median milliseconds of each stage of the detector's forward (see `Args::stages`).
fn time_stages(
    model: &ovkd_detector::Detector,
    batch: &ImageBatch,
    targets: &[Targets],
    schedule: &Schedule,
    ad: &Device,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<std::collections::BTreeMap<&'static str, f64>> {
    use ovkd_detector::roi_align::rois_from_boxes;
    use std::time::Instant;
    let names = [
        "1_features",
        "2_rpn",
        "3_sample_rois",
        "4_roi_align_box_head",
        "5_features_backward",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let gt: Vec<Boxes> = targets.iter().map(|t| t.boxes.clone()).collect();
    for step in 0..schedule.warmup + schedule.steps {
        let mut t = Instant::now();
        let mut lap = |i: usize, t: &mut Instant| -> Result<()> {
            ad.sync()?;
            if step >= schedule.warmup {
                samples[i].push(ms(*t));
            }
            *t = Instant::now();
            Ok(())
        };
        let features = model.features(batch);
        lap(0, &mut t)?;
        let rpn = model
            .rpn
            .forward(&features, &batch.sizes, batch.padded_size(), Some(&gt), rng);
        lap(1, &mut t)?;
        let picked = model
            .config
            .roi_heads
            .select_training_samples(&rpn.proposals, targets, rng);
        let per_image: Vec<&[[f32; 4]]> = picked.iter().map(|s| s.boxes.as_slice()).collect();
        let rois = rois_from_boxes(&per_image);
        lap(2, &mut t)?;
        let out = model.embed_regions(&features, &rois);
        lap(3, &mut t)?;
        drop(out);
        let total = features
            .into_iter()
            .map(|f| f.tensor.sum())
            .reduce(|a, b| a + b)
            .expect("at least one feature map");
        let _grads = total.backward();
        lap(4, &mut t)?;
    }
    Ok(names
        .into_iter()
        .zip(samples)
        .map(|(n, mut v)| {
            v.sort_by(f64::total_cmp);
            (n, v.get(v.len() / 2).copied().unwrap_or(f64::NAN))
        })
        .collect())
}
