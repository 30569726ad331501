//! The ViT image tower: patch embedding, class token, learned positions, pre-LayerNorm,
//! pre-norm blocks, post-LayerNorm on the class token.

use burn::module::{Module, Param};
use burn::nn::LayerNorm;
use burn::tensor::module::{conv2d, interpolate};
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};
use ovkd_backbone::ops::linear;

use super::config::VisionConfig;
use super::layers::{
    BlockShape, EncoderLayer, load_layer_norm, save_layer_norm, to_device, to_host,
};
use crate::error::TeacherError;
use crate::weights::WeightMap;

/// `vision_model`.
#[derive(Module, Debug)]
pub struct VisionTransformer {
    /// `embeddings.patch_embedding.weight`: [W, C, p, p], no bias.
    pub patch_embedding: Param<Tensor<4>>,
    /// `embeddings.class_embedding`: [W].
    pub class_embedding: Param<Tensor<1>>,
    /// `embeddings.position_embedding.weight`: [1 + g*g, W].
    pub position_embedding: Param<Tensor<2>>,
    /// `pre_layrnorm` (transformers' spelling).
    pub pre_layrnorm: LayerNorm,
    /// `encoder.layers`.
    pub layers: Vec<EncoderLayer>,
    /// `post_layernorm`, applied to the class token.
    pub post_layernorm: LayerNorm,
    /// Patch size p.
    #[module(skip)]
    pub patch_size: usize,
}

/// What the image tower returns.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// Encoder output before post-LayerNorm, class token first: [B, 1 + N, W].
    pub last_hidden_state: Tensor<3>,
    /// Post-LayerNorm class token: [B, W].
    pub pooled: Tensor<2>,
}

/// MaskCLIP's dense outputs of the last block, before the final norm and projection.
#[derive(Debug, Clone)]
pub struct DenseTokens {
    /// Value-path features per patch after the post-LayerNorm: [B, N, W].
    pub values: Tensor<3>,
    /// Key features per patch (key projection then output projection, as MaskCLIP's code does): [B, N, W].
    pub keys: Tensor<3>,
    /// Patch grid (rows, columns).
    pub grid: [usize; 2],
}

impl VisionTransformer {
    /// The same tower with every MLP's QuickGELU slope folded into its weights, for inference
    /// ([`ClipMlp::fold_quick_gelu`](super::layers::ClipMlp::fold_quick_gelu)); it cannot be
    /// saved afterwards.
    pub fn fold_quick_gelu(mut self) -> Self {
        self.layers = self
            .layers
            .into_iter()
            .map(|l| EncoderLayer {
                mlp: l.mlp.fold_quick_gelu(),
                ..l
            })
            .collect();
        self
    }

    /// The same tower with every encoder linear layer's weight in PyTorch's layout
    /// ([`with_torch_weight_layout`](ovkd_backbone::ops::with_torch_weight_layout)), for
    /// inference on LibTorch.
    pub fn with_torch_weight_layout(mut self) -> Self {
        use ovkd_backbone::ops::with_torch_weight_layout as torch;
        self.layers = self
            .layers
            .into_iter()
            .map(|l| {
                let a = l.self_attn;
                EncoderLayer {
                    self_attn: super::attention::ClipAttention {
                        q_proj: torch(a.q_proj),
                        k_proj: torch(a.k_proj),
                        v_proj: torch(a.v_proj),
                        out_proj: torch(a.out_proj),
                        ..a
                    },
                    mlp: super::layers::ClipMlp {
                        fc1: torch(l.mlp.fc1),
                        fc2: torch(l.mlp.fc2),
                        ..l.mlp
                    },
                    ..l
                }
            })
            .collect();
        self
    }

    fn shape(c: &VisionConfig) -> BlockShape {
        BlockShape {
            width: c.hidden_size,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            eps: c.layer_norm_eps,
            act: c.hidden_act,
        }
    }

    /// Loads `vision_model.*` from transformers-named weights.
    pub fn load(
        map: &mut WeightMap,
        c: &VisionConfig,
        device: &Device,
    ) -> Result<Self, TeacherError> {
        let w = c.hidden_size;
        let g = c.grid();
        let p = "vision_model";
        let patch = map.take(
            &format!("{p}.embeddings.patch_embedding.weight"),
            &[w, c.num_channels, c.patch_size, c.patch_size],
        )?;
        let cls = map.take(&format!("{p}.embeddings.class_embedding"), &[w])?;
        let pos = map.take(
            &format!("{p}.embeddings.position_embedding.weight"),
            &[1 + g * g, w],
        )?;
        let pre = load_layer_norm(
            map,
            &format!("{p}.pre_layrnorm"),
            w,
            c.layer_norm_eps,
            device,
        )?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                EncoderLayer::load(
                    map,
                    &format!("{p}.encoder.layers.{i}"),
                    Self::shape(c),
                    device,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let post = load_layer_norm(
            map,
            &format!("{p}.post_layernorm"),
            w,
            c.layer_norm_eps,
            device,
        )?;
        Ok(Self {
            patch_embedding: Param::from_tensor(to_device::<4>(patch, device)),
            class_embedding: Param::from_tensor(to_device::<1>(cls, device)),
            position_embedding: Param::from_tensor(to_device::<2>(pos, device)),
            pre_layrnorm: pre,
            layers,
            post_layernorm: post,
            patch_size: c.patch_size,
        })
    }

    /// Writes `vision_model.*` back under transformers' names.
    pub fn save(&self, map: &mut WeightMap) -> Result<(), TeacherError> {
        let p = "vision_model";
        map.insert(
            format!("{p}.embeddings.patch_embedding.weight"),
            to_host(self.patch_embedding.val())?,
        );
        map.insert(
            format!("{p}.embeddings.class_embedding"),
            to_host(self.class_embedding.val())?,
        );
        map.insert(
            format!("{p}.embeddings.position_embedding.weight"),
            to_host(self.position_embedding.val())?,
        );
        save_layer_norm(&self.pre_layrnorm, map, &format!("{p}.pre_layrnorm"))?;
        for (i, l) in self.layers.iter().enumerate() {
            l.save(map, &format!("{p}.encoder.layers.{i}"))?;
        }
        save_layer_norm(&self.post_layernorm, map, &format!("{p}.post_layernorm"))
    }

    /// Width W.
    pub fn width(&self) -> usize {
        self.class_embedding.val().dims()[0]
    }

    /// Position embeddings for a gh x gw patch grid: [1 + gh*gw, W]. At the training grid they
    /// are the learned ones; otherwise the patch part is resized bicubically (align_corners
    /// false), as transformers' `interpolate_pos_encoding` does.
    pub fn positions(&self, gh: usize, gw: usize) -> Tensor<2> {
        let pos = self.position_embedding.val();
        let [n, w] = pos.dims();
        let g = ((n - 1) as f64).sqrt().round() as usize;
        if gh == g && gw == g {
            return pos;
        }
        let cls = pos.clone().slice([0..1, 0..w]);
        let grid = pos
            .slice([1..n, 0..w])
            .reshape([1, g, g, w])
            .permute([0, 3, 1, 2]);
        let resized = interpolate(
            grid,
            InterpolateOptions::new(InterpolateMode::Bicubic)
                .with_align_corners(false)
                .with_output_size([gh, gw]),
        );
        let patches = resized.permute([0, 2, 3, 1]).reshape([gh * gw, w]);
        Tensor::cat(vec![cls, patches], 0)
    }

    /// Patch + class + position embeddings and the pre-LayerNorm: [B, C, H, W] → [B, 1 + N, W],
    /// with the grid (H / p, W / p).
    fn embed(&self, pixels: Tensor<4>) -> (Tensor<3>, [usize; 2]) {
        let p = self.patch_size;
        let x = conv2d(
            pixels,
            self.patch_embedding.val(),
            None,
            ConvOptions::new([p, p], [0, 0], [1, 1], 1),
        ); // [B, W, gh, gw]
        let [b, w, gh, gw] = x.dims();
        let patches = x.reshape([b, w, gh * gw]).swap_dims(1, 2); // [B, N, W]
        let cls = self
            .class_embedding
            .val()
            .reshape([1, 1, w])
            .expand([b, 1, w]);
        let tokens = Tensor::cat(vec![cls, patches], 1) + self.positions(gh, gw).unsqueeze::<3>();
        (self.pre_layrnorm.forward(tokens), [gh, gw])
    }

    /// Full forward on normalised pixels [B, C, H, W] (any H, W ≥ p; positions interpolated).
    pub fn forward(&self, pixels: Tensor<4>) -> VisionOutput {
        let (mut x, _) = self.embed(pixels);
        for layer in &self.layers {
            x = layer.forward(x, false);
        }
        let [b, _, w] = x.dims();
        let cls = x.clone().slice([0..b, 0..1]).reshape([b, w]);
        VisionOutput {
            pooled: self.post_layernorm.forward(cls),
            last_hidden_state: x,
        }
    }

    /// The post-LayerNorm class token alone, [B, C, H, W] → [B, W]: `forward(..).pooled`, with
    /// the last block run for the class token only (the other tokens' outputs of the last
    /// block feed nothing pooled; skipping them saves most of a block, forward and backward).
    pub fn forward_pooled(&self, pixels: Tensor<4>) -> Tensor<2> {
        let (mut x, _) = self.embed(pixels);
        let Some((last, rest)) = self.layers.split_last() else {
            let [b, _, w] = x.dims();
            return self
                .post_layernorm
                .forward(x.slice([0..b, 0..1]).reshape([b, w]));
        };
        for layer in rest {
            x = layer.forward(x, false);
        }
        let [b, _, w] = x.dims();
        self.post_layernorm
            .forward(last.forward_first(x).reshape([b, w]))
    }

    /// MaskCLIP: every block but the last as usual; in the last, the query-key attention is
    /// skipped and each patch token takes the value path (value then output projection), plus
    /// the residual and the MLP, as MaskCLIP's released code does; then the post-LayerNorm.
    pub fn forward_dense(&self, pixels: Tensor<4>) -> DenseTokens {
        let (mut x, grid) = self.embed(pixels);
        let n_layers = self.layers.len();
        for layer in &self.layers[..n_layers.saturating_sub(1)] {
            x = layer.forward(x, false);
        }
        let [b, l, w] = x.dims();
        let x = x.slice([0..b, 1..l]); // patch tokens only: [B, N, W]
        let last = &self.layers[n_layers - 1];
        let y = last.layer_norm1.forward(x.clone());
        let attn = &last.self_attn;
        let v = linear(&attn.out_proj, linear(&attn.v_proj, y.clone())) + x;
        let v = v.clone() + last.mlp.forward(last.layer_norm2.forward(v));
        let keys = linear(&attn.out_proj, linear(&attn.k_proj, y));
        let _ = w;
        DenseTokens {
            values: self.post_layernorm.forward(v),
            keys,
            grid,
        }
    }
}

/// Names and PyTorch shapes of `vision_model.*`.
pub fn vision_shapes(c: &VisionConfig, out: &mut Vec<(String, Vec<usize>)>) {
    let w = c.hidden_size;
    let g = c.grid();
    let p = "vision_model";
    out.push((
        format!("{p}.embeddings.patch_embedding.weight"),
        vec![w, c.num_channels, c.patch_size, c.patch_size],
    ));
    out.push((format!("{p}.embeddings.class_embedding"), vec![w]));
    out.push((
        format!("{p}.embeddings.position_embedding.weight"),
        vec![1 + g * g, w],
    ));
    for ln in ["pre_layrnorm", "post_layernorm"] {
        out.push((format!("{p}.{ln}.weight"), vec![w]));
        out.push((format!("{p}.{ln}.bias"), vec![w]));
    }
    for i in 0..c.num_hidden_layers {
        super::layers::block_shapes(
            &format!("{p}.encoder.layers.{i}"),
            VisionTransformer::shape(c),
            out,
        );
    }
}
