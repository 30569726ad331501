//! PB-OVD pseudo boxes for `ovkd train detector` (`distill.pseudo_boxes = true`): the train
//! split's annotations plus, per image, the teacher's best proposal for each class its caption
//! names but its annotations lack; reported against `train/instances_full.json` (every object
//! of every class, which OV-Shapes writes for exactly this check).

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, Result};
use ovkd_data::DatasetDir;
use ovkd_data::coco::{CocoAnnotation, CocoDataset};
use ovkd_distill::det::pseudo_boxes::{is_correct, named_classes, pseudo_boxes};
use ovkd_distill::det::{PseudoBox, PseudoBoxConfig, RegionSource};
use serde::Serialize;

use super::train_detector::ClassList;

/// How many pseudo boxes were made and how many are right.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PseudoBoxReport {
    /// Training images.
    pub images: usize,
    /// Images with a caption.
    pub captioned: usize,
    /// Named-but-unannotated (image, class) pairs: the candidates.
    pub candidates: usize,
    /// Pseudo boxes made.
    pub boxes: usize,
    /// Of those, matching (IoU ≥ 0.5) an object of their class in the full labels; `None`
    /// when there are no full labels.
    pub correct: Option<usize>,
    /// `correct / boxes`.
    pub precision: Option<f64>,
    /// Novel-class objects in the full labels (what the pseudo boxes could find at most).
    pub novel_objects: Option<usize>,
    /// Pseudo boxes per class name.
    pub per_class: BTreeMap<String, usize>,
    /// Threshold and logit scale used.
    pub config: PseudoBoxConfig,
}

impl PseudoBoxReport {
    /// One line for the log.
    pub fn summary(&self) -> String {
        match (self.correct, self.precision) {
            (Some(c), Some(p)) => format!(
                "pseudo boxes: {} for {} candidates in {} images; {c} correct (precision {:.1}%) against the full labels ({} novel objects)",
                self.boxes,
                self.candidates,
                self.images,
                100.0 * p,
                self.novel_objects.unwrap_or(0)
            ),
            _ => format!(
                "pseudo boxes: {} for {} candidates in {} images (no full labels to check them)",
                self.boxes, self.candidates, self.images
            ),
        }
    }
}

/// The train split with pseudo boxes added (new annotation ids after the largest), and the
/// report. `text_all` `[C * D]` embeds the classes of `all`; `regions` holds the teacher's
/// embeddings of each training image's proposals.
pub fn augment_train_split(
    data: &DatasetDir,
    all: &ClassList,
    text_all: &[f32],
    dim: usize,
    regions: &dyn RegionSource,
    cfg: &PseudoBoxConfig,
) -> Result<(CocoDataset, PseudoBoxReport)> {
    let mut coco = CocoDataset::read(data.instances_path("train"))?;
    // Captions name the classes an image holds; of the data sets ovkd reads, only OV-Shapes
    // comes with them in a form the split carries.
    let shapes = data.ov_shapes().with_context(|| {
        format!(
            "{}: pseudo boxes need the training images' captions, which only an OV-Shapes folder has \
             (set distill.pseudo_boxes = false)",
            data.root.display()
        )
    })?;
    let captions: HashMap<u64, String> = shapes
        .captions("train")
        .with_context(|| format!("reading the captions of {}", data.root.display()))?
        .into_iter()
        .map(|r| (r.image_id, r.caption))
        .collect();
    let class_of: HashMap<u64, usize> =
        all.ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let by_image = coco.annotations_by_image();
    let full = match data.instances_full_path() {
        Some(p) if p.exists() => Some(CocoDataset::read(&p)?),
        _ => None,
    };
    let full_by_image = full.as_ref().map(|f| f.annotations_by_image());
    let mut report = PseudoBoxReport {
        images: coco.images.len(),
        config: cfg.clone(),
        ..Default::default()
    };
    if let Some(f) = &full {
        report.novel_objects = Some(
            f.annotations
                .iter()
                .filter(|a| class_of.get(&a.category_id).is_some_and(|&c| all.novel[c]))
                .count(),
        );
    }
    let mut next_id = coco.annotations.iter().map(|a| a.id).max().unwrap_or(0) + 1;
    let mut correct = 0;
    let mut added = Vec::new();
    let mut images: Vec<u64> = coco.images.iter().map(|i| i.id).collect();
    images.sort_unstable();
    for id in images {
        let Some(caption) = captions.get(&id) else {
            continue;
        };
        report.captioned += 1;
        let named = named_classes(caption, &all.names);
        let annotated: Vec<usize> = by_image
            .get(&id)
            .map(|v| {
                v.iter()
                    .filter_map(|&k| class_of.get(&coco.annotations[k].category_id).copied())
                    .collect()
            })
            .unwrap_or_default();
        report.candidates += named.iter().filter(|c| !annotated.contains(c)).count();
        let (boxes, embeds) = regions
            .regions(id as i64)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let pbs: Vec<PseudoBox> =
            pseudo_boxes(&boxes, &embeds, text_all, dim, &named, &annotated, cfg);
        if let (Some(f), Some(fb)) = (&full, &full_by_image) {
            let gt: Vec<([f32; 4], usize)> = fb
                .get(&id)
                .map(|v| {
                    v.iter()
                        .filter_map(|&k| {
                            let a = &f.annotations[k];
                            class_of.get(&a.category_id).map(|&c| (a.bbox_xyxy(), c))
                        })
                        .collect()
                })
                .unwrap_or_default();
            correct += pbs.iter().filter(|p| is_correct(p, &gt)).count();
        }
        for p in pbs {
            *report
                .per_class
                .entry(all.names[p.class][0].clone())
                .or_default() += 1;
            let b = p.bbox;
            let (w, h) = ((b[2] - b[0]) as f64, (b[3] - b[1]) as f64);
            added.push(CocoAnnotation {
                id: next_id,
                image_id: id,
                category_id: all.ids[p.class],
                bbox: [b[0] as f64, b[1] as f64, w, h],
                area: w * h,
                iscrowd: 0,
                segmentation: None,
            });
            next_id += 1;
        }
    }
    report.boxes = added.len();
    if full.is_some() {
        report.correct = Some(correct);
        report.precision = Some(if added.is_empty() {
            0.0
        } else {
            correct as f64 / added.len() as f64
        });
    }
    coco.annotations.extend(added);
    Ok((coco, report))
}
