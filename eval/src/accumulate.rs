//! From prepared ground truth and detections to pycocotools' `precision[T, R, K, A, M]` and
//! `recall[T, K, A, M]` tables: per-image matching and per-category accumulation (monotone
//! precision sampled at the recall thresholds with searchsorted-left), one category per
//! rayon task.

use crate::matching::{DetOutcome, MatchDt, MatchGt, Scratch, match_image};
use crate::numeric::{linspace, mean_valid};
use rayon::prelude::*;

/// The evaluation settings shared by COCO and LVIS rules.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalParams {
    /// IoU thresholds, `np.linspace(.5, .95, 10)`.
    pub iou_thrs: Vec<f64>,
    /// Recall thresholds, `np.linspace(0, 1, 101)`.
    pub rec_thrs: Vec<f64>,
    /// Area ranges `[lo, hi]` (inclusive at both ends): all, small, medium, large.
    pub area_rngs: Vec<[f64; 2]>,
    /// Their labels.
    pub area_labels: Vec<&'static str>,
    /// Max detections per image and category considered (COCO: 1, 10, 100; LVIS: 300, the
    /// per-image limit having been applied already).
    pub max_dets: Vec<usize>,
}

impl EvalParams {
    /// pycocotools' defaults for `bbox`.
    pub fn coco() -> Self {
        EvalParams {
            iou_thrs: linspace(0.5, 0.95, 10),
            rec_thrs: linspace(0.0, 1.0, 101),
            area_rngs: vec![[0.0, 1e10], [0.0, 1024.0], [1024.0, 9216.0], [9216.0, 1e10]],
            area_labels: vec!["all", "small", "medium", "large"],
            max_dets: vec![1, 10, 100],
        }
    }

    /// The `lvis` package's defaults.
    pub fn lvis() -> Self {
        EvalParams {
            max_dets: vec![300],
            ..Self::coco()
        }
    }

    /// Index of an IoU threshold given as written (`0.5`, `0.75`), as pycocotools'
    /// `np.where(iouThr == p.iouThrs)` finds it.
    pub fn iou_index(&self, thr: f64) -> Option<usize> {
        self.iou_thrs.iter().position(|&t| t == thr)
    }
}

/// pycocotools' accumulated tables; `-1` marks a setting without ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct PrecisionTable {
    /// The settings the tables were made with.
    pub params: EvalParams,
    /// Category ids, sorted: the `K` axis.
    pub cat_ids: Vec<i64>,
    /// `[T, R, K, A, M]`, row-major: interpolated precision at each recall threshold.
    pub precision: Vec<f64>,
    /// `[T, K, A, M]`, row-major: the recall reached with all detections.
    pub recall: Vec<f64>,
}

impl PrecisionTable {
    fn dims(&self) -> (usize, usize, usize, usize, usize) {
        let p = &self.params;
        (
            p.iou_thrs.len(),
            p.rec_thrs.len(),
            self.cat_ids.len(),
            p.area_rngs.len(),
            p.max_dets.len(),
        )
    }

    /// `precision[t, r, k, a, m]`.
    pub fn precision_at(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> f64 {
        let (_, nr, nk, na, nm) = self.dims();
        self.precision[(((t * nr + r) * nk + k) * na + a) * nm + m]
    }

    /// `recall[t, k, a, m]`.
    pub fn recall_at(&self, t: usize, k: usize, a: usize, m: usize) -> f64 {
        let (_, _, nk, na, nm) = self.dims();
        self.recall[((t * nk + k) * na + a) * nm + m]
    }

    /// Mean of the valid precision entries over IoU thresholds (all, or just `iou`), recall
    /// thresholds and categories (all, or the indices in `cats`), at area range `a` and
    /// max-detections index `m`: pycocotools' `_summarize(ap=1)`, summed in numpy's order.
    pub fn mean_precision(
        &self,
        iou: Option<usize>,
        cats: Option<&[usize]>,
        a: usize,
        m: usize,
    ) -> f64 {
        let (nt, nr, nk, _, _) = self.dims();
        let ts: Vec<usize> = iou.map_or_else(|| (0..nt).collect(), |t| vec![t]);
        let ks: Vec<usize> = cats.map_or_else(|| (0..nk).collect(), <[usize]>::to_vec);
        let mut vals = Vec::with_capacity(ts.len() * nr * ks.len());
        for &t in &ts {
            for r in 0..nr {
                for &k in &ks {
                    vals.push(self.precision_at(t, r, k, a, m));
                }
            }
        }
        mean_valid(vals)
    }

    /// Mean of the valid recall entries: pycocotools' `_summarize(ap=0)`.
    pub fn mean_recall(
        &self,
        iou: Option<usize>,
        cats: Option<&[usize]>,
        a: usize,
        m: usize,
    ) -> f64 {
        let (nt, _, nk, _, _) = self.dims();
        let ts: Vec<usize> = iou.map_or_else(|| (0..nt).collect(), |t| vec![t]);
        let ks: Vec<usize> = cats.map_or_else(|| (0..nk).collect(), <[usize]>::to_vec);
        let mut vals = Vec::with_capacity(ts.len() * ks.len());
        for &t in &ts {
            for &k in &ks {
                vals.push(self.recall_at(t, k, a, m));
            }
        }
        mean_valid(vals)
    }
}

/// Ground truth and detections grouped for evaluation: per category (the `K` axis), sorted by
/// image index; detections within an image sorted by descending score (stable) and already
/// cut to the rules' per-image limit.
pub(crate) struct Prepared {
    /// Sorted category ids.
    pub cat_ids: Vec<i64>,
    /// `(image index, box)` per ground truth, grouped by category.
    pub gts: Vec<(u32, MatchGt)>,
    /// `gts[gt_start[k]..gt_start[k + 1]]` are category `k`'s.
    pub gt_start: Vec<usize>,
    /// `(image index, score, box)` per detection, grouped by category.
    pub dts: Vec<(u32, f64, MatchDt)>,
    /// `dts[dt_start[k]..dt_start[k + 1]]` are category `k`'s.
    pub dt_start: Vec<usize>,
}

/// Per-category result: `precision[T, R, A, M]`, `recall[T, A, M]`, or `None` when the
/// category has neither ground truth nor detections.
type CategoryTables = Option<(Vec<f64>, Vec<f64>)>;

/// Runs matching and accumulation for every category in parallel.
pub(crate) fn accumulate(prep: &Prepared, params: &EvalParams) -> PrecisionTable {
    let nk = prep.cat_ids.len();
    let per_cat: Vec<CategoryTables> = (0..nk)
        .into_par_iter()
        .map_init(Scratch::default, |scratch, k| {
            evaluate_category(
                &prep.gts[prep.gt_start[k]..prep.gt_start[k + 1]],
                &prep.dts[prep.dt_start[k]..prep.dt_start[k + 1]],
                params,
                scratch,
            )
        })
        .collect();
    let (nt, nr, na, nm) = (
        params.iou_thrs.len(),
        params.rec_thrs.len(),
        params.area_rngs.len(),
        params.max_dets.len(),
    );
    let mut precision = vec![-1.0; nt * nr * nk * na * nm];
    let mut recall = vec![-1.0; nt * nk * na * nm];
    for (k, tables) in per_cat.iter().enumerate() {
        let Some((p, r)) = tables else { continue };
        for t in 0..nt {
            for ri in 0..nr {
                for a in 0..na {
                    for m in 0..nm {
                        precision[(((t * nr + ri) * nk + k) * na + a) * nm + m] =
                            p[((t * nr + ri) * na + a) * nm + m];
                    }
                }
            }
            for a in 0..na {
                for m in 0..nm {
                    recall[((t * nk + k) * na + a) * nm + m] = r[(t * na + a) * nm + m];
                }
            }
        }
    }
    PrecisionTable {
        params: params.clone(),
        cat_ids: prep.cat_ids.clone(),
        precision,
        recall,
    }
}

/// One detection after matching: its score, its rank among its image's detections of this
/// category, and its outcome per area range (`outcomes[a]`).
struct Scored {
    score: f64,
    rank: u32,
    first_outcome: u32,
}

fn evaluate_category(
    gts: &[(u32, MatchGt)],
    dts: &[(u32, f64, MatchDt)],
    params: &EvalParams,
    scratch: &mut Scratch,
) -> CategoryTables {
    if gts.is_empty() && dts.is_empty() {
        return None;
    }
    let (nt, nr, na, nm) = (
        params.iou_thrs.len(),
        params.rec_thrs.len(),
        params.area_rngs.len(),
        params.max_dets.len(),
    );
    let mut npig = vec![0usize; na];
    let mut scored: Vec<Scored> = Vec::with_capacity(dts.len());
    // outcomes[(i * na) + a] for the i-th detection in `scored`.
    let mut outcomes: Vec<DetOutcome> = Vec::with_capacity(dts.len() * na);
    let mut img_out = Vec::new();
    let mut img_gts: Vec<MatchGt> = Vec::new();
    let mut img_dts: Vec<MatchDt> = Vec::new();
    let (mut gi, mut di) = (0usize, 0usize);
    // Images in increasing index order, as pycocotools concatenates them.
    while gi < gts.len() || di < dts.len() {
        let img = match (gts.get(gi), dts.get(di)) {
            (Some(g), Some(d)) => g.0.min(d.0),
            (Some(g), None) => g.0,
            (None, Some(d)) => d.0,
            (None, None) => unreachable!(),
        };
        img_gts.clear();
        while gi < gts.len() && gts[gi].0 == img {
            img_gts.push(gts[gi].1);
            gi += 1;
        }
        img_dts.clear();
        let d0 = di;
        while di < dts.len() && dts[di].0 == img {
            img_dts.push(dts[di].2);
            di += 1;
        }
        match_image(
            &img_gts,
            &img_dts,
            &params.iou_thrs,
            &params.area_rngs,
            scratch,
            &mut img_out,
            &mut npig,
        );
        let n_d = img_dts.len();
        for d in 0..n_d {
            scored.push(Scored {
                score: dts[d0 + d].1,
                rank: d as u32,
                first_outcome: outcomes.len() as u32,
            });
            for a in 0..na {
                outcomes.push(img_out[a * n_d + d]);
            }
        }
    }
    // np.argsort(-scores, kind='mergesort'): stable, so ties keep image order, then rank.
    let mut order: Vec<u32> = (0..scored.len() as u32).collect();
    order.sort_by(|&x, &y| {
        scored[y as usize]
            .score
            .partial_cmp(&scored[x as usize].score)
            .unwrap_or(std::cmp::Ordering::Equal)
    });

    // Lay the outcomes out in score order, one contiguous run per area range, so that the
    // passes below read memory in sequence.
    let n = order.len();
    let ranks: Vec<u32> = order.iter().map(|&i| scored[i as usize].rank).collect();
    let mut sorted_out = vec![DetOutcome::default(); n * na];
    for (j, &i) in order.iter().enumerate() {
        let first = scored[i as usize].first_outcome as usize;
        for a in 0..na {
            sorted_out[a * n + j] = outcomes[first + a];
        }
    }

    let mut precision = vec![-1.0; nt * nr * na * nm];
    let mut recall = vec![-1.0; nt * na * nm];
    // Precision at the true positives only; see below.
    let mut env: Vec<f64> = Vec::with_capacity(n);
    let mut rc_of_tp: Vec<f64> = Vec::new();
    for a in 0..na {
        if npig[a] == 0 {
            continue;
        }
        let npig_f = npig[a] as f64;
        // rc = tp / npig depends on tp alone.
        rc_of_tp.clear();
        rc_of_tp.extend((0..=n).map(|tp| tp as f64 / npig_f));
        let outs = &sorted_out[a * n..(a + 1) * n];
        for (m, &max_det) in params.max_dets.iter().enumerate() {
            for t in 0..nt {
                let bit = 1u16 << t;
                // pycocotools computes rc and pr = tp / (tp + fp + eps) after every detection,
                // replaces pr by its running maximum from the right, and samples it at the
                // first index where rc >= each recall threshold. Ignored detections repeat the
                // previous values, and a false positive never raises pr (same tp, larger
                // denominator, and rounding is monotone), so the maximum over any suffix is
                // attained at a true positive, or is pr at the suffix's first index, which is a
                // true positive whenever the threshold is above 0 (rc only grows there). For
                // threshold 0 the first index may be a false positive with pr 0, which does not
                // change the maximum. So pr is needed at the true positives only, and the
                // samples are bit-identical.
                let (mut tp, mut fp) = (0u32, 0u32);
                env.clear();
                for (o, &rank) in outs.iter().zip(&ranks) {
                    if rank as usize >= max_det || o.ignored & bit != 0 {
                        continue;
                    }
                    if o.matched & bit != 0 {
                        tp += 1;
                        let (tpf, fpf) = (tp as f64, fp as f64);
                        env.push(tpf / (fpf + tpf + f64::EPSILON));
                    } else {
                        fp += 1;
                    }
                }
                let nd = (tp + fp) as usize;
                recall[(t * na + a) * nm + m] = if nd > 0 { rc_of_tp[tp as usize] } else { 0.0 };
                for i in (1..env.len()).rev() {
                    if env[i] > env[i - 1] {
                        env[i - 1] = env[i];
                    }
                }
                // searchsorted(rc, recThrs, side='left') over the true positives: the k-th
                // (0-based) has rc = (k + 1) / npig. Past the last one, precision stays 0.
                let mut k = 0usize;
                for (r, &thr) in params.rec_thrs.iter().enumerate() {
                    while k < env.len() && rc_of_tp[k + 1] < thr {
                        k += 1;
                    }
                    precision[((t * nr + r) * na + a) * nm + m] =
                        if k < env.len() { env[k] } else { 0.0 };
                }
            }
        }
    }
    Some((precision, recall))
}
