//! ovkd-segmenter: the segmenter student.
//!
//! - [`decoder`]: multi-level features fused top-down, refined at 1/4 resolution, projected per
//!   pixel to the teacher's embedding dimension and L2-normalised.
//! - [`segmenter`]: [`Segmenter`] = ResNet body + decoder + LSeg's cosine classifier against
//!   frozen text embeddings (background first, learned or fixed).
//! - [`inference`]: whole-image and sliding-window inference, label maps.
//!
//! The student never sees the teacher: text embeddings arrive as plain `[K, D]` tensors.

pub mod decoder;
pub mod inference;
pub mod segmenter;

pub use decoder::{Decoder, DecoderConfig};
pub use inference::{InferenceMode, infer_logits, predict};
pub use segmenter::{BackgroundKind, SegOutput, Segmenter, SegmenterConfig};

/// Errors from building a segmenter.
#[derive(Debug, thiserror::Error)]
pub enum SegmenterError {
    /// A config field has an unusable value.
    #[error("invalid segmenter config: `{field}`: {reason}")]
    InvalidConfig {
        /// Dotted path of the field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backbone's config is unusable.
    #[error(transparent)]
    Backbone(#[from] ovkd_backbone::BackboneError),
}
