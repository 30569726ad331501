//! LVIS box AP, as the `lvis` package's `LVISEval(iou_type="bbox")` computes it: federated
//! evaluation over a ground truth where each image lists the categories verified absent
//! (`neg_category_ids`) and those not exhaustively annotated (`not_exhaustive_category_ids`).
//!
//! The rules, in the package's order: keep the 300 highest-scoring detections per image
//! (across categories); keep annotations and detections whose area is strictly between 0 and
//! infinity; drop a detection whose category is neither annotated in its image nor in the
//! image's negative list; match without crowd handling; ignore unmatched detections of a
//! not-exhaustive category; report APr / APc / APf over the categories' `frequency` bins.

use crate::accumulate::{EvalParams, Prepared, accumulate};
use crate::coco_eval::{Index, group_dets, per_category};
use crate::det_report::{DetReport, Rules};
use crate::error::{EvalError, Result};
use crate::ground_truth::{Frequency, GroundTruth};
use crate::grouping::bucket_sort;
use crate::matching::MatchGt;
use crate::results::Detection;
use std::collections::HashSet;

/// The names of the 13 statistics, in the `lvis` package's order.
pub const LVIS_STAT_NAMES: [&str; 13] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300", "ARs@300", "ARm@300",
    "ARl@300",
];

/// Detections kept per image, across categories.
pub const LVIS_MAX_DETS: usize = 300;

/// Evaluates detections against LVIS-style ground truth under the `lvis` package's rules.
pub struct LvisEvaluator<'a> {
    gt: &'a GroundTruth,
    prep: Prepared,
    /// Category indices per frequency bin (rare, common, frequent).
    freq_groups: [Vec<usize>; 3],
}

impl<'a> LvisEvaluator<'a> {
    /// Checks the inputs and applies the federated filtering. Every category needs a
    /// `frequency`; an image without `neg_category_ids` or `not_exhaustive_category_ids` is
    /// taken to have empty lists (so only its annotated categories are evaluated on it).
    pub fn new(gt: &'a GroundTruth, dets: &[Detection]) -> Result<Self> {
        let index = Index::new(gt)?;
        let n_img = index.img_ids.len() as u64;
        let nk = index.cat_ids.len();
        let key = |cat: u32, img: u32| cat as u64 * n_img + img as u64;

        let mut freq_groups: [Vec<usize>; 3] = Default::default();
        for (k, &id) in index.cat_ids.iter().enumerate() {
            let pos = gt.categories.iter().rposition(|c| c.id == id).unwrap_or(0);
            let f = gt.categories[pos]
                .frequency
                .ok_or_else(|| EvalError::InvalidGroundTruth {
                    record: format!("categories[{pos}] (id {id})"),
                    field: "frequency",
                    message: "missing (LVIS rules need `r`, `c` or `f` on every category)".into(),
                })?;
            let g = match f {
                Frequency::Rare => 0,
                Frequency::Common => 1,
                Frequency::Frequent => 2,
            };
            freq_groups[g].push(k);
        }

        // Per image: categories verified absent, and categories not exhaustively annotated.
        // A later image entry with the same id replaces an earlier one, as in a Python dict.
        let mut last_entry = vec![usize::MAX; index.img_ids.len()];
        for (i, im) in gt.images.iter().enumerate() {
            if let Some(img) = index.img_index.get(im.id) {
                last_entry[img as usize] = i;
            }
        }
        let mut neg: HashSet<u64> = HashSet::new();
        let mut nel: HashSet<u64> = HashSet::new();
        for (img, &i) in last_entry.iter().enumerate() {
            let Some(im) = gt.images.get(i) else { continue };
            for (list, set) in [
                (&im.neg_category_ids, &mut neg),
                (&im.not_exhaustive_category_ids, &mut nel),
            ] {
                for &c in list.iter().flatten() {
                    if let Some(k) = index.cat_index.get(c) {
                        set.insert(key(k, img as u32));
                    }
                }
            }
        }

        // Ground truth with 0 < area < inf, by (category, image), file order within.
        let keep_area = |a: f64| a > 0.0 && a < f64::INFINITY;
        let (gts, gt_start) = index.group_gts(
            gt,
            |a| keep_area(a.area),
            |a| MatchGt {
                bbox: a.bbox,
                area: a.area,
                crowd: false,
                ignore: a.ignore,
                id_nonzero: a.id != 0,
            },
        );
        let positive: HashSet<u64> = gt
            .annotations
            .iter()
            .zip(&index.ann_keys)
            .filter(|(a, _)| keep_area(a.area))
            .map(|(_, &(k, img))| key(k, img))
            .collect();

        // Detections: the top 300 per image (stable by descending score), then the area and
        // federated filters.
        let keys = index.check_detections(dets)?;
        let all: Vec<u32> = (0..dets.len() as u32).collect();
        let (by_img, img_start) = bucket_sort(
            &all,
            index.img_ids.len(),
            |i| keys[i as usize].1,
            |_| 0,
            |i| dets[i as usize].score,
        );
        let mut kept: Vec<u32> = Vec::with_capacity(dets.len());
        for w in img_start.windows(2) {
            let top = &by_img[w[0]..w[1].min(w[0] + LVIS_MAX_DETS)];
            for &i in top {
                let (cat, img) = keys[i as usize];
                let kk = key(cat, img);
                if keep_area(dets[i as usize].area())
                    && (positive.contains(&kk) || neg.contains(&kk))
                {
                    kept.push(i);
                }
            }
        }
        kept.sort_unstable();
        let (out, dt_start) = group_dets(&kept, &keys, dets, nk, usize::MAX, |k, img| {
            nel.contains(&key(k, img))
        });
        Ok(LvisEvaluator {
            gt,
            prep: Prepared {
                cat_ids: index.cat_ids,
                gts,
                gt_start,
                dts: out,
                dt_start,
            },
            freq_groups,
        })
    }

    /// Runs `evaluate`, `accumulate` and `summarize`: the 13 statistics and per-category AP,
    /// AP50 and recall.
    pub fn evaluate(&self) -> DetReport {
        let params = EvalParams::lvis();
        let table = accumulate(&self.prep, &params);
        let t50 = params.iou_index(0.5);
        let t75 = params.iou_index(0.75);
        let at = |t: Option<usize>| t.map_or(-1.0, |t| table.mean_precision(Some(t), None, 0, 0));
        let values = [
            table.mean_precision(None, None, 0, 0),
            at(t50),
            at(t75),
            table.mean_precision(None, None, 1, 0),
            table.mean_precision(None, None, 2, 0),
            table.mean_precision(None, None, 3, 0),
            table.mean_precision(None, Some(&self.freq_groups[0]), 0, 0),
            table.mean_precision(None, Some(&self.freq_groups[1]), 0, 0),
            table.mean_precision(None, Some(&self.freq_groups[2]), 0, 0),
            table.mean_recall(None, None, 0, 0),
            table.mean_recall(None, None, 1, 0),
            table.mean_recall(None, None, 2, 0),
            table.mean_recall(None, None, 3, 0),
        ];
        let stats = LVIS_STAT_NAMES
            .iter()
            .zip(values)
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        let per_category = per_category(self.gt, &table, 0);
        DetReport {
            rules: Rules::Lvis,
            stats,
            per_category,
            table,
            splits: None,
        }
    }
}
