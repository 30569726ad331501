//! Pseudo-labels for the pixels the ground truth leaves unlabelled (MaskCLIP+): the most
//! probable candidate class, where its probability reaches a threshold.
//!
//! The same rule serves both sources of pseudo-labels: the teacher's MaskCLIP probabilities
//! (computed once per training image) and, after the switch to self-training, the student's own
//! predictions on the batch it is training on.

use burn::tensor::{Bool, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use ovkd_data::semantic::SemanticMask;
use ovkd_segmenter::decoder::upsample_bilinear;

use super::dataset::NO_LABEL;
use super::lseg::IGNORE;
use super::maskclip::{MaskClipConfig, maskclip_probs};
use super::regions::RegionConfig;
use super::teacher::DenseMaps;

/// Which classes an unlabelled pixel may be given.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Candidates {
    /// Only the novel (unseen) classes. In the zero-shot setting (ZS3, OV-Shapes) every pixel
    /// of a seen class or of the background carries its label, so an unlabelled pixel can only
    /// belong to an unseen class.
    #[default]
    Novel,
    /// Every class and the background (for data whose unlabelled pixels may be anything).
    All,
}

/// Which teacher path labels the unlabelled pixels.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PseudoFrom {
    /// MaskCLIP: per-pixel scores from the dense (value-path) features.
    #[default]
    Dense,
    /// One label per unlabelled region from the pooled image path on its crop
    /// ([`crate::seg::regions`]).
    Regions,
}

/// Teacher pseudo-label settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PseudoLabelConfig {
    /// Use the teacher's pseudo-labels at all (false: LSeg alone).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Minimum probability of the chosen class.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Which classes may be chosen.
    #[serde(default)]
    pub candidates: Candidates,
    /// Weight of the pseudo-label cross-entropy relative to the ground truth's.
    #[serde(default = "one")]
    pub weight: f64,
    /// Which teacher path gives the labels.
    #[serde(default)]
    pub from: PseudoFrom,
    /// How the teacher scores pixels (`from = "dense"`, and the zero-shot floor).
    #[serde(default)]
    pub maskclip: MaskClipConfig,
    /// How the teacher scores regions (`from = "regions"`).
    #[serde(default)]
    pub regions: RegionConfig,
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn default_threshold() -> f64 {
    0.5
}

impl Default for PseudoLabelConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: default_threshold(),
            candidates: Candidates::default(),
            weight: 1.0,
            from: PseudoFrom::default(),
            maskclip: MaskClipConfig::default(),
            regions: RegionConfig::default(),
        }
    }
}

/// Fills unlabelled pixels from class probabilities.
///
/// `targets` `[B, H, W]` label values ([`IGNORE`] where unlabelled); `probs` `[B, C, H, W]`
/// probabilities over `C` candidate classes whose label values are `values` (`C` of them).
/// Returns the new targets (an unlabelled pixel whose best candidate reaches `threshold` gets
/// that candidate's value; every other pixel is unchanged) and the mask of filled pixels
/// `[B, H, W]`.
pub fn fill_unlabelled(
    targets: Tensor<3, Int>,
    probs: Tensor<4>,
    values: &[i64],
    threshold: f64,
) -> (Tensor<3, Int>, Tensor<3, Bool>) {
    let [b, c, h, w] = probs.dims();
    assert_eq!(c, values.len(), "one label value per candidate channel");
    let device = probs.device();
    let (best, idx) = probs.max_dim_with_indices(1);
    let best = best.reshape([b, h, w]);
    let idx = idx.reshape([b * h * w]);
    let lut = Tensor::<1, Int>::from_data(TensorData::new(values.to_vec(), [c]), &device);
    let chosen = lut.select(0, idx).reshape([b, h, w]);
    let fill = targets
        .clone()
        .equal_elem(IGNORE)
        .bool_and(best.greater_equal_elem(threshold));
    (targets.mask_where(fill.clone(), chosen), fill)
}

/// The teacher's pseudo-label map of one image: MaskCLIP probabilities over the candidate
/// classes (`cand_embeds` `[C, D]`, label values `values`) from its dense features, upsampled
/// bilinearly to the label map's size, filling the unlabelled pixels of `gt` (`[H, W]`,
/// row-major) where confident. Returns `[H * W]` label values, [`NO_LABEL`] where none.
pub fn teacher_pseudo_map(
    cfg: &PseudoLabelConfig,
    maps: &DenseMaps,
    cand_embeds: Tensor<2>,
    values: &[i64],
    gt: &SemanticMask,
) -> Vec<u8> {
    let (h, w) = (gt.height(), gt.width());
    let device = maps.embeds.device();
    let probs = maskclip_probs(
        &cfg.maskclip,
        maps.embeds.clone(),
        maps.keys.clone(),
        cand_embeds,
    );
    let [c, gh, gw] = probs.dims();
    let probs = upsample_bilinear(probs.reshape([1, c, gh, gw]), [h, w]);
    let targets: Vec<i64> = gt.as_slice().iter().map(|&v| v as i64).collect();
    let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [1, h, w]), &device);
    let (labels, filled) = fill_unlabelled(targets, probs, values, cfg.threshold);
    let labels = labels
        .try_into_vec_as::<i64>()
        .expect("an int tensor reads as i64");
    let filled = filled
        .int()
        .try_into_vec_as::<i64>()
        .expect("an int tensor reads as i64");
    labels
        .iter()
        .zip(&filled)
        .map(|(&l, &f)| {
            if f != 0 {
                l.clamp(0, 254) as u8
            } else {
                NO_LABEL
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn only_unlabelled_pixels_are_filled_and_only_when_confident() {
        let device = Device::default();
        // Four pixels: labelled 3, unlabelled (confident), unlabelled (unsure), labelled 0.
        let targets = Tensor::<3, Int>::from_data(
            TensorData::new(vec![3i64, 255, 255, 0], [1, 1, 4]),
            &device,
        );
        // Two candidates with label values 7 and 9.
        let probs = Tensor::<4>::from_data(
            TensorData::new(
                vec![0.1f32, 0.2, 0.55, 0.9, 0.9, 0.8, 0.45, 0.1],
                [1, 2, 1, 4],
            ),
            &device,
        );
        let (out, filled) = fill_unlabelled(targets.clone(), probs.clone(), &[7, 9], 0.6);
        let out = out.try_into_vec_as::<i64>().unwrap();
        assert_eq!(out, vec![3, 9, 255, 0]);
        let filled = filled.int().try_into_vec_as::<i64>().unwrap();
        assert_eq!(filled, vec![0, 1, 0, 0]);
        // A threshold of 0.5 lets the unsure pixel through with its best candidate.
        let (out, _) = fill_unlabelled(targets, probs, &[7, 9], 0.5);
        assert_eq!(out.try_into_vec_as::<i64>().unwrap(), vec![3, 9, 7, 0]);
    }

    #[test]
    fn config_defaults() {
        let c: PseudoLabelConfig = toml::from_str("threshold = 0.7").unwrap();
        assert!(c.enabled);
        assert_eq!(c.candidates, Candidates::Novel);
        assert_eq!(c.maskclip, MaskClipConfig::default());
        assert_eq!(c.from, PseudoFrom::Dense);
        let c: PseudoLabelConfig =
            toml::from_str("from = \"regions\"\n[regions]\nmin_pixels = 4").unwrap();
        assert_eq!((c.from, c.regions.min_pixels), (PseudoFrom::Regions, 4));
        assert!(toml::from_str::<PseudoLabelConfig>("thresh = 0.7").is_err());
    }
}
