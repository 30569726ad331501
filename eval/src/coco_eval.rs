//! COCO box AP, as pycocotools' `COCOeval(iouType="bbox")` computes it: every image and
//! category of the ground truth, crowd regions, maxDets 1/10/100, four area ranges, and the 12
//! summary statistics.

use crate::accumulate::{EvalParams, Prepared, accumulate};
use crate::det_report::{CategoryAp, DetReport, Rules};
use crate::error::{EvalError, Result};
use crate::ground_truth::GroundTruth;
use crate::ground_truth::GtAnnotation;
use crate::grouping::{IdMap, bucket_sort};
use crate::matching::{MatchDt, MatchGt};
use crate::results::{Detection, validate_detections};
use std::collections::HashMap;

/// The names of the 12 statistics, in pycocotools' order.
pub const COCO_STAT_NAMES: [&str; 12] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
];

/// Sorted, de-duplicated image and category ids with their dense indices.
pub(crate) struct Index {
    pub img_ids: Vec<i64>,
    pub img_index: IdMap,
    pub cat_ids: Vec<i64>,
    pub cat_index: IdMap,
    /// `(category index, image index)` of each annotation, in file order.
    pub ann_keys: Vec<(u32, u32)>,
}

impl Index {
    /// Indexes the ground truth and checks its annotations refer to known images and
    /// categories and have unique ids.
    pub fn new(gt: &GroundTruth) -> Result<Self> {
        let mut img_ids: Vec<i64> = gt.images.iter().map(|i| i.id).collect();
        img_ids.sort_unstable();
        img_ids.dedup();
        let mut cat_ids: Vec<i64> = gt.categories.iter().map(|c| c.id).collect();
        cat_ids.sort_unstable();
        cat_ids.dedup();
        let img_index = IdMap::new(&img_ids);
        let cat_index = IdMap::new(&cat_ids);
        let mut seen: HashMap<i64, usize> = HashMap::with_capacity(gt.annotations.len());
        let mut ann_keys = Vec::with_capacity(gt.annotations.len());
        for (i, a) in gt.annotations.iter().enumerate() {
            let record = || format!("annotations[{i}] (id {})", a.id);
            let img = img_index
                .get(a.image_id)
                .ok_or_else(|| EvalError::InvalidGroundTruth {
                    record: record(),
                    field: "image_id",
                    message: format!("image {} is not in `images`", a.image_id),
                })?;
            let cat =
                cat_index
                    .get(a.category_id)
                    .ok_or_else(|| EvalError::InvalidGroundTruth {
                        record: record(),
                        field: "category_id",
                        message: format!("category {} is not in `categories`", a.category_id),
                    })?;
            if let Some(prev) = seen.insert(a.id, i) {
                return Err(EvalError::InvalidGroundTruth {
                    record: record(),
                    field: "id",
                    message: format!("duplicate annotation id (also annotations[{prev}])"),
                });
            }
            ann_keys.push((cat, img));
        }
        Ok(Index {
            img_ids,
            img_index,
            cat_ids,
            cat_index,
            ann_keys,
        })
    }

    /// Checks detections' values and ids; returns each one's `(category, image)` indices.
    pub fn check_detections(&self, dets: &[Detection]) -> Result<Vec<(u32, u32)>> {
        validate_detections(dets)?;
        dets.iter()
            .enumerate()
            .map(|(index, d)| {
                let img =
                    self.img_index
                        .get(d.image_id)
                        .ok_or_else(|| EvalError::InvalidDetection {
                            index,
                            field: "image_id",
                            message: format!("image {} is not in the ground truth", d.image_id),
                        })?;
                let cat = self.cat_index.get(d.category_id).ok_or_else(|| {
                    EvalError::InvalidDetection {
                        index,
                        field: "category_id",
                        message: format!("category {} is not in the ground truth", d.category_id),
                    }
                })?;
                Ok((cat, img))
            })
            .collect()
    }

    /// Ground truth grouped by category, sorted by image, file order within:
    /// `(gts, starts)` for the annotations `keep` accepts.
    pub fn group_gts(
        &self,
        gt: &GroundTruth,
        keep: impl Fn(&GtAnnotation) -> bool,
        to_match: impl Fn(&GtAnnotation) -> MatchGt,
    ) -> (Vec<(u32, MatchGt)>, Vec<usize>) {
        let items: Vec<u32> = (0..gt.annotations.len() as u32)
            .filter(|&i| keep(&gt.annotations[i as usize]))
            .collect();
        let keys = &self.ann_keys;
        let (order, starts) = bucket_sort(
            &items,
            self.cat_ids.len(),
            |i| keys[i as usize].0,
            |i| keys[i as usize].1,
            |_| 0.0,
        );
        let gts = order
            .iter()
            .map(|&i| (keys[i as usize].1, to_match(&gt.annotations[i as usize])))
            .collect();
        (gts, starts)
    }
}

/// Detections `items` (indices, in input order) grouped by category, sorted by image then
/// descending score (ties in input order, as pycocotools' stable sorts leave them), at most
/// `max_per_image` per image and category: `(dts, starts)`.
pub(crate) fn group_dets(
    items: &[u32],
    keys: &[(u32, u32)],
    dets: &[Detection],
    nk: usize,
    max_per_image: usize,
    unmatched_ignored: impl Fn(u32, u32) -> bool,
) -> (Vec<(u32, f64, MatchDt)>, Vec<usize>) {
    let (order, starts) = bucket_sort(
        items,
        nk,
        |i| keys[i as usize].0,
        |i| keys[i as usize].1,
        |i| dets[i as usize].score,
    );
    let mut out = Vec::with_capacity(order.len());
    let mut new_starts = vec![0usize; nk + 1];
    for k in 0..nk {
        let mut run = (u32::MAX, 0usize);
        for &i in &order[starts[k]..starts[k + 1]] {
            let img = keys[i as usize].1;
            if run.0 == img {
                run.1 += 1;
            } else {
                run = (img, 1);
            }
            if run.1 > max_per_image {
                continue;
            }
            let d = &dets[i as usize];
            out.push((
                img,
                d.score,
                MatchDt {
                    bbox: d.bbox,
                    area: d.area(),
                    ignore_if_unmatched: unmatched_ignored(k as u32, img),
                },
            ));
        }
        new_starts[k + 1] = out.len();
    }
    (out, new_starts)
}

/// Evaluates detections against COCO ground truth under pycocotools' `bbox` rules.
///
/// ```no_run
/// # use ovkd_eval::{GroundTruth, CocoEvaluator, load_results};
/// # fn main() -> Result<(), ovkd_eval::EvalError> {
/// let gt = GroundTruth::from_path("gt.json".as_ref())?;
/// let dets = load_results("dets.json".as_ref())?;
/// let report = CocoEvaluator::new(&gt, &dets)?.evaluate();
/// println!("AP {}", report.stat("AP").unwrap());
/// # Ok(()) }
/// ```
pub struct CocoEvaluator<'a> {
    gt: &'a GroundTruth,
    prep: Prepared,
}

impl<'a> CocoEvaluator<'a> {
    /// Checks the inputs and groups them for evaluation. Errors name the offending record: an
    /// unknown image or category id, a NaN score, a box of negative size.
    pub fn new(gt: &'a GroundTruth, dets: &[Detection]) -> Result<Self> {
        let index = Index::new(gt)?;
        let nk = index.cat_ids.len();
        let (gts, gt_start) = index.group_gts(
            gt,
            |_| true,
            |a| MatchGt {
                bbox: a.bbox,
                area: a.area,
                crowd: a.iscrowd,
                ignore: a.iscrowd,
                id_nonzero: a.id != 0,
            },
        );
        // Detections: cut to maxDets[-1] per image and category after the score sort.
        let keys = index.check_detections(dets)?;
        let items: Vec<u32> = (0..dets.len() as u32).collect();
        let max_det = *EvalParams::coco().max_dets.last().unwrap_or(&100);
        let (out, dt_start) = group_dets(&items, &keys, dets, nk, max_det, |_, _| false);
        Ok(CocoEvaluator {
            gt,
            prep: Prepared {
                cat_ids: index.cat_ids,
                gts,
                gt_start,
                dts: out,
                dt_start,
            },
        })
    }

    /// Runs `evaluate`, `accumulate` and `summarize`: the 12 statistics and, per category, AP,
    /// AP50 and recall at maxDets 100 over all areas.
    pub fn evaluate(&self) -> DetReport {
        let params = EvalParams::coco();
        let table = accumulate(&self.prep, &params);
        let m_last = params.max_dets.len() - 1;
        let t50 = params.iou_index(0.5);
        let t75 = params.iou_index(0.75);
        let stat = |ap: bool, iou: Option<Option<usize>>, a: usize, m: usize| {
            // pycocotools gives -1 when the threshold is absent from iouThrs.
            let iou = match iou {
                None => None,
                Some(None) => return -1.0,
                Some(Some(t)) => Some(t),
            };
            if ap {
                table.mean_precision(iou, None, a, m)
            } else {
                table.mean_recall(iou, None, a, m)
            }
        };
        let values = [
            stat(true, None, 0, m_last),
            stat(true, Some(t50), 0, m_last),
            stat(true, Some(t75), 0, m_last),
            stat(true, None, 1, m_last),
            stat(true, None, 2, m_last),
            stat(true, None, 3, m_last),
            stat(false, None, 0, 0),
            stat(false, None, 0, 1),
            stat(false, None, 0, m_last),
            stat(false, None, 1, m_last),
            stat(false, None, 2, m_last),
            stat(false, None, 3, m_last),
        ];
        let stats = COCO_STAT_NAMES
            .iter()
            .zip(values)
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        let per_category = per_category(self.gt, &table, m_last);
        DetReport {
            rules: Rules::Coco,
            stats,
            per_category,
            table,
            splits: None,
        }
    }
}

/// AP, AP50 and recall per category at area "all" and max-detections index `m`.
pub(crate) fn per_category(
    gt: &GroundTruth,
    table: &crate::accumulate::PrecisionTable,
    m: usize,
) -> Vec<CategoryAp> {
    let t50 = table.params.iou_index(0.5);
    table
        .cat_ids
        .iter()
        .enumerate()
        .map(|(k, &id)| {
            let cat = gt.categories.iter().rev().find(|c| c.id == id);
            CategoryAp {
                id,
                name: cat.map(|c| c.name.clone()).unwrap_or_default(),
                frequency: cat.and_then(|c| c.frequency),
                ap: table.mean_precision(None, Some(&[k]), 0, m),
                ap50: t50.map_or(-1.0, |t| table.mean_precision(Some(t), Some(&[k]), 0, m)),
                recall: table.mean_recall(None, Some(&[k]), 0, m),
            }
        })
        .collect()
}
