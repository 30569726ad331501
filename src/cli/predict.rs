//! `ovkd predict` for the detector: boxes of any class names in any images (`--task seg`, the
//! segmenter's label maps, is in [`super::predict_seg`]).
//!
//! The names are embedded by the teacher's text tower (the run's prompt templates) at
//! inference time, so the student detects whatever it is asked for. The student and the text
//! tower come from a run (`--checkpoint`) or from a bundle of `ovkd export bundle` (`--bundle`),
//! which gives the same outputs with nothing else on disk. Without `--classes` the student's own
//! vocabulary is used: the bundle's (with the text embeddings the bundle holds) or the run's
//! data vocabulary. The output folder gets
//!
//! ```text
//! OUT/detections.json   COCO results: image_id = position of the image among IMAGES (from 1),
//!                       category_id = position of the class in --classes or the vocabulary
//!                       (from 1)
//! OUT/images.json       [{id, file_name, width, height}]: which image each id is
//! OUT/classes.json      [{id, name, split}]: split "base" for names the detector was trained
//!                       on, "novel" otherwise (the ensemble weights them differently)
//! OUT/NAME_det.png      each image drawn 3x with its best boxes: one per object, at most
//!                       --draw-top (10)
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow, bail};
use burn::tensor::{Device, Tensor};
use clap::{Args, ValueEnum};
use image::{Rgb, RgbImage};
use ovkd_data::coco::CocoResult;
use ovkd_data::loader::load_rgb;
use ovkd_detector::{Detector, DetectorConfig};
use ovkd_distill::bundle::{Bundle, BundleTask, STUDENT_CONFIG, VOCAB, VOCAB_EMBEDS};
use ovkd_distill::det::{InferenceConfig, PseudoWordEncoder, ScoreSource};
use ovkd_teacher::embed::TextTeacher;
use serde::Serialize;

use super::Context;
use super::export::DetSettings;
use super::train_detector::{
    ClassList, DRAW_TOP_DEFAULT, checkpoint_dir, config_of_checkpoint, detect_images,
    draw_detections, load_detector, load_teacher, tensor2, text_embeds, write_png,
};

/// What to predict.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum Task {
    /// Boxes, with the detector student.
    #[default]
    Det,
    /// Label maps and overlays, with the segmenter student.
    Seg,
}

/// Arguments of `ovkd predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Which student.
    #[arg(long, value_enum, default_value = "det")]
    pub task: Task,
    /// Comma-separated class names, e.g. "star,heart,ring" (`|` joins synonyms into one
    /// class: "circle|disc"); default: the vocabulary the student was trained with (the
    /// bundle's, or the run's data vocabulary).
    #[arg(long)]
    pub classes: Option<String>,
    /// A checkpoint folder (`ckpt-NNNNNN/`) or a run directory (its newest checkpoint of the
    /// task's student).
    #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
    pub checkpoint: Option<PathBuf>,
    /// A bundle written by `ovkd export bundle`, instead of --checkpoint: nothing else (run,
    /// teacher, data) is read.
    #[arg(long, conflicts_with = "teacher")]
    pub bundle: Option<PathBuf>,
    /// The teacher whose text tower embeds the names (default: the one the run trained with).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Which head scores the boxes (default: the run's `eval.inference.scores`).
    #[arg(long, value_enum)]
    pub scores: Option<Scores>,
    /// Keep detections scoring above this (default: the run's).
    #[arg(long)]
    pub score_thresh: Option<f32>,
    /// Detector: draw at most this many boxes per image, one per object (the best label of
    /// overlapping boxes), best first. The JSON keeps every detection.
    #[arg(long, default_value_t = DRAW_TOP_DEFAULT)]
    pub draw_top: usize,
    /// Resize each image so its longer side is this many pixels before detecting (boxes are
    /// reported in the original image's pixels); default: the image as it is.
    #[arg(long)]
    pub size: Option<usize>,
    /// Segmenter: sliding windows of this side instead of whole-image inference.
    #[arg(long)]
    pub window: Option<usize>,
    /// Segmenter: step between sliding windows (default: half the window).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Images.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// `--scores`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Scores {
    /// The text head.
    Text,
    /// The image head.
    Image,
    /// The ViLD ensemble of both.
    Ensemble,
}

#[derive(Serialize)]
struct ClassRecord {
    id: u64,
    name: String,
    split: &'static str,
}

#[derive(Serialize)]
struct ImageRecord {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
}

/// Runs `ovkd predict`.
pub fn run(ctx: &Context, args: PredictArgs) -> Result<()> {
    match args.task {
        Task::Det => run_det(ctx, args),
        Task::Seg => super::predict_seg::run_seg(ctx, &args),
    }
}

/// What detecting needs, from a run's checkpoint or from a bundle.
struct DetSource {
    model: Detector,
    inference: InferenceConfig,
    /// Default `--size`.
    size: Option<usize>,
    /// The classes' display names (the first name of each).
    names: Vec<String>,
    /// Whether each class is novel (not trained on): the ensemble weights it so.
    novel: Vec<bool>,
    /// The classes' text embeddings, row-major [K, D].
    text: Vec<f32>,
    dim: usize,
    /// A BARON detector's path from pseudo-words through the teacher's text tower.
    encoder: Option<PseudoWordEncoder>,
}

/// `--classes`: one entry per comma, each a `|`-separated list of names (first the name,
/// then synonyms); empty entries are skipped.
pub fn parse_classes(arg: &str) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for (i, item) in arg.split(',').enumerate() {
        if item.trim().is_empty() {
            continue;
        }
        let names: Vec<String> = item
            .split('|')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if names.is_empty() {
            bail!("--classes: entry {} ({item:?}) has no name", i + 1);
        }
        out.push(names);
    }
    Ok(out)
}

/// The classes `--classes` names, each a list of texts (name first, then synonyms); `None`
/// without the flag, meaning the student's own vocabulary.
pub fn requested_classes(args: &PredictArgs) -> Result<Option<Vec<Vec<String>>>> {
    let Some(arg) = args.classes.as_deref() else {
        return Ok(None);
    };
    let classes = parse_classes(arg)?;
    if classes.is_empty() {
        bail!("--classes: give at least one class name");
    }
    Ok(Some(classes))
}

/// Whether each of `classes` is novel: a class is base when one of its texts is a name or
/// synonym (any case) of a base class of `vocab`; without a vocabulary every class is novel.
fn novel_flags(classes: &[Vec<String>], vocab: Option<&ovkd_data::Vocabulary>) -> Vec<bool> {
    let base: Vec<String> = vocab
        .into_iter()
        .flat_map(|v| v.base())
        .flat_map(|c| c.all_names().map(str::to_lowercase).collect::<Vec<_>>())
        .collect();
    classes
        .iter()
        .map(|c| !c.iter().any(|n| base.contains(&n.to_lowercase())))
        .collect()
}

/// The display name of each class: its first text.
fn display_names(classes: &[Vec<String>]) -> Vec<String> {
    classes.iter().map(|c| c[0].clone()).collect()
}

/// Opens and verifies a bundle of `task`, and loads its text half on `device`.
pub fn open_bundle(
    path: &Path,
    task: BundleTask,
    device: &Device,
) -> Result<(Bundle, TextTeacher)> {
    let bundle = Bundle::open(path)?;
    if bundle.manifest.task != task {
        bail!(
            "{}: a {} bundle, but --task {}",
            path.display(),
            bundle.manifest.task.name(),
            task.name()
        );
    }
    let (text, unused) = TextTeacher::load(&bundle.text_dir(), device)
        .with_context(|| format!("loading the text tower of {}", path.display()))?;
    if !unused.is_empty() {
        bail!(
            "{}: tensors the text tower does not use: {unused:?}",
            bundle.text_dir().display()
        );
    }
    if text.dim() != bundle.manifest.embed_dim {
        bail!(
            "{}: the text tower embeds into D = {}, the manifest says {}",
            bundle.text_dir().display(),
            text.dim(),
            bundle.manifest.embed_dim
        );
    }
    Ok((bundle, text))
}

/// The embeddings a bundle holds for `vocab`, its vocabulary: host [K * D], checked to have a
/// row per class.
pub fn vocab_embeds(bundle: &Bundle, vocab: &ovkd_data::Vocabulary) -> Result<Vec<f32>> {
    let (text, k) = bundle.vocab_embeds()?;
    if k != vocab.classes.len() {
        bail!(
            "{}: {k} class embeddings for the {} classes of {}",
            bundle.file(VOCAB_EMBEDS).display(),
            vocab.classes.len(),
            bundle.file(VOCAB).display()
        );
    }
    Ok(text)
}

/// The class names' embeddings by a text half, host [K * D].
pub fn host_embeds(t: Tensor<2>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow!("reading text embeddings: {e:?}"))
}

fn det_from_bundle(
    path: &Path,
    classes: Option<&[Vec<String>]>,
    device: &Device,
) -> Result<DetSource> {
    let (bundle, teacher) = open_bundle(path, BundleTask::Det, &Device::flex())?;
    let settings: DetSettings = bundle.inference()?;
    let det_cfg: DetectorConfig = bundle.read_json(STUDENT_CONFIG)?;
    // A BARON detector reads its pseudo-words with the bundled text tower.
    let encoder = if det_cfg.box_head.pseudo_words > 0 {
        Some(PseudoWordEncoder::from_text_teacher(&teacher)?)
    } else {
        None
    };
    let vocab = ovkd_data::Vocabulary::load(bundle.file(VOCAB))?;
    let (names, novel, text) = match classes {
        Some(c) => {
            let text = teacher
                .class_embeds(c, &bundle.manifest.templates)
                .context("embedding the class names with the bundle's text tower")?;
            (
                display_names(c),
                novel_flags(c, Some(&vocab)),
                host_embeds(text)?,
            )
        }
        None => {
            let text = vocab_embeds(&bundle, &vocab)?;
            let names = vocab.classes.iter().map(|c| c.name.clone()).collect();
            let novel = vocab.classes.iter().map(|c| c.is_novel()).collect();
            (names, novel, text)
        }
    };
    let dim = teacher.dim();
    let model = bundle.load_student(det_cfg.init(device)?)?;
    Ok(DetSource {
        model,
        inference: settings.inference,
        size: settings.size,
        names,
        novel,
        text,
        dim,
        encoder,
    })
}

fn det_from_checkpoint(
    args: &PredictArgs,
    classes: Option<&[Vec<String>]>,
    device: &Device,
) -> Result<DetSource> {
    let checkpoint = args
        .checkpoint
        .as_ref()
        .context("give --checkpoint or --bundle")?;
    let ckpt = checkpoint_dir(checkpoint, "detector")?;
    let (cfg, det_cfg) = config_of_checkpoint(&ckpt)?;
    let teacher_path = match (&args.teacher, &cfg.teacher.path) {
        (Some(t), _) | (None, Some(t)) => t.clone(),
        (None, None) => bail!("--teacher: the run's config names no teacher"),
    };
    // The run's vocabulary says which names are base; without --classes it is the list.
    let vocab = match &cfg.data.root {
        Some(root) => match ovkd_data::Vocabulary::load(root.join("vocab.toml")) {
            Ok(v) => Some(v),
            Err(e) if classes.is_some() => {
                tracing::warn!("{e}: every --classes name counts as novel");
                None
            }
            Err(e) => return Err(e).context("the run's vocabulary (no --classes given)"),
        },
        None => None,
    };
    let (class_texts, novel) = match classes {
        Some(c) => (c.to_vec(), novel_flags(c, vocab.as_ref())),
        None => {
            let v = vocab.as_ref().context(
                "--classes: not given, and the run's config names no data root (data.root) \
                 whose vocabulary to use",
            )?;
            let list = ClassList::of_config(v, &cfg.teacher);
            (list.names, list.novel)
        }
    };
    let teacher = load_teacher(&teacher_path)?;
    // The run's own text cache (RUN/cache/text beside RUN/detector/ckpt-*).
    let cache = ckpt
        .parent()
        .and_then(|d| d.parent())
        .map(|run| run.join("cache").join("text"))
        .unwrap_or_else(|| std::env::temp_dir().join("ovkd-predict-text"));
    let (text, dim) = text_embeds(&teacher, &class_texts, &cfg.teacher.templates, &cache)?;
    // A BARON detector classifies its pseudo-words through the teacher's text tower.
    let encoder = if det_cfg.box_head.pseudo_words > 0 {
        Some(PseudoWordEncoder::from_teacher(&teacher)?)
    } else {
        None
    };
    drop(teacher);
    if dim != det_cfg.box_head.embed_dim {
        bail!(
            "{}: its embeddings have {dim} dimensions but the detector's {}",
            teacher_path.display(),
            det_cfg.box_head.embed_dim
        );
    }
    Ok(DetSource {
        model: load_detector(&ckpt, &det_cfg, device)?,
        inference: cfg.eval.inference.clone(),
        size: None,
        names: display_names(&class_texts),
        novel,
        text,
        dim,
        encoder,
    })
}

fn run_det(ctx: &Context, args: PredictArgs) -> Result<()> {
    let t0 = Instant::now();
    if args.window.is_some() || args.stride.is_some() {
        bail!("--window and --stride are for --task seg");
    }
    let classes = requested_classes(&args)?;
    let (_, device) = ctx.device.resolve();
    let DetSource {
        model,
        mut inference,
        size,
        names,
        novel,
        text,
        dim,
        encoder,
    } = match &args.bundle {
        Some(b) => det_from_bundle(b, classes.as_deref(), &device)?,
        None => det_from_checkpoint(&args, classes.as_deref(), &device)?,
    };
    let size = args.size.or(size);
    if let Some(s) = args.scores {
        inference.scores = match s {
            Scores::Text => ScoreSource::Text,
            Scores::Image => ScoreSource::Image,
            Scores::Ensemble => ScoreSource::Ensemble,
        };
    }
    if let Some(t) = args.score_thresh {
        inference.postprocess.score_thresh = t;
    }
    let text = tensor2(&text, names.len(), dim, &device);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let colours: Vec<Rgb<u8>> = (0..names.len())
        .map(|i| ovkd_data::show::class_colour(i as u64 + 1))
        .collect();
    let mut results = Vec::new();
    let mut records = Vec::new();
    for (i, path) in args.images.iter().enumerate() {
        let img: RgbImage =
            load_rgb(path).with_context(|| format!("reading image {}", path.display()))?;
        let id = i as u64 + 1;
        let dets = detect_images(
            &model,
            std::slice::from_ref(&img),
            &text,
            &novel,
            &inference,
            size,
            &device,
            encoder.as_ref(),
            false,
        )?
        .pop()
        .map(|(d, _)| d)
        .unwrap_or_default();
        for k in 0..dets.len() {
            results.push(CocoResult {
                image_id: id,
                category_id: dets.labels[k] as u64 + 1,
                bbox: Some(ovkd_data::boxes::xyxy_to_xywh(dets.boxes.0[k])),
                score: dets.scores[k] as f64,
                segmentation: None,
            });
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("{id:06}"));
        write_png(
            &args.out.join(format!("{stem}_det.png")),
            &draw_detections(&img, &dets, args.draw_top, &names, &colours, &novel, 3),
        )?;
        records.push(ImageRecord {
            id,
            file_name: path.display().to_string(),
            width: img.width(),
            height: img.height(),
        });
        println!("{}: {} detections", path.display(), dets.len());
    }
    ovkd_data::coco::write_results(args.out.join("detections.json"), &results)?;
    ovkd_data::io::write_json_atomic(args.out.join("images.json"), &records, true)?;
    let classes: Vec<ClassRecord> = names
        .iter()
        .zip(&novel)
        .enumerate()
        .map(|(i, (n, &nv))| ClassRecord {
            id: i as u64 + 1,
            name: n.clone(),
            split: if nv { "novel" } else { "base" },
        })
        .collect();
    ovkd_data::io::write_json_atomic(args.out.join("classes.json"), &classes, true)?;
    println!(
        "{} detections in {} images ({:.1} s); {}",
        results.len(),
        records.len(),
        t0.elapsed().as_secs_f64(),
        args.out.join("detections.json").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_split_on_commas_and_synonyms_on_bars() {
        let c = parse_classes("circle | disc|disk, star,,heart").unwrap();
        assert_eq!(
            c,
            vec![
                vec!["circle".to_string(), "disc".into(), "disk".into()],
                vec!["star".to_string()],
                vec!["heart".to_string()],
            ]
        );
        assert!(parse_classes("star,|").is_err());
    }
}
