//! The detector's training task for [`crate::train::train`]: ViLD-text + ViLD-image + the box
//! and RPN losses ([`DetTaskMode::Full`]), or the RPN alone ([`DetTaskMode::RpnOnly`], the
//! class-agnostic proposal network of the `proposals` stage).
//!
//! Step `s` reads batch `s mod n` of epoch `s div n` of the loader's shuffled order, with the
//! loader's augmentation (scale jitter gives each image its own size; the batch is padded),
//! and draws every random choice (ViLD-image's regions, the RPN's anchor sample, the RoI
//! sample) from ChaCha8 streams seeded by (seed, step). So step `s` is the same whether the
//! process started at 0 or resumed at `s`. Batches are prepared a few steps ahead on a
//! background thread.

use std::sync::Arc;

use burn::tensor::{Device, Tensor, TensorData};
use ovkd_data::loader::{DataLoader, HostBatch, Prefetch};
use ovkd_detector::{Boxes, Detector, ImageBatch, Targets};
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use super::bag_cache::BagCache;
use super::baron::{BaronQueues, StepBag, baron_losses, draw_step_bags, member_boxes};
use super::pseudo_words::PseudoWordEncoder;
use super::{DetDistillConfig, DetError, DistillMethod, vild_image_loss};
use crate::train::{StepOutput, TrainTask};

/// What the task trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetTaskMode {
    /// The whole detector: RPN, box regression, ViLD-text and (with a region source and a
    /// positive weight) ViLD-image.
    Full,
    /// Backbone, FPN and RPN only, on the ground-truth boxes (class-agnostic proposals).
    RpnOnly,
}

/// Where ViLD-image's boxes and teacher embeddings come from (the embedding cache).
pub trait RegionSource: Send + Sync {
    /// Embedding size D.
    fn dim(&self) -> usize;
    /// The cached boxes of an image (`[x1, y1, x2, y2]` in the original image's pixels) and
    /// their L2-normalised teacher embeddings, `[N * D]` row-major. An image that is not in
    /// the source has none.
    fn regions(&self, image_id: i64) -> Result<(Vec<[f32; 4]>, Vec<f32>), DetError>;
}

impl RegionSource for ovkd_teacher::cache::CacheReader {
    fn dim(&self) -> usize {
        ovkd_teacher::cache::CacheReader::dim(self)
    }

    fn regions(&self, image_id: i64) -> Result<(Vec<[f32; 4]>, Vec<f32>), DetError> {
        let b = self
            .read(&[image_id])
            .map_err(|e| DetError::Other(format!("embedding cache, image {image_id}: {e}")))?;
        Ok((b.boxes.into_iter().next().unwrap_or_default(), b.embeds))
    }
}

/// Everything step `s` needs from the host, prepared ahead.
#[derive(Debug, Clone)]
pub struct StepData {
    /// The step.
    pub step: usize,
    /// Images in `[0, 1]`, padded, with targets (base classes) and per-image metadata.
    pub batch: HostBatch,
    /// ViLD-image boxes per image, in the augmented image's pixels.
    pub distill_boxes: Vec<Vec<[f32; 4]>>,
    /// The teacher's embeddings of those boxes, images in order: `[Q * D]`.
    pub teacher_embeds: Vec<f32>,
    /// BARON's bags of this step (images in order), when BARON runs.
    pub bags: Vec<StepBag>,
}

/// Sampled RoIs that are not background, over the batch.
fn foreground_rois(samples: &[ovkd_detector::RoiSample]) -> usize {
    samples
        .iter()
        .flat_map(|s| &s.labels)
        .filter(|&&l| l != ovkd_detector::BACKGROUND)
        .count()
}

/// A ChaCha8 stream for (seed, what, step, index).
pub fn step_rng(seed: u64, what: &str, step: usize, index: usize) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"ovkd-det");
    h.update(seed.to_le_bytes());
    h.update(what.as_bytes());
    h.update((step as u64).to_le_bytes());
    h.update((index as u64).to_le_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

/// Maps a box of the original image through the augmentation of image `j` of `meta`: scaled
/// by `[sy, sx]`, mirrored when flipped, clipped to the augmented image.
pub(crate) fn augment_box(
    b: [f32; 4],
    scale: [f32; 2],
    flipped: bool,
    size: [usize; 2],
) -> [f32; 4] {
    let [sy, sx] = scale;
    let (h, w) = (size[0] as f32, size[1] as f32);
    let mut out = [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy];
    if flipped {
        out = [w - out[2], out[1], w - out[0], out[3]];
    }
    [
        out[0].clamp(0.0, w),
        out[1].clamp(0.0, h),
        out[2].clamp(0.0, w),
        out[3].clamp(0.0, h),
    ]
}

/// Loads step `step`'s batch and regions (a pure function of the loader's settings, the
/// sources, `cfg`, `teacher_mean`, `seed` and `step`). With `teacher_mean` `[D]`
/// (`distill.center_teacher`), it is removed from the teacher's embeddings, which are then
/// renormalised ([`super::center_targets`]).
pub fn step_data(
    loader: &DataLoader,
    regions: Option<&dyn RegionSource>,
    bags: Option<&BagCache>,
    cfg: &DetDistillConfig,
    teacher_mean: Option<&[f32]>,
    seed: u64,
    step: usize,
) -> Result<StepData, DetError> {
    let nb = loader.num_batches();
    if nb == 0 {
        return Err(DetError::Other(
            "the training set has no images (or fewer than one batch)".into(),
        ));
    }
    let epoch = (step / nb) as u64;
    let order = loader.batch_indices(epoch);
    let indices = &order[step % nb];
    let batch = loader
        .load_batch(indices, epoch)
        .map_err(|e| DetError::Other(format!("loading batch of step {step}: {e}")))?;
    let b = batch.meta.image_ids.len();
    let mut distill_boxes = vec![Vec::new(); b];
    let mut teacher_embeds = Vec::new();
    if let Some(src) = regions {
        let d = src.dim();
        for j in 0..b {
            let id = batch.meta.image_ids[j] as i64;
            let (boxes, embeds) = src.regions(id)?;
            if embeds.len() != boxes.len() * d {
                return Err(DetError::Other(format!(
                    "embedding cache, image {id}: {} values for {} boxes of dimension {d}",
                    embeds.len(),
                    boxes.len()
                )));
            }
            let ranked = super::vild_image::best_count(cfg.image_top_k, boxes.len());
            let usable: Vec<(usize, [f32; 4])> = boxes[..ranked]
                .iter()
                .enumerate()
                .map(|(k, &bx)| {
                    (
                        k,
                        augment_box(
                            bx,
                            batch.meta.scales[j],
                            batch.meta.flipped[j],
                            batch.meta.image_sizes[j],
                        ),
                    )
                })
                .filter(|(_, bx)| {
                    bx[2] - bx[0] >= cfg.min_region_size && bx[3] - bx[1] >= cfg.min_region_size
                })
                .collect();
            let k = cfg.image_regions_per_image.min(usable.len());
            let mut rng = step_rng(seed, "vild-image-regions", step, j);
            let mut picked: Vec<usize> = sample(&mut rng, usable.len(), k).into_vec();
            picked.sort_unstable();
            for p in picked {
                let (row, bx) = usable[p];
                distill_boxes[j].push(bx);
                teacher_embeds.extend_from_slice(&embeds[row * d..(row + 1) * d]);
            }
        }
        if let Some(mean) = teacher_mean {
            if mean.len() != d {
                return Err(DetError::Other(format!(
                    "the teacher mean has {} values for embeddings of dimension {d}",
                    mean.len()
                )));
            }
            super::center_targets(&mut teacher_embeds, mean);
        }
    }
    let mut step_bags = Vec::new();
    if let Some(cache) = bags {
        for j in 0..b {
            let id = batch.meta.image_ids[j] as i64;
            let Some(image_bags) = cache.images.get(&id) else {
                continue;
            };
            let mut rng = step_rng(seed, "baron-bags", step, j);
            step_bags.extend(draw_step_bags(
                image_bags,
                j,
                id,
                batch.meta.scales[j],
                batch.meta.flipped[j],
                batch.meta.image_sizes[j],
                &cfg.baron,
                &mut rng,
            ));
        }
    }
    Ok(StepData {
        step,
        batch,
        distill_boxes,
        teacher_embeds,
        bags: step_bags,
    })
}

/// The detector's training task.
pub struct DetTask {
    loader: DataLoader,
    regions: Option<Arc<dyn RegionSource>>,
    bags: Option<Arc<BagCache>>,
    baron: Option<(PseudoWordEncoder, BaronQueues)>,
    cfg: DetDistillConfig,
    /// The mean teacher region embedding ViLD-image's targets are centred on, if any.
    teacher_mean: Option<Arc<Vec<f32>>>,
    mode: DetTaskMode,
    /// `[C, D]` L2-normalised text embeddings of the training (base) classes.
    text_embeds: Tensor<2>,
    seed: u64,
    steps: usize,
    prefetch_depth: usize,
    device: Device,
    ahead: Option<(usize, Prefetch<Result<StepData, DetError>>)>,
}

impl DetTask {
    /// A task over `loader` (its augmentation must leave pixels in `[0, 1]`: mean 0, std 1,
    /// because the detector normalises its inputs itself), for `steps` steps in all.
    /// `regions` (the embedding cache) is read only when `cfg.image_weight > 0` in
    /// [`DetTaskMode::Full`]. `text_embeds` `[C, D]` index the loader's labels.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        loader: DataLoader,
        regions: Option<Arc<dyn RegionSource>>,
        cfg: DetDistillConfig,
        mode: DetTaskMode,
        text_embeds: Tensor<2>,
        seed: u64,
        steps: usize,
        device: Device,
    ) -> Result<Self, DetError> {
        let a = &loader.config().augment;
        if a.mean != [0.0; 3] || a.std != [1.0; 3] {
            return Err(DetError::Other(
                "the detector normalises its inputs: the loader's augment.mean must be 0 and augment.std 1".into(),
            ));
        }
        let uses_regions = mode == DetTaskMode::Full && cfg.uses_vild_image();
        if uses_regions && regions.is_none() {
            return Err(DetError::Other(
                "ViLD-image (distill.image_weight > 0) needs the embedding cache".into(),
            ));
        }
        if let Some(r) = regions.as_ref().filter(|_| uses_regions) {
            let d = text_embeds.dims()[1];
            if r.dim() != d {
                return Err(DetError::Other(format!(
                    "the embedding cache has dimension {} but the text embeddings {d}",
                    r.dim()
                )));
            }
        }
        Ok(Self {
            loader,
            regions: if uses_regions { regions } else { None },
            bags: None,
            baron: None,
            cfg,
            teacher_mean: None,
            mode,
            text_embeds,
            seed,
            steps,
            prefetch_depth: 3,
            device,
            ahead: None,
        })
    }

    /// BARON's inputs: the bag cache and the teacher's text tower. Required (and only
    /// allowed) when `distill.method = "baron"` in [`DetTaskMode::Full`].
    pub fn with_baron(
        mut self,
        bags: Arc<BagCache>,
        encoder: PseudoWordEncoder,
    ) -> Result<Self, DetError> {
        if self.cfg.method != DistillMethod::Baron || self.mode != DetTaskMode::Full {
            return Err(DetError::Other(
                "bags given but distill.method is not \"baron\"".into(),
            ));
        }
        let d = self.text_embeds.dims()[1];
        if bags.num_bags() > 0 && bags.dim != d {
            return Err(DetError::Other(format!(
                "the bag cache has dimension {} but the text embeddings {d}",
                bags.dim
            )));
        }
        let queues = BaronQueues::new(self.cfg.baron.queue_size, d);
        self.bags = Some(bags);
        self.baron = Some((encoder, queues));
        Ok(self)
    }

    /// Centre ViLD-image's targets on `mean` `[D]` (`distill.center_teacher`; see
    /// [`super::region_mean`]).
    pub fn with_teacher_mean(mut self, mean: Vec<f32>) -> Result<Self, DetError> {
        let d = self.text_embeds.dims()[1];
        if mean.len() != d {
            return Err(DetError::Other(format!(
                "the teacher mean has {} values but the text embeddings dimension {d}",
                mean.len()
            )));
        }
        self.teacher_mean = Some(Arc::new(mean));
        Ok(self)
    }

    /// Batches prepared ahead of the trainer (default 3; 0 loads each batch when needed).
    pub fn with_prefetch(mut self, depth: usize) -> Self {
        self.prefetch_depth = depth;
        self
    }

    /// The data of `step`, from the background thread when it is the next one prepared.
    fn data(&mut self, step: usize) -> Result<StepData, DetError> {
        if self.prefetch_depth == 0 {
            return step_data(
                &self.loader,
                self.regions.as_deref(),
                self.bags.as_deref(),
                &self.cfg,
                self.teacher_mean.as_deref().map(Vec::as_slice),
                self.seed,
                step,
            );
        }
        if self.ahead.as_ref().is_none_or(|(next, _)| *next != step) {
            let loader = self.loader.clone();
            let regions = self.regions.clone();
            let bags = self.bags.clone();
            let cfg = self.cfg.clone();
            let mean = self.teacher_mean.clone();
            let seed = self.seed;
            let iter = (step..self.steps.max(step + 1)).map(move |s| {
                step_data(
                    &loader,
                    regions.as_deref(),
                    bags.as_deref(),
                    &cfg,
                    mean.as_deref().map(Vec::as_slice),
                    seed,
                    s,
                )
            });
            self.ahead = Some((step, Prefetch::spawn(iter, self.prefetch_depth)));
        }
        let (next, pf) = self.ahead.as_mut().expect("just set");
        let data = pf
            .next()
            .ok_or_else(|| DetError::Other(format!("no data for step {step}")))??;
        *next = step + 1;
        debug_assert_eq!(data.step, step);
        Ok(data)
    }

    /// The loss terms of one step (what [`TrainTask::step`] returns).
    pub fn run_step(&mut self, model: &Detector, step: usize) -> Result<StepOutput, DetError> {
        let data = self.data(step)?;
        let meta = &data.batch.meta;
        let images = Tensor::<4>::from_data(
            TensorData::new(data.batch.images.clone(), data.batch.shape),
            &self.device,
        );
        let batch = ImageBatch {
            images,
            sizes: meta.image_sizes.clone(),
        };
        let n = batch.len();
        let mut rng = step_rng(self.seed, "detector", step, 0);
        let err = |e: ovkd_detector::DetectorError| DetError::Other(e.to_string());
        match self.mode {
            DetTaskMode::RpnOnly => {
                let gt: Vec<Boxes> = meta
                    .boxes
                    .iter()
                    .map(|b| Boxes(b.as_slice().to_vec()))
                    .collect();
                let (obj, reg) = model
                    .forward_rpn_train(&batch, &gt, &mut rng)
                    .map_err(err)?;
                let w = self.cfg.rpn_weight;
                Ok(StepOutput {
                    terms: vec![
                        ("rpn_objectness".into(), obj.mul_scalar(w)),
                        ("rpn_box_reg".into(), reg.mul_scalar(w)),
                    ],
                    images: n,
                    extra: vec![],
                })
            }
            DetTaskMode::Full => {
                let targets: Vec<Targets> = meta
                    .boxes
                    .iter()
                    .zip(&meta.labels)
                    .map(|(b, l)| Targets {
                        boxes: Boxes(b.as_slice().to_vec()),
                        labels: l.clone(),
                    })
                    .collect();
                if self.baron.is_some() {
                    return self.baron_step(model, &data, &batch, &targets, &mut rng);
                }
                let distill: Option<Vec<Boxes>> = self.regions.as_ref().map(|_| {
                    data.distill_boxes
                        .iter()
                        .map(|b| Boxes(b.clone()))
                        .collect()
                });
                let out = model
                    .forward_train(
                        &batch,
                        &targets,
                        self.text_embeds.clone(),
                        distill.as_deref(),
                        &mut rng,
                    )
                    .map_err(err)?;
                let l = out.losses;
                let q = data.distill_boxes.iter().map(Vec::len).sum::<usize>();
                let vild_image = match (&out.distill_embeds, self.regions.as_ref()) {
                    (Some(student), Some(_)) => {
                        let d = student.dims()[1];
                        let teacher = Tensor::<2>::from_data(
                            TensorData::new(data.teacher_embeds.clone(), [q, d]),
                            &self.device,
                        );
                        vild_image_loss(student.clone(), teacher, self.cfg.image_weight)
                    }
                    _ => Tensor::zeros([1], &self.device),
                };
                let fg = foreground_rois(&out.samples);
                let (rw, bw, tw) = (
                    self.cfg.rpn_weight,
                    self.cfg.box_weight,
                    self.cfg.text_weight,
                );
                Ok(StepOutput {
                    terms: vec![
                        ("rpn_objectness".into(), l.rpn_objectness.mul_scalar(rw)),
                        ("rpn_box_reg".into(), l.rpn_box_reg.mul_scalar(rw)),
                        ("vild_text".into(), l.classification.mul_scalar(tw)),
                        ("box_reg".into(), l.box_reg.mul_scalar(bw)),
                        ("vild_image".into(), vild_image),
                    ],
                    images: n,
                    extra: vec![
                        ("fg_rois".into(), fg as f64),
                        ("vild_regions".into(), q as f64),
                    ],
                })
            }
        }
    }
}

impl DetTask {
    /// A BARON step: the detector with the bags' members as distillation boxes, then
    /// classification, bag and single-region terms through the text tower.
    fn baron_step(
        &mut self,
        model: &Detector,
        data: &StepData,
        batch: &ImageBatch,
        targets: &[Targets],
        rng: &mut ChaCha8Rng,
    ) -> Result<StepOutput, DetError> {
        let n = batch.len();
        let members = member_boxes(&data.bags, n);
        let any = members.iter().any(|m| !m.is_empty());
        let distill: Vec<Boxes> = members.into_iter().map(Boxes).collect();
        let out = model
            .forward_train(
                batch,
                targets,
                self.text_embeds.clone(),
                any.then_some(distill.as_slice()),
                rng,
            )
            .map_err(|e| DetError::Other(e.to_string()))?;
        let (encoder, queues) = self.baron.as_mut().expect("checked by the caller");
        let (cls, bag, single, sequences) = baron_losses(
            model,
            encoder,
            &out,
            &data.bags,
            self.text_embeds.clone(),
            &self.cfg.baron,
            queues,
        )?;
        let l = out.losses;
        let fg = foreground_rois(&out.samples);
        let (rw, bw) = (self.cfg.rpn_weight, self.cfg.box_weight);
        Ok(StepOutput {
            terms: vec![
                ("rpn_objectness".into(), l.rpn_objectness.mul_scalar(rw)),
                ("rpn_box_reg".into(), l.rpn_box_reg.mul_scalar(rw)),
                ("baron_cls".into(), cls),
                ("box_reg".into(), l.box_reg.mul_scalar(bw)),
                ("baron_bag".into(), bag),
                ("baron_single".into(), single),
            ],
            images: n,
            extra: vec![
                ("fg_rois".into(), fg as f64),
                ("baron_bags".into(), data.bags.len() as f64),
                ("baron_sequences".into(), sequences as f64),
            ],
        })
    }
}

impl TrainTask<Detector> for DetTask {
    fn step(&mut self, model: &Detector, step: usize) -> Result<StepOutput, String> {
        self.run_step(model, step).map_err(|e| e.to_string())
    }

    fn extra_state(&self) -> serde_json::Value {
        match &self.baron {
            Some((_, queues)) => serde_json::to_value(queues).unwrap_or_default(),
            None => serde_json::Value::Null,
        }
    }

    fn restore(&mut self, extra: &serde_json::Value) {
        if let Some((_, queues)) = self.baron.as_mut() {
            if let Ok(q) = serde_json::from_value::<BaronQueues>(extra.clone()) {
                *queues = q;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_follow_scale_and_flip() {
        // A 100x80 (w x h) image resized to 50x40 and flipped.
        let b = augment_box([10.0, 20.0, 30.0, 60.0], [0.5, 0.5], true, [40, 50]);
        assert_eq!(b, [50.0 - 15.0, 10.0, 50.0 - 5.0, 30.0]);
        let b = augment_box([-5.0, 0.0, 300.0, 10.0], [1.0, 1.0], false, [40, 50]);
        assert_eq!(b, [0.0, 0.0, 50.0, 10.0]);
    }

    #[test]
    fn step_streams_differ_by_step_and_repeat_by_seed() {
        use rand::Rng;
        let a: u64 = step_rng(1, "x", 5, 0).random();
        let b: u64 = step_rng(1, "x", 5, 0).random();
        let c: u64 = step_rng(1, "x", 6, 0).random();
        let d: u64 = step_rng(2, "x", 5, 0).random();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
