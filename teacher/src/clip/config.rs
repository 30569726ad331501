//! The CLIP architecture as a Hugging Face `config.json` describes it.

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::error::TeacherError;

/// The non-linearity inside the transformer MLPs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, OpenAI CLIP's choice.
    QuickGelu,
    /// The exact (erf) GELU, used by most OpenCLIP models.
    Gelu,
}

/// The text tower (`text_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Transformer width W.
    pub hidden_size: usize,
    /// MLP hidden width.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    pub num_attention_heads: usize,
    /// Context length (77 for CLIP).
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// MLP non-linearity.
    pub hidden_act: Activation,
    /// Start-of-text id.
    pub bos_token_id: i64,
    /// End-of-text id; 2 selects transformers' legacy pooling at argmax(input_ids).
    pub eos_token_id: i64,
    /// Padding id.
    pub pad_token_id: i64,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
            bos_token_id: 49406,
            eos_token_id: 49407,
            pad_token_id: 1,
        }
    }
}

/// The image tower (`vision_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    /// Transformer width W.
    pub hidden_size: usize,
    /// MLP hidden width.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    pub num_attention_heads: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Training input size S (square).
    pub image_size: usize,
    /// Patch size p (the patch-embedding convolution's kernel and stride).
    pub patch_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// MLP non-linearity.
    pub hidden_act: Activation,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            layer_norm_eps: 1e-5,
            hidden_act: Activation::QuickGelu,
        }
    }
}

impl VisionConfig {
    /// Patches per side at the training size, S / p.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// A whole CLIP model: both towers and the shared embedding size D.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// Text tower.
    #[serde(default)]
    pub text_config: TextConfig,
    /// Image tower.
    #[serde(default)]
    pub vision_config: VisionConfig,
    /// Joint embedding size D.
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
    /// Initial value of `logit_scale` (log of the inverse temperature).
    #[serde(default = "default_logit_scale")]
    pub logit_scale_init_value: f64,
    /// Always `clip`; kept so that transformers reads the file back.
    #[serde(default = "default_model_type")]
    pub model_type: String,
}

fn default_projection_dim() -> usize {
    512
}
fn default_logit_scale() -> f64 {
    2.6592
}
fn default_model_type() -> String {
    "clip".into()
}

impl ClipConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, TeacherError> {
        let text = std::fs::read_to_string(path).map_err(|e| TeacherError::io(path, e))?;
        let config: Self = serde_json::from_str(&text).map_err(|e| TeacherError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| TeacherError::Format {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// The JSON text of a Hugging Face `config.json` for this model.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("config serialises");
        if let Some(obj) = value.as_object_mut() {
            obj.insert("architectures".into(), serde_json::json!(["CLIPModel"]));
            if let Some(t) = obj.get_mut("text_config").and_then(|t| t.as_object_mut()) {
                t.insert("model_type".into(), "clip_text_model".into());
                t.insert("projection_dim".into(), self.projection_dim.into());
            }
            if let Some(v) = obj.get_mut("vision_config").and_then(|v| v.as_object_mut()) {
                v.insert("model_type".into(), "clip_vision_model".into());
                v.insert("projection_dim".into(), self.projection_dim.into());
            }
        }
        serde_json::to_string_pretty(&value).expect("json")
    }

    /// Checks that widths divide into heads and the image into patches.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.text_config;
        let v = &self.vision_config;
        if t.num_attention_heads == 0 || t.hidden_size % t.num_attention_heads != 0 {
            return Err(format!(
                "text_config.hidden_size {} is not divisible by num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if v.num_attention_heads == 0 || v.hidden_size % v.num_attention_heads != 0 {
            return Err(format!(
                "vision_config.hidden_size {} is not divisible by num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.patch_size == 0 || v.image_size % v.patch_size != 0 {
            return Err(format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if self.projection_dim == 0 {
            return Err("projection_dim is 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tiny_fixture_config() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/clip/tiny/config.json");
        let c = ClipConfig::from_file(&path).unwrap();
        assert_eq!(c.projection_dim, 32);
        assert_eq!(c.text_config.hidden_size, 48);
        assert_eq!(c.text_config.num_attention_heads, 3);
        assert_eq!(c.text_config.eos_token_id, 499);
        assert_eq!(c.text_config.max_position_embeddings, 16);
        assert_eq!(c.vision_config.hidden_size, 64);
        assert_eq!(c.vision_config.patch_size, 8);
        assert_eq!(c.vision_config.grid(), 4);
        assert_eq!(c.vision_config.hidden_act, Activation::QuickGelu);
        // Round trip through our own writer.
        let back: ClipConfig = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(back, c);
    }
}
