//! Semantic-segmentation scores as mmsegmentation computes them: per-class intersection, union
//! and label areas accumulated over the whole data set (pixels whose ground truth is the
//! ignore index, 255, are skipped; labels or predictions outside `0..num_classes` fall outside
//! every class, as `torch.histc` drops them), then per-class IoU and accuracy (NaN when the
//! class is absent), mIoU and mAcc (nanmean) and aAcc; with a vocabulary, seen / unseen mIoU and
//! their harmonic mean.

use crate::error::{EvalError, Result};
use crate::io::write_atomic;
use crate::json_out::Json;
use crate::numeric::nanmean;
use crate::ov_summary::{SegSplits, fmt, seg_splits, seg_splits_markdown};
use crate::vocab::Vocabulary;
use rayon::prelude::*;
use std::path::Path;

/// mmsegmentation's default ignore index.
pub const DEFAULT_IGNORE_INDEX: u64 = 255;

/// A label value from a label map or an argmax; negative values are out of range.
pub trait Label: Copy {
    /// The value as a class index, or `None` when negative.
    fn as_index(self) -> Option<u64>;
}

macro_rules! unsigned_label {
    ($($t:ty),*) => {$(impl Label for $t {
        #[inline]
        fn as_index(self) -> Option<u64> { Some(self as u64) }
    })*};
}
macro_rules! signed_label {
    ($($t:ty),*) => {$(impl Label for $t {
        #[inline]
        fn as_index(self) -> Option<u64> { if self < 0 { None } else { Some(self as u64) } }
    })*};
}
unsigned_label!(u8, u16, u32, u64, usize);
signed_label!(i32, i64);

/// Accumulates a confusion matrix over label maps fed image by image (from PNGs or from a
/// model's argmax), then scores it.
///
/// ```
/// # use ovkd_eval::SegEvaluator;
/// let mut ev = SegEvaluator::new(3);
/// ev.add("img0", &[0u8, 1, 2, 255], &[0u8, 1, 1, 0]).unwrap();
/// let report = ev.report();
/// assert_eq!(report.iou[0], 1.0);
/// ```
#[derive(Debug, Clone)]
pub struct SegEvaluator {
    num_classes: usize,
    ignore_index: u64,
    /// `[(n + 1), (n + 1)]`: rows are ground truth, columns prediction; index `n` collects
    /// out-of-range values.
    confusion: Vec<u64>,
    images: Vec<String>,
}

impl SegEvaluator {
    /// An empty accumulator for `num_classes` classes, ignoring ground truth 255.
    pub fn new(num_classes: usize) -> Self {
        SegEvaluator {
            num_classes,
            ignore_index: DEFAULT_IGNORE_INDEX,
            confusion: vec![0; (num_classes + 1) * (num_classes + 1)],
            images: Vec::new(),
        }
    }

    /// Uses another ignore index.
    pub fn with_ignore_index(mut self, ignore_index: u64) -> Self {
        self.ignore_index = ignore_index;
        self
    }

    /// The number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Adds one image: `gt` and `pred` are the label maps, row-major, of the same size. `name`
    /// is recorded in the report's `images` list.
    pub fn add<G: Label, P: Label>(&mut self, name: &str, gt: &[G], pred: &[P]) -> Result<()> {
        if gt.len() != pred.len() {
            return Err(EvalError::LabelMap {
                path: name.to_string(),
                message: format!(
                    "prediction has {} pixels, ground truth {}",
                    pred.len(),
                    gt.len()
                ),
            });
        }
        let n = self.num_classes as u64;
        let stride = self.num_classes + 1;
        for (g, p) in gt.iter().zip(pred) {
            let gi = g.as_index();
            if gi == Some(self.ignore_index) {
                continue;
            }
            let row = match gi {
                Some(v) if v < n => v as usize,
                _ => self.num_classes,
            };
            let col = match p.as_index() {
                Some(v) if v < n => v as usize,
                _ => self.num_classes,
            };
            self.confusion[row * stride + col] += 1;
        }
        self.images.push(name.to_string());
        Ok(())
    }

    /// Adds the counts of another accumulator (same classes), appending its image names.
    pub fn merge(&mut self, other: &SegEvaluator) -> Result<()> {
        if other.num_classes != self.num_classes || other.ignore_index != self.ignore_index {
            return Err(EvalError::LabelMap {
                path: "merge".into(),
                message: "accumulators differ in classes or ignore index".into(),
            });
        }
        for (a, b) in self.confusion.iter_mut().zip(&other.confusion) {
            *a += b;
        }
        self.images.extend(other.images.iter().cloned());
        Ok(())
    }

    /// The confusion count of ground truth `gt` predicted as `pred` (`num_classes` stands for
    /// "out of range").
    pub fn confusion(&self, gt: usize, pred: usize) -> u64 {
        self.confusion[gt * (self.num_classes + 1) + pred]
    }

    /// Scores what has been accumulated.
    pub fn report(&self) -> SegReport {
        let n = self.num_classes;
        let stride = n + 1;
        let mut iou = Vec::with_capacity(n);
        let mut acc = Vec::with_capacity(n);
        let (mut sum_inter, mut sum_label) = (0.0f64, 0.0f64);
        for c in 0..n {
            let inter = self.confusion[c * stride + c] as f64;
            let label: u64 = self.confusion[c * stride..(c + 1) * stride].iter().sum();
            let pred: u64 = (0..stride).map(|r| self.confusion[r * stride + c]).sum();
            let (label, pred) = (label as f64, pred as f64);
            let union = pred + label - inter;
            // 0 / 0 is NaN, as numpy and torch give it.
            iou.push(inter / union);
            acc.push(inter / label);
            sum_inter += inter;
            sum_label += label;
        }
        SegReport {
            num_classes: n,
            ignore_index: self.ignore_index,
            images: self.images.clone(),
            m_iou: nanmean(&iou),
            m_acc: nanmean(&acc),
            a_acc: sum_inter / sum_label,
            iou,
            acc,
            class_names: Vec::new(),
            splits: None,
        }
    }
}

/// Reads a label PNG (8- or 16-bit, single channel) as row-major values with its size.
pub fn read_label_png(path: &Path) -> Result<(Vec<u16>, u32, u32)> {
    let err = |message: String| EvalError::LabelMap {
        path: path.display().to_string(),
        message,
    };
    let img = image::ImageReader::open(path)
        .map_err(|e| err(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?
        .decode()
        .map_err(|e| err(e.to_string()))?;
    let (w, h) = (img.width(), img.height());
    match img {
        image::DynamicImage::ImageLuma8(b) => {
            Ok((b.into_raw().into_iter().map(u16::from).collect(), w, h))
        }
        image::DynamicImage::ImageLuma16(b) => Ok((b.into_raw(), w, h)),
        other => Err(err(format!(
            "expected an 8- or 16-bit single-channel label map, found {:?}",
            other.color()
        ))),
    }
}

/// Scores every `*.png` of `gt_dir` (in file-name order) against the file of the same name
/// in `pred_dir`. Images are decoded in parallel.
pub fn evaluate_dirs(
    gt_dir: &Path,
    pred_dir: &Path,
    num_classes: usize,
    ignore_index: u64,
) -> Result<SegReport> {
    let io = |path: &Path, source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut names: Vec<String> = std::fs::read_dir(gt_dir)
        .map_err(|e| io(gt_dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.to_ascii_lowercase().ends_with(".png"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(EvalError::LabelMap {
            path: gt_dir.display().to_string(),
            message: "no .png label maps found".into(),
        });
    }
    let parts: Vec<Result<SegEvaluator>> = names
        .par_iter()
        .map(|name| {
            let (gt, gw, gh) = read_label_png(&gt_dir.join(name))?;
            let pred_path = pred_dir.join(name);
            if !pred_path.exists() {
                return Err(EvalError::LabelMap {
                    path: pred_path.display().to_string(),
                    message: format!("missing prediction for ground truth {name}"),
                });
            }
            let (pred, pw, ph) = read_label_png(&pred_path)?;
            if (gw, gh) != (pw, ph) {
                return Err(EvalError::LabelMap {
                    path: pred_path.display().to_string(),
                    message: format!("prediction is {pw}x{ph}, ground truth {gw}x{gh}"),
                });
            }
            let mut ev = SegEvaluator::new(num_classes).with_ignore_index(ignore_index);
            ev.add(name, &gt, &pred)?;
            Ok(ev)
        })
        .collect();
    let mut total = SegEvaluator::new(num_classes).with_ignore_index(ignore_index);
    for p in parts {
        total.merge(&p?)?;
    }
    Ok(total.report())
}

/// Segmentation scores.
#[derive(Debug, Clone, PartialEq)]
pub struct SegReport {
    /// Number of classes.
    pub num_classes: usize,
    /// The ignored ground-truth value.
    pub ignore_index: u64,
    /// The images, in the order added.
    pub images: Vec<String>,
    /// Per-class IoU; NaN when the class is in neither ground truth nor prediction.
    pub iou: Vec<f64>,
    /// Per-class accuracy (recall); NaN when the class is not in the ground truth.
    pub acc: Vec<f64>,
    /// nanmean of `iou`.
    pub m_iou: f64,
    /// nanmean of `acc`.
    pub m_acc: f64,
    /// Correct pixels over labelled pixels.
    pub a_acc: f64,
    /// Class names for tables and plots (from a vocabulary); may be empty.
    pub class_names: Vec<String>,
    /// Seen / unseen mIoU and hIoU, once a vocabulary is applied.
    pub splits: Option<SegSplits>,
}

impl SegReport {
    /// Adds seen / unseen mIoU, hIoU and the class names of `vocab`.
    pub fn apply_vocabulary(&mut self, vocab: &Vocabulary) {
        self.splits = Some(seg_splits(&self.iou, vocab));
        self.class_names = (0..self.num_classes)
            .map(|c| {
                vocab
                    .class(c as i64)
                    .map(|v| v.name.clone())
                    .unwrap_or_default()
            })
            .collect();
    }

    pub(crate) fn to_json_value(&self) -> Json {
        let arr = |v: &[f64]| Json::Arr(v.iter().map(|&x| Json::Num(x)).collect());
        let mut obj = vec![
            (
                "num_classes".to_string(),
                Json::Int(self.num_classes as i64),
            ),
            (
                "ignore_index".to_string(),
                Json::Int(self.ignore_index as i64),
            ),
            (
                "images".to_string(),
                Json::Arr(self.images.iter().map(|s| Json::Str(s.clone())).collect()),
            ),
            ("iou".to_string(), arr(&self.iou)),
            ("acc".to_string(), arr(&self.acc)),
            ("mIoU".to_string(), Json::Num(self.m_iou)),
            ("mAcc".to_string(), Json::Num(self.m_acc)),
            ("aAcc".to_string(), Json::Num(self.a_acc)),
        ];
        if let Some(s) = &self.splits {
            obj.push(("seen_mIoU".to_string(), Json::Num(s.seen_miou)));
            obj.push(("unseen_mIoU".to_string(), Json::Num(s.unseen_miou)));
            obj.push(("hIoU".to_string(), Json::Num(s.hiou)));
        }
        Json::Obj(obj)
    }

    /// The report as JSON (NaN written as `null`).
    pub fn to_json(&self) -> String {
        self.to_json_value().to_pretty()
    }

    /// Writes the JSON atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_json().as_bytes())
    }

    /// Markdown: the summary, the splits when present, and one row per class.
    pub fn to_markdown(&self) -> String {
        let mut out = format!(
            "Segmentation ({} images, {} classes)\n\n| mIoU | mAcc | aAcc |\n|---:|---:|---:|\n| {} | {} | {} |\n",
            self.images.len(),
            self.num_classes,
            fmt(self.m_iou),
            fmt(self.m_acc),
            fmt(self.a_acc)
        );
        if let Some(s) = &self.splits {
            out.push('\n');
            out.push_str(&seg_splits_markdown(s));
        }
        out.push_str("\n| class | name | IoU | Acc |\n|---:|---|---:|---:|\n");
        for c in 0..self.num_classes {
            let name = self.class_names.get(c).map(String::as_str).unwrap_or("");
            out.push_str(&format!(
                "| {c} | {name} | {} | {} |\n",
                fmt(self.iou[c]),
                fmt(self.acc[c])
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_like_mmseg_histograms() {
        let mut ev = SegEvaluator::new(3);
        // gt 255 ignored whatever the prediction; gt 7 (out of range) counts for the
        // prediction's area only; prediction 9 counts for the label's area only.
        ev.add("a", &[0u16, 0, 1, 255, 7, 2], &[0u16, 1, 1, 2, 1, 9])
            .unwrap();
        let r = ev.report();
        // class 0: inter 1, label 2, pred 1 -> 1/2; class 1: inter 1, label 1, pred 3 -> 1/3.
        assert_eq!(r.iou[0], 0.5);
        assert_eq!(r.iou[1], 1.0 / 3.0);
        assert_eq!(r.iou[2], 0.0);
        assert_eq!(r.acc, vec![0.5, 1.0, 0.0]);
        assert_eq!(r.a_acc, 2.0 / 4.0);
        let mut ev = SegEvaluator::new(2);
        ev.add("b", &[0i64], &[-1i64]).unwrap();
        let r = ev.report();
        assert!(r.iou[1].is_nan() && r.acc[1].is_nan());
        assert_eq!(r.m_iou, 0.0);
        let e = ev.add("c", &[0u8, 1], &[0u8]).unwrap_err().to_string();
        assert_eq!(e, "c: prediction has 1 pixels, ground truth 2");
    }
}
