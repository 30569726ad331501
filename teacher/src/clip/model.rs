//! `CLIPModel`: both towers, the two projections into the joint space, and the learned
//! temperature.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use ovkd_backbone::ops::linear;

use super::config::ClipConfig;
use super::layers::{load_linear, save_linear, to_host};
use super::text::{TextTransformer, text_shapes};
use super::text_tower::TextTower;
use super::vision::{VisionTransformer, vision_shapes};
use crate::error::TeacherError;
use crate::weights::{HostTensor, WeightMap};

/// A CLIP model, laid out as transformers' `CLIPModel`.
#[derive(Module, Debug)]
pub struct ClipModel {
    /// The image tower.
    pub vision_model: VisionTransformer,
    /// The text tower.
    pub text_model: TextTransformer,
    /// Wv → D, no bias.
    pub visual_projection: Linear,
    /// Wt → D, no bias.
    pub text_projection: Linear,
    /// log of the inverse temperature: [1].
    pub logit_scale: Param<Tensor<1>>,
    /// The architecture.
    #[module(skip)]
    pub config: ClipConfig,
}

/// Every tensor [`ClipModel::forward`] computes, named as in the parity fixture.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// Projected, L2-normalised: [B_img, D].
    pub image_embeds: Tensor<2>,
    /// Projected, L2-normalised: [B_txt, D].
    pub text_embeds: Tensor<2>,
    /// Projected, not normalised: [B_img, D].
    pub image_features: Tensor<2>,
    /// Projected, not normalised: [B_txt, D].
    pub text_features: Tensor<2>,
    /// exp(logit_scale) · image_embeds · text_embedsᵀ: [B_img, B_txt].
    pub logits_per_image: Tensor<2>,
    /// [B_img, 1 + N, Wv].
    pub vision_last_hidden_state: Tensor<3>,
    /// [B_img, Wv].
    pub vision_pooled: Tensor<2>,
    /// [B_txt, L, Wt].
    pub text_last_hidden_state: Tensor<3>,
    /// [B_txt, Wt].
    pub text_pooled: Tensor<2>,
}

/// Divides each row of [N, D] by its L2 norm (transformers' `_get_vector_norm`).
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

impl ClipModel {
    /// Names and PyTorch-layout shapes of every tensor a transformers checkpoint of this
    /// architecture holds.
    pub fn expected_shapes(c: &ClipConfig) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        vision_shapes(&c.vision_config, &mut out);
        text_shapes(&c.text_config, &mut out);
        out.push((
            "visual_projection.weight".into(),
            vec![c.projection_dim, c.vision_config.hidden_size],
        ));
        out.push((
            "text_projection.weight".into(),
            vec![c.projection_dim, c.text_config.hidden_size],
        ));
        out.push(("logit_scale".into(), vec![]));
        out
    }

    /// Builds the model from transformers-named weights, taking what it uses from `map`.
    pub fn from_weights(
        c: &ClipConfig,
        map: &mut WeightMap,
        device: &Device,
    ) -> Result<Self, TeacherError> {
        let vision_model = VisionTransformer::load(map, &c.vision_config, device)?;
        let TextTower {
            text_model,
            text_projection,
            ..
        } = TextTower::from_weights(c, map, device)?;
        let visual_projection = load_linear(
            map,
            "visual_projection",
            c.vision_config.hidden_size,
            c.projection_dim,
            false,
            device,
        )?;
        let ls = map.take("logit_scale", &[])?;
        let logit_scale = Param::from_tensor(Tensor::<1>::from_data(
            TensorData::new(ls.data, [1]),
            device,
        ));
        Ok(Self {
            vision_model,
            text_model,
            visual_projection,
            text_projection,
            logit_scale,
            config: c.clone(),
        })
    }

    /// Random weights as transformers initialises a CLIP (normal with std 0.02 for
    /// embeddings and projections, width^-0.5-scaled for attention and MLP, unit LayerNorms),
    /// from a seed.
    pub fn random(c: &ClipConfig, seed: u64, device: &Device) -> Result<Self, TeacherError> {
        let mut map = WeightMap::random(c, seed);
        Self::from_weights(c, &mut map, device)
    }

    /// Reads `DIR/config.json` + `DIR/model.safetensors` (transformers layout) or an
    /// OpenAI/OpenCLIP state dict (see [`crate::weights::load_checkpoint`]); returns the model
    /// and the keys the file held that the model did not use.
    pub fn load(dir: &Path, device: &Device) -> Result<(Self, Vec<String>), TeacherError> {
        let (config, mut map) = crate::weights::load_checkpoint(dir, None)?;
        let model = Self::from_weights(&config, &mut map, device)?;
        Ok((model, map.unused()))
    }

    /// All parameters under transformers' names, in PyTorch layout.
    pub fn to_weights(&self) -> Result<WeightMap, TeacherError> {
        let mut map = WeightMap::new(Path::new("<memory>"));
        self.vision_model.save(&mut map)?;
        self.text_model.save(&mut map)?;
        save_linear(&self.visual_projection, &mut map, "visual_projection")?;
        save_linear(&self.text_projection, &mut map, "text_projection")?;
        let ls = to_host(self.logit_scale.val())?;
        map.insert(
            "logit_scale".into(),
            HostTensor {
                shape: vec![],
                data: ls.data,
            },
        );
        Ok(map)
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (transformers layout).
    pub fn save(&self, dir: &Path) -> Result<(), TeacherError> {
        std::fs::create_dir_all(dir).map_err(|e| TeacherError::io(dir, e))?;
        crate::io::write_atomic(&dir.join("config.json"), self.config.to_json().as_bytes())?;
        self.to_weights()?
            .save_safetensors(&dir.join("model.safetensors"))
    }

    /// Joint embedding size D.
    pub fn embed_dim(&self) -> usize {
        self.config.projection_dim
    }

    /// Projected image features, not normalised: pixels [B, 3, H, W] → [B, D].
    pub fn image_features(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.visual_projection
            .forward(self.vision_model.forward_pooled(pixels))
    }

    /// L2-normalised image embeddings: [B, 3, H, W] → [B, D].
    pub fn image_embeds(&self, pixels: Tensor<4>) -> Tensor<2> {
        l2_normalize(self.image_features(pixels))
    }

    /// Projected text features, not normalised: ids [B, L] row-major → [B, D].
    pub fn text_features(&self, ids: &[i64], b: usize, l: usize) -> Tensor<2> {
        let device = self.logit_scale.val().device();
        super::text_tower::text_features(
            &self.text_model,
            &self.text_projection,
            ids,
            b,
            l,
            &device,
        )
    }

    /// L2-normalised text embeddings: ids [B, L] → [B, D].
    pub fn text_embeds(&self, ids: &[i64], b: usize, l: usize) -> Tensor<2> {
        l2_normalize(self.text_features(ids, b, l))
    }

    /// Both towers and the logits, as transformers' `CLIPModel.forward`.
    pub fn forward(&self, pixels: Tensor<4>, ids: &[i64], b_txt: usize, l: usize) -> ClipOutput {
        let device = pixels.device();
        let v = self.vision_model.forward(pixels);
        let t = self.text_model.forward_ids(ids, b_txt, l, &device);
        let image_features = linear(&self.visual_projection, v.pooled.clone());
        let text_features = linear(&self.text_projection, t.pooled.clone());
        let image_embeds = l2_normalize(image_features.clone());
        let text_embeds = l2_normalize(text_features.clone());
        let scale = self.logit_scale.val().exp().unsqueeze::<2>();
        let logits_per_image = image_embeds.clone().matmul(text_embeds.clone().transpose()) * scale;
        ClipOutput {
            image_embeds,
            text_embeds,
            image_features,
            text_features,
            logits_per_image,
            vision_last_hidden_state: v.last_hidden_state,
            vision_pooled: v.pooled,
            text_last_hidden_state: t.last_hidden_state,
            text_pooled: t.pooled,
        }
    }
}
