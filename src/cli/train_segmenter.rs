//! `ovkd train segmenter`: LSeg training with MaskCLIP+ pseudo-labels and self-training on an
//! OV-Shapes-layout data set, then evaluation (seen / unseen mIoU, hIoU).
//!
//! Writes into the run directory:
//!
//! ```text
//! RUN/segmenter/config.toml        the resolved config
//! RUN/segmenter/ckpt-NNNNNN/       checkpoints; metrics.csv, metrics.parquet
//! RUN/segmenter/pseudo_labels.json what the teacher's pseudo-labels cover and how precise they are
//! RUN/segmenter/text_embeds.json   the class and background text embeddings the run used
//! RUN/cache/seg-dense-*.safetensors the teacher's dense features (reused by later runs)
//! RUN/eval/seg.json                the student's mIoU (`ovkd eval seg --out` format)
//! RUN/eval/seg_teacher.json        the teacher's zero-shot MaskCLIP mIoU, the floor
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ovkd_data::DatasetDir;
use ovkd_data::loader::{LoaderConfig, SegmentationDataset};
use ovkd_data::semantic::SemanticMask;
use ovkd_data::transforms::AugmentConfig;
use ovkd_distill::seg::cache::{TeacherFeatures, dense_features};
use ovkd_distill::seg::dataset::{NO_LABEL, SegTrainSet};
use ovkd_distill::seg::evaluate::{student_label_maps, teacher_label_map};
use ovkd_distill::seg::maskclip::center_embeds;
use ovkd_distill::seg::pseudo::teacher_pseudo_map;
use ovkd_distill::seg::regions::region_pseudo_map;
use ovkd_distill::seg::task::SegTaskInputs;
use ovkd_distill::seg::{
    Candidates, DenseMaps, DenseTeacher, PseudoFrom, SegDistillConfig, SegTask,
};
use ovkd_distill::train::{Checkpoints, LoopOptions, TrainConfig, train};
use ovkd_segmenter::{BackgroundKind, InferenceMode, Segmenter, SegmenterConfig};
use ovkd_teacher::embed::Teacher;
use serde::{Deserialize, Serialize};

use super::Context;
use crate::config::{Invalid, Validate, loader::check_positive};

/// Arguments of `ovkd train segmenter`.
#[derive(Args, Debug)]
pub struct TrainSegmenterArgs {
    /// Config, run directory, --resume, --set, --quiet.
    #[command(flatten)]
    pub common: super::RunArgs,
    /// Stop after this many steps of this process (checkpointing there).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Skip the final evaluation.
    #[arg(long)]
    pub no_eval: bool,
}

/// Where the data is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// A data-set folder with label maps (`vocab.toml`, `{train,val}/{images,semantic}`):
    /// OV-Shapes, or VOC as the pipeline lays it out; default `RUN/data`.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Training augmentation (resize, scale jitter, flip, normalisation).
    #[serde(default = "train_augment")]
    pub augment: AugmentConfig,
    /// Crop each training image (after `augment`) to a random window of this side: with
    /// `augment.scale_jitter` above 1 this trains on random-resized crops at the cost of the
    /// unjittered size. `None`: whole images.
    #[serde(default)]
    pub crop: Option<usize>,
}

fn train_augment() -> AugmentConfig {
    AugmentConfig {
        hflip_prob: 0.5,
        ..AugmentConfig::default()
    }
}

/// Which teacher.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TeacherSection {
    /// A CLIP checkpoint directory (Hugging Face layout); default `RUN/teacher`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Images per teacher forward pass when computing dense features.
    #[serde(default = "default_teacher_batch")]
    pub batch: usize,
    /// Average each class's synonyms (from the vocabulary) into its text embedding too; false:
    /// its name alone (as the detector's `teacher.synonyms`). Prediction must embed the same
    /// names (`bench/ov_shapes_segmenter.sh` reads this from the run's config).
    #[serde(default = "default_synonyms")]
    pub synonyms: bool,
}

fn default_teacher_batch() -> usize {
    32
}

fn default_synonyms() -> bool {
    true
}

impl Default for TeacherSection {
    fn default() -> Self {
        Self {
            path: None,
            batch: default_teacher_batch(),
            synonyms: default_synonyms(),
        }
    }
}

/// How the student is evaluated.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Whole-image or sliding-window inference.
    #[serde(default)]
    pub inference: InferenceMode,
    /// Images per forward pass.
    #[serde(default = "default_eval_batch")]
    pub batch: usize,
}

fn default_eval_batch() -> usize {
    16
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            inference: InferenceMode::default(),
            batch: default_eval_batch(),
        }
    }
}

/// `ovkd train segmenter`'s config.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SegTrainConfig {
    /// Data.
    #[serde(default)]
    pub data: DataSection,
    /// Teacher.
    #[serde(default)]
    pub teacher: TeacherSection,
    /// The student.
    #[serde(default)]
    pub segmenter: SegmenterConfig,
    /// Losses and pseudo-labels.
    #[serde(default)]
    pub distill: SegDistillConfig,
    /// The training loop.
    pub train: TrainConfig,
    /// Evaluation.
    #[serde(default)]
    pub eval: EvalSection,
}

impl Validate for SegTrainConfig {
    fn validate(&self, _prefix: &str, problems: &mut Vec<Invalid>) {
        check_positive(problems, "train.lr".into(), self.train.lr);
        check_positive(
            problems,
            "segmenter.temperature".into(),
            self.segmenter.temperature,
        );
        check_positive(
            problems,
            "distill.pseudo.maskclip.temperature".into(),
            self.distill.pseudo.maskclip.temperature,
        );
        if self.train.steps == 0 {
            problems.push(Invalid::new("train.steps", "must be at least 1"));
        }
        if self.train.batch_size == 0 {
            problems.push(Invalid::new("train.batch_size", "must be at least 1"));
        }
        if self.distill.templates.is_empty() {
            problems.push(Invalid::new("distill.templates", "needs at least one"));
        }
        if self.distill.background_names.is_empty() {
            problems.push(Invalid::new(
                "distill.background_names",
                "needs at least one",
            ));
        }
        for (key, v) in [
            ("distill.pseudo.threshold", self.distill.pseudo.threshold),
            (
                "distill.self_train.threshold",
                self.distill.self_train.threshold,
            ),
        ] {
            if !(0.0..=1.0).contains(&v) {
                problems.push(Invalid::new(key, format!("must be in [0, 1], got {v}")));
            }
        }
        if let Err(e) = self.eval.inference.validate() {
            problems.push(Invalid::new("eval.inference", e.to_string()));
        }
        if let Err(e) = self.segmenter.validate() {
            problems.push(Invalid::new("segmenter", e.to_string()));
        }
    }
}

/// Reads `path` with `--set` overrides into a [`SegTrainConfig`].
pub fn load_config(path: &Path, sets: &[String]) -> Result<SegTrainConfig> {
    crate::config::load_command_config(path, sets, "train segmenter", "segmenter")
}

/// A progress bar for `n` items (hidden when `quiet`).
pub fn bar(n: usize, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(n as u64);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {what}"
        ))
        .expect("template"),
    );
    b
}

/// The class names of every vocabulary class (name first, then synonyms unless `synonyms` is
/// false), in vocabulary order, with their ids and whether they are novel.
struct ClassList {
    names: Vec<Vec<String>>,
    ids: Vec<i64>,
    novel: Vec<bool>,
}

fn class_list(vocab: &ovkd_data::Vocabulary, synonyms: bool) -> ClassList {
    let all = super::train_detector::ClassList::texts(vocab, synonyms);
    ClassList {
        names: all.names,
        ids: all.ids.iter().map(|&id| id as i64).collect(),
        novel: all.novel,
    }
}

/// Rows `rows` of `t` `[K, D]`.
fn rows(t: &Tensor<2>, rows: &[usize]) -> Tensor<2> {
    let device = t.device();
    let idx = Tensor::<1, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(
            rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
            [rows.len()],
        ),
        &device,
    );
    t.clone().select(0, idx)
}

/// Image and label paths of a split.
fn split_pairs(dir: &DatasetDir, split: &str) -> Result<Vec<(PathBuf, PathBuf)>> {
    let ds =
        SegmentationDataset::from_dirs(dir.images_dir(split), dir.require_semantic(split)?, false)
            .with_context(|| format!("reading the {split} split of {}", dir.root.display()))?;
    if ds.pairs().is_empty() {
        bail!(
            "{}: no label maps in the {split} split",
            dir.semantic_dir(split).display()
        );
    }
    Ok(ds.pairs().to_vec())
}

fn features(
    teacher: &Teacher,
    pairs: &[(PathBuf, PathBuf)],
    cfg: &SegTrainConfig,
    cache: &Path,
    what: &str,
    quiet: bool,
) -> Result<TeacherFeatures> {
    let images: Vec<PathBuf> = pairs.iter().map(|(i, _)| i.clone()).collect();
    let b = bar(images.len(), what, quiet);
    let f = dense_features(
        teacher,
        &images,
        cfg.distill.teacher_size,
        cfg.teacher.batch,
        Some(cache),
        |n| b.set_position(n as u64),
    )
    .with_context(|| format!("teacher dense features of {what}"))?;
    b.finish_and_clear();
    Ok(f)
}

/// What the teacher's pseudo-labels cover on the training set, and how precise they are on
/// the val split when its novel pixels are hidden as training hides them.
#[derive(Serialize, Debug)]
struct PseudoStats {
    train_unlabelled_pixels: u64,
    train_filled_pixels: u64,
    train_coverage: f64,
    val_novel_pixels: u64,
    val_filled_pixels: u64,
    val_correct_pixels: u64,
    val_coverage: f64,
    val_precision: f64,
}

/// Runs `ovkd train segmenter`.
pub fn run(ctx: &Context, args: TrainSegmenterArgs) -> Result<()> {
    let t0 = Instant::now();
    let cfg = load_config(&args.common.config, &args.common.sets)?;
    let run = args.common.run.clone();
    let seg_dir = run.join("segmenter");
    std::fs::create_dir_all(&seg_dir).with_context(|| format!("creating {}", seg_dir.display()))?;
    let data_root = cfg.data.root.clone().unwrap_or_else(|| run.join("data"));
    let teacher_dir = cfg
        .teacher
        .path
        .clone()
        .unwrap_or_else(|| run.join("teacher"));
    // The saved config names the data and teacher it used, so `predict` finds the teacher.
    let mut saved = cfg.clone();
    saved.data.root = Some(std::path::absolute(&data_root)?);
    saved.teacher.path = Some(std::path::absolute(&teacher_dir)?);
    let resolved = toml::to_string_pretty(&saved).context("serialising the config")?;
    ovkd_data::io::write_atomic(seg_dir.join("config.toml"), resolved.as_bytes())?;

    let data = DatasetDir::open(&data_root)
        .with_context(|| format!("opening the data set {}", data_root.display()))?;
    let vocab = data.vocabulary()?;
    let classes = class_list(&vocab, cfg.teacher.synonyms);
    if classes.ids.iter().any(|&id| id <= 0 || id >= 255) {
        bail!(
            "{}: class ids must be in 1..255 (0 is the background, 255 the ignore index)",
            data.root.join("vocab.toml").display()
        );
    }
    let (spec, device) = ctx.device.resolve();
    tracing::info!("device: {}", spec.name());

    let (teacher, _) = Teacher::load(&teacher_dir, &device)
        .with_context(|| format!("loading the teacher {}", teacher_dir.display()))?;
    if DenseTeacher::dim(&teacher) != cfg.segmenter.embed_dim {
        bail!(
            "segmenter.embed_dim = {} but the teacher {} embeds into D = {}",
            cfg.segmenter.embed_dim,
            teacher_dir.display(),
            DenseTeacher::dim(&teacher)
        );
    }
    let all_embeds = DenseTeacher::class_embeds(&teacher, &classes.names, &cfg.distill.templates)
        .map_err(anyhow::Error::msg)
        .context("embedding the class names")?;
    let bg_embed = DenseTeacher::class_embeds(
        &teacher,
        &[cfg.distill.background_names.clone()],
        &cfg.distill.templates,
    )
    .map_err(anyhow::Error::msg)
    .context("embedding the background names")?;

    // The text side of the run, for inspection and offline analysis of the teacher's maps.
    let read2 = |t: &Tensor<2>| -> Result<Vec<Vec<f32>>> {
        let [_, d] = t.dims();
        let v = t
            .clone()
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading text embeddings: {e:?}"))?;
        Ok(v.chunks(d.max(1)).map(<[f32]>::to_vec).collect())
    };
    ovkd_data::io::write_json_atomic(
        seg_dir.join("text_embeds.json"),
        &serde_json::json!({
            "templates": cfg.distill.templates,
            "names": classes.names,
            "ids": classes.ids,
            "novel": classes.novel,
            "class_embeds": read2(&all_embeds)?,
            "background_names": cfg.distill.background_names,
            "background_embed": read2(&bg_embed)?,
        }),
        false,
    )?;

    let train_pairs = split_pairs(&data, "train")?;
    let val_pairs = split_pairs(&data, "val")?;
    let cache = run.join("cache");
    let size = cfg.distill.teacher_size;
    // The training images' dense features feed dense pseudo-labels and feature distillation
    // only: region pseudo-labels crop the images themselves, so they are not computed for them.
    let uses_teacher = (cfg.distill.pseudo.enabled && cfg.distill.pseudo.from == PseudoFrom::Dense)
        || cfg.distill.feature.weight > 0.0;

    // The teacher's zero-shot floor on val (and its pseudo-label precision there).
    let val_feats = features(
        &teacher,
        &val_pairs,
        &cfg,
        &cache.join(format!("seg-dense-val-{size}.safetensors")),
        "val images (teacher)",
        args.common.quiet,
    )?;
    let num_classes = classes.ids.iter().copied().max().unwrap_or(0) as usize + 1;
    let eval_vocab = ovkd_eval::Vocabulary::from_path(&data.root.join("vocab.toml"))?;
    let mut values: Vec<u16> = vec![0];
    values.extend(classes.ids.iter().map(|&i| i as u16));
    let novel_rows: Vec<usize> = (0..classes.ids.len())
        .filter(|&i| classes.novel[i])
        .collect();
    let (cand_rows, cand_values): (Vec<usize>, Vec<i64>) = match cfg.distill.pseudo.candidates {
        Candidates::Novel => (
            novel_rows.clone(),
            novel_rows.iter().map(|&r| classes.ids[r]).collect(),
        ),
        Candidates::All => ((0..classes.ids.len()).collect(), classes.ids.clone()),
    };
    let cand_embeds = match cfg.distill.pseudo.candidates {
        Candidates::Novel => rows(&all_embeds, &cand_rows),
        Candidates::All => Tensor::cat(vec![rows(&all_embeds, &cand_rows), bg_embed.clone()], 0),
    };
    let cand_values: Vec<i64> = match cfg.distill.pseudo.candidates {
        Candidates::Novel => cand_values,
        Candidates::All => cand_values.into_iter().chain([0]).collect(),
    };
    let mut teacher_ev = ovkd_eval::SegEvaluator::new(num_classes);
    let mut stats = PseudoStats {
        train_unlabelled_pixels: 0,
        train_filled_pixels: 0,
        train_coverage: f64::NAN,
        val_novel_pixels: 0,
        val_filled_pixels: 0,
        val_correct_pixels: 0,
        val_coverage: f64::NAN,
        val_precision: f64::NAN,
    };
    // The mean dense embedding that centring removes: the training images' when the teacher
    // sees them, else the val images' (no labels are used either way).
    let train_feats = if uses_teacher {
        Some(Arc::new(features(
            &teacher,
            &train_pairs,
            &cfg,
            &cache.join(format!("seg-dense-train-{size}.safetensors")),
            "train images (teacher)",
            args.common.quiet,
        )?))
    } else {
        None
    };
    let center = cfg.distill.pseudo.maskclip.center.then(|| {
        train_feats
            .as_deref()
            .unwrap_or(&val_feats)
            .mean_embed(&device)
    });
    let dense_maps = |f: &TeacherFeatures, i: usize| DenseMaps {
        embeds: match &center {
            Some(m) => center_embeds(f.embeds(i, &device), m.clone()),
            None => f.embeds(i, &device),
        },
        keys: f.keys(i, &device),
    };
    let pseudo_map =
        |maps: Option<&DenseMaps>, image: &Path, gt: &SemanticMask| -> Result<Vec<u8>> {
            Ok(match cfg.distill.pseudo.from {
                PseudoFrom::Dense => teacher_pseudo_map(
                    &cfg.distill.pseudo,
                    maps.context("dense pseudo-labels need the teacher's dense features")?,
                    cand_embeds.clone(),
                    &cand_values,
                    gt,
                ),
                PseudoFrom::Regions => region_pseudo_map(
                    &cfg.distill.pseudo.regions,
                    cfg.distill.pseudo.threshold,
                    &teacher,
                    &ovkd_data::loader::load_rgb(image)?,
                    cand_embeds.clone(),
                    &cand_values,
                    gt,
                )?,
            })
        };
    for (i, (ip, lp)) in val_pairs.iter().enumerate() {
        let gt = SemanticMask::read(lp)?;
        let maps = dense_maps(&val_feats, i);
        let map = teacher_label_map(
            &cfg.distill.pseudo.maskclip,
            &maps,
            all_embeds.clone(),
            Some(bg_embed.clone()),
            &cfg.distill.zero_shot_background,
            &values,
            [gt.height(), gt.width()],
        )?;
        teacher_ev.add(&lp.display().to_string(), gt.as_slice(), &map.labels)?;
        // Hide the novel pixels as the train split does and pseudo-label them.
        let mut hidden = gt.clone();
        for v in hidden.as_mut_slice() {
            if vocab.is_novel(*v as u64) {
                *v = 255;
            }
        }
        let pm = pseudo_map(Some(&maps), ip, &hidden)?;
        for ((&p, &h), &g) in pm.iter().zip(hidden.as_slice()).zip(gt.as_slice()) {
            if h == 255 && g != 255 {
                stats.val_novel_pixels += 1;
                if p != NO_LABEL {
                    stats.val_filled_pixels += 1;
                    stats.val_correct_pixels += u64::from(p as u16 == g);
                }
            }
        }
    }
    stats.val_coverage = stats.val_filled_pixels as f64 / stats.val_novel_pixels.max(1) as f64;
    stats.val_precision = stats.val_correct_pixels as f64 / stats.val_filled_pixels.max(1) as f64;
    let mut teacher_report = teacher_ev.report();
    teacher_report.apply_vocabulary(&eval_vocab);
    let eval_dir = run.join("eval");
    std::fs::create_dir_all(&eval_dir)?;
    teacher_report.write_json(&eval_dir.join("seg_teacher.json"))?;
    println!(
        "Teacher zero-shot (MaskCLIP, no training):\n{}",
        teacher_report.to_markdown()
    );

    // Pseudo-labels for the training images.
    let mut dataset = SegTrainSet::new(train_pairs.clone());
    if cfg.distill.pseudo.enabled {
        let b = bar(train_pairs.len(), "pseudo-label maps", args.common.quiet);
        let mut maps = Vec::with_capacity(train_pairs.len());
        for (i, (ip, lp)) in train_pairs.iter().enumerate() {
            let gt = SemanticMask::read(lp)?;
            let dm = train_feats.as_deref().map(|f| dense_maps(f, i));
            let m = pseudo_map(dm.as_ref(), ip, &gt)?;
            stats.train_unlabelled_pixels +=
                gt.as_slice().iter().filter(|&&v| v == 255).count() as u64;
            stats.train_filled_pixels += m.iter().filter(|&&p| p != NO_LABEL).count() as u64;
            maps.push(m);
            b.inc(1);
        }
        b.finish_and_clear();
        stats.train_coverage =
            stats.train_filled_pixels as f64 / stats.train_unlabelled_pixels.max(1) as f64;
        dataset = dataset.with_pseudo(Arc::new(maps));
    }
    ovkd_data::io::write_json_atomic(seg_dir.join("pseudo_labels.json"), &stats, true)?;
    tracing::info!(
        "pseudo-labels: train coverage {:.3}; val (novel hidden) coverage {:.3}, precision {:.3}",
        stats.train_coverage,
        stats.val_coverage,
        stats.val_precision
    );

    // The training label set: background, the base classes, and the novel ones when something
    // will label their pixels.
    let with_novel = cfg.distill.pseudo.enabled || cfg.distill.self_train.start().is_some();
    let train_rows: Vec<usize> = (0..classes.ids.len())
        .filter(|&i| with_novel || !classes.novel[i])
        .collect();
    let train_device = device.clone().autodiff();
    train_device.seed(cfg.train.seed);
    let mut model = cfg.segmenter.init(&train_device)?;
    if cfg.segmenter.background == BackgroundKind::Text {
        let [_, d] = bg_embed.dims();
        model = model.with_fixed_background(bg_embed.clone().reshape([d]));
    }
    let task = SegTask::new(
        cfg.distill.clone(),
        SegTaskInputs {
            dataset,
            loader: LoaderConfig {
                batch_size: cfg.train.batch_size,
                shuffle: true,
                drop_last: false,
                seed: cfg.train.seed,
                prefetch: 1,
                size_divisor: ovkd_segmenter::segmenter::SIZE_DIVISOR,
                augment: cfg.data.augment.clone(),
            },
            crop: cfg.data.crop,
            class_embeds: rows(&all_embeds, &train_rows),
            class_values: train_rows.iter().map(|&r| classes.ids[r]).collect(),
            candidate_values: if with_novel {
                cand_values.clone()
            } else {
                vec![]
            },
            teacher_features: if cfg.distill.feature.weight > 0.0 {
                train_feats.clone()
            } else {
                None
            },
            device: train_device.clone(),
        },
    )?;
    let opts = LoopOptions {
        resume: args.common.resume,
        progress: !args.common.quiet,
        stop_after: args.stop_after,
        label: "segmenter".into(),
    };
    let t_train = Instant::now();
    let trained = train(&cfg.train, &seg_dir, model, &opts, task)?;
    let train_secs = t_train.elapsed().as_secs_f64();
    tracing::info!(
        "trained {} steps in {:.1} s; last checkpoint {}",
        trained.steps_done,
        train_secs,
        trained
            .last_checkpoint
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    if args.no_eval || trained.steps_done < cfg.train.steps {
        return Ok(());
    }

    let model = trained.model.valid();
    let report = evaluate(
        &model,
        &cfg,
        &data,
        &val_pairs,
        &all_embeds,
        &values,
        num_classes,
        &eval_vocab,
        args.common.quiet,
    )?;
    report.write_json(&eval_dir.join("seg.json"))?;
    println!("Student:\n{}", report.to_markdown());
    tracing::info!(
        "wrote {} in {:.1} s",
        eval_dir.join("seg.json").display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The student's mIoU on `pairs` with every class of the vocabulary.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    model: &Segmenter,
    cfg: &SegTrainConfig,
    _data: &DatasetDir,
    pairs: &[(PathBuf, PathBuf)],
    class_embeds: &Tensor<2>,
    values: &[u16],
    num_classes: usize,
    vocab: &ovkd_eval::Vocabulary,
    quiet: bool,
) -> Result<ovkd_eval::SegReport> {
    let images: Vec<PathBuf> = pairs.iter().map(|(i, _)| i.clone()).collect();
    let mut ev = ovkd_eval::SegEvaluator::new(num_classes);
    let b = bar(images.len(), "val images (student)", quiet);
    let mut err: Option<anyhow::Error> = None;
    student_label_maps(
        model,
        &images,
        class_embeds.clone(),
        values,
        cfg.eval.inference,
        cfg.data.augment.mean,
        cfg.data.augment.std,
        cfg.eval.batch,
        |i, map| {
            let lp = &pairs[i].1;
            match SemanticMask::read(lp) {
                Ok(gt) => {
                    if let Err(e) = ev.add(&lp.display().to_string(), gt.as_slice(), &map.labels) {
                        err.get_or_insert(e.into());
                    }
                }
                Err(e) => {
                    err.get_or_insert(e.into());
                }
            }
            b.inc(1);
            Ok(())
        },
    )?;
    b.finish_and_clear();
    if let Some(e) = err {
        return Err(e);
    }
    let mut report = ev.report();
    report.apply_vocabulary(vocab);
    Ok(report)
}

/// The newest checkpoint folder of a segmenter run directory, or `path` itself when it is a
/// checkpoint folder.
pub fn checkpoint_dir(path: &Path) -> Result<PathBuf> {
    if path.join("model.bpk").is_file() {
        return Ok(path.to_path_buf());
    }
    for dir in [path.to_path_buf(), path.join("segmenter")] {
        if let Some((_, p)) = Checkpoints::new(&dir, 1).latest() {
            return Ok(p);
        }
    }
    bail!(
        "{}: neither a checkpoint folder (with model.bpk) nor a run holding one",
        path.display()
    )
}

/// The resolved training config saved next to a checkpoint (`<run>/segmenter/config.toml`).
pub fn config_of_checkpoint(ckpt: &Path) -> Result<SegTrainConfig> {
    let path = ckpt
        .parent()
        .map(|p| p.join("config.toml"))
        .filter(|p| p.is_file())
        .with_context(|| {
            format!(
                "{}: no config.toml beside the checkpoint (written by `ovkd train segmenter`)",
                ckpt.display()
            )
        })?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: not a segmenter config", path.display()))
}

/// Builds the segmenter of `cfg` on `device` and loads the checkpoint's weights.
pub fn load_segmenter(cfg: &SegTrainConfig, ckpt: &Path, device: &Device) -> Result<Segmenter> {
    let model = cfg.segmenter.init(device)?;
    Ok(Checkpoints::load_model(ckpt, model)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn teacher_synonyms_false_embeds_each_class_by_its_name_alone() {
        let vocab = ovkd_data::Vocabulary::from_toml_str(
            "name = \"v\"\n[[class]]\nid = 1\nname = \"circle\"\nsynonyms = [\"disc\", \"disk\"]\nsplit = \"base\"\n[[class]]\nid = 4\nname = \"star\"\nsynonyms = [\"five-pointed star\"]\nsplit = \"novel\"\n",
            Path::new("vocab.toml"),
        )
        .unwrap();
        // A config that does not name the key keeps what earlier runs did.
        let section: TeacherSection = toml::from_str("batch = 8").unwrap();
        assert!(section.synonyms);
        assert_eq!(
            section,
            TeacherSection {
                batch: 8,
                ..TeacherSection::default()
            }
        );
        let with = class_list(&vocab, section.synonyms);
        assert_eq!(
            with.names,
            [
                vec!["circle", "disc", "disk"],
                vec!["star", "five-pointed star"]
            ]
        );
        let without = class_list(&vocab, false);
        assert_eq!(without.names, [vec!["circle"], vec!["star"]]);
        assert_eq!(without.ids, with.ids);
        assert_eq!(without.novel, [false, true]);
    }

    /// The built-in teacher's text tower has seen little beyond the prompt it was pre-trained
    /// and scored with; averaging other prompts in took its region pseudo-labels from 87.2% to
    /// 73.4% right on val and the unseen mIoU from 57.7 to 43.2 (BENCHMARKS.md, Segmenter,
    /// session 11). The shipped OV-Shapes student configs must keep prompting it that way.
    #[test]
    fn ov_shapes_students_prompt_the_builtin_teacher_as_it_was_trained() {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let seg = load_config(&configs.join("segmenter/ov_shapes.toml"), &[]).unwrap();
        assert_eq!(seg.distill.templates, [ovkd_teacher::pretrain::EVAL_PROMPT]);
        let det =
            crate::cli::train_detector::load_config(&configs.join("detector/ov_shapes.toml"), &[])
                .unwrap();
        assert_eq!(det.teacher.templates, [ovkd_teacher::pretrain::EVAL_PROMPT]);
    }

    /// An experiment passed to a student command is named as one, with the file to pass
    /// instead, rather than failing on a key of its parents; a bad `--set` on a student config
    /// keeps its own error.
    #[test]
    fn an_experiment_config_is_told_apart_from_a_student_config() {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let err = load_config(&configs.join("ov-shapes.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is an experiment config")
                && err.contains("configs/segmenter/ov_shapes.toml")
                && err.contains("--only train-segmenter"),
            "{err}"
        );
        let err = load_config(
            &configs.join("segmenter/ov_shapes.toml"),
            &["train.lr=-1".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`train.lr`") && !err.contains("experiment"),
            "{err}"
        );
    }
}
