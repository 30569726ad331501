//! The segmenter's training task for [`crate::train::train`]: LSeg's cross-entropy on the
//! ground truth, MaskCLIP+'s pseudo-labels on the unlabelled pixels (from the teacher, then
//! from the student itself), and an optional feature-distillation term.
//!
//! Step `s` reads batch `s mod n` of epoch `s / n` of the loader, whose shuffling and
//! augmentation are seeded by (seed, epoch, image), and which pseudo-label source it uses is a
//! function of `s`: a resumed run sees exactly the batches and labels an uninterrupted one does
//! (random crops too: [`random_crop`] draws from (seed, epoch, image)).

use std::sync::Arc;

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use ovkd_data::loader::{DataLoader, HostBatch, LoaderConfig};
use ovkd_segmenter::Segmenter;
use ovkd_segmenter::decoder::upsample_bilinear;
use serde::{Deserialize, Serialize};

use super::SegError;
use super::cache::TeacherFeatures;
use super::crop::random_crop;
use super::dataset::{PSEUDO_OFFSET, SegTrainSet};
use super::feature_distill::{FeatureDistillConfig, feature_distill_loss};
use super::lseg::{IGNORE, nll_sum};
use super::pseudo::{PseudoLabelConfig, fill_unlabelled};
use super::self_train::{PseudoSource, SelfTrainConfig};
use crate::train::StepOutput;

/// Distillation settings of the segmenter (the `[distill]` section).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SegDistillConfig {
    /// Prompt templates for the class text embeddings (`{}` is the class name).
    #[serde(default = "default_templates")]
    pub templates: Vec<String>,
    /// Names whose text embedding stands for the background (when `segmenter.background` is
    /// `text`, and in the teacher's zero-shot label maps when `zero_shot_background` is
    /// `text`).
    #[serde(default = "default_background_names")]
    pub background_names: Vec<String>,
    /// Side of the square input at which the teacher computes dense features (a multiple of
    /// its patch size).
    #[serde(default = "default_teacher_size")]
    pub teacher_size: usize,
    /// How the teacher's zero-shot label maps decide background.
    #[serde(default)]
    pub zero_shot_background: ZeroShotBackground,
    /// Teacher pseudo-labels.
    #[serde(default)]
    pub pseudo: PseudoLabelConfig,
    /// Self-training.
    #[serde(default)]
    pub self_train: SelfTrainConfig,
    /// Feature distillation.
    #[serde(default)]
    pub feature: FeatureDistillConfig,
}

/// How MaskCLIP's zero-shot label maps (the teacher's floor) decide background.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ZeroShotBackground {
    /// Background is one more class, embedded from `background_names`.
    Text,
    /// A pixel is background when its best class's cosine score is below `min_score`.
    Threshold {
        /// The cosine score below which a pixel is background.
        min_score: f64,
    },
}

impl Default for ZeroShotBackground {
    fn default() -> Self {
        Self::Text
    }
}

fn default_templates() -> Vec<String> {
    vec!["a photo of a {}.".into()]
}
fn default_background_names() -> Vec<String> {
    vec!["background".into()]
}
fn default_teacher_size() -> usize {
    64
}

impl Default for SegDistillConfig {
    fn default() -> Self {
        Self {
            templates: default_templates(),
            background_names: default_background_names(),
            teacher_size: default_teacher_size(),
            zero_shot_background: ZeroShotBackground::default(),
            pseudo: PseudoLabelConfig::default(),
            self_train: SelfTrainConfig::default(),
            feature: FeatureDistillConfig::default(),
        }
    }
}

/// What [`SegTask::new`] needs.
pub struct SegTaskInputs {
    /// The training images and labels (with teacher pseudo-labels merged in, if any).
    pub dataset: SegTrainSet,
    /// Batching, shuffling and augmentation.
    pub loader: LoaderConfig,
    /// Crop each collated image to a random window of this side ([`random_crop`], seeded by
    /// the loader's seed); `None` trains on whole images.
    pub crop: Option<usize>,
    /// Text embeddings of the training label set's classes (background excluded) `[K, D]`.
    pub class_embeds: Tensor<2>,
    /// The label value of each row of `class_embeds`; the background's value is 0.
    pub class_values: Vec<i64>,
    /// Label values the pseudo-labels may take (a subset of `class_values`, or 0).
    pub candidate_values: Vec<i64>,
    /// The teacher's dense features of every training image (feature distillation only).
    pub teacher_features: Option<Arc<TeacherFeatures>>,
    /// The training (autodiff) device.
    pub device: Device,
}

/// One step of segmenter training; see the module docs.
pub struct SegTask {
    cfg: SegDistillConfig,
    loader: DataLoader,
    class_embeds: Tensor<2>,
    /// Label value → channel ([`IGNORE`] when the value is not in the label set).
    channel_of: Vec<i64>,
    candidate_channels: Vec<i64>,
    teacher_features: Option<Arc<TeacherFeatures>>,
    teacher_labels: bool,
    device: Device,
    crop: Option<usize>,
    seed: u64,
    batches_per_epoch: usize,
    epoch_cache: Option<(u64, Vec<Vec<usize>>)>,
}

impl SegTask {
    /// Builds the task; checks that the label values and candidates make sense.
    pub fn new(cfg: SegDistillConfig, inputs: SegTaskInputs) -> Result<Self, SegError> {
        let bad = |field: &str, reason: String| SegError::Config {
            field: field.into(),
            reason,
        };
        let k = inputs.class_embeds.dims()[0];
        if inputs.class_values.len() != k {
            return Err(bad(
                "class_values",
                format!(
                    "{} values for {k} class embeddings",
                    inputs.class_values.len()
                ),
            ));
        }
        let max = inputs
            .class_values
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(0) as usize;
        let mut channel_of = vec![IGNORE; max + 1];
        channel_of[0] = 0;
        for (i, &v) in inputs.class_values.iter().enumerate() {
            if v <= 0 || v >= PSEUDO_OFFSET as i64 || v == IGNORE {
                return Err(bad(
                    "class_values",
                    format!("label value {v} must be in 1..{PSEUDO_OFFSET} and not {IGNORE}"),
                ));
            }
            channel_of[v as usize] = i as i64 + 1;
        }
        let mut candidate_channels = Vec::new();
        for &v in &inputs.candidate_values {
            match channel_of.get(v.max(0) as usize) {
                Some(&c) if c != IGNORE && v >= 0 => candidate_channels.push(c),
                _ => {
                    return Err(bad(
                        "distill.pseudo.candidates",
                        format!("label value {v} is not in the training label set"),
                    ));
                }
            }
        }
        let uses_pseudo = cfg.pseudo.enabled || cfg.self_train.start().is_some();
        if uses_pseudo && candidate_channels.is_empty() {
            return Err(bad(
                "distill.pseudo.candidates",
                "pseudo-labels or self-training need at least one candidate class".into(),
            ));
        }
        if cfg.feature.weight > 0.0 && inputs.teacher_features.is_none() {
            return Err(bad(
                "distill.feature.weight",
                "feature distillation needs the teacher's dense features".into(),
            ));
        }
        if inputs.crop.is_some() && cfg.feature.weight > 0.0 {
            // The teacher's feature maps are aligned to whole (resized, flipped) images.
            return Err(bad(
                "data.crop",
                "random crops and feature distillation do not go together".into(),
            ));
        }
        if inputs.crop == Some(0) {
            return Err(bad("data.crop", "must be at least 1".into()));
        }
        let seed = inputs.loader.seed;
        let loader = DataLoader::new(Arc::new(inputs.dataset), inputs.loader);
        let batches_per_epoch = loader.num_batches();
        if batches_per_epoch == 0 {
            return Err(bad("data", "the training set is empty".into()));
        }
        Ok(Self {
            teacher_labels: cfg.pseudo.enabled,
            cfg,
            loader,
            class_embeds: inputs.class_embeds,
            channel_of,
            candidate_channels,
            teacher_features: inputs.teacher_features,
            device: inputs.device,
            crop: inputs.crop,
            seed,
            batches_per_epoch,
            epoch_cache: None,
        })
    }

    /// Where step `step`'s pseudo-labels come from.
    pub fn source_at(&self, step: usize) -> PseudoSource {
        self.cfg.self_train.source_at(step, self.teacher_labels)
    }

    /// The dataset indices of step `step`'s batch.
    pub fn batch_indices(&mut self, step: usize) -> Vec<usize> {
        let epoch = (step / self.batches_per_epoch) as u64;
        if self.epoch_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.epoch_cache = Some((epoch, self.loader.batch_indices(epoch)));
        }
        let (_, batches) = self.epoch_cache.as_ref().expect("just filled");
        batches[step % self.batches_per_epoch].clone()
    }

    fn channel(&self, value: i64) -> i64 {
        usize::try_from(value)
            .ok()
            .and_then(|v| self.channel_of.get(v).copied())
            .unwrap_or(IGNORE)
    }

    /// The teacher's embeddings of the batch's images, transformed as the images were
    /// (resized to each image's 1/4 grid, mirrored when flipped), padded to `[B, D, hq, wq]`,
    /// with the valid positions `[B, 1, hq, wq]`.
    fn teacher_targets(
        &self,
        feats: &TeacherFeatures,
        hb: &HostBatch,
        [hq, wq]: [usize; 2],
    ) -> (Tensor<4>, Tensor<4>) {
        let dev = &self.device;
        let mut embeds = Vec::new();
        let mut valid = Vec::new();
        for (i, &idx) in hb.meta.indices.iter().enumerate() {
            let [hi, wi] = hb.meta.image_sizes[i];
            let (h4, w4) = (hi.div_ceil(4).min(hq), wi.div_ceil(4).min(wq));
            let e = feats.embeds(idx, dev);
            let [d, gh, gw] = e.dims();
            let mut e = upsample_bilinear(e.reshape([1, d, gh, gw]), [h4, w4]);
            if hb.meta.flipped[i] {
                e = e.flip([3]);
            }
            let pad = (0, wq - w4, 0, hq - h4);
            embeds.push(e.pad(pad, 0.0f32));
            valid.push(Tensor::<4>::ones([1, 1, h4, w4], dev).pad(pad, 0.0f32));
        }
        (Tensor::cat(embeds, 0), Tensor::cat(valid, 0))
    }

    /// The loss terms of step `step` for `model`.
    pub fn run_step(&mut self, model: &Segmenter, step: usize) -> Result<StepOutput, SegError> {
        let indices = self.batch_indices(step);
        let epoch = (step / self.batches_per_epoch) as u64;
        let mut hb = self.loader.load_batch(&indices, epoch)?;
        if let Some(size) = self.crop {
            hb = random_crop(hb, size, self.seed, epoch);
        }
        let [b, _, h, w] = hb.shape;
        let sem = hb.semantic.as_ref().ok_or_else(|| SegError::Config {
            field: "data".into(),
            reason: "the training samples have no label maps".into(),
        })?;
        let n = b * h * w;
        let mut gt = vec![IGNORE; n];
        let mut teacher = vec![IGNORE; n];
        let mut unlabelled = vec![false; n];
        for i in 0..b {
            let [hi, wi] = hb.meta.image_sizes[i];
            for y in 0..hi.min(h) {
                for x in 0..wi.min(w) {
                    let p = (i * h + y) * w + x;
                    let v = sem[p];
                    if v == IGNORE {
                        unlabelled[p] = true;
                    } else if v >= PSEUDO_OFFSET as i64 {
                        unlabelled[p] = true;
                        teacher[p] = self.channel(v - PSEUDO_OFFSET as i64);
                    } else {
                        gt[p] = self.channel(v);
                    }
                }
            }
        }
        let source = self.source_at(step);
        let dev = &self.device;
        let int3 = |v: Vec<i64>| Tensor::<3, Int>::from_data(TensorData::new(v, [b, h, w]), dev);
        let images = Tensor::<4>::from_data(TensorData::new(hb.images.clone(), hb.shape), dev);
        let out = model.forward(images, self.class_embeds.clone());
        let logits = out.logits;

        let n_gt = gt.iter().filter(|&&c| c != IGNORE).count();
        let gt_t = int3(gt);
        let gt_mask = gt_t.clone().not_equal_elem(IGNORE);
        let gt_sum = nll_sum(logits.clone(), gt_t.clone(), gt_mask.clone());

        let n_unl = unlabelled.iter().filter(|&&u| u).count();
        let (pseudo_sum, n_pseudo) = match source {
            PseudoSource::None => (None, 0),
            PseudoSource::Teacher => {
                let n_t = teacher.iter().filter(|&&c| c != IGNORE).count();
                let t = int3(teacher);
                let mask = t.clone().not_equal_elem(IGNORE);
                (Some(nll_sum(logits.clone(), t, mask)), n_t)
            }
            PseudoSource::Student => {
                let base: Vec<i64> = unlabelled
                    .iter()
                    .map(|&u| if u { IGNORE } else { 0 })
                    .collect();
                let cand = Tensor::<1, Int>::from_data(
                    TensorData::new(
                        self.candidate_channels.clone(),
                        [self.candidate_channels.len()],
                    ),
                    dev,
                );
                let probs = softmax(logits.clone().detach().select(1, cand), 1);
                let (targets, filled): (Tensor<3, Int>, Tensor<3, Bool>) = fill_unlabelled(
                    int3(base),
                    probs,
                    &self.candidate_channels,
                    self.cfg.self_train.threshold,
                );
                let n_f = filled.clone().int().sum().into_scalar::<i64>() as usize;
                (Some(nll_sum(logits.clone(), targets, filled)), n_f)
            }
        };
        let norm = (n_gt + n_pseudo).max(1) as f64;
        let mut terms = vec![("loss_lseg".to_string(), gt_sum.div_scalar(norm))];
        if let Some(s) = pseudo_sum {
            terms.push((
                "loss_pseudo".to_string(),
                s.div_scalar(norm).mul_scalar(self.cfg.pseudo.weight),
            ));
        }
        if self.cfg.feature.weight > 0.0 {
            let feats = self
                .teacher_features
                .as_ref()
                .expect("checked in SegTask::new");
            let [_, _, hq, wq] = out.pixel_embeds.dims();
            let (t, valid) = self.teacher_targets(feats, &hb, [hq, wq]);
            let l = feature_distill_loss(out.pixel_embeds, t, valid, self.cfg.feature.loss);
            terms.push((
                "loss_feat".to_string(),
                l.mul_scalar(self.cfg.feature.weight),
            ));
        }

        let pred = logits.detach().argmax(1).reshape([b, h, w]);
        let correct = pred
            .equal(gt_t)
            .bool_and(gt_mask)
            .int()
            .sum()
            .into_scalar::<i64>();
        let extra = vec![
            ("acc".to_string(), correct as f64 / n_gt.max(1) as f64),
            (
                "pseudo_frac".to_string(),
                n_pseudo as f64 / n_unl.max(1) as f64,
            ),
            (
                "self_training".to_string(),
                f64::from(u8::from(source == PseudoSource::Student)),
            ),
        ];
        Ok(StepOutput {
            terms,
            images: b,
            extra,
        })
    }
}

impl crate::train::TrainTask<Segmenter> for SegTask {
    fn step(&mut self, model: &Segmenter, step: usize) -> Result<StepOutput, String> {
        self.run_step(model, step).map_err(|e| e.to_string())
    }

    fn extra_state(&self) -> serde_json::Value {
        serde_json::json!({ "self_train_after": self.cfg.self_train.start() })
    }

    fn restore(&mut self, extra: &serde_json::Value) {
        let saved = extra.get("self_train_after").and_then(|v| v.as_u64());
        let now = self.cfg.self_train.start().map(|s| s as u64);
        if saved != now {
            tracing::warn!(
                "the checkpoint was trained with self_train.after_step = {saved:?}, this run has {now:?}"
            );
        }
    }
}
