//! ViLD for the detector student: the ViLD-image loss, the proposals file, the training task
//! (ViLD-text + ViLD-image + box and RPN losses, or the RPN alone for the `proposals` stage)
//! and inference with the ViLD ensemble.
//!
//! ViLD-text is the detector's own classification loss (cross-entropy over cosine logits with
//! the base classes' text embeddings and a learned background, temperature 0.01); this module
//! weights it, adds ViLD-image on the cached proposals, and feeds the detector batches whose
//! order and random choices are a function of (seed, step) only, so a resumed run is exact.

pub mod infer;
pub mod proposals;
pub mod task;
pub mod vild_image;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use infer::{InferenceConfig, ScoreSource, detect, detect_with_proposals, region_scores};
pub use proposals::{ImageProposals, ProposalSet, RecallStats, best_iou};
pub use task::{DetTask, DetTaskMode, RegionSource, StepData};
pub use vild_image::vild_image_loss;

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

/// Weights and sampling of the ViLD losses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DetDistillConfig {
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
    /// Weight of the RPN's objectness and box losses.
    pub rpn_weight: f32,
    /// Weight of the box head's regression loss.
    pub box_weight: f32,
}

impl Default for DetDistillConfig {
    fn default() -> Self {
        Self {
            text_weight: 1.0,
            image_weight: 0.5,
            image_regions_per_image: 64,
            min_region_size: 2.0,
            rpn_weight: 1.0,
            box_weight: 1.0,
        }
    }
}
