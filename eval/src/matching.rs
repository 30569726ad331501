//! Box IoU and the greedy matching of one image's detections of one category to its ground
//! truth, exactly as pycocotools' `bbIou` and `COCOeval.evaluateImg` (and LVIS's
//! `evaluate_img`) do it.

/// IoU of every detection with every ground-truth box, as pycocotools' C `bbIou`: boxes are
/// `[x, y, w, h]`; against a crowd region the union is the detection's own area.
/// `out` is filled row-major: `[D, G]`.
pub fn bbox_iou(dts: &[[f64; 4]], gts: &[[f64; 4]], crowd: &[bool], out: &mut Vec<f64>) {
    let (m, n) = (dts.len(), gts.len());
    out.clear();
    out.resize(m * n, 0.0);
    for (g, gb) in gts.iter().enumerate() {
        let ga = gb[2] * gb[3];
        let is_crowd = crowd[g];
        for (d, db) in dts.iter().enumerate() {
            let da = db[2] * db[3];
            // Same operation order as the C code, so the doubles agree to the last bit.
            let w = (db[2] + db[0]).min(gb[2] + gb[0]) - db[0].max(gb[0]);
            if w <= 0.0 {
                continue;
            }
            let h = (db[3] + db[1]).min(gb[3] + gb[1]) - db[1].max(gb[1]);
            if h <= 0.0 {
                continue;
            }
            let i = w * h;
            let u = if is_crowd { da } else { da + ga - i };
            out[d * n + g] = i / u;
        }
    }
}

/// A ground-truth box as the matcher sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatchGt {
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// The `area` field.
    pub area: f64,
    /// Crowd region (COCO): may absorb several detections; IoU uses the detection's area.
    pub crowd: bool,
    /// Ignored whatever the area range (COCO: crowd; LVIS: the `ignore` field).
    pub ignore: bool,
    /// pycocotools records a match by the ground truth's id and tests it for non-zero, so a
    /// match to an annotation with id 0 counts as no match. Kept for exactness.
    pub id_nonzero: bool,
}

/// A detection as the matcher sees it (already sorted by descending score).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatchDt {
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// `w * h`.
    pub area: f64,
    /// LVIS: the category is not exhaustively annotated in this image, so an unmatched
    /// detection is ignored rather than counted as a false positive.
    pub ignore_if_unmatched: bool,
}

/// The outcome for one detection in one area range: bit `t` of `matched` is set when it
/// matched a (non-zero-id) ground truth at IoU threshold `t`; bit `t` of `ignored` when it is
/// ignored at that threshold (matched to an ignored ground truth, or unmatched and outside the
/// area range).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DetOutcome {
    pub matched: u16,
    pub ignored: u16,
}

/// Scratch buffers reused across images.
#[derive(Default)]
pub(crate) struct Scratch {
    ious: Vec<f64>,
    gt_boxes: Vec<[f64; 4]>,
    dt_boxes: Vec<[f64; 4]>,
    crowd: Vec<bool>,
    gt_ignore: Vec<bool>,
    order: Vec<usize>,
    gt_matched: Vec<bool>,
}

/// Matches one image's detections `dts` (score-sorted) of one category against `gts` for every
/// area range and IoU threshold. Writes `outcomes[a * D + d]` and returns, per area range, the
/// number of ground truths that are not ignored.
pub(crate) fn match_image(
    gts: &[MatchGt],
    dts: &[MatchDt],
    iou_thrs: &[f64],
    area_rngs: &[[f64; 2]],
    scratch: &mut Scratch,
    outcomes: &mut Vec<DetOutcome>,
    npig: &mut [usize],
) {
    let (n_g, n_d) = (gts.len(), dts.len());
    outcomes.clear();
    outcomes.resize(area_rngs.len() * n_d, DetOutcome::default());
    let have_ious = n_g > 0 && n_d > 0;
    if have_ious {
        scratch.gt_boxes.clear();
        scratch.gt_boxes.extend(gts.iter().map(|g| g.bbox));
        scratch.dt_boxes.clear();
        scratch.dt_boxes.extend(dts.iter().map(|d| d.bbox));
        scratch.crowd.clear();
        scratch.crowd.extend(gts.iter().map(|g| g.crowd));
        bbox_iou(
            &scratch.dt_boxes,
            &scratch.gt_boxes,
            &scratch.crowd,
            &mut scratch.ious,
        );
    }
    for (a, rng) in area_rngs.iter().enumerate() {
        scratch.gt_ignore.clear();
        scratch.gt_ignore.extend(
            gts.iter()
                .map(|g| g.ignore || g.area < rng[0] || g.area > rng[1]),
        );
        let ig = &scratch.gt_ignore;
        npig[a] += ig.iter().filter(|&&x| !x).count();
        // Stable: ground truths that count first, ignored ones after, each in file order.
        scratch.order.clear();
        scratch.order.extend((0..n_g).filter(|&g| !ig[g]));
        scratch.order.extend((0..n_g).filter(|&g| ig[g]));
        let out = &mut outcomes[a * n_d..(a + 1) * n_d];
        if have_ious {
            for (t, &thr) in iou_thrs.iter().enumerate() {
                let bit = 1u16 << t;
                scratch.gt_matched.clear();
                scratch.gt_matched.resize(n_g, false);
                let start = thr.min(1.0 - 1e-10);
                for (d, o) in out.iter_mut().enumerate() {
                    let row = &scratch.ious[d * n_g..(d + 1) * n_g];
                    let mut best = start;
                    let mut m: Option<usize> = None;
                    for &g in &scratch.order {
                        if scratch.gt_matched[g] && !gts[g].crowd {
                            continue;
                        }
                        if let Some(mm) = m
                            && !ig[mm]
                            && ig[g]
                        {
                            break;
                        }
                        if row[g] < best {
                            continue;
                        }
                        best = row[g];
                        m = Some(g);
                    }
                    if let Some(g) = m {
                        if ig[g] {
                            o.ignored |= bit;
                        }
                        if gts[g].id_nonzero {
                            o.matched |= bit;
                        }
                        scratch.gt_matched[g] = true;
                    }
                }
            }
        }
        // Unmatched detections outside the area range (or, for LVIS, of a category not
        // exhaustively annotated here) are ignored.
        let all = (1u16 << iou_thrs.len()) - 1;
        for (o, dt) in out.iter_mut().zip(dts) {
            if dt.area < rng[0] || dt.area > rng[1] || dt.ignore_if_unmatched {
                o.ignored |= all & !o.matched;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(bbox: [f64; 4], crowd: bool) -> MatchGt {
        MatchGt {
            bbox,
            area: bbox[2] * bbox[3],
            crowd,
            ignore: crowd,
            id_nonzero: true,
        }
    }

    fn dt(bbox: [f64; 4]) -> MatchDt {
        MatchDt {
            bbox,
            area: bbox[2] * bbox[3],
            ignore_if_unmatched: false,
        }
    }

    #[test]
    fn iou_and_crowd_union() {
        let mut out = Vec::new();
        bbox_iou(
            &[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 1.0, 1.0]],
            &[[5.0, 0.0, 10.0, 10.0], [0.0, 0.0, 100.0, 100.0]],
            &[false, true],
            &mut out,
        );
        // [D, G]: 50 / 150; crowd: intersection over the detection's area.
        assert_eq!(out, vec![50.0 / 150.0, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn crowd_absorbs_several_detections_and_they_are_ignored() {
        let gts = [gt([0.0, 0.0, 100.0, 100.0], true)];
        let dts = [dt([0.0, 0.0, 10.0, 10.0]), dt([50.0, 50.0, 10.0, 10.0])];
        let (mut s, mut o, mut npig) = (Scratch::default(), Vec::new(), [0usize]);
        match_image(
            &gts,
            &dts,
            &[0.5],
            &[[0.0, 1e10]],
            &mut s,
            &mut o,
            &mut npig,
        );
        assert_eq!(npig, [0]);
        assert!(o.iter().all(|x| x.matched == 1 && x.ignored == 1));
    }

    #[test]
    fn equal_iou_later_replaces_earlier_and_regular_beats_ignored() {
        // Two identical ground truths: the later one in order takes the match.
        let gts = [
            gt([0.0, 0.0, 10.0, 10.0], false),
            gt([0.0, 0.0, 10.0, 10.0], false),
        ];
        let dts = [dt([0.0, 0.0, 10.0, 10.0]), dt([0.0, 0.0, 10.0, 10.0])];
        let (mut s, mut o, mut npig) = (Scratch::default(), Vec::new(), [0usize]);
        match_image(
            &gts,
            &dts,
            &[0.5],
            &[[0.0, 1e10]],
            &mut s,
            &mut o,
            &mut npig,
        );
        assert_eq!(npig, [2]);
        assert!(o.iter().all(|x| x.matched == 1 && x.ignored == 0));
        // A regular match at IoU 0.6 is not replaced by a better match to an ignored one.
        let gts = [
            gt([0.0, 0.0, 10.0, 6.0], false),
            gt([0.0, 0.0, 10.0, 10.0], true),
        ];
        let dts = [dt([0.0, 0.0, 10.0, 10.0])];
        match_image(
            &gts,
            &dts,
            &[0.5],
            &[[0.0, 1e10]],
            &mut s,
            &mut o,
            &mut npig,
        );
        assert_eq!(
            o[0],
            DetOutcome {
                matched: 1,
                ignored: 0
            }
        );
    }

    #[test]
    fn unmatched_detection_outside_area_range_is_ignored() {
        let gts = [gt([0.0, 0.0, 10.0, 10.0], false)];
        let dts = [dt([0.0, 0.0, 10.0, 10.0]), dt([50.0, 50.0, 40.0, 40.0])];
        let (mut s, mut o, mut npig) = (Scratch::default(), Vec::new(), [0usize; 2]);
        let rngs = [[0.0, 1024.0], [1024.0, 9216.0]];
        match_image(&gts, &dts, &[0.5, 0.95], &rngs, &mut s, &mut o, &mut npig);
        assert_eq!(npig, [1, 0]);
        // small: first matches at 0.5 and 0.95; second (1600 px) is unmatched and too big.
        assert_eq!(
            o[0],
            DetOutcome {
                matched: 3,
                ignored: 0
            }
        );
        assert_eq!(
            o[1],
            DetOutcome {
                matched: 0,
                ignored: 3
            }
        );
        // medium: the ground truth is ignored (too small); the first detection matches it and
        // so is ignored too; the second is in range and unmatched: a false positive.
        assert_eq!(
            o[2],
            DetOutcome {
                matched: 3,
                ignored: 3
            }
        );
        assert_eq!(
            o[3],
            DetOutcome {
                matched: 0,
                ignored: 0
            }
        );
    }
}
