//! `ovkd predict --task seg`: label maps and colour overlays for any list of class names.
//!
//! The names are embedded by the teacher's text tower at inference time (the run's teacher, or
//! the text tower of an export bundle with `--bundle`), so the student segments whatever it is
//! asked for. For each image `NAME.ext` the output folder gets
//! `NAME.png` (8-bit labels: 0 background, k the k-th class of `--classes`, or of the student's
//! vocabulary without it) and
//! `NAME_overlay.png` (the image with each class painted in its colour), plus `classes.json`.

use std::io::Cursor;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use image::{Rgb, RgbImage};
use ovkd_data::semantic::SemanticMask;
use ovkd_distill::seg::DenseTeacher;
use ovkd_distill::seg::evaluate::{LabelMap, student_label_maps};
use ovkd_segmenter::InferenceMode;
use ovkd_teacher::embed::Teacher;

use ovkd_data::Vocabulary;
use ovkd_distill::bundle::{BundleTask, STUDENT_CONFIG, VOCAB};
use ovkd_segmenter::SegmenterConfig;

use super::Context;
use super::export::SegSettings;
use super::predict::{PredictArgs, open_bundle, requested_classes, vocab_embeds};
use super::train_detector::{ClassList, tensor2};
use super::train_segmenter::{checkpoint_dir, config_of_checkpoint, load_segmenter};

/// A distinct colour per label (0, the background, is never painted).
pub fn palette(k: usize) -> [u8; 3] {
    // Hues spaced by the golden angle, full saturation, alternating brightness.
    let h = (k as f64 * 0.618_033_988_75).fract() * 6.0;
    let v = if k % 2 == 0 { 1.0 } else { 0.8 };
    let x = v * (1.0 - ((h % 2.0) - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (v, x, 0.0),
        1 => (x, v, 0.0),
        2 => (0.0, v, x),
        3 => (0.0, x, v),
        4 => (x, 0.0, v),
        _ => (v, 0.0, x),
    };
    [r, g, b].map(|c| (c * 255.0).round() as u8)
}

/// The image with every non-background pixel blended half-and-half with its label's colour.
pub fn overlay(img: &RgbImage, map: &LabelMap) -> RgbImage {
    let mut out = img.clone();
    for (i, px) in out.pixels_mut().enumerate() {
        let l = map.labels[i] as usize;
        if l != 0 {
            let c = palette(l);
            *px = Rgb(std::array::from_fn(|j| {
                ((px[j] as u16 + c[j] as u16) / 2) as u8
            }));
        }
    }
    out
}

fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut buf = Vec::new();
    img.write_to(&mut Cursor::new(&mut buf), image::ImageFormat::Png)
        .with_context(|| format!("encoding {}", path.display()))?;
    ovkd_data::io::write_atomic(path, &buf)?;
    Ok(())
}

/// Runs `ovkd predict --task seg`.
pub fn run_seg(ctx: &Context, args: &PredictArgs) -> Result<()> {
    if args.scores.is_some() || args.score_thresh.is_some() || args.size.is_some() {
        bail!("--scores, --score-thresh and --size are for --task det");
    }
    let requested = requested_classes(args)?;
    let mode = match (args.window, args.stride) {
        (None, None) => InferenceMode::Whole,
        (Some(window), stride) => InferenceMode::Slide {
            window,
            stride: stride.unwrap_or(window.div_ceil(2)),
        },
        (None, Some(_)) => bail!("--stride needs --window"),
    };
    mode.validate()?;
    let (_, device) = ctx.device.resolve();
    let (model, embeds, mean, std, class_names) = match &args.bundle {
        Some(b) => {
            let (bundle, teacher) = open_bundle(b, BundleTask::Seg, &device)?;
            let settings: SegSettings = bundle.inference()?;
            let seg_cfg: SegmenterConfig = bundle.read_json(STUDENT_CONFIG)?;
            let (embeds, class_names) = match requested {
                Some(c) => {
                    let embeds = teacher
                        .class_embeds(&c, &bundle.manifest.templates)
                        .context("embedding the class names with the bundle's text tower")?;
                    (embeds, c)
                }
                // The bundle's own vocabulary, with the embeddings it was exported with.
                None => {
                    let vocab = Vocabulary::load(bundle.file(VOCAB))?;
                    let embeds = vocab_embeds(&bundle, &vocab)?;
                    let k = vocab.classes.len();
                    let embeds = tensor2(&embeds, k, bundle.manifest.embed_dim, &device);
                    (embeds, ClassList::of(&vocab).names)
                }
            };
            let model = bundle.load_student(seg_cfg.init(&device)?)?;
            (model, embeds, settings.mean, settings.std, class_names)
        }
        None => {
            let checkpoint = args
                .checkpoint
                .as_ref()
                .context("give --checkpoint or --bundle")?;
            let ckpt = checkpoint_dir(checkpoint)?;
            let cfg = config_of_checkpoint(&ckpt)?;
            let teacher_dir = args
                .teacher
                .clone()
                .or(cfg.teacher.path.clone())
                .context("no --teacher given and the run's config names none")?;
            let (teacher, _) = Teacher::load(&teacher_dir, &device)
                .with_context(|| format!("loading the teacher {}", teacher_dir.display()))?;
            if DenseTeacher::dim(&teacher) != cfg.segmenter.embed_dim {
                bail!(
                    "the teacher {} embeds into D = {}, the segmenter into {}",
                    teacher_dir.display(),
                    DenseTeacher::dim(&teacher),
                    cfg.segmenter.embed_dim
                );
            }
            let class_names = match requested {
                Some(c) => c,
                None => {
                    let root = cfg.data.root.as_ref().context(
                        "--classes: not given, and the run's config names no data root \
                         (data.root) whose vocabulary to use",
                    )?;
                    let vocab = Vocabulary::load(root.join("vocab.toml"))?;
                    ClassList::texts(&vocab, cfg.teacher.synonyms).names
                }
            };
            let embeds = DenseTeacher::class_embeds(&teacher, &class_names, &cfg.distill.templates)
                .map_err(anyhow::Error::msg)
                .context("embedding the class names")?;
            let model = load_segmenter(&cfg, &ckpt, &device)
                .with_context(|| format!("loading {}", ckpt.display()))?;
            (
                model,
                embeds,
                cfg.data.augment.mean,
                cfg.data.augment.std,
                class_names,
            )
        }
    };
    let names: Vec<String> = class_names.iter().map(|n| n[0].clone()).collect();
    if names.len() > 254 {
        bail!(
            "at most 254 classes fit an 8-bit label map, {} given",
            names.len()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let values: Vec<u16> = (0..=names.len() as u16).collect();
    let mut classes = serde_json::Map::new();
    classes.insert("0".into(), "background".into());
    for (i, n) in names.iter().enumerate() {
        classes.insert((i + 1).to_string(), n.clone().into());
    }
    ovkd_data::io::write_json_atomic(args.out.join("classes.json"), &classes, true)?;

    let mut stems = std::collections::HashSet::new();
    for p in &args.images {
        let stem = p
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if !stems.insert(stem.clone()) {
            bail!(
                "{}: another image is also named {stem}; outputs would collide",
                p.display()
            );
        }
    }
    student_label_maps(
        &model,
        &args.images,
        embeds,
        &values,
        mode,
        mean,
        std,
        1,
        |i, map| {
            let path = &args.images[i];
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            let write = || -> Result<()> {
                SemanticMask::from_vec(map.width, map.height, map.labels.clone())
                    .write(args.out.join(format!("{stem}.png")))?;
                let img = ovkd_data::loader::load_rgb(path)?;
                write_png(
                    &args.out.join(format!("{stem}_overlay.png")),
                    &overlay(&img, &map),
                )?;
                Ok(())
            };
            write().map_err(|e| ovkd_distill::seg::SegError::Config {
                field: path.display().to_string(),
                reason: format!("{e:#}"),
            })
        },
    )
    .context("predicting")?;
    println!(
        "wrote {} label maps and overlays to {}",
        args.images.len(),
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_colours_are_distinct() {
        let cs: std::collections::HashSet<[u8; 3]> = (1..40).map(palette).collect();
        assert_eq!(cs.len(), 39);
    }
}
