//! The segmentation half of distillation: LSeg's loss, MaskCLIP+ pseudo-labels and
//! self-training, feature distillation, and the segmenter's training task.
//!
//! - [`lseg`]: per-pixel cross-entropy with ignore index 255.
//! - [`maskclip`]: the teacher's per-pixel class probabilities, prompt denoising, key smoothing.
//! - [`pseudo`]: filling unlabelled pixels with confident pseudo-labels.
//! - [`regions`]: pseudo-labels per unlabelled region from the teacher's pooled path on crops.
//! - [`self_train`]: when the pseudo-labels switch from the teacher to the student.
//! - [`feature_distill`]: L1 / cosine between student and teacher pixel embeddings.
//! - [`teacher`]: what the task needs from a teacher ([`DenseTeacher`]).
//! - [`cache`]: the teacher's dense features of every training image, computed once.
//! - [`crop`]: random crops of a collated batch (with the loader's scale jitter).
//! - [`dataset`]: training samples with the teacher's pseudo-labels merged in.
//! - [`task`]: [`SegTask`], one training step for [`crate::train::train`].
//! - [`evaluate`]: label maps of a data set and the teacher's zero-shot (MaskCLIP) label maps.

pub mod cache;
pub mod crop;
pub mod dataset;
pub mod evaluate;
pub mod feature_distill;
pub mod lseg;
pub mod maskclip;
pub mod pseudo;
pub mod regions;
pub mod self_train;
pub mod task;
pub mod teacher;

pub use cache::TeacherFeatures;
pub use feature_distill::{FeatureDistillConfig, FeatureLoss};
pub use lseg::{IGNORE, cross_entropy_ignore};
pub use maskclip::MaskClipConfig;
pub use pseudo::{Candidates, PseudoFrom, PseudoLabelConfig};
pub use regions::RegionConfig;
pub use self_train::{PseudoSource, SelfTrainConfig};
pub use task::{SegDistillConfig, SegTask};
pub use teacher::{DenseMaps, DenseTeacher};

use std::path::PathBuf;

/// Errors of the segmentation distillation.
#[derive(Debug, thiserror::Error)]
pub enum SegError {
    /// The teacher failed.
    #[error("teacher: {0}")]
    Teacher(String),
    /// Reading data failed.
    #[error(transparent)]
    Data(#[from] ovkd_data::Error),
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The feature cache is unreadable or does not match.
    #[error("{}: {message}", path.display())]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A setting is unusable.
    #[error("`{field}`: {reason}")]
    Config {
        /// Dotted path of the setting.
        field: String,
        /// What is wrong.
        reason: String,
    },
}
