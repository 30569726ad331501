//! Inference: region embeddings scored against any text embeddings, the ViLD ensemble of the
//! text and image heads, then per-class NMS, a score threshold and the top-k per image.

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use ovkd_detector::box_head::l2_normalize;
use ovkd_detector::{
    Boxes, Detections, Detector, ImageBatch, PostprocessConfig, select_detections, vild_ensemble,
};
use serde::{Deserialize, Serialize};

use super::DetError;
use super::pseudo_words::PseudoWordEncoder;

/// Which head's class probabilities rank the detections.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScoreSource {
    /// The text head (ViLD-text's embedding; also the single head of plain ViLD).
    #[default]
    Text,
    /// The image head alone (the embedding ViLD-image trains).
    Image,
    /// ViLD-ensemble: per class, `text^λ · image^(1−λ)` for base classes and
    /// `text^(1−λ) · image^λ` for novel ones. Needs a head with an image branch. With
    /// `background_from_text`, the two heads' class distributions are taken without the
    /// background and the result is scaled by the text head's object probability.
    Ensemble,
}

/// Inference settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// Score threshold, per-class NMS, detections per image.
    pub postprocess: PostprocessConfig,
    /// Which head's scores to use.
    pub scores: ScoreSource,
    /// The ensemble's λ (ViLD: 2/3).
    pub lambda: f32,
    /// Ensemble only: whether a region is an object at all is the text head's call
    /// (`1 − p_background`, the head that cross-entropy trained on background RoIs); both
    /// heads only rank the classes (softmax without the background), and the geometric mean
    /// of those is scaled by it. The image head is trained on no background: its own
    /// background probability says nothing, and a background region whose teacher embedding
    /// lies near a novel class's text would otherwise score that class at ~1.
    pub background_from_text: bool,
    /// Softmax temperature of the image head's cosine logits in the ensemble (None: the box
    /// head's). ViLD-image distils the teacher's image embeddings, whose cosines with the
    /// class texts are calibrated by the teacher's own logit scale (CLIP: 1/100 .. 1/14), not
    /// by the 0.01 that ViLD-text learns to fill.
    pub image_temperature: Option<f32>,
    /// Ensemble with `background_from_text` only: what says a region is an object for the
    /// novel classes. The text head was trained with the unannotated novel objects of the
    /// training images as background, and the longer it trains the surer it is of that (its
    /// object probability on novel val objects fell from 0.29 to 0.14 between 700 and 1,800
    /// steps); the class-agnostic RPN separates them from background far better.
    pub novel_objectness: NovelObjectness,
}

/// Where the ensemble's novel classes take their object probability from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum NovelObjectness {
    /// The text head's `1 − p_background`, as for the base classes.
    #[default]
    Text,
    /// The RPN's objectness probability of the region's proposal.
    Rpn,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            postprocess: PostprocessConfig::default(),
            scores: ScoreSource::Text,
            lambda: 2.0 / 3.0,
            background_from_text: true,
            image_temperature: None,
            novel_objectness: NovelObjectness::Text,
        }
    }
}

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

/// Per-class scores of one image's regions: `[N, C]` row-major, background excluded.
///
/// `text_embeds` `[C, D]` are the classes asked for, `is_novel[c]` whether class `c` was absent
/// from training (it decides the ensemble's weights).
/// `proposal_scores` `[N]` are the RPN's objectness probabilities of the regions' proposals.
pub fn region_scores(
    model: &Detector,
    region_embeds: Tensor<2>,
    image_embeds: Option<Tensor<2>>,
    text_embeds: Tensor<2>,
    proposal_scores: &[f32],
    is_novel: &[bool],
    cfg: &InferenceConfig,
) -> Result<Vec<f32>, DetError> {
    let image = || {
        image_embeds.clone().ok_or_else(|| {
            DetError::Other(
                "the detector has no image branch (detector.box_head.image_branch = none): \
                 use scores = text"
                    .into(),
            )
        })
    };
    Ok(match cfg.scores {
        ScoreSource::Text => to_vec(model.class_probs(region_embeds, text_embeds)),
        ScoreSource::Image => to_vec(model.class_probs(image()?, text_embeds)),
        ScoreSource::Ensemble if cfg.background_from_text => {
            let c = text_embeds.dims()[0];
            let t_img = cfg.image_temperature.unwrap_or(model.box_head.temperature);
            let im = to_vec(softmax(
                image()?
                    .matmul(l2_normalize(text_embeds.clone()).transpose())
                    .div_scalar(t_img),
                1,
            ));
            // The text head as it was trained: background + the base classes only.
            let base: Vec<usize> = (0..c).filter(|&k| !is_novel[k]).collect();
            if base.is_empty() {
                // No base class asked for (e.g. `ovkd predict --classes` with novel names
                // only): the object probability from the background against the classes asked.
                let tx = to_vec(model.class_probs(region_embeds, text_embeds));
                return Ok(tx
                    .chunks_exact(c)
                    .zip(im.chunks_exact(c))
                    .flat_map(|(t, i)| {
                        let p_obj: f32 = t.iter().sum();
                        i.iter().map(move |v| v * p_obj)
                    })
                    .collect());
            }
            let tx = {
                let ids = Tensor::<1, burn::tensor::Int>::from_data(
                    burn::tensor::TensorData::new(
                        base.iter().map(|&k| k as i64).collect::<Vec<_>>(),
                        [base.len()],
                    ),
                    &text_embeds.device(),
                );
                to_vec(model.class_probs(region_embeds, text_embeds.select(0, ids)))
            };
            let novel_obj = match cfg.novel_objectness {
                NovelObjectness::Text => None,
                NovelObjectness::Rpn => Some(proposal_scores),
            };
            ensemble_with_text_objectness(&tx, &im, is_novel, cfg.lambda, novel_obj)
        }
        ScoreSource::Ensemble => {
            let im = to_vec(model.class_probs(image()?, text_embeds.clone()));
            let tx = to_vec(model.class_probs(region_embeds, text_embeds));
            vild_ensemble(&tx, &im, is_novel, cfg.lambda)
        }
    })
}

/// The ViLD ensemble with the background decided by the text head alone, and the novel
/// classes by the image head alone.
///
/// `text_base_probs` `[N, Cb]`: the text head's softmax over the background and the `Cb` base
/// classes (as it was trained), background dropped; `image_class_probs` `[N, C]`: the image
/// head's softmax over all `C` classes (no background: it was never trained on one);
/// `is_novel` `[C]` (the base classes, in order, are the columns of `text_base_probs`).
/// Per region, `p_obj = Σ text`; base class `c`: `(text[c] / p_obj)^λ · image[c]^(1−λ)`
/// (ViLD's weights); novel class: `image[c]` (the text head never saw a novel class: its
/// scores for one only say which base class the text resembles); each times `p_obj`, or, for
/// the novel classes when `novel_objectness` `[N]` is given, times that instead.
pub fn ensemble_with_text_objectness(
    text_base_probs: &[f32],
    image_class_probs: &[f32],
    is_novel: &[bool],
    lambda: f32,
    novel_objectness: Option<&[f32]>,
) -> Vec<f32> {
    let c = is_novel.len();
    let cb = is_novel.iter().filter(|n| !**n).count();
    assert!(
        c > 0 && image_class_probs.len() % c == 0,
        "ensemble: image scores must be [N, C]"
    );
    let n = image_class_probs.len() / c;
    assert_eq!(
        text_base_probs.len(),
        n * cb,
        "ensemble: text scores must be [N, base classes]"
    );
    if let Some(o) = novel_objectness {
        assert_eq!(o.len(), n, "ensemble: novel objectness must be [N]");
    }
    let mut out = Vec::with_capacity(n * c);
    for r in 0..n {
        let tx = &text_base_probs[r * cb..(r + 1) * cb];
        let im = &image_class_probs[r * c..(r + 1) * c];
        let p_obj: f32 = tx.iter().sum();
        let novel_obj = novel_objectness.map_or(p_obj, |o| o[r]);
        let mut b = 0;
        for k in 0..c {
            let s = if is_novel[k] {
                im[k] * novel_obj
            } else {
                let t = tx[b] / p_obj.max(1e-12);
                b += 1;
                t.max(0.0).powf(lambda) * im[k].max(0.0).powf(1.0 - lambda) * p_obj
            };
            out.push(s);
        }
    }
    out
}

/// Detections of every image of `batch` (boxes in the batch's pixels; labels index
/// `text_embeds` `[C, D]`). With `encoder` (BARON), the text head's region embeddings are the
/// regions' pseudo-words read by the teacher's text tower.
pub fn detect(
    model: &Detector,
    batch: &ImageBatch,
    text_embeds: Tensor<2>,
    is_novel: &[bool],
    cfg: &InferenceConfig,
    encoder: Option<&PseudoWordEncoder>,
) -> Result<Vec<Detections>, DetError> {
    Ok(
        detect_with_regions(model, batch, text_embeds, is_novel, cfg, encoder, false)?
            .into_iter()
            .map(|(d, _)| d)
            .collect(),
    )
}

/// What the two heads said about every region of one image, before scoring: what the
/// scoring rules are built from (`ovkd train detector --eval-only --dump-regions`).
#[derive(Debug, Clone, Default)]
pub struct RegionHeads {
    /// RPN proposals `N` (best first).
    pub proposals: Boxes,
    /// Their objectness probabilities `N`.
    pub proposal_scores: Vec<f32>,
    /// The proposals refined by the box head and clipped: `N`.
    pub boxes: Boxes,
    /// Text head: cosine logits over the learned background (column 0) and the `C` classes,
    /// divided by the head's temperature: `[N, 1 + C]` row-major (empty unless
    /// [`detect_with_regions`] was asked for the head outputs).
    pub text_logits: Vec<f32>,
    /// Image head: cosines with the `C` class texts, `[N, C]` row-major (None without an
    /// image branch, or unless asked for).
    pub image_cosines: Option<Vec<f32>>,
}

/// [`detect`], also returning each image's regions (e.g. to measure the proposals' recall of
/// novel objects); with `head_outputs`, also what the heads said about them, to study the
/// scoring.
pub fn detect_with_regions(
    model: &Detector,
    batch: &ImageBatch,
    text_embeds: Tensor<2>,
    is_novel: &[bool],
    cfg: &InferenceConfig,
    encoder: Option<&PseudoWordEncoder>,
    head_outputs: bool,
) -> Result<Vec<(Detections, RegionHeads)>, DetError> {
    let c = text_embeds.dims()[0];
    if is_novel.len() != c {
        return Err(DetError::Other(format!(
            "{} base/novel flags for {c} classes",
            is_novel.len()
        )));
    }
    let preds = model.forward_inference(batch);
    let mut out = Vec::with_capacity(preds.len());
    for (p, size) in preds.into_iter().zip(&batch.sizes) {
        if p.boxes.is_empty() {
            let heads = RegionHeads {
                proposals: p.proposals,
                ..RegionHeads::default()
            };
            out.push((Detections::default(), heads));
            continue;
        }
        let region_embeds = match (encoder, p.pseudo_words) {
            (Some(enc), Some(words)) => enc.encode_regions(words)?,
            (Some(_), None) => {
                return Err(DetError::Other(
                    "a text-tower encoder was given but the detector makes no pseudo-words".into(),
                ));
            }
            (None, _) => p.region_embeds,
        };
        // The heads' raw outputs cost a matmul and a copy per image: only when asked.
        let (text_logits, image_cosines) = if head_outputs {
            (
                to_vec(
                    model
                        .box_head
                        .logits(region_embeds.clone(), text_embeds.clone()),
                ),
                p.image_embeds
                    .clone()
                    .map(|e| to_vec(e.matmul(l2_normalize(text_embeds.clone()).transpose()))),
            )
        } else {
            (Vec::new(), None)
        };
        let scores = region_scores(
            model,
            region_embeds,
            p.image_embeds,
            text_embeds.clone(),
            &p.proposal_scores,
            is_novel,
            cfg,
        )?;
        let d = select_detections(&p.boxes, &scores, c, *size, &cfg.postprocess);
        let heads = RegionHeads {
            proposals: p.proposals,
            proposal_scores: p.proposal_scores,
            boxes: p.boxes,
            text_logits,
            image_cosines,
        };
        out.push((d, heads));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A background region (text head: p_background 0.98) whose image embedding sits on a
    /// novel class (image head: 0.99 for it) must not score that class high; an object keeps
    /// the image head's ranking of the novel classes and the ensemble's of the base ones,
    /// scaled by its objectness.
    #[test]
    fn background_comes_from_the_text_head() {
        // Classes: base, novel, base.
        let is_novel = [false, true, false];
        // Text head over (background, base 0, base 2), background dropped.
        let text = [0.01, 0.01, 0.6, 0.3];
        let image = [0.005, 0.99, 0.005, 0.5, 0.3, 0.2];
        let s = ensemble_with_text_objectness(&text, &image, &is_novel, 2.0 / 3.0, None);
        assert_eq!(s.len(), 6);
        assert!(s[..3].iter().all(|&v| v <= 0.02), "{s:?}");
        // The plain ensemble over a text head that includes the novel class lets the image
        // head's novel score through: 0.01^(1/3) · 0.99^(2/3) > 0.2.
        let plain = vild_ensemble(&[0.01, 0.01, 0.01], &image[..3], &is_novel, 2.0 / 3.0);
        assert!(plain[1] > 0.2, "{plain:?}");
        // Object: p_obj 0.9; base 0: (0.6/0.9)^(2/3) · 0.5^(1/3) · 0.9; novel: 0.3 · 0.9.
        let base = (0.6f32 / 0.9).powf(2.0 / 3.0) * 0.5f32.powf(1.0 / 3.0) * 0.9;
        assert!((s[3] - base).abs() < 1e-6, "{s:?}");
        assert!((s[4] - 0.27).abs() < 1e-6, "{s:?}");
        // No score exceeds the text head's object probability.
        assert!(s[3..].iter().all(|&v| v <= 0.9 + 1e-6));

        // Novel objectness from the RPN: only the novel column changes, scaled by the
        // proposal's objectness instead of p_obj (a novel object the text head calls
        // background but the RPN finds keeps its image score).
        let rpn = [0.02, 0.5];
        let r = ensemble_with_text_objectness(&text, &image, &is_novel, 2.0 / 3.0, Some(&rpn));
        assert_eq!([r[0], r[2], r[3], r[5]], [s[0], s[2], s[3], s[5]]);
        assert!((r[1] - 0.99 * 0.02).abs() < 1e-6, "{r:?}");
        assert!((r[4] - 0.3 * 0.5).abs() < 1e-6, "{r:?}");
    }
}
