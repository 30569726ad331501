//! `ovkd train detector`: the detector student trained with ViLD (ViLD-text + ViLD-image on the
//! cached proposals' teacher embeddings), then scored on the val split.
//!
//! Reads a detector config (`[data]`, `[teacher]`, `[detector]`, `[distill]`, `[proposals]`,
//! `[train]`, `[eval]`; `extends` and `--set` allowed) and writes into the run directory:
//!
//! ```text
//! RUN/detector/config.toml     the resolved config (full detector config, absolute paths)
//! RUN/detector/ckpt-NNNNNN/    checkpoints; metrics.csv, metrics.parquet
//! RUN/cache/text/              the teacher's text embeddings of the vocabulary
//! RUN/eval/detections.json     COCO results on the val split
//! RUN/eval/det.json            `ovkd eval det --out` format: stats, per_category, splits
//! RUN/eval/det_vis/            the first val images with their detections drawn
//! ```
//!
//! The ViLD-image regions come from the embedding cache (`RUN/cache/regions` by default), made
//! by `ovkd proposals` and `ovkd teacher embed`.

use std::io::{Cursor, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ab_glyph::PxScale;
use anyhow::{Context as _, Result, anyhow, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use clap::Args;
use image::{Rgb, RgbImage};
use ovkd_data::DatasetDir;
use ovkd_data::coco::{CocoDataset, CocoResult};
use ovkd_data::loader::{DataLoader, DetectionDataset, LoaderConfig, load_rgb};
use ovkd_data::transforms::AugmentConfig;
use ovkd_detector::{Detections, Detector, DetectorConfig, ImageBatch};
use ovkd_distill::det::{
    BagCache, DetDistillConfig, DetTask, DetTaskMode, DistillMethod, InferenceConfig,
    PseudoWordEncoder, RegionHeads, RegionSource, detect_with_regions,
};
use ovkd_distill::train::{Checkpoints, LoopOptions, TrainConfig, train};
use ovkd_teacher::embed::Teacher;
use serde::{Deserialize, Serialize};

use super::Context;
use super::proposals::ProposalsSection;
use crate::config::{Invalid, Validate, loader::check_positive};

/// Arguments of `ovkd train detector`.
#[derive(Args, Debug)]
pub struct TrainDetectorArgs {
    /// Config, run directory, --resume, --set, --quiet.
    #[command(flatten)]
    pub common: super::RunArgs,
    /// Stop after this many steps of this process (checkpointing there).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Skip the evaluation on the val split.
    #[arg(long)]
    pub no_eval: bool,
    /// Only evaluate the newest checkpoint (with this run's `[eval]`, e.g.
    /// `--set eval.inference.scores=ensemble`); no training.
    #[arg(long, conflicts_with_all = ["resume", "no_eval", "stop_after"])]
    pub eval_only: bool,
    /// The report's name: `RUN/eval/NAME.json` (default `det`).
    #[arg(long, default_value = "det")]
    pub eval_name: String,
    /// Also write what the heads said about every val region before scoring (JSON Lines, one
    /// image per line: RPN objectness, refined boxes, the text head's logits over background
    /// + classes, the image head's cosines), to study the scoring (`bench/det_scoring.py`).
    #[arg(long, value_name = "FILE")]
    pub dump_regions: Option<PathBuf>,
}

/// Where the data is and how training images are augmented.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// An OV-Shapes-layout directory (`vocab.toml`, `{train,val}/instances.json`, images);
    /// default `RUN/data`.
    pub root: Option<PathBuf>,
    /// Training augmentation. `mean` and `std` must stay 0 and 1: the detector normalises its
    /// inputs itself.
    pub augment: AugmentConfig,
    /// Batches prepared ahead of the trainer on a background thread.
    pub prefetch: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            root: None,
            augment: AugmentConfig {
                hflip_prob: 0.5,
                scale_jitter: Some([0.8, 1.2]),
                mean: [0.0; 3],
                std: [1.0; 3],
                size: None,
            },
            prefetch: 3,
        }
    }
}

/// Which teacher embeds the class names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherSection {
    /// A CLIP checkpoint directory (Hugging Face layout); default `RUN/teacher`.
    pub path: Option<PathBuf>,
    /// Prompt templates (`{}` is the class name), averaged per class.
    pub templates: Vec<String>,
    /// Average each class's synonyms (from the vocabulary) into its text embedding too; false:
    /// its name alone.
    pub synonyms: bool,
}

impl Default for TeacherSection {
    fn default() -> Self {
        Self {
            path: None,
            templates: vec!["a photo of a {}.".into()],
            synonyms: true,
        }
    }
}

/// The ViLD-image cache.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSection {
    /// The region-embedding cache (`ovkd teacher embed --out`); default `RUN/cache/regions`.
    pub regions: Option<PathBuf>,
    /// BARON's bag cache (made by `ovkd proposals`); default `RUN/cache/bags.parquet`.
    pub bags: Option<PathBuf>,
}

/// How the student is scored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSection {
    /// Score source (text, image, ensemble), λ, NMS, threshold, top-k.
    pub inference: InferenceConfig,
    /// Images per forward pass.
    pub batch: usize,
    /// Val images drawn with their detections into `RUN/eval/det_vis/`.
    pub draw: usize,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            inference: InferenceConfig::default(),
            batch: 16,
            draw: 8,
        }
    }
}

/// The detector experiment's config (`ovkd proposals` and `ovkd train detector` read the
/// same file).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DetExperimentConfig {
    /// Data.
    #[serde(default)]
    pub data: DataSection,
    /// Teacher.
    #[serde(default)]
    pub teacher: TeacherSection,
    /// The student: `preset = "tiny" | "resnet50_fpn"` (default tiny) and any field of
    /// `DetectorConfig` to override, e.g. `box_head.image_branch = "separate_trunk"`. The
    /// embedding size is the teacher's.
    #[serde(default)]
    pub detector: toml::Table,
    /// ViLD loss weights and region sampling.
    #[serde(default)]
    pub distill: DetDistillConfig,
    /// Where the ViLD-image cache is.
    #[serde(default)]
    pub cache: CacheSection,
    /// The proposals stage.
    #[serde(default)]
    pub proposals: ProposalsSection,
    /// The detector's training loop.
    pub train: TrainConfig,
    /// Evaluation.
    #[serde(default)]
    pub eval: EvalSection,
}

impl Validate for DetExperimentConfig {
    fn validate(&self, _prefix: &str, problems: &mut Vec<Invalid>) {
        check_positive(problems, "train.lr".into(), self.train.lr);
        check_positive(
            problems,
            "proposals.train.lr".into(),
            self.proposals.train.lr,
        );
        for (key, v) in [
            ("train.steps", self.train.steps),
            ("train.batch_size", self.train.batch_size),
            (
                "proposals.train.batch_size",
                self.proposals.train.batch_size,
            ),
            ("proposals.top_k", self.proposals.top_k),
            ("eval.batch", self.eval.batch),
        ] {
            if v == 0 {
                problems.push(Invalid::new(key, "must be at least 1"));
            }
        }
        if self.teacher.templates.is_empty() {
            problems.push(Invalid::new("teacher.templates", "needs at least one"));
        }
        if self.data.augment.mean != [0.0; 3] || self.data.augment.std != [1.0; 3] {
            problems.push(Invalid::new(
                "data.augment",
                "mean must be [0, 0, 0] and std [1, 1, 1]: the detector normalises its inputs",
            ));
        }
        for (key, w) in [
            ("distill.text_weight", self.distill.text_weight),
            ("distill.image_weight", self.distill.image_weight),
            ("distill.rpn_weight", self.distill.rpn_weight),
            ("distill.box_weight", self.distill.box_weight),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                problems.push(Invalid::new(key, format!("must be ≥ 0, got {w}")));
            }
        }
        let b = &self.distill.baron;
        for (key, v) in [
            ("distill.baron.pseudo_words", b.pseudo_words),
            ("distill.baron.bags_per_image", b.bags_per_image),
            ("distill.baron.queue_size", b.queue_size),
            ("distill.baron.bags.bags_per_region", b.bags.bags_per_region),
            ("distill.baron.bags.orders", b.bags.orders),
            (
                "distill.baron.bags.regions_per_image",
                b.bags.regions_per_image,
            ),
        ] {
            if v == 0 {
                problems.push(Invalid::new(key, "must be at least 1"));
            }
        }
        for (key, v, lo, hi) in [
            ("distill.baron.word_dropout", b.word_dropout, 0.0, 0.99),
            ("distill.baron.bags.overlap", b.bags.overlap, 0.0, 0.99),
            (
                "distill.baron.bags.base_probability",
                b.bags.base_probability,
                0.0,
                1.0,
            ),
            ("distill.baron.bags.min_aspect", b.bags.min_aspect, 0.0, 1.0),
            (
                "distill.pseudo_box.threshold",
                self.distill.pseudo_box.threshold,
                0.0,
                1.0,
            ),
        ] {
            if !(lo..=hi).contains(&v) {
                problems.push(Invalid::new(
                    key,
                    format!("must be in [{lo}, {hi}], got {v}"),
                ));
            }
        }
        for (key, w) in [
            ("distill.baron.logit_scale", b.logit_scale),
            ("distill.baron.single_logit_scale", b.single_logit_scale),
            ("distill.baron.bag_weight", b.bag_weight),
            ("distill.baron.single_weight", b.single_weight),
            ("distill.baron.cls_weight", b.cls_weight),
            (
                "distill.pseudo_box.logit_scale",
                self.distill.pseudo_box.logit_scale,
            ),
        ] {
            if !(w.is_finite() && w >= 0.0) {
                problems.push(Invalid::new(key, format!("must be ≥ 0, got {w}")));
            }
        }
        let lambda = self.eval.inference.lambda;
        if !(0.0..=1.0).contains(&lambda) {
            problems.push(Invalid::new(
                "eval.inference.lambda",
                format!("must be in [0, 1], got {lambda}"),
            ));
        }
    }
}

/// Reads `path` with `--set` overrides.
pub fn load_config(path: &Path, sets: &[String]) -> Result<DetExperimentConfig> {
    crate::config::load_command_config(path, sets, "train detector", "detector")
}

fn merge_toml(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge_toml(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// The full detector config: the `preset` (`tiny` or `resnet50_fpn`, default `tiny`) for a
/// teacher of `embed_dim`, with every other key of `table` laid over it (nested tables merge
/// key by key, so `box_head.temperature = 0.02` changes only that).
pub fn resolve_detector(table: &toml::Table, embed_dim: usize) -> Result<DetectorConfig> {
    let mut over = table.clone();
    let preset = match over.remove("preset") {
        None => "tiny".to_string(),
        Some(toml::Value::String(s)) => s,
        Some(other) => bail!(
            "detector.preset: expected \"tiny\" or \"resnet50_fpn\", got a {}",
            other.type_str()
        ),
    };
    let base = match preset.as_str() {
        "tiny" => DetectorConfig::tiny(embed_dim),
        "resnet50_fpn" => DetectorConfig::resnet50_fpn(embed_dim),
        other => bail!("detector.preset: expected \"tiny\" or \"resnet50_fpn\", got {other:?}"),
    };
    let mut value = toml::Value::try_from(&base).context("serialising the detector preset")?;
    merge_toml(&mut value, toml::Value::Table(over));
    let cfg: DetectorConfig = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        let msg = msg
            .split("\nin `")
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        anyhow!("detector.{path}: {msg}")
    })?;
    cfg.validate()?;
    if cfg.box_head.embed_dim != embed_dim {
        bail!(
            "detector.box_head.embed_dim is {} but the teacher's embeddings have {embed_dim} dimensions",
            cfg.box_head.embed_dim
        );
    }
    Ok(cfg)
}

/// The run's paths, resolved from the config and the run directory.
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// The data set.
    pub data: PathBuf,
    /// The teacher checkpoint.
    pub teacher: PathBuf,
    /// The region-embedding cache.
    pub regions: PathBuf,
    /// The text-embedding cache.
    pub text_cache: PathBuf,
    /// BARON's bag cache.
    pub bags: PathBuf,
}

impl RunPaths {
    /// Defaults under `run` where the config leaves a path out.
    pub fn new(cfg: &DetExperimentConfig, run: &Path) -> Self {
        Self {
            data: cfg.data.root.clone().unwrap_or_else(|| run.join("data")),
            teacher: cfg
                .teacher
                .path
                .clone()
                .unwrap_or_else(|| run.join("teacher")),
            regions: cfg
                .cache
                .regions
                .clone()
                .unwrap_or_else(|| run.join("cache").join("regions")),
            text_cache: run.join("cache").join("text"),
            bags: cfg
                .cache
                .bags
                .clone()
                .unwrap_or_else(|| run.join("cache").join("bags.parquet")),
        }
    }
}

/// The class list of a vocabulary: names (name first, then synonyms), ids, novel flags.
#[derive(Debug, Clone)]
pub struct ClassList {
    /// Names per class.
    pub names: Vec<Vec<String>>,
    /// Category ids.
    pub ids: Vec<u64>,
    /// Whether each class is novel.
    pub novel: Vec<bool>,
}

impl ClassList {
    /// Every class of `vocab`, in vocabulary order.
    pub fn of(vocab: &ovkd_data::Vocabulary) -> Self {
        Self {
            names: vocab
                .classes
                .iter()
                .map(|c| c.all_names().map(String::from).collect())
                .collect(),
            ids: vocab.classes.iter().map(|c| c.id).collect(),
            novel: vocab.classes.iter().map(|c| c.is_novel()).collect(),
        }
    }

    /// Every class of `vocab`, by its name alone unless `synonyms`.
    pub fn texts(vocab: &ovkd_data::Vocabulary, synonyms: bool) -> Self {
        let mut all = Self::of(vocab);
        if !synonyms {
            for n in &mut all.names {
                n.truncate(1);
            }
        }
        all
    }

    /// Every class of `vocab`, by its name alone unless `teacher.synonyms`.
    pub fn of_config(vocab: &ovkd_data::Vocabulary, teacher: &TeacherSection) -> Self {
        Self::texts(vocab, teacher.synonyms)
    }

    /// Only the base classes.
    pub fn base(&self) -> Self {
        let keep: Vec<usize> = (0..self.ids.len()).filter(|&i| !self.novel[i]).collect();
        Self {
            names: keep.iter().map(|&i| self.names[i].clone()).collect(),
            ids: keep.iter().map(|&i| self.ids[i]).collect(),
            novel: vec![false; keep.len()],
        }
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
}

/// Loads the teacher on the plain CPU device (its parameters are constants).
pub fn load_teacher(path: &Path) -> Result<Teacher> {
    let (teacher, unused) = Teacher::load(path, &Device::flex())
        .with_context(|| format!("loading the teacher {}", path.display()))?;
    if !unused.is_empty() {
        tracing::warn!("{} unused teacher tensors: {:?}", unused.len(), unused);
    }
    Ok(teacher)
}

/// The teacher's prompt-ensemble text embeddings of `classes` (cached in `cache_dir`), as a
/// host `[K * D]` vector and D.
pub fn text_embeds(
    teacher: &Teacher,
    classes: &[Vec<String>],
    templates: &[String],
    cache_dir: &Path,
) -> Result<(Vec<f32>, usize)> {
    std::fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating {}", cache_dir.display()))?;
    let t = teacher
        .class_embeds_cached(classes, templates, cache_dir)
        .context("embedding the class names with the teacher")?;
    let d = t.dims()[1];
    let v = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow!("reading text embeddings: {e:?}"))?;
    Ok((v, d))
}

/// A `[K, D]` tensor on `device` from host data.
pub fn tensor2(v: &[f32], k: usize, d: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v.to_vec(), [k, d]), device)
}

/// The training loader of a split: labels index `class_ids`, pixels in `[0, 1]`.
pub fn train_loader(
    data: &DatasetDir,
    class_ids: &[u64],
    train: &TrainConfig,
    section: &DataSection,
) -> Result<DataLoader> {
    let ds = DetectionDataset::open(data.instances_path("train"), data.images_dir("train"))
        .with_context(|| format!("reading the train split of {}", data.root.display()))?
        .with_classes(class_ids.to_vec());
    if ovkd_data::loader::Dataset::len(&ds) == 0 {
        bail!(
            "{}: no training images",
            data.instances_path("train").display()
        );
    }
    loader_of(Arc::new(ds), train, section)
}

/// The training loader over `ds` (shuffled, augmented as `section` says).
pub fn loader_of(
    ds: Arc<DetectionDataset>,
    train: &TrainConfig,
    section: &DataSection,
) -> Result<DataLoader> {
    let n = ovkd_data::loader::Dataset::len(ds.as_ref());
    Ok(DataLoader::new(
        ds,
        LoaderConfig {
            batch_size: train.batch_size,
            shuffle: true,
            drop_last: n >= train.batch_size,
            seed: train.seed,
            prefetch: 1,
            size_divisor: 32,
            augment: section.augment.clone(),
        },
    ))
}

/// The newest checkpoint of a run's `RUN/<stage>/` (or the folder itself if it is one).
pub fn checkpoint_dir(path: &Path, stage: &str) -> Result<PathBuf> {
    if path.join("model.bpk").is_file() {
        return Ok(path.to_path_buf());
    }
    for dir in [path.join(stage), path.to_path_buf()] {
        if let Some((_, p)) = Checkpoints::new(&dir, 1).latest() {
            return Ok(p);
        }
    }
    bail!(
        "{}: neither a checkpoint folder (ckpt-NNNNNN with model.bpk) nor a run with checkpoints in {stage}/",
        path.display()
    )
}

/// The config saved beside a checkpoint (`RUN/detector/config.toml`).
pub fn config_of_checkpoint(ckpt: &Path) -> Result<(DetExperimentConfig, DetectorConfig)> {
    let path = ckpt
        .parent()
        .map(|p| p.join("config.toml"))
        .ok_or_else(|| anyhow!("{}: no parent folder", ckpt.display()))?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: DetExperimentConfig =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let det: DetectorConfig = toml::Value::Table(cfg.detector.clone())
        .try_into()
        .with_context(|| format!("{}: the [detector] section", path.display()))?;
    Ok((cfg, det))
}

/// Loads a detector checkpoint for inference on `device`.
pub fn load_detector(ckpt: &Path, cfg: &DetectorConfig, device: &Device) -> Result<Detector> {
    let model = cfg.init(device)?;
    Checkpoints::load_model(ckpt, model).with_context(|| format!("loading {}", ckpt.display()))
}

/// An image as CHW floats in `[0, 1]` and its `[h, w]`.
pub fn chw01(img: &RgbImage) -> (Vec<f32>, [usize; 2]) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0f32; 3 * h * w];
    for (k, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * h * w + k] = px[c] as f32 / 255.0;
        }
    }
    (out, [h, w])
}

/// Runs the detector on images (each resized so its longer side is `max_side`, when given)
/// and returns detections in the original images' pixels; with `head_outputs`, also each
/// image's regions and what the heads said about them, in the same pixels (without, the
/// [`RegionHeads`] are left in the resized images' pixels and carry no head outputs).
#[allow(clippy::too_many_arguments)]
pub fn detect_images(
    model: &Detector,
    images: &[RgbImage],
    text: &Tensor<2>,
    is_novel: &[bool],
    cfg: &InferenceConfig,
    max_side: Option<usize>,
    device: &Device,
    encoder: Option<&PseudoWordEncoder>,
    head_outputs: bool,
) -> Result<Vec<(Detections, RegionHeads)>> {
    let mut inputs = Vec::with_capacity(images.len());
    let mut scales = Vec::with_capacity(images.len());
    for img in images {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let [th, tw] = match max_side {
            Some(s) => ovkd_data::transforms::fit_longer_side([h, w], s),
            None => [h, w],
        };
        let resized = if [th, tw] == [h, w] {
            img.clone()
        } else {
            image::imageops::resize(
                img,
                tw as u32,
                th as u32,
                image::imageops::FilterType::Triangle,
            )
        };
        scales.push([w as f32 / tw as f32, h as f32 / th as f32]);
        inputs.push(chw01(&resized));
    }
    let views: Vec<(&[f32], [usize; 2])> = inputs.iter().map(|(v, s)| (v.as_slice(), *s)).collect();
    let batch = ImageBatch::from_chw(&views, 32, device)?;
    let mut dets = detect_with_regions(
        model,
        &batch,
        text.clone(),
        is_novel,
        cfg,
        encoder,
        head_outputs,
    )?;
    for ((d, heads), [sx, sy]) in dets.iter_mut().zip(scales) {
        // The regions (about a thousand proposals an image) only matter to a caller that asked
        // for the heads' outputs.
        let regions = head_outputs.then_some([&mut heads.boxes, &mut heads.proposals]);
        for boxes in std::iter::once(&mut d.boxes).chain(regions.into_iter().flatten()) {
            for b in boxes.0.iter_mut() {
                *b = [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy];
            }
        }
    }
    Ok(dets)
}

/// How many boxes [`draw_detections`] draws per image unless told otherwise.
pub const DRAW_TOP_DEFAULT: usize = 10;

/// The detections worth drawing: one box per object, the best-scoring label of each (NMS across
/// classes at IoU 0.5), and at most `top` of them, best first. The detector keeps every box
/// scoring above `score_thresh` (0.05), about 26 per OV-Shapes image of 4 objects, several
/// labels per object among them; a higher score threshold is no cure, because the novel classes'
/// scores (RPN objectness × image head) sit far below the base classes'.
pub fn for_drawing(dets: &Detections, top: usize) -> Detections {
    let keep = ovkd_detector::nms::nms(&dets.boxes.0, &dets.scores, 0.5);
    let keep = &keep[..keep.len().min(top)];
    Detections {
        boxes: ovkd_detector::Boxes(keep.iter().map(|&i| dets.boxes.0[i]).collect()),
        scores: keep.iter().map(|&i| dets.scores[i]).collect(),
        labels: keep.iter().map(|&i| dets.labels[i]).collect(),
    }
}

/// Draws [`for_drawing`]`(dets, top)` on `img` scaled by `k` (nearest), each box in its class
/// colour with the class name and score; novel classes get a dashed outline.
pub fn draw_detections(
    img: &RgbImage,
    dets: &Detections,
    top: usize,
    names: &[String],
    colours: &[Rgb<u8>],
    novel: &[bool],
    k: u32,
) -> RgbImage {
    use imageproc::drawing::{draw_filled_rect_mut, draw_text_mut, text_size};
    use imageproc::rect::Rect;
    let dets = &for_drawing(dets, top);
    let mut canvas = image::imageops::resize(
        img,
        img.width() * k,
        img.height() * k,
        image::imageops::FilterType::Nearest,
    );
    let font = ovkd_data::show::font();
    let scale = PxScale::from(12.0);
    let (cw, ch) = (canvas.width() as i32, canvas.height() as i32);
    // Worst first, so the best boxes end up on top.
    for i in (0..dets.len()).rev() {
        let b = dets.boxes.0[i].map(|v| v * k as f32);
        let c = dets.labels[i];
        let colour = colours[c];
        let (x1, y1, x2, y2) = (
            (b[0].round() as i32).clamp(0, cw - 1),
            (b[1].round() as i32).clamp(0, ch - 1),
            (b[2].round() as i32).clamp(0, cw - 1),
            (b[3].round() as i32).clamp(0, ch - 1),
        );
        for t in 0..2 {
            let mut put = |x: i32, y: i32, along: i32| {
                if (!novel[c] || (along / 4) % 2 == 0) && x >= 0 && y >= 0 && x < cw && y < ch {
                    canvas.put_pixel(x as u32, y as u32, colour);
                }
            };
            for x in x1..=x2 {
                put(x, y1 + t, x);
                put(x, y2 - t, x);
            }
            for y in y1..=y2 {
                put(x1 + t, y, y);
                put(x2 - t, y, y);
            }
        }
        let text = format!("{} {:.2}", names[c], dets.scores[i]);
        let (tw, th) = text_size(scale, &font, &text);
        let ty = (y1 - th as i32 - 2).max(0);
        draw_filled_rect_mut(
            &mut canvas,
            Rect::at(x1, ty).of_size(tw + 4, th + 2),
            colour,
        );
        draw_text_mut(&mut canvas, Rgb([0, 0, 0]), x1 + 2, ty, scale, &font, &text);
    }
    canvas
}

/// A progress bar for `n` items (hidden when `quiet`).
pub fn progress_bar(n: usize, what: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(n as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {what} {{per_sec}}"
        ))
        .expect("template"),
    );
    b
}

/// Writes a PNG atomically.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut buf = Vec::new();
    img.write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)
        .with_context(|| format!("encoding {}", path.display()))?;
    ovkd_data::io::write_atomic(path, &buf)?;
    Ok(())
}

/// One JSON line of `--dump-regions`: an image's regions as the heads saw them
/// ([`RegionHeads`]; boxes `[x1, y1, x2, y2]` in image pixels, row-major matrices as nested
/// arrays, `temperature` the text head's, by which its logits were divided).
pub fn region_dump_line(image_id: u64, heads: &RegionHeads, temperature: f32) -> Result<String> {
    let n = heads.boxes.len();
    let rows = |v: &[f32]| -> Vec<Vec<f32>> {
        if n == 0 || v.is_empty() {
            return Vec::new();
        }
        v.chunks(v.len() / n).map(<[f32]>::to_vec).collect()
    };
    let line = serde_json::json!({
        "image_id": image_id,
        "temperature": temperature,
        "proposal_scores": heads.proposal_scores,
        "boxes": heads.boxes.0,
        "text_logits": rows(&heads.text_logits),
        "image_cosines": heads.image_cosines.as_deref().map(rows),
    });
    Ok(serde_json::to_string(&line)?)
}

/// What [`evaluate_val`] found.
pub struct EvalOutcome {
    /// The report (with base / novel / all splits).
    pub report: ovkd_eval::DetReport,
    /// Seconds spent on inference.
    pub inference_seconds: f64,
}

/// Scores `model` on the val split of `data` against every vocabulary class: writes
/// `out/detections.json` (COCO results; `out/<name>.detections.json` when `name` is not
/// `det`), `out/<name>.json` (the `ovkd eval det --out` report)
/// and draws the first `cfg.draw` images into `out/det_vis/`; with `dump`, also writes what the
/// heads said about every region there ([`region_dump_line`]).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_val(
    model: &Detector,
    data: &DatasetDir,
    classes: &ClassList,
    text_all: &[f32],
    dim: usize,
    cfg: &EvalSection,
    out: &Path,
    name: &str,
    device: &Device,
    quiet: bool,
    encoder: Option<&PseudoWordEncoder>,
    dump: Option<&Path>,
) -> Result<EvalOutcome> {
    let t0 = Instant::now();
    // Streamed (a large val set's dump is gigabytes), renamed into place when complete.
    let mut dump_file = dump
        .map(ovkd_data::io::AtomicWriter::create)
        .transpose()
        .context("creating the region dump")?;
    let gt_path = data.instances_path("val");
    let coco = CocoDataset::read(&gt_path)?;
    let text = tensor2(text_all, classes.len(), dim, device);
    std::fs::create_dir_all(out.join("det_vis"))
        .with_context(|| format!("creating {}", out.display()))?;
    let mut images = coco.images.clone();
    images.sort_by_key(|i| i.id);
    let bar = progress_bar(images.len(), "val images", quiet);
    let mut results = Vec::new();
    let display: Vec<String> = classes.names.iter().map(|n| n[0].clone()).collect();
    let colours: Vec<Rgb<u8>> = classes
        .ids
        .iter()
        .map(|&id| ovkd_data::show::class_colour(id))
        .collect();
    let mut drawn = 0;
    for chunk in images.chunks(cfg.batch.max(1)) {
        let rgbs: Vec<RgbImage> = chunk
            .iter()
            .map(|im| load_rgb(&data.images_dir("val").join(&im.file_name)))
            .collect::<Result<_, _>>()?;
        let dets = detect_images(
            model,
            &rgbs,
            &text,
            &classes.novel,
            &cfg.inference,
            None,
            device,
            encoder,
            dump_file.is_some(),
        )?;
        for ((im, rgb), (d, heads)) in chunk.iter().zip(&rgbs).zip(&dets) {
            if let Some(f) = dump_file.as_mut() {
                let line = region_dump_line(im.id, heads, model.box_head.temperature)?;
                writeln!(f, "{line}")
                    .with_context(|| format!("writing {}", f.temp_path().display()))?;
            }
            for i in 0..d.len() {
                let b = d.boxes.0[i];
                results.push(CocoResult {
                    image_id: im.id,
                    category_id: classes.ids[d.labels[i]],
                    bbox: Some(ovkd_data::boxes::xyxy_to_xywh(b)),
                    score: d.scores[i] as f64,
                    segmentation: None,
                });
            }
            if drawn < cfg.draw {
                let path = out.join("det_vis").join(format!("{:06}.png", im.id));
                write_png(
                    &path,
                    &draw_detections(
                        rgb,
                        d,
                        DRAW_TOP_DEFAULT,
                        &display,
                        &colours,
                        &classes.novel,
                        3,
                    ),
                )?;
                drawn += 1;
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let inference_seconds = t0.elapsed().as_secs_f64();
    if let Some(f) = dump_file {
        f.commit().context("writing the region dump")?;
    }
    // `det` (the run's own report) keeps the documented name; other reports (e.g. the
    // score-source ablations) get their own file so they do not overwrite it.
    let dets_path = if name == "det" {
        out.join("detections.json")
    } else {
        out.join(format!("{name}.detections.json"))
    };
    ovkd_data::coco::write_results(&dets_path, &results)?;
    let gt = ovkd_eval::GroundTruth::from_path(&gt_path).context("reading the val ground truth")?;
    let dets: Vec<ovkd_eval::Detection> = results
        .iter()
        .map(|r| ovkd_eval::Detection {
            image_id: r.image_id as i64,
            category_id: r.category_id as i64,
            bbox: r.bbox.unwrap_or_default(),
            score: r.score,
        })
        .collect();
    let mut report = ovkd_eval::evaluate_detections(&gt, &dets, Some(ovkd_eval::Rules::Coco))
        .context("evaluating the val detections")?;
    let vocab = ovkd_eval::Vocabulary::from_path(&data.root.join("vocab.toml"))
        .context("reading the vocabulary for the base/novel splits")?;
    report.apply_vocabulary(&vocab);
    report.write_json(&out.join(format!("{name}.json")))?;
    Ok(EvalOutcome {
        report,
        inference_seconds,
    })
}

/// One line: AP50 base / novel / all and AP.
pub fn summary_line(report: &ovkd_eval::DetReport) -> String {
    let pct = |v: f64| {
        if v < 0.0 {
            "n/a".to_string()
        } else {
            format!("{:.1}", 100.0 * v)
        }
    };
    match &report.splits {
        Some(s) => format!(
            "AP50 base {} novel {} all {}; AP base {} novel {} all {}",
            pct(s.base.ap50),
            pct(s.novel.ap50),
            pct(s.all.ap50),
            pct(s.base.ap),
            pct(s.novel.ap),
            pct(s.all.ap)
        ),
        None => format!(
            "AP50 {} AP {}",
            pct(report.stat("AP50").unwrap_or(-1.0)),
            pct(report.stat("AP").unwrap_or(-1.0))
        ),
    }
}

/// Runs `ovkd train detector`.
pub fn run(ctx: &Context, args: TrainDetectorArgs) -> Result<()> {
    let t0 = Instant::now();
    let mut cfg = load_config(&args.common.config, &args.common.sets)?;
    let run = args.common.run.clone();
    let paths = RunPaths::new(&cfg, &run);
    let det_dir = run.join("detector");
    std::fs::create_dir_all(&det_dir).with_context(|| format!("creating {}", det_dir.display()))?;
    let data = DatasetDir::open(&paths.data)
        .with_context(|| format!("opening the data set {}", paths.data.display()))?;
    let vocab = data.vocabulary()?;
    let all = ClassList::of_config(&vocab, &cfg.teacher);
    let base = all.base();
    if base.len() == 0 {
        bail!(
            "{}: the vocabulary has no base class to train on",
            paths.data.display()
        );
    }

    let teacher = load_teacher(&paths.teacher)?;
    let (text_base, dim) = text_embeds(
        &teacher,
        &base.names,
        &cfg.teacher.templates,
        &paths.text_cache,
    )?;
    let (text_all, _) = text_embeds(
        &teacher,
        &all.names,
        &cfg.teacher.templates,
        &paths.text_cache,
    )?;
    // BARON reads pseudo-words with the teacher's text tower, in training and at inference.
    let encoder = match cfg.distill.method {
        DistillMethod::Baron => Some(PseudoWordEncoder::from_teacher(&teacher)?),
        _ => None,
    };
    drop(teacher);
    let mut det_cfg = resolve_detector(&cfg.detector, dim)?;
    // Only ViLD-image trains an image branch: without it (text only, BARON) the branch would be
    // untrained weights and any score that reads it noise, so there is none, and the text
    // head scores (the sweep switches methods on one config).
    if !cfg.distill.uses_vild_image() {
        if det_cfg.box_head.image_branch != ovkd_detector::ImageBranch::None {
            println!(
                "distill.method {:?} trains no image branch: detector.box_head.image_branch = none",
                cfg.distill.method
            );
            det_cfg.box_head.image_branch = ovkd_detector::ImageBranch::None;
        }
        if cfg.eval.inference.scores != ovkd_distill::det::ScoreSource::Text {
            println!(
                "distill.method {:?} trains no image head: eval.inference.scores = text",
                cfg.distill.method
            );
            cfg.eval.inference.scores = ovkd_distill::det::ScoreSource::Text;
        }
    }
    if let Some(enc) = &encoder {
        det_cfg.box_head.pseudo_words = cfg.distill.baron.pseudo_words;
        det_cfg.box_head.word_dim = enc.width;
        det_cfg.validate()?;
    }

    let (spec, device) = ctx.device.resolve();
    if args.eval_only {
        let ckpt = checkpoint_dir(&run, "detector")?;
        let model = load_detector(&ckpt, &det_cfg, &device)?;
        println!("evaluating {}", ckpt.display());
        return finish_eval(
            &model,
            &data,
            &all,
            &text_all,
            dim,
            &cfg,
            &run,
            &args,
            &device,
            t0,
            encoder.as_ref(),
        );
    }
    // The saved config is complete: the resolved detector and absolute paths, so `predict` and
    // later stages know exactly what ran.
    let mut saved = cfg.clone();
    saved.data.root = Some(std::path::absolute(&paths.data)?);
    saved.teacher.path = Some(std::path::absolute(&paths.teacher)?);
    saved.cache.regions = Some(std::path::absolute(&paths.regions)?);
    saved.detector = match toml::Value::try_from(&det_cfg)? {
        toml::Value::Table(t) => t,
        _ => unreachable!("a struct serialises to a table"),
    };
    let resolved = toml::to_string_pretty(&saved).context("serialising the config")?;
    ovkd_data::io::write_atomic(det_dir.join("config.toml"), resolved.as_bytes())?;

    let ad = device.clone().autodiff();
    let reader = if cfg.distill.needs_region_cache() {
        let reader = ovkd_teacher::cache::CacheReader::open(&paths.regions).with_context(|| {
            format!(
                "opening the region-embedding cache {} (make it with `ovkd proposals` and `ovkd teacher embed`, or set distill.method = \"text\")",
                paths.regions.display()
            )
        })?;
        if reader.is_empty() {
            bail!(
                "{}: the region-embedding cache is empty",
                paths.regions.display()
            );
        }
        Some(Arc::new(reader))
    } else {
        None
    };
    // PB-OVD: with pseudo boxes the detector trains on every class (the captions name novel
    // ones too), with the pseudo boxes added to the base annotations.
    let (loader, train_classes, text_train) = if cfg.distill.pseudo_boxes {
        let reader = reader.as_deref().expect("opened above");
        // Captions are matched by every name a class has, whatever embeds it.
        let (coco, report) = crate::cli::pseudo_boxes::augment_train_split(
            &data,
            &ClassList::of(&vocab),
            &text_all,
            dim,
            reader,
            &cfg.distill.pseudo_box,
        )?;
        ovkd_data::io::write_json_atomic(det_dir.join("pseudo_boxes.json"), &report, true)?;
        println!("{}", report.summary());
        let ds = ovkd_data::loader::DetectionDataset::from_coco(
            coco,
            data.instances_path("train"),
            data.images_dir("train"),
        )
        .with_classes(all.ids.clone());
        (
            loader_of(Arc::new(ds), &cfg.train, &cfg.data)?,
            all.clone(),
            text_all.clone(),
        )
    } else {
        (
            train_loader(&data, &base.ids, &cfg.train, &cfg.data)?,
            base.clone(),
            text_base.clone(),
        )
    };
    let regions: Option<Arc<dyn RegionSource>> = if cfg.distill.uses_vild_image() {
        reader.clone().map(|r| r as Arc<dyn RegionSource>)
    } else {
        None
    };
    println!(
        "detector: {} training classes ({} novel{}), {} training images, teacher dim {dim}, device {}; method {:?}{}{}",
        train_classes.len(),
        all.len() - base.len(),
        if cfg.distill.pseudo_boxes {
            " trained on pseudo boxes"
        } else {
            " held out"
        },
        loader.num_batches() * cfg.train.batch_size,
        spec.name(),
        cfg.distill.method,
        if regions.is_some() {
            format!(
                ", ViLD-image weight {} ({} cached images)",
                cfg.distill.image_weight,
                paths.regions.display()
            )
        } else {
            String::new()
        },
        if cfg.distill.method == DistillMethod::Baron {
            format!(", bags {}", paths.bags.display())
        } else {
            String::new()
        }
    );

    // Modality-gap centring of ViLD-image's targets: the mean of the regions it can draw.
    let teacher_mean = match (&regions, &reader) {
        (Some(src), Some(r)) if cfg.distill.center_teacher => {
            let mean = ovkd_distill::det::region_mean(
                src.as_ref(),
                &r.image_ids(),
                cfg.distill.image_top_k,
            )?;
            let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
            println!(
                "ViLD-image: targets centred on the teacher's mean region embedding (norm {norm:.3})"
            );
            Some(mean)
        }
        _ => None,
    };
    ad.seed(cfg.train.seed);
    let model = det_cfg.init(&ad)?;
    let task = DetTask::new(
        loader,
        regions,
        cfg.distill.clone(),
        DetTaskMode::Full,
        tensor2(&text_train, train_classes.len(), dim, &ad),
        cfg.train.seed,
        cfg.train.steps,
        ad.clone(),
    )?
    .with_prefetch(cfg.data.prefetch);
    let task = match teacher_mean {
        Some(mean) => task.with_teacher_mean(mean)?,
        None => task,
    };
    let task = match &encoder {
        Some(enc) => {
            let bags = BagCache::read_parquet(&paths.bags).with_context(|| {
                format!(
                    "reading BARON's bag cache {} (made by `ovkd proposals` with distill.method = \"baron\")",
                    paths.bags.display()
                )
            })?;
            if bags.num_bags() == 0 {
                bail!("{}: the bag cache has no bags", paths.bags.display());
            }
            println!(
                "BARON: {} cached bags of {} images",
                bags.num_bags(),
                bags.images.len()
            );
            task.with_baron(Arc::new(bags), enc.clone())?
        }
        None => task,
    };
    let opts = LoopOptions {
        resume: args.common.resume,
        progress: !args.common.quiet,
        stop_after: args.stop_after,
        label: "detector".into(),
    };
    let t_train = Instant::now();
    let trained = train(&cfg.train, &det_dir, model, &opts, task)?;
    let train_seconds = t_train.elapsed().as_secs_f64();
    println!(
        "trained {} of {} steps in {train_seconds:.1} s; checkpoint {}",
        trained.steps_done,
        cfg.train.steps,
        trained
            .last_checkpoint
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none".into())
    );
    if args.no_eval || trained.steps_done < cfg.train.steps {
        return Ok(());
    }
    let model = trained.model.valid();
    finish_eval(
        &model,
        &data,
        &all,
        &text_all,
        dim,
        &cfg,
        &run,
        &args,
        &device,
        t0,
        encoder.as_ref(),
    )
}

#[allow(clippy::too_many_arguments)]
fn finish_eval(
    model: &Detector,
    data: &DatasetDir,
    all: &ClassList,
    text_all: &[f32],
    dim: usize,
    cfg: &DetExperimentConfig,
    run: &Path,
    args: &TrainDetectorArgs,
    device: &Device,
    t0: Instant,
    encoder: Option<&PseudoWordEncoder>,
) -> Result<()> {
    let out = evaluate_val(
        model,
        data,
        all,
        text_all,
        dim,
        &cfg.eval,
        &run.join("eval"),
        &args.eval_name,
        device,
        args.common.quiet,
        encoder,
        args.dump_regions.as_deref(),
    )?;
    println!(
        "val ({:?} scores): {} ({:.1} s inference); {}",
        cfg.eval.inference.scores,
        summary_line(&out.report),
        out.inference_seconds,
        run.join("eval")
            .join(format!("{}.json", args.eval_name))
            .display()
    );
    println!("total {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two labels on one object keep the better one; a weak box elsewhere survives the NMS but
    /// not a `top` of 2; the order is by score.
    #[test]
    fn drawing_keeps_one_box_per_object_best_first() {
        let dets = Detections {
            boxes: ovkd_detector::Boxes(vec![
                [0.0, 0.0, 10.0, 10.0],
                [1.0, 0.0, 10.0, 10.0],
                [20.0, 20.0, 30.0, 30.0],
                [40.0, 40.0, 50.0, 50.0],
            ]),
            scores: vec![0.3, 0.9, 0.06, 0.2],
            labels: vec![0, 1, 2, 3],
        };
        let d = for_drawing(&dets, 10);
        assert_eq!(d.labels, vec![1, 3, 2]);
        assert_eq!(d.scores, vec![0.9, 0.2, 0.06]);
        assert_eq!(d.boxes.0[0], [1.0, 0.0, 10.0, 10.0]);
        assert_eq!(for_drawing(&dets, 2).labels, vec![1, 3]);
        assert_eq!(for_drawing(&dets, 0).len(), 0);
    }

    #[test]
    fn teacher_synonyms_false_embeds_each_class_by_its_name_alone() {
        let vocab = ovkd_data::Vocabulary::from_toml_str(
            "name = \"v\"\n[[class]]\nid = 1\nname = \"circle\"\nsynonyms = [\"disc\", \"disk\"]\nsplit = \"base\"\n[[class]]\nid = 4\nname = \"star\"\nsplit = \"novel\"\n",
            Path::new("vocab.toml"),
        )
        .unwrap();
        let mut teacher = TeacherSection::default();
        assert!(teacher.synonyms, "the default keeps what earlier runs did");
        let with = ClassList::of_config(&vocab, &teacher);
        assert_eq!(with.names[0], ["circle", "disc", "disk"]);
        teacher.synonyms = false;
        let without = ClassList::of_config(&vocab, &teacher);
        assert_eq!(without.names, [vec!["circle"], vec!["star"]]);
        assert_eq!(without.ids, with.ids);
        assert_eq!(without.novel, [false, true]);
    }
}
