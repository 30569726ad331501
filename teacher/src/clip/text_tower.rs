//! CLIP's text half on its own: the text transformer and its projection into the joint space,
//! under transformers' names (`text_model.*`, `text_projection.weight`), so that an export
//! bundle can carry what embeds new class names without the image tower.

use std::path::Path;

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};
use ovkd_backbone::ops::linear;

use super::config::ClipConfig;
use super::layers::{load_linear, save_linear};
use super::model::l2_normalize;
use super::text::TextTransformer;
use crate::error::TeacherError;
use crate::weights::WeightMap;

/// The text tower of a CLIP model and its projection.
#[derive(Module, Debug)]
pub struct TextTower {
    /// The text transformer.
    pub text_model: TextTransformer,
    /// Wt → D, no bias.
    pub text_projection: Linear,
    /// The whole model's architecture (the vision part is kept so that `config.json` stays a
    /// complete transformers config).
    #[module(skip)]
    pub config: ClipConfig,
}

/// Whether a checkpoint key belongs to the image half (or the logit scale), which a text-only
/// load leaves unused on purpose.
fn image_side(key: &str) -> bool {
    key.starts_with("vision_model.") || key == "visual_projection.weight" || key == "logit_scale"
}

/// Projected text features, not normalised: ids [B, L] row-major → [B, D]. Shared by
/// [`TextTower`] and [`super::ClipModel`] so both compute the same numbers.
pub fn text_features(
    text_model: &TextTransformer,
    text_projection: &Linear,
    ids: &[i64],
    b: usize,
    l: usize,
    device: &Device,
) -> Tensor<2> {
    linear(
        text_projection,
        text_model.forward_ids(ids, b, l, device).pooled,
    )
}

impl TextTower {
    /// Builds the tower from transformers-named weights, taking only the text keys.
    pub fn from_weights(
        c: &ClipConfig,
        map: &mut WeightMap,
        device: &Device,
    ) -> Result<Self, TeacherError> {
        let text_model = TextTransformer::load(map, &c.text_config, device)?;
        let text_projection = load_linear(
            map,
            "text_projection",
            c.text_config.hidden_size,
            c.projection_dim,
            false,
            device,
        )?;
        Ok(Self {
            text_model,
            text_projection,
            config: c.clone(),
        })
    }

    /// Reads the text half of a checkpoint (a whole CLIP or one written by [`Self::save`]; any
    /// layout [`crate::weights::load_checkpoint`] reads). Returns the tower and the keys that
    /// are neither text nor image-side: the image tower is expected to be left over.
    pub fn load(path: &Path, device: &Device) -> Result<(Self, Vec<String>), TeacherError> {
        let (config, mut map) = crate::weights::load_checkpoint(path, None)?;
        let tower = Self::from_weights(&config, &mut map, device)?;
        let unused = map
            .unused()
            .into_iter()
            .filter(|k| !image_side(k))
            .collect();
        Ok((tower, unused))
    }

    /// Writes `config.json` and a `model.safetensors` holding only the text keys into `dir`
    /// (transformers layout, atomically).
    pub fn save(&self, dir: &Path) -> Result<(), TeacherError> {
        std::fs::create_dir_all(dir).map_err(|e| TeacherError::io(dir, e))?;
        crate::io::write_atomic(&dir.join("config.json"), self.config.to_json().as_bytes())?;
        let mut map = WeightMap::new(&dir.join("model.safetensors"));
        self.text_model.save(&mut map)?;
        save_linear(&self.text_projection, &mut map, "text_projection")?;
        map.save_safetensors(&dir.join("model.safetensors"))
    }

    /// Joint embedding size D.
    pub fn embed_dim(&self) -> usize {
        self.config.projection_dim
    }

    /// L2-normalised text embeddings: ids [B, L] → [B, D].
    pub fn text_embeds(&self, ids: &[i64], b: usize, l: usize, device: &Device) -> Tensor<2> {
        l2_normalize(text_features(
            &self.text_model,
            &self.text_projection,
            ids,
            b,
            l,
            device,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::ClipModel;
    use crate::clip::config::{TextConfig, VisionConfig};

    fn tiny() -> ClipConfig {
        let mut c = ClipConfig {
            text_config: TextConfig::default(),
            vision_config: VisionConfig::default(),
            projection_dim: 8,
            logit_scale_init_value: 2.6592,
            model_type: "clip".into(),
        };
        c.text_config.hidden_size = 16;
        c.text_config.intermediate_size = 32;
        c.text_config.num_attention_heads = 2;
        c.text_config.num_hidden_layers = 1;
        c.text_config.vocab_size = 50;
        c.text_config.max_position_embeddings = 7;
        c.text_config.eos_token_id = 2;
        c.vision_config.hidden_size = 16;
        c.vision_config.intermediate_size = 32;
        c.vision_config.num_attention_heads = 2;
        c.vision_config.num_hidden_layers = 1;
        c.vision_config.image_size = 32;
        c.vision_config.patch_size = 16;
        c
    }

    #[test]
    fn a_saved_tower_reloads_alone_and_embeds_as_the_whole_model_does() {
        let device = Device::flex();
        let c = tiny();
        let model = ClipModel::random(&c, 3, &device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        let (tower, unused) = TextTower::load(dir.path(), &device).unwrap();
        assert!(unused.is_empty(), "{unused:?}");
        let text_dir = dir.path().join("text");
        tower.save(&text_dir).unwrap();
        let (alone, unused) = TextTower::load(&text_dir, &device).unwrap();
        assert!(unused.is_empty(), "{unused:?}");
        let ids: Vec<i64> = vec![1, 5, 9, 2, 0, 0, 0, 1, 7, 2, 0, 0, 0, 0];
        let want = model
            .text_embeds(&ids, 2, 7)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let got = alone
            .text_embeds(&ids, 2, 7, &device)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(want, got);
        // A checkpoint without the text half names the tensor it lacks.
        let mut map = model.to_weights().unwrap();
        map.remove("text_projection.weight");
        let err = TextTower::from_weights(&c, &mut map, &device).unwrap_err();
        assert!(err.to_string().contains("text_projection.weight"), "{err}");
    }
}
