//! Inference: region embeddings scored against any text embeddings, the ViLD ensemble of the
//! text and image heads, then per-class NMS, a score threshold and the top-k per image.

use burn::tensor::Tensor;
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
    /// `text^(1−λ) · image^λ` for novel ones. Needs a head with an image branch.
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
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            postprocess: PostprocessConfig::default(),
            scores: ScoreSource::Text,
            lambda: 2.0 / 3.0,
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
pub fn region_scores(
    model: &Detector,
    region_embeds: Tensor<2>,
    image_embeds: Option<Tensor<2>>,
    text_embeds: Tensor<2>,
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
        ScoreSource::Ensemble => {
            let im = to_vec(model.class_probs(image()?, text_embeds.clone()));
            let tx = to_vec(model.class_probs(region_embeds, text_embeds));
            vild_ensemble(&tx, &im, is_novel, cfg.lambda)
        }
    })
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
        detect_with_proposals(model, batch, text_embeds, is_novel, cfg, encoder)?
            .into_iter()
            .map(|(d, _)| d)
            .collect(),
    )
}

/// [`detect`], also returning each image's RPN proposals (best first), e.g. to measure their
/// recall of novel objects.
pub fn detect_with_proposals(
    model: &Detector,
    batch: &ImageBatch,
    text_embeds: Tensor<2>,
    is_novel: &[bool],
    cfg: &InferenceConfig,
    encoder: Option<&PseudoWordEncoder>,
) -> Result<Vec<(Detections, Boxes)>, DetError> {
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
            out.push((Detections::default(), p.proposals));
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
        let scores = region_scores(
            model,
            region_embeds,
            p.image_embeds,
            text_embeds.clone(),
            is_novel,
            cfg,
        )?;
        let d = select_detections(&p.boxes, &scores, c, *size, &cfg.postprocess);
        out.push((d, p.proposals));
    }
    Ok(out)
}
