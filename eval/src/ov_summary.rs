//! Open-vocabulary summaries: box AP and AP50 over the base, novel and all classes of a
//! vocabulary (OV-COCO reports novel AP50; "all" is over every vocabulary class, not a weighted
//! average of the two), and seen / unseen mIoU with their harmonic mean for segmentation.

use crate::accumulate::PrecisionTable;
use crate::numeric::nanmean;
use crate::vocab::{Split, Vocabulary};

/// AP and AP50 over one split's categories.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitAp {
    /// AP@[.50:.95], maxDets 100 (LVIS: 300), all areas; -1 when no category has ground truth.
    pub ap: f64,
    /// AP at IoU 0.50.
    pub ap50: f64,
    /// The split's category ids that are in the ground truth.
    pub category_ids: Vec<i64>,
    /// How many of those have ground-truth boxes (the ones the means run over).
    pub with_gt: usize,
}

/// Box AP per split.
#[derive(Debug, Clone, PartialEq)]
pub struct DetSplits {
    /// Base (seen) classes.
    pub base: SplitAp,
    /// Novel (unseen) classes.
    pub novel: SplitAp,
    /// Every vocabulary class.
    pub all: SplitAp,
}

/// Averages the precision table over each split of `vocab`, as pycocotools averages over all
/// categories: the mean of the valid precision entries of the split's categories (area "all",
/// the largest max-detections setting). Vocabulary classes absent from the ground truth are
/// skipped.
pub fn det_splits(table: &PrecisionTable, vocab: &Vocabulary) -> DetSplits {
    let m = table.params.max_dets.len() - 1;
    let t50 = table.params.iou_index(0.5);
    let one = |split: Option<Split>| {
        let ids = vocab.ids(split);
        let ks: Vec<usize> = (0..table.cat_ids.len())
            .filter(|&k| ids.contains(&table.cat_ids[k]))
            .collect();
        let with_gt = ks
            .iter()
            .filter(|&&k| table.precision_at(0, 0, k, 0, m) > -1.0)
            .count();
        SplitAp {
            ap: table.mean_precision(None, Some(&ks), 0, m),
            ap50: t50.map_or(-1.0, |t| table.mean_precision(Some(t), Some(&ks), 0, m)),
            category_ids: ks.iter().map(|&k| table.cat_ids[k]).collect(),
            with_gt,
        }
    };
    DetSplits {
        base: one(Some(Split::Base)),
        novel: one(Some(Split::Novel)),
        all: one(None),
    }
}

/// Seen / unseen mIoU and their harmonic mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegSplits {
    /// nanmean of the IoU of the seen (base) classes.
    pub seen_miou: f64,
    /// nanmean of the IoU of the unseen (novel) classes.
    pub unseen_miou: f64,
    /// `2 s u / (s + u)`; 0 when both are 0, NaN when either is.
    pub hiou: f64,
}

/// Splits per-class IoU (`iou[c]` for label value `c`) by `vocab`; classes are taken in
/// increasing label order, and ids outside `0..iou.len()` are skipped.
pub fn seg_splits(iou: &[f64], vocab: &Vocabulary) -> SegSplits {
    let pick = |split: Split| {
        let mut ids: Vec<i64> = vocab
            .ids(Some(split))
            .into_iter()
            .filter(|&c| c >= 0 && (c as usize) < iou.len())
            .collect();
        ids.sort_unstable();
        let v: Vec<f64> = ids.iter().map(|&c| iou[c as usize]).collect();
        nanmean(&v)
    };
    let (s, u) = (pick(Split::Base), pick(Split::Novel));
    SegSplits {
        seen_miou: s,
        unseen_miou: u,
        hiou: harmonic_mean(s, u),
    }
}

/// `2 s u / (s + u)`, 0 when both are 0.
pub fn harmonic_mean(s: f64, u: f64) -> f64 {
    if s + u == 0.0 {
        0.0
    } else {
        2.0 * s * u / (s + u)
    }
}

/// A Markdown table of the box AP splits.
pub fn det_splits_markdown(s: &DetSplits) -> String {
    let mut out =
        String::from("| split | categories (with GT) | AP | AP50 |\n|---|---:|---:|---:|\n");
    for (name, x) in [("base", &s.base), ("novel", &s.novel), ("all", &s.all)] {
        out.push_str(&format!(
            "| {name} | {} ({}) | {} | {} |\n",
            x.category_ids.len(),
            x.with_gt,
            fmt(x.ap),
            fmt(x.ap50)
        ));
    }
    out
}

/// A Markdown table of the segmentation splits.
pub fn seg_splits_markdown(s: &SegSplits) -> String {
    format!(
        "| seen mIoU | unseen mIoU | hIoU |\n|---:|---:|---:|\n| {} | {} | {} |\n",
        fmt(s.seen_miou),
        fmt(s.unseen_miou),
        fmt(s.hiou)
    )
}

/// A fraction with four decimals; `-` for NaN.
pub(crate) fn fmt(x: f64) -> String {
    if x.is_nan() {
        "-".to_string()
    } else {
        format!("{x:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::VocabClass;

    #[test]
    fn seg_splits_and_harmonic_mean() {
        let vocab = Vocabulary {
            name: "v".into(),
            classes: vec![
                VocabClass {
                    id: 0,
                    name: "a".into(),
                    split: Some(Split::Base),
                },
                VocabClass {
                    id: 1,
                    name: "b".into(),
                    split: Some(Split::Base),
                },
                VocabClass {
                    id: 2,
                    name: "c".into(),
                    split: Some(Split::Novel),
                },
                VocabClass {
                    id: 3,
                    name: "d".into(),
                    split: Some(Split::Novel),
                },
                VocabClass {
                    id: 9,
                    name: "e".into(),
                    split: Some(Split::Novel),
                },
            ],
        };
        let s = seg_splits(&[0.5, 0.7, 0.2, f64::NAN], &vocab);
        assert_eq!(s.seen_miou, 0.6);
        assert_eq!(s.unseen_miou, 0.2);
        assert!((s.hiou - 2.0 * 0.6 * 0.2 / 0.8).abs() < 1e-15);
        assert_eq!(harmonic_mean(0.0, 0.0), 0.0);
    }
}
