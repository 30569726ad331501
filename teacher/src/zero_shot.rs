//! Zero-shot quality of a teacher on OV-Shapes' val split: top-1 accuracy of its ViLD region
//! embeddings of the annotated objects against prompted class names (what the detector
//! distils), and the per-pixel quality of its MaskCLIP dense features on whole scenes (what
//! the segmenter distils).

use std::path::{Path, PathBuf};

use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use ovkd_data::semantic::SemanticMask;
use serde::Serialize;

use crate::embed::{Teacher, VILD_CONTEXT};
use crate::error::{TeacherError, to_vec};
use crate::preprocess::{PreprocessConfig, scale_box};
use crate::pretrain_batch::Corpus;
use crate::shapes::{CocoAnnotation, Vocabulary, image_path, load_rgb, read_coco, read_vocab};

/// Zero-shot top-1 accuracy of single-object crops.
#[derive(Debug, Clone, Serialize)]
pub struct ZeroShotReport {
    /// Crops scored.
    pub crops: usize,
    /// Accuracy over all crops.
    pub all: f64,
    /// Accuracy over crops of base classes.
    pub base: f64,
    /// Accuracy over crops of novel classes.
    pub novel: f64,
    /// Per class: (name, split, crops, accuracy).
    pub per_class: Vec<(String, String, usize, f64)>,
    /// Confusion counts [K][K]: row = true class, column = predicted class (vocabulary order).
    pub confusion: Vec<Vec<usize>>,
}

/// Which crops of an object's box make its embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionCrops {
    /// ViLD's: the 1x and 1.5x crops about the box centre, embedded, summed and renormalised
    /// (what distillation uses; the 1.5x crop shows the object smaller, with its neighbours).
    Vild,
    /// The 1x crop of the box alone.
    Tight,
}

/// The annotated objects of a val split, each preprocessed as ViLD crops (1x and 1.5x about
/// the box centre) at one input size, with its class.
#[derive(Debug, Clone)]
pub struct ZeroShotSet {
    /// [2N, 3, S, S]: object n's crops at 2n and 2n + 1.
    pub crops: Vec<f32>,
    /// Class index (into the vocabulary) of each object: N.
    pub labels: Vec<usize>,
    /// The vocabulary.
    pub vocab: Vocabulary,
    /// S.
    pub size: usize,
}

fn clipped_box(a: &CocoAnnotation, w: f32, h: f32) -> Option<[f32; 4]> {
    let b = a.bbox.map(|v| v as f32);
    let b = [
        b[0].max(0.0),
        b[1].max(0.0),
        (b[0] + b[2]).min(w),
        (b[1] + b[3]).min(h),
    ];
    (b[2] - b[0] >= 1.0 && b[3] - b[1] >= 1.0).then_some(b)
}

impl ZeroShotSet {
    /// Every non-crowd object of `data/val` with a vocabulary class (boxes clipped to the
    /// image, those under a pixel skipped), or, with `max_objects`, an evenly spaced subset of
    /// at most that many (for monitoring during training). Crops are made at side `size`.
    pub fn from_val(
        data: &Path,
        size: usize,
        max_objects: Option<usize>,
    ) -> Result<Self, TeacherError> {
        Self::from_coco(data, &data.join("val"), "instances.json", size, max_objects)
    }

    /// As [`Self::from_val`] for any split directory and annotation file in it, e.g. `train`
    /// with `instances_full.json` (every object, novel ones too): scenes like val's that the
    /// teacher was not trained on either.
    pub fn from_coco(
        data: &Path,
        split_dir: &Path,
        annotations: &str,
        size: usize,
        max_objects: Option<usize>,
    ) -> Result<Self, TeacherError> {
        let vocab = read_vocab(&data.join("vocab.toml"))?;
        let split_dir: PathBuf = split_dir.to_path_buf();
        let coco = read_coco(&split_dir.join(annotations))?;
        let class_index = |cat: u64| vocab.classes.iter().position(|c| c.id == cat);
        let anns: Vec<&CocoAnnotation> = coco
            .annotations
            .iter()
            .filter(|a| a.iscrowd == 0 && class_index(a.category_id).is_some())
            .collect();
        let stride = match max_objects {
            Some(m) if m > 0 && anns.len() > m => anns.len().div_ceil(m),
            _ => 1,
        };
        let keep: std::collections::HashSet<u64> =
            anns.iter().step_by(stride).map(|a| a.id).collect();
        let pre = PreprocessConfig::clip(size);
        let mut crops = Vec::new();
        let mut labels = Vec::new();
        for img in &coco.images {
            let mine: Vec<&&CocoAnnotation> = anns
                .iter()
                .filter(|a| a.image_id == img.id && keep.contains(&a.id))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let rgb = load_rgb(&image_path(&split_dir, &img.file_name))?;
            let (w, h) = (rgb.width() as f32, rgb.height() as f32);
            for a in mine {
                let Some(b) = clipped_box(a, w, h) else {
                    continue;
                };
                crops.extend(pre.crop(&rgb, b)?);
                let wide = scale_box(b, VILD_CONTEXT, rgb.width(), rgb.height());
                crops.extend(pre.crop(&rgb, wide)?);
                labels.push(class_index(a.category_id).unwrap_or(0));
            }
        }
        Ok(Self {
            crops,
            labels,
            vocab,
            size,
        })
    }

    /// The objects of a pre-training corpus located by colour (what the teacher trains on),
    /// as ViLD crops of their colour boxes, or an evenly spaced subset of at most
    /// `max_objects`: whether the teacher fits its own training data. Objects of classes
    /// outside `vocab` are skipped.
    pub fn from_corpus(
        corpus: &Corpus,
        vocab: Vocabulary,
        size: usize,
        max_objects: Option<usize>,
    ) -> Result<Self, TeacherError> {
        let objs = corpus.objects();
        let stride = match max_objects {
            Some(m) if m > 0 && objs.len() > m => objs.len().div_ceil(m),
            _ => 1,
        };
        let pre = PreprocessConfig::clip(size);
        let mut crops = Vec::new();
        let mut labels = Vec::new();
        for o in objs.iter().step_by(stride) {
            let Some(ci) = o
                .object
                .class
                .as_ref()
                .and_then(|c| vocab.classes.iter().position(|v| &v.name == c))
            else {
                continue;
            };
            let img = corpus.image(o.image);
            crops.extend(pre.crop(img, o.bbox)?);
            let wide = scale_box(o.bbox, VILD_CONTEXT, img.width(), img.height());
            crops.extend(pre.crop(img, wide)?);
            labels.push(ci);
        }
        Ok(Self {
            crops,
            labels,
            vocab,
            size,
        })
    }

    /// Objects in the set.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the set holds no object.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Classifies every object by its region embedding against `prompt` filled with each
    /// class name (argmax over all classes).
    pub fn evaluate(
        &self,
        teacher: &Teacher,
        prompt: &str,
    ) -> Result<ZeroShotReport, TeacherError> {
        self.evaluate_as(teacher, prompt, RegionCrops::Vild)
    }

    /// As [`Self::evaluate`], with each object embedded from `crops`.
    pub fn evaluate_as(
        &self,
        teacher: &Teacher,
        prompt: &str,
        crops: RegionCrops,
    ) -> Result<ZeroShotReport, TeacherError> {
        if teacher.preprocess.size != self.size {
            return Err(TeacherError::InvalidRequest(format!(
                "crops were made at {} px but the teacher takes {} px",
                self.size, teacher.preprocess.size
            )));
        }
        let classes: Vec<Vec<String>> = self
            .vocab
            .classes
            .iter()
            .map(|c| vec![c.name.clone()])
            .collect();
        let text = teacher.class_embeds(&classes, &[prompt.to_string()])?; // [K, D]
        let n = self.len();
        let k = classes.len();
        let e = match crops {
            RegionCrops::Vild => teacher.embed_region_crops(&self.crops, n),
            RegionCrops::Tight => {
                let per = 3 * self.size * self.size;
                let tight: Vec<f32> = self
                    .crops
                    .chunks(per)
                    .step_by(2)
                    .flatten()
                    .copied()
                    .collect();
                teacher.embed_pixels(&tight, n)
            }
        }; // [N, D]
        let sims = to_vec(e.matmul(text.transpose()))?; // [N, K]
        let mut hits = vec![0usize; k];
        let mut counts = vec![0usize; k];
        let mut confusion = vec![vec![0usize; k]; k];
        for (i, &ci) in self.labels.iter().enumerate() {
            let row = &sims[i * k..(i + 1) * k];
            let best = (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            counts[ci] += 1;
            hits[ci] += usize::from(best == ci);
            confusion[ci][best] += 1;
        }
        let classes = &self.vocab.classes;
        let acc = |f: &dyn Fn(usize) -> bool| {
            let (h, c) = (0..k)
                .filter(|&i| f(i))
                .fold((0, 0), |(h, c), i| (h + hits[i], c + counts[i]));
            if c > 0 { h as f64 / c as f64 } else { f64::NAN }
        };
        Ok(ZeroShotReport {
            crops: n,
            all: acc(&|_| true),
            base: acc(&|i| classes[i].is_base()),
            novel: acc(&|i| classes[i].is_novel()),
            per_class: classes
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    (
                        v.name.clone(),
                        v.split.as_str().to_string(),
                        counts[i],
                        if counts[i] > 0 {
                            hits[i] as f64 / counts[i] as f64
                        } else {
                            f64::NAN
                        },
                    )
                })
                .collect(),
            confusion,
        })
    }
}

/// Classifies every (non-crowd) annotated object of `data/val` by its ViLD region embedding
/// (1x and 1.5x crops of its box, as the teacher embeds regions for distillation) against
/// `prompt` filled with each class name of `data/vocab.toml` (argmax over all classes).
pub fn zero_shot_eval(
    teacher: &Teacher,
    data: &Path,
    prompt: &str,
) -> Result<ZeroShotReport, TeacherError> {
    ZeroShotSet::from_val(data, teacher.preprocess.size, None)?.evaluate(teacher, prompt)
}

/// Per-pixel quality of MaskCLIP dense features against the val semantic masks.
#[derive(Debug, Clone, Serialize)]
pub struct DenseReport {
    /// Scenes scored.
    pub images: usize,
    /// Side the scenes were resized to before the teacher (patch grid = side / p).
    pub input_size: usize,
    /// Share of all pixels whose argmax over background + classes is right.
    pub pixel_accuracy: f64,
    /// Mean IoU over background and the classes present.
    pub miou: f64,
    /// Mean IoU over the classes present (background left out).
    pub class_miou: f64,
    /// Share of object pixels whose argmax over the classes alone (no background) is right:
    /// whether the patch features know shapes, whatever the background prompt does.
    pub object_pixel_accuracy: f64,
    /// Per class, background first: (name, IoU; NaN where absent).
    pub per_class_iou: Vec<(String, f64)>,
}

/// MaskCLIP dense zero-shot segmentation of the first `max_images` val scenes, resized to
/// `size` x `size`: per patch, similarities with `prompt` filled with "background" and each
/// class name, enlarged bilinearly to the mask's size, argmax per pixel; compared with
/// `val/semantic/*.png` (0 = background, k = class id k; 255 ignored).
pub fn dense_eval(
    teacher: &Teacher,
    data: &Path,
    prompt: &str,
    max_images: usize,
    size: usize,
) -> Result<DenseReport, TeacherError> {
    let vocab = read_vocab(&data.join("vocab.toml"))?;
    let split_dir = data.join("val");
    let coco = read_coco(&split_dir.join("instances.json"))?;
    let mut names = vec![vec!["background".to_string()]];
    names.extend(vocab.classes.iter().map(|c| vec![c.name.clone()]));
    let text = teacher.class_embeds(&names, &[prompt.to_string()])?; // [K + 1, D]
    let k1 = names.len();
    // Label value → index in `names`.
    let index_of = |v: u16| -> Option<usize> {
        if v == 0 {
            Some(0)
        } else {
            vocab
                .classes
                .iter()
                .position(|c| c.id == v as u64)
                .map(|i| i + 1)
        }
    };
    let mut inter = vec![0u64; k1];
    let mut union = vec![0u64; k1];
    let (mut right, mut total, mut obj_right, mut obj_total) = (0u64, 0u64, 0u64, 0u64);
    let mut images = 0;
    for img in coco.images.iter().take(max_images) {
        let rgb = load_rgb(&image_path(&split_dir, &img.file_name))?;
        let mask_path = split_dir
            .join("semantic")
            .join(Path::new(&img.file_name).with_extension("png"));
        let mask = SemanticMask::read(&mask_path)?;
        let (mw, mh) = (mask.width(), mask.height());
        let f = teacher.dense(&rgb, (size as u32, size as u32))?;
        let [d, gh, gw] = f.embeds.dims();
        let logits = text
            .clone()
            .matmul(f.embeds.reshape([d, gh * gw]))
            .reshape([1, k1, gh, gw]);
        let up = interpolate(
            logits,
            InterpolateOptions::new(InterpolateMode::Bilinear)
                .with_align_corners(false)
                .with_output_size([mh, mw]),
        );
        let v = to_vec(up.reshape([k1, mh * mw]))?;
        for (p, &label) in mask.as_slice().iter().enumerate() {
            let Some(t) = index_of(label) else { continue };
            let at = |j: usize| v[j * mh * mw + p];
            let best = (0..k1).fold(0, |b, j| if at(j) > at(b) { j } else { b });
            total += 1;
            right += u64::from(best == t);
            inter[t] += u64::from(best == t);
            union[t] += 1;
            if best != t {
                union[best] += 1;
            }
            if t > 0 {
                let best_obj = (1..k1).fold(1, |b, j| if at(j) > at(b) { j } else { b });
                obj_total += 1;
                obj_right += u64::from(best_obj == t);
            }
        }
        images += 1;
    }
    let iou: Vec<f64> = (0..k1)
        .map(|i| {
            if union[i] > 0 {
                inter[i] as f64 / union[i] as f64
            } else {
                f64::NAN
            }
        })
        .collect();
    let mean = |v: &[f64]| {
        let ok: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
        if ok.is_empty() {
            f64::NAN
        } else {
            ok.iter().sum::<f64>() / ok.len() as f64
        }
    };
    let ratio = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { f64::NAN };
    Ok(DenseReport {
        images,
        input_size: size,
        pixel_accuracy: ratio(right, total),
        miou: mean(&iou),
        class_miou: mean(&iou[1..]),
        object_pixel_accuracy: ratio(obj_right, obj_total),
        per_class_iou: names
            .iter()
            .zip(&iou)
            .map(|(n, &x)| (n[0].clone(), x))
            .collect(),
    })
}
