//! ovkd-detector: the two-stage, open-vocabulary detector student (ViLD's architecture).
//!
//! The model ([`Detector`]) is a ResNet + FPN backbone (`ovkd-backbone`), a region proposal
//! network ([`rpn`]), multi-level RoIAlign ([`roi_align`]) and an embedding box head
//! ([`box_head`]) whose class logits are cosine similarities with text embeddings passed in as
//! plain tensors. The bookkeeping around it — anchors, box coding, matching, sampling, NMS,
//! post-processing — works on CPU arrays ([`Boxes`]) and moves to tensors once per batch.

pub mod anchors;
pub mod box_coder;
pub mod box_head;
pub mod boxes;
pub mod detector;
pub mod losses;
pub mod matcher;
pub mod nms;
pub mod postprocess;
pub mod roi_align;
pub mod roi_heads;
pub mod rpn;
pub mod sampler;

pub use anchors::AnchorConfig;
pub use box_coder::BoxCoder;
pub use box_head::{BoxHeadConfig, BoxHeadOutput, EmbeddingBoxHead, ImageBranch, TrunkKind};
pub use boxes::Boxes;
pub use detector::{
    Detector, DetectorConfig, DetectorLosses, ImageBatch, RegionPredictions, TrainOutput,
};
pub use losses::BoxLoss;
pub use matcher::{Match, Matcher};
pub use nms::{batched_nms, nms};
pub use postprocess::{Detections, PostprocessConfig, select_detections, vild_ensemble};
pub use roi_align::{MultiScaleRoiAlign, Roi, RoiAlignConfig, roi_align};
pub use roi_heads::{BACKGROUND, RoiHeadsConfig, RoiSample, Targets};
pub use rpn::{Rpn, RpnConfig, RpnOutput};
pub use sampler::{BalancedSampler, Role};

/// Errors from building or running the detector.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    /// A config field has an unusable value.
    #[error("invalid detector config: `{field}`: {reason}")]
    InvalidConfig {
        /// Dotted path of the field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backbone could not be built.
    #[error(transparent)]
    Backbone(#[from] ovkd_backbone::BackboneError),
    /// A batch with no images.
    #[error("empty image batch")]
    EmptyBatch,
    /// An image's data does not match its size.
    #[error("image {index}: {reason}")]
    BadImage {
        /// Position in the batch.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A per-image argument has the wrong length.
    #[error("{what}: {got} entries for a batch of {want} images")]
    BatchMismatch {
        /// Which argument.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The batch size.
        want: usize,
    },
    /// A target is inconsistent.
    #[error("targets of image {index}: {reason}")]
    BadTarget {
        /// Position in the batch.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}
