//! ViLD for the detector student: the ViLD-image loss, the proposals file, the training task
//! (ViLD-text + ViLD-image + box and RPN losses, or the RPN alone for the `proposals` stage)
//! and inference with the ViLD ensemble.
//!
//! ViLD-text is the detector's own classification loss (cross-entropy over cosine logits with
//! the base classes' text embeddings and a learned background, temperature 0.01); this module
//! weights it, adds ViLD-image on the cached proposals, and feeds the detector batches whose
//! order and random choices are a function of (seed, step) only, so a resumed run is exact.

pub mod bag_cache;
pub mod bags;
pub mod baron;
pub mod infer;
pub mod infonce;
pub mod proposals;
pub mod pseudo_boxes;
pub mod pseudo_words;
pub mod task;
pub mod vild_image;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use bag_cache::{BagCache, CachedBag};
pub use bags::{Bag, BagConfig};
pub use baron::BaronConfig;
pub use infer::{
    InferenceConfig, NovelObjectness, RegionHeads, ScoreSource, detect, detect_with_regions,
    region_scores,
};
pub use proposals::{ImageProposals, ProposalSet, RecallStats, best_iou};
pub use pseudo_boxes::{PseudoBox, PseudoBoxConfig};
pub use pseudo_words::PseudoWordEncoder;
pub use task::{DetTask, DetTaskMode, RegionSource, StepData};
pub use vild_image::{center_targets, region_mean, vild_image_loss};

/// Errors of the detector distillation code.
#[derive(Debug, thiserror::Error)]
pub enum DetError {
    /// A file is missing, unreadable or malformed.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the row or record.
        message: String,
    },
    /// Anything else (the message says what).
    #[error("{0}")]
    Other(String),
}

impl DetError {
    /// A problem with `path`.
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Self::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// How the detector learns from the teacher beyond its own base-class boxes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DistillMethod {
    /// ViLD-text alone: cross-entropy over the base classes' text embeddings; no teacher
    /// image embedding is read.
    Text,
    /// ViLD: ViLD-text + ViLD-image (L1 to the teacher's region embeddings, `image_weight`;
    /// 0 makes it text only, as configs before `method` existed said).
    #[default]
    Vild,
    /// BARON: bags of regions through the text tower, InfoNCE with the teacher's bag
    /// embeddings (`baron`).
    Baron,
}

/// Weights and sampling of the distillation losses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DetDistillConfig {
    /// `"text"`, `"vild"` or `"baron"`.
    pub method: DistillMethod,
    /// Train on PB-OVD pseudo boxes too (needs the region cache and the captions).
    pub pseudo_boxes: bool,
    /// Pseudo-box selection.
    pub pseudo_box: PseudoBoxConfig,
    /// BARON's settings (read when `method = "baron"`).
    pub baron: BaronConfig,
    /// Weight of ViLD-text (the box head's cross-entropy over cosine logits).
    pub text_weight: f32,
    /// Weight of ViLD-image (the paper's 0.5); 0 trains text only and reads no cache.
    pub image_weight: f32,
    /// Cached proposals per image used by ViLD-image in a step, drawn at random (without
    /// replacement) from the image's cached ones; all of them when it has fewer.
    pub image_regions_per_image: usize,
    /// Cached proposals whose side is shorter than this after augmentation (pixels) are not
    /// used (their pooled features are mostly padding).
    pub min_region_size: f32,
    /// ViLD-image draws its regions only from each image's best `image_top_k` cached
    /// proposals (the cache keeps them best first, by RPN objectness); 0: from all of them.
    /// ViLD distils the top-scoring proposals: the low-ranked ones are mostly background, whose
    /// teacher embeddings are the teacher's common image component and nothing else.
    pub image_top_k: usize,
    /// Modality-gap centring: subtract the mean of the teacher's region embeddings (over the
    /// regions ViLD-image can draw) from every ViLD-image target and renormalise. A CLIP
    /// teacher's image embeddings share a large common component that no text embedding has;
    /// distilled as is, it makes every region look like the classes whose texts lie nearest
    /// that component.
    pub center_teacher: bool,
    /// Weight of the RPN's objectness and box losses.
    pub rpn_weight: f32,
    /// Weight of the box head's regression loss.
    pub box_weight: f32,
}

impl Default for DetDistillConfig {
    fn default() -> Self {
        Self {
            method: DistillMethod::Vild,
            pseudo_boxes: false,
            pseudo_box: PseudoBoxConfig::default(),
            baron: BaronConfig::default(),
            text_weight: 1.0,
            image_weight: 0.5,
            image_regions_per_image: 64,
            min_region_size: 2.0,
            image_top_k: 0,
            center_teacher: false,
            rpn_weight: 1.0,
            box_weight: 1.0,
        }
    }
}

impl DetDistillConfig {
    /// Whether ViLD-image runs (and reads the region cache during training).
    pub fn uses_vild_image(&self) -> bool {
        self.method == DistillMethod::Vild && self.image_weight > 0.0
    }

    /// Whether the proposals stage must fill the region cache (ViLD-image or pseudo boxes).
    pub fn needs_region_cache(&self) -> bool {
        self.uses_vild_image() || self.pseudo_boxes
    }

    /// Whether the proposals stage must make the bag cache.
    pub fn needs_bag_cache(&self) -> bool {
        self.method == DistillMethod::Baron
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_parse_and_a_bad_one_is_named() {
        let c: DetDistillConfig =
            toml::from_str("method = \"baron\"\npseudo_boxes = true").unwrap();
        assert_eq!(c.method, DistillMethod::Baron);
        assert!(c.pseudo_boxes && c.needs_bag_cache() && c.needs_region_cache());
        assert!(!c.uses_vild_image());
        // Configs from before `method`: ViLD, text only when the image weight is 0.
        let old: DetDistillConfig = toml::from_str("image_weight = 0.0").unwrap();
        assert_eq!(old.method, DistillMethod::Vild);
        assert!(!old.uses_vild_image() && !old.needs_region_cache());
        let text: DetDistillConfig = toml::from_str("method = \"text\"").unwrap();
        assert!(!text.uses_vild_image());
        let err = toml::from_str::<DetDistillConfig>("method = \"barn\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("barn") && err.contains("baron"), "{err}");
    }
}
