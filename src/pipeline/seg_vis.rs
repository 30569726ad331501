//! The segmenter's part of the pipeline's `eval` stage: a few val images with the ground truth
//! and the trained student's prediction painted over them side by side, for the report.
//!
//! ```text
//! RUN/eval/seg_vis/STEM.png     ground truth (left) and prediction (right) over image STEM
//! RUN/eval/seg_vis/legend.json  [{"id", "name", "split", "rgb"}] of the classes painted
//! ```
//!
//! The colours and the blending are `ovkd predict --task seg`'s ([`overlay`], [`palette`]),
//! so a class looks the same in the report and in a prediction made later.

use crate::cli::Context;
use crate::cli::predict_seg::{overlay, palette};
use crate::cli::train_detector::write_png;
use crate::cli::train_segmenter::{checkpoint_dir, config_of_checkpoint, load_segmenter};
use ab_glyph::PxScale;
use anyhow::{Context as _, Result};
use image::{Rgb, RgbImage};
use ovkd_data::DatasetDir;
use ovkd_data::loader::{SegmentationDataset, load_rgb};
use ovkd_data::semantic::{IGNORE_INDEX, SemanticMask};
use ovkd_distill::seg::DenseTeacher;
use ovkd_distill::seg::evaluate::{LabelMap, student_label_maps};
use ovkd_teacher::embed::Teacher;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The file beside the drawings that names their colours.
pub const LEGEND_FILE: &str = "legend.json";

/// One entry of `legend.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegendEntry {
    /// Class id (the label value).
    pub id: u64,
    /// Class name.
    pub name: String,
    /// `base` / `novel` (`seen` / `unseen` as the vocabulary says).
    pub split: String,
    /// The colour it is painted in.
    pub rgb: [u8; 3],
}

/// Panels are enlarged (nearest) until their longer side reaches this, so small images stay
/// readable in the report.
const MIN_PANEL_SIDE: u32 = 256;
const HEADER: u32 = 20;
const GAP: u32 = 6;

/// Draws the first `n` val images of the segmenter trained in `run` into `out`. Returns how
/// many were drawn.
pub fn draw_val(ctx: &Context, run: &Path, out: &Path, n: usize) -> Result<usize> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    if n == 0 {
        return Ok(0);
    }
    let ckpt = checkpoint_dir(&run.join("segmenter"))?;
    let cfg = config_of_checkpoint(&ckpt)?;
    let data_root = cfg.data.root.clone().unwrap_or_else(|| run.join("data"));
    let data = DatasetDir::open(&data_root)
        .with_context(|| format!("opening the data set {}", data_root.display()))?;
    let vocab = data.vocabulary()?;
    let pairs: Vec<(PathBuf, PathBuf)> = SegmentationDataset::from_dirs(
        data.images_dir("val"),
        data.require_semantic("val")?,
        false,
    )?
    .pairs()
    .iter()
    .take(n)
    .cloned()
    .collect();
    let (_, device) = ctx.device.resolve();
    let teacher_dir = cfg
        .teacher
        .path
        .clone()
        .unwrap_or_else(|| run.join("teacher"));
    let (teacher, _) = Teacher::load(&teacher_dir, &device)
        .with_context(|| format!("loading the teacher {}", teacher_dir.display()))?;
    let names: Vec<Vec<String>> = vocab
        .classes
        .iter()
        .map(|c| c.all_names().map(String::from).collect())
        .collect();
    let embeds = DenseTeacher::class_embeds(&teacher, &names, &cfg.distill.templates)
        .map_err(anyhow::Error::msg)
        .context("embedding the class names")?;
    let model = load_segmenter(&cfg, &ckpt, &device)
        .with_context(|| format!("loading {}", ckpt.display()))?;
    let mut values: Vec<u16> = vec![0];
    values.extend(vocab.classes.iter().map(|c| c.id as u16));
    let images: Vec<PathBuf> = pairs.iter().map(|(i, _)| i.clone()).collect();
    let mut maps: Vec<LabelMap> = Vec::with_capacity(images.len());
    student_label_maps(
        &model,
        &images,
        embeds,
        &values,
        cfg.eval.inference,
        cfg.data.augment.mean,
        cfg.data.augment.std,
        1,
        |_, map| {
            maps.push(map);
            Ok(())
        },
    )
    .context("predicting the val images")?;

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut painted = BTreeSet::new();
    for ((image, label), pred) in pairs.iter().zip(&maps) {
        let img = load_rgb(image)?;
        let gt = SemanticMask::read(label)?;
        // Ignored pixels (VOC's object borders, hidden classes) are left unpainted.
        let truth = LabelMap {
            width: gt.width(),
            height: gt.height(),
            labels: gt
                .as_slice()
                .iter()
                .map(|&v| if v == IGNORE_INDEX { 0 } else { v })
                .collect(),
        };
        painted.extend(truth.labels.iter().chain(&pred.labels).copied());
        let sheet = side_by_side(&overlay(&img, &truth), &overlay(&img, pred));
        let stem = image.file_stem().unwrap_or_default().to_string_lossy();
        write_png(&out.join(format!("{stem}.png")), &sheet)?;
    }
    let legend: Vec<LegendEntry> = vocab
        .classes
        .iter()
        .filter(|c| painted.contains(&(c.id as u16)))
        .map(|c| LegendEntry {
            id: c.id,
            name: c.name.clone(),
            split: c.split.as_str().to_string(),
            rgb: palette(c.id as usize),
        })
        .collect();
    ovkd_data::io::write_json_atomic(out.join(LEGEND_FILE), &legend, true)?;
    Ok(maps.len())
}

/// The two overlays side by side under a header naming them, enlarged if small.
fn side_by_side(truth: &RgbImage, pred: &RgbImage) -> RgbImage {
    use imageproc::drawing::draw_text_mut;
    let (w, h) = truth.dimensions();
    let k = MIN_PANEL_SIDE.div_ceil(w.max(h)).max(1);
    let (pw, ph) = (w * k, h * k);
    let mut sheet = RgbImage::from_pixel(2 * pw + GAP, ph + HEADER, Rgb([255, 255, 255]));
    let font = ovkd_data::show::font();
    for (i, (panel, title)) in [(truth, "ground truth"), (pred, "prediction")]
        .into_iter()
        .enumerate()
    {
        let x = i as u32 * (pw + GAP);
        let big = image::imageops::resize(panel, pw, ph, image::imageops::FilterType::Nearest);
        image::imageops::replace(&mut sheet, &big, x as i64, HEADER as i64);
        draw_text_mut(
            &mut sheet,
            Rgb([40, 40, 40]),
            x as i32 + 2,
            2,
            PxScale::from(15.0),
            &font,
            title,
        );
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sheet_holds_both_overlays_enlarged_under_a_header() {
        let img = RgbImage::from_pixel(4, 2, Rgb([100, 100, 100]));
        let map = |l: u16| LabelMap {
            width: 4,
            height: 2,
            labels: vec![l; 8],
        };
        let sheet = side_by_side(&overlay(&img, &map(0)), &overlay(&img, &map(3)));
        let k = MIN_PANEL_SIDE / 4;
        assert_eq!(sheet.dimensions(), (2 * 4 * k + GAP, 2 * k + HEADER));
        // Left: background, unpainted; right: class 3 blended half and half.
        assert_eq!(sheet.get_pixel(1, HEADER + 1), &Rgb([100, 100, 100]));
        let c = palette(3);
        let want = Rgb(std::array::from_fn(|j| ((100 + c[j] as u16) / 2) as u8));
        assert_eq!(sheet.get_pixel(4 * k + GAP + 1, HEADER + 1), &want);
    }
}
