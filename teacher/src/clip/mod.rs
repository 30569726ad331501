//! CLIP in Burn, numerically matching transformers' `CLIPModel`.

pub mod attention;
pub mod config;
pub mod layers;
pub mod model;
pub mod text;
pub mod text_tower;
pub mod vision;

pub use config::{Activation, ClipConfig, TextConfig, VisionConfig};
pub use model::{ClipModel, ClipOutput, l2_normalize};
pub use text::{TextOutput, TextTransformer};
pub use text_tower::TextTower;
pub use vision::{DenseTokens, VisionOutput, VisionTransformer};
