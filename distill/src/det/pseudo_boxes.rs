//! PB-OVD-style pseudo boxes (Gao et al., 2022): a training image's caption names classes its
//! box annotations lack (on OV-Shapes: the novel objects). The teacher scores the image's
//! proposals — their cached region embeddings against the text embeddings of every class the
//! caption names, softmax over those names — and, for each named class without annotation, the
//! best-scoring proposal becomes a box of that class if its score clears a threshold.

use serde::{Deserialize, Serialize};

/// Pseudo-box settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PseudoBoxConfig {
    /// Smallest probability (softmax over the caption's classes) a pseudo box needs.
    pub threshold: f32,
    /// Scale of the cosine logits before the softmax (CLIP's is 100).
    pub logit_scale: f32,
}

impl Default for PseudoBoxConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            logit_scale: 50.0,
        }
    }
}

/// One pseudo box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PseudoBox {
    /// Class index (into the class list the caller scored against).
    pub class: usize,
    /// `[x1, y1, x2, y2]`, image pixels.
    pub bbox: [f32; 4],
    /// The teacher's probability.
    pub score: f32,
}

/// Classes whose names (any of `names[c]`) occur in `caption` as whole words (case-insensitive,
/// a trailing plural "s" allowed), in class order.
pub fn named_classes(caption: &str, names: &[Vec<String>]) -> Vec<usize> {
    let text = caption.to_lowercase();
    let bytes = text.as_bytes();
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'-';
    let occurs = |name: &str| {
        let name = name.to_lowercase();
        if name.is_empty() {
            return false;
        }
        text.match_indices(&name).any(|(i, m)| {
            let before = i == 0 || !is_word(bytes[i - 1]);
            let mut end = i + m.len();
            if end < bytes.len() && bytes[end] == b's' {
                end += 1;
            }
            let after = end >= bytes.len() || !is_word(bytes[end]);
            let after_exact = i + m.len() >= bytes.len() || !is_word(bytes[i + m.len()]);
            before && (after || after_exact)
        })
    };
    (0..names.len())
        .filter(|&c| names[c].iter().any(|n| occurs(n)))
        .collect()
}

/// The pseudo boxes of one image. `boxes` `[N, 4]` with teacher region embeddings `embeds`
/// `[N * D]`; `text` `[C * D]` the classes' text embeddings (all L2-normalised); `named` the
/// classes the caption names, `annotated` those the image has boxes of. At most one box per
/// named, unannotated class.
pub fn pseudo_boxes(
    boxes: &[[f32; 4]],
    embeds: &[f32],
    text: &[f32],
    dim: usize,
    named: &[usize],
    annotated: &[usize],
    cfg: &PseudoBoxConfig,
) -> Vec<PseudoBox> {
    let missing: Vec<usize> = named
        .iter()
        .copied()
        .filter(|c| !annotated.contains(c))
        .collect();
    if missing.is_empty() || boxes.is_empty() {
        return Vec::new();
    }
    // probs[i][k]: region i, named class k.
    let probs: Vec<Vec<f32>> = (0..boxes.len())
        .map(|i| {
            let e = &embeds[i * dim..(i + 1) * dim];
            let logits: Vec<f32> = named
                .iter()
                .map(|&c| {
                    let t = &text[c * dim..(c + 1) * dim];
                    cfg.logit_scale * e.iter().zip(t).map(|(a, b)| a * b).sum::<f32>()
                })
                .collect();
            let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let z: f32 = logits.iter().map(|l| (l - m).exp()).sum();
            logits.iter().map(|l| (l - m).exp() / z).collect()
        })
        .collect();
    let mut out = Vec::new();
    for c in missing {
        let k = named.iter().position(|&x| x == c).expect("missing ⊂ named");
        let best = (0..boxes.len()).max_by(|&a, &b| probs[a][k].total_cmp(&probs[b][k]));
        if let Some(i) = best.filter(|&i| probs[i][k] >= cfg.threshold) {
            out.push(PseudoBox {
                class: c,
                bbox: boxes[i],
                score: probs[i][k],
            });
        }
    }
    out
}

/// Whether `p` matches (IoU ≥ 0.5) a box of its class among `gt` (`(box, class)`).
pub fn is_correct(p: &PseudoBox, gt: &[([f32; 4], usize)]) -> bool {
    gt.iter()
        .any(|(b, c)| *c == p.class && super::proposals::best_iou(b, &[p.bbox], 1) >= 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&[&str]]) -> Vec<Vec<String>> {
        v.iter()
            .map(|n| n.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn caption_names_whole_words_and_synonyms() {
        let n = names(&[
            &["star", "five-pointed star"],
            &["circle", "disc"],
            &["cross"],
            &["arrow"],
        ]);
        assert_eq!(
            named_classes("A small red Star above two discs", &n),
            vec![0, 1]
        );
        assert_eq!(
            named_classes("a crossing starfish", &n),
            Vec::<usize>::new()
        );
        assert_eq!(named_classes("an arrow", &n), vec![3]);
    }

    #[test]
    fn best_box_per_missing_class_above_threshold() {
        // 2-d embeddings: class 0 = x axis (annotated), class 1 = y axis, class 2 = diagonal.
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let text = [1.0, 0.0, 0.0, 1.0, s, s];
        let boxes = [
            [0.0, 0.0, 1.0, 1.0],
            [1.0, 1.0, 2.0, 2.0],
            [2.0, 2.0, 3.0, 3.0],
        ];
        // Region 0 is the annotated object, region 1 the y object, region 2 in between.
        let embeds = [1.0, 0.0, 0.0, 1.0, s, s];
        let cfg = PseudoBoxConfig {
            threshold: 0.5,
            logit_scale: 10.0,
        };
        let got = pseudo_boxes(&boxes, &embeds, &text, 2, &[0, 1], &[0], &cfg);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].class, got[0].bbox), (1, boxes[1]));
        // p = e^10 / (e^10 + e^0).
        let want = 1.0 / (1.0 + (-10f32).exp());
        assert!((got[0].score - want).abs() < 1e-6);
        // Class 2 named too: region 2 wins it; region 1 still wins class 1.
        let got = pseudo_boxes(&boxes, &embeds, &text, 2, &[0, 1, 2], &[0], &cfg);
        assert_eq!(
            got.iter().map(|p| (p.class, p.bbox)).collect::<Vec<_>>(),
            vec![(1, boxes[1]), (2, boxes[2])]
        );
        // A threshold no region reaches: none.
        let strict = PseudoBoxConfig {
            threshold: 0.9999999,
            ..cfg
        };
        assert!(pseudo_boxes(&boxes, &embeds, &text, 2, &[0, 1, 2], &[0], &strict).is_empty());
        // Nothing missing: none.
        assert!(pseudo_boxes(&boxes, &embeds, &text, 2, &[0], &[0], &cfg).is_empty());
        assert!(is_correct(&got[0], &[([1.0, 1.0, 2.0, 2.1], 1)]));
        assert!(!is_correct(&got[0], &[([1.0, 1.0, 2.0, 2.1], 2)]));
    }
}
