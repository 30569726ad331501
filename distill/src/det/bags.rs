//! BARON's bags of regions (Wu et al., 2023, §3.2; `NeighborhoodSampling` of the official code):
//! around a region, a 3x3 grid of same-shape neighbours that overlap their neighbours by a set
//! fraction; each neighbour is kept with a probability (the centre always), none that leaves the
//! image; up to `bags_per_region` distinct bags per region, each in up to `orders` box orders
//! (the pseudo-word sequence's order is arbitrary, so two orders of one bag teach the same
//! teacher embedding).
//!
//! Grid cells are numbered row by row, the region itself in the middle:
//!
//! ```text
//! 0 1 2
//! 3 4 5
//! 6 7 8
//! ```
//!
//! The centres are the image's proposals with objectness above a threshold and aspect ratio in
//! `[min_aspect, 1 / min_aspect]`, after NMS, best first (plus the ground truth when asked).

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::proposals::iou;

/// Bag sampling settings (defaults: the official OV-COCO config, except the neighbour
/// probability, see `base_probability`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BagConfig {
    /// Proposals with objectness at or below this are not centres (the best one is kept when
    /// none passes).
    pub objectness_thr: f32,
    /// Centres need `min_aspect < w / h < 1 / min_aspect` (official: 0.25).
    pub min_aspect: f32,
    /// NMS IoU threshold between centres (official: 0.1, so bags rarely repeat).
    pub nms_thresh: f32,
    /// Centres per image, best first (after the ground truth when `use_gt`).
    pub regions_per_image: usize,
    /// The image's ground-truth boxes are centres too (official: yes).
    pub use_gt: bool,
    /// Distinct bags per centre, at most (official `max_groups`: 3).
    pub bags_per_region: usize,
    /// Box orders per bag, at most (official `max_permutations`: 2).
    pub orders: usize,
    /// Fraction of a region's width (height) by which horizontal (vertical) neighbours overlap
    /// (official `interval = -0.1`).
    pub overlap: f32,
    /// Keep probability of a side neighbour of a square region (official 0.3); corners get the
    /// geometric mean of their two sides.
    pub base_probability: f32,
    /// Elongated regions favour neighbours along their short side: the left/right probability
    /// is scaled by `(h / w)^alpha`, up/down by `(w / h)^alpha`, then capped at
    /// `base_probability` (official 3).
    pub alpha: f32,
}

impl Default for BagConfig {
    fn default() -> Self {
        Self {
            objectness_thr: 0.5,
            min_aspect: 0.25,
            nms_thresh: 0.1,
            regions_per_image: 8,
            use_gt: true,
            bags_per_region: 3,
            orders: 2,
            overlap: 0.1,
            base_probability: 0.3,
            alpha: 3.0,
        }
    }
}

/// One bag: its member boxes (in the image's pixels), their grid cells, the box orders and the
/// enclosing box.
#[derive(Debug, Clone, PartialEq)]
pub struct Bag {
    /// The region the bag was grown around (cell 4).
    pub center: [f32; 4],
    /// Grid cells of the members, increasing (always contains 4).
    pub cells: Vec<u8>,
    /// Member boxes, in `cells` order: `[M, 4]`.
    pub members: Vec<[f32; 4]>,
    /// Permutations of `0..M`: the pseudo-word sequences' box orders.
    pub orders: Vec<Vec<usize>>,
    /// The smallest box enclosing every member: the teacher's crop.
    pub spanned: [f32; 4],
}

impl Bag {
    /// The bag of `center` with `cells`, neighbours `overlap` apart, in the given `orders`.
    pub fn new(center: [f32; 4], cells: Vec<u8>, overlap: f32, orders: Vec<Vec<usize>>) -> Self {
        let members: Vec<[f32; 4]> = cells
            .iter()
            .map(|&c| grid_box(center, c, overlap))
            .collect();
        let spanned = enclosing_box(&members);
        Self {
            center,
            cells,
            members,
            orders,
            spanned,
        }
    }

    /// Each member's box relative to the enclosing box, `[x1, y1, x2, y2]` in `[0, 1]`.
    pub fn normed_members(&self) -> Vec<[f32; 4]> {
        relative_to(&self.members, self.spanned)
    }
}

/// `boxes` in the coordinates of `frame` (its corner at 0, its far corner at 1).
pub fn relative_to(boxes: &[[f32; 4]], frame: [f32; 4]) -> Vec<[f32; 4]> {
    let s = frame;
    let (w, h) = ((s[2] - s[0]).max(1e-12), (s[3] - s[1]).max(1e-12));
    boxes
        .iter()
        .map(|b| {
            [
                (b[0] - s[0]) / w,
                (b[1] - s[1]) / h,
                (b[2] - s[0]) / w,
                (b[3] - s[1]) / h,
            ]
        })
        .collect()
}

/// Grid cell `cell` (0..9) of the 3x3 grid around `center`: the same shape, shifted by
/// `(1 − overlap)` widths / heights per step.
pub fn grid_box(center: [f32; 4], cell: u8, overlap: f32) -> [f32; 4] {
    let (w, h) = (center[2] - center[0], center[3] - center[1]);
    let dx = (cell % 3) as f32 - 1.0;
    let dy = (cell / 3) as f32 - 1.0;
    let (sx, sy) = (dx * (1.0 - overlap) * w, dy * (1.0 - overlap) * h);
    [
        center[0] + sx,
        center[1] + sy,
        center[2] + sx,
        center[3] + sy,
    ]
}

/// The smallest box enclosing `boxes` (which must not be empty).
pub fn enclosing_box(boxes: &[[f32; 4]]) -> [f32; 4] {
    boxes.iter().fold(
        [
            f32::INFINITY,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NEG_INFINITY,
        ],
        |a, b| {
            [
                a[0].min(b[0]),
                a[1].min(b[1]),
                a[2].max(b[2]),
                a[3].max(b[3]),
            ]
        },
    )
}

/// Keep probability of each grid cell around `center` in an image of `[h, w]`: 1 for the
/// centre, 0 for a neighbour not wholly inside the image.
pub fn cell_probabilities(center: [f32; 4], image_size: [usize; 2], cfg: &BagConfig) -> [f32; 9] {
    let (w, h) = (
        (center[2] - center[0]).max(1e-12),
        (center[3] - center[1]).max(1e-12),
    );
    let p = cfg.base_probability;
    let side = |ratio: f32| (ratio.powf(cfg.alpha) * p).clamp(0.0, p);
    // left, right, up, down
    let lrud = [side(h / w), side(h / w), side(w / h), side(w / h)];
    let mut probs = [0f32; 9];
    let (iw, ih) = (image_size[1] as f32, image_size[0] as f32);
    for cell in 0..9u8 {
        if cell == 4 {
            probs[4] = 1.0;
            continue;
        }
        let (col, row) = (cell % 3, cell / 3);
        let horiz = match col {
            0 => Some(lrud[0]),
            2 => Some(lrud[1]),
            _ => None,
        };
        let vert = match row {
            0 => Some(lrud[2]),
            2 => Some(lrud[3]),
            _ => None,
        };
        let prob = match (horiz, vert) {
            (Some(a), Some(b)) => (a * b).sqrt(),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => 1.0,
        };
        let b = grid_box(center, cell, cfg.overlap);
        let inside = b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= iw && b[3] <= ih;
        probs[cell as usize] = if inside && prob.is_finite() {
            prob
        } else {
            0.0
        };
    }
    probs
}

/// Up to `cfg.bags_per_region` distinct bags around `center`, each in up to `cfg.orders`
/// distinct box orders (fewer when fewer exist). Deterministic given `rng`.
pub fn sample_bags<R: Rng + ?Sized>(
    center: [f32; 4],
    image_size: [usize; 2],
    cfg: &BagConfig,
    rng: &mut R,
) -> Vec<Bag> {
    let probs = cell_probabilities(center, image_size, cfg);
    let possible = probs.iter().filter(|&&p| p > 0.0 && p < 1.0).count();
    let distinct_masks = 1usize.checked_shl(possible as u32).unwrap_or(usize::MAX);
    let want = cfg.bags_per_region.min(distinct_masks);
    let mut seen: Vec<Vec<u8>> = Vec::new();
    // Bernoulli draws until `want` distinct bags (or enough tries: a mask of probability near
    // zero may never come up).
    for _ in 0..(want * 20).max(1) {
        if seen.len() >= want {
            break;
        }
        let cells: Vec<u8> = (0..9u8)
            .filter(|&c| {
                let p = probs[c as usize];
                p >= 1.0 || (p > 0.0 && rng.random::<f32>() < p)
            })
            .collect();
        if !seen.contains(&cells) {
            seen.push(cells);
        }
    }
    seen.into_iter()
        .map(|cells| {
            let orders = sample_orders(cells.len(), cfg.orders, rng);
            Bag::new(center, cells, cfg.overlap, orders)
        })
        .collect()
}

/// Up to `k` distinct permutations of `0..m` (all of them when `m!` ≤ `k`).
fn sample_orders<R: Rng + ?Sized>(m: usize, k: usize, rng: &mut R) -> Vec<Vec<usize>> {
    let total = (1..=m).try_fold(1usize, |a, b| a.checked_mul(b));
    let want = total.map_or(k, |t| t.min(k)).max(1);
    let mut out: Vec<Vec<usize>> = Vec::new();
    for _ in 0..want * 50 {
        if out.len() >= want {
            break;
        }
        let mut p: Vec<usize> = (0..m).collect();
        p.shuffle(rng);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The bag centres of one image: its ground-truth boxes (when `cfg.use_gt`) then its
/// proposals (`boxes` with objectness `scores`, best first) that pass the objectness and
/// aspect-ratio filters, greedy NMS at `cfg.nms_thresh` over the lot, at most
/// `cfg.regions_per_image`. Degenerate boxes (side under one pixel) are skipped.
pub fn bag_centers(
    boxes: &[[f32; 4]],
    scores: &[f32],
    gt: &[[f32; 4]],
    cfg: &BagConfig,
) -> Vec<[f32; 4]> {
    let shape_ok = |b: &[f32; 4]| {
        let (w, h) = (b[2] - b[0], b[3] - b[1]);
        w >= 1.0 && h >= 1.0 && {
            let r = w / h;
            r > cfg.min_aspect && r < 1.0 / cfg.min_aspect
        }
    };
    let mut cands: Vec<[f32; 4]> = Vec::new();
    if cfg.use_gt {
        cands.extend(gt.iter().copied().filter(|b| shape_ok(b)));
    }
    let passing: Vec<[f32; 4]> = boxes
        .iter()
        .zip(scores)
        .filter(|(b, s)| **s > cfg.objectness_thr && shape_ok(b))
        .map(|(b, _)| *b)
        .collect();
    if passing.is_empty() && cands.is_empty() {
        // As the official code: the best proposal when none passes.
        cands.extend(boxes.iter().take(1).copied().filter(|b| shape_ok(b)));
    }
    cands.extend(passing);
    let mut kept: Vec<[f32; 4]> = Vec::new();
    for b in cands {
        if kept.len() >= cfg.regions_per_image {
            break;
        }
        if kept.iter().all(|k| iou(k, &b) <= cfg.nms_thresh) {
            kept.push(b);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn cfg(p: f32) -> BagConfig {
        BagConfig {
            base_probability: p,
            alpha: 0.0,
            bags_per_region: 4,
            ..BagConfig::default()
        }
    }

    #[test]
    fn grid_is_3x3_same_shape_with_the_overlap_fraction() {
        let c = [40.0, 30.0, 60.0, 40.0]; // 20 x 10
        let boxes: Vec<[f32; 4]> = (0..9).map(|k| grid_box(c, k, 0.1)).collect();
        assert_eq!(boxes[4], c);
        for b in &boxes {
            assert!(((b[2] - b[0]) - 20.0).abs() < 1e-5 && ((b[3] - b[1]) - 10.0).abs() < 1e-5);
        }
        // Horizontal neighbours overlap by 10% of the width, vertical by 10% of the height.
        assert!(
            ((boxes[4][0] - boxes[3][2]) + 2.0).abs() < 1e-5,
            "{:?}",
            boxes[3]
        );
        assert!(((boxes[5][0] - boxes[4][2]) + 2.0).abs() < 1e-5);
        assert!(((boxes[4][1] - boxes[1][3]) + 1.0).abs() < 1e-5);
        assert!(((boxes[7][1] - boxes[4][3]) + 1.0).abs() < 1e-5);
        // Rows and columns line up.
        assert_eq!(boxes[0][1], boxes[2][1]);
        assert_eq!(boxes[0][0], boxes[6][0]);
        assert_eq!(enclosing_box(&boxes), [22.0, 21.0, 78.0, 49.0]);
    }

    #[test]
    fn probability_one_keeps_every_neighbour_inside_the_image_and_zero_none() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let c = [40.0, 40.0, 60.0, 60.0];
        let all = sample_bags(c, [100, 100], &cfg(1.0), &mut rng);
        assert_eq!(all.len(), 1, "only one bag exists");
        assert_eq!(all[0].cells, (0..9).collect::<Vec<u8>>());
        assert_eq!(all[0].spanned, [22.0, 22.0, 78.0, 78.0]);
        assert_eq!(all[0].orders.len(), 2);
        assert_ne!(all[0].orders[0], all[0].orders[1]);
        let none = sample_bags(c, [100, 100], &cfg(0.0), &mut rng);
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].cells, vec![4]);
        assert_eq!(none[0].spanned, c);
        assert_eq!(none[0].orders, vec![vec![0]]);
        // Against the left edge: the left column would leave the image.
        let edge = sample_bags([5.0, 40.0, 25.0, 60.0], [100, 100], &cfg(1.0), &mut rng);
        assert_eq!(edge[0].cells, vec![1, 2, 4, 5, 7, 8]);
    }

    #[test]
    fn sampled_bags_are_distinct_inside_and_contain_the_centre() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let c = [30.0, 20.0, 50.0, 45.0];
        for _ in 0..20 {
            let bags = sample_bags(c, [80, 90], &cfg(0.5), &mut rng);
            assert!(!bags.is_empty() && bags.len() <= 4);
            for (i, b) in bags.iter().enumerate() {
                assert!(b.cells.contains(&4));
                for m in &b.members {
                    assert!(m[0] >= 0.0 && m[1] >= 0.0 && m[2] <= 90.0 && m[3] <= 80.0);
                    assert!(m[0] >= b.spanned[0] && m[2] <= b.spanned[2]);
                    assert!(m[1] >= b.spanned[1] && m[3] <= b.spanned[3]);
                }
                for n in b.normed_members() {
                    assert!(n.iter().all(|v| (-1e-6..=1.0 + 1e-6).contains(v)), "{n:?}");
                }
                for o in &b.orders {
                    let mut s = o.clone();
                    s.sort_unstable();
                    assert_eq!(s, (0..b.members.len()).collect::<Vec<_>>());
                }
                for other in &bags[..i] {
                    assert_ne!(other.cells, b.cells);
                }
            }
        }
    }

    #[test]
    fn elongated_regions_favour_their_short_sides() {
        let c = BagConfig::default();
        // Wide (w = 4h): up/down neighbours keep 0.3, left/right (1/4)^3 · 0.3.
        let p = cell_probabilities([40.0, 45.0, 60.0, 50.0], [100, 100], &c);
        assert!((p[1] - 0.3).abs() < 1e-6 && (p[7] - 0.3).abs() < 1e-6);
        assert!((p[3] - 0.3 / 64.0).abs() < 1e-6);
        assert!((p[0] - (0.3f32 * 0.3 / 64.0).sqrt()).abs() < 1e-6);
        assert_eq!(p[4], 1.0);
    }

    #[test]
    fn centres_filter_shape_and_objectness_then_nms() {
        let c = BagConfig {
            regions_per_image: 3,
            ..BagConfig::default()
        };
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],  // kept
            [1.0, 1.0, 11.0, 11.0],  // overlaps the first
            [20.0, 0.0, 80.0, 10.0], // aspect 6
            [30.0, 30.0, 40.0, 40.0],
            [50.0, 50.0, 60.0, 60.0], // low score
        ];
        let scores = [0.9, 0.8, 0.9, 0.7, 0.2];
        let gt = [[60.0, 0.0, 70.0, 12.0]];
        let got = bag_centers(&boxes, &scores, &gt, &c);
        assert_eq!(got, vec![gt[0], boxes[0], boxes[3]]);
        let c0 = BagConfig {
            use_gt: false,
            objectness_thr: 0.95,
            ..c
        };
        assert_eq!(bag_centers(&boxes, &scores, &gt, &c0), vec![boxes[0]]);
    }
}
