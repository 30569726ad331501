//! The causal text transformer: token and position embeddings, pre-norm blocks with a causal
//! mask, final LayerNorm, pooling at the end-of-text token.

use burn::module::{Module, Param};
use burn::nn::LayerNorm;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::config::TextConfig;
use super::layers::{
    BlockShape, EncoderLayer, load_layer_norm, save_layer_norm, to_device, to_host,
};
use crate::error::TeacherError;
use crate::weights::WeightMap;

/// `text_model`.
#[derive(Module, Debug)]
pub struct TextTransformer {
    /// `embeddings.token_embedding.weight`: [V, W].
    pub token_embedding: Param<Tensor<2>>,
    /// `embeddings.position_embedding.weight`: [L, W].
    pub position_embedding: Param<Tensor<2>>,
    /// `encoder.layers`.
    pub layers: Vec<EncoderLayer>,
    /// `final_layer_norm`.
    pub final_layer_norm: LayerNorm,
    /// End-of-text id; 2 means transformers' legacy pooling at argmax(input_ids).
    #[module(skip)]
    pub eos_token_id: i64,
}

/// What the text tower returns.
#[derive(Debug, Clone)]
pub struct TextOutput {
    /// After the final LayerNorm: [B, L, W].
    pub last_hidden_state: Tensor<3>,
    /// That, at each sequence's end-of-text position: [B, W].
    pub pooled: Tensor<2>,
}

impl TextTransformer {
    fn shape(c: &TextConfig) -> BlockShape {
        BlockShape {
            width: c.hidden_size,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            eps: c.layer_norm_eps,
            act: c.hidden_act,
        }
    }

    /// Loads `text_model.*` from transformers-named weights.
    pub fn load(
        map: &mut WeightMap,
        c: &TextConfig,
        device: &Device,
    ) -> Result<Self, TeacherError> {
        let w = c.hidden_size;
        let p = "text_model";
        let tok = map.take(
            &format!("{p}.embeddings.token_embedding.weight"),
            &[c.vocab_size, w],
        )?;
        let pos = map.take(
            &format!("{p}.embeddings.position_embedding.weight"),
            &[c.max_position_embeddings, w],
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
        let fin = load_layer_norm(
            map,
            &format!("{p}.final_layer_norm"),
            w,
            c.layer_norm_eps,
            device,
        )?;
        Ok(Self {
            token_embedding: Param::from_tensor(to_device::<2>(tok, device)),
            position_embedding: Param::from_tensor(to_device::<2>(pos, device)),
            layers,
            final_layer_norm: fin,
            eos_token_id: c.eos_token_id,
        })
    }

    /// Writes `text_model.*` back under transformers' names.
    pub fn save(&self, map: &mut WeightMap) -> Result<(), TeacherError> {
        let p = "text_model";
        map.insert(
            format!("{p}.embeddings.token_embedding.weight"),
            to_host(self.token_embedding.val())?,
        );
        map.insert(
            format!("{p}.embeddings.position_embedding.weight"),
            to_host(self.position_embedding.val())?,
        );
        for (i, l) in self.layers.iter().enumerate() {
            l.save(map, &format!("{p}.encoder.layers.{i}"))?;
        }
        save_layer_norm(
            &self.final_layer_norm,
            map,
            &format!("{p}.final_layer_norm"),
        )
    }

    /// Context length L.
    pub fn context_length(&self) -> usize {
        self.position_embedding.val().dims()[0]
    }

    /// Where transformers pools each row of `ids` ([B, L] row-major): the first occurrence of
    /// the end-of-text id, or, for legacy configs whose eos id is 2, the argmax of the ids
    /// (first maximum). A row without the end id pools at 0, as torch's argmax of zeros does.
    pub fn eot_positions(&self, ids: &[i64], l: usize) -> Vec<usize> {
        ids.chunks(l)
            .map(|row| {
                if self.eos_token_id == 2 {
                    let mut best = 0;
                    for (i, &v) in row.iter().enumerate() {
                        if v > row[best] {
                            best = i;
                        }
                    }
                    best
                } else {
                    row.iter()
                        .position(|&v| v == self.eos_token_id)
                        .unwrap_or(0)
                }
            })
            .collect()
    }

    /// Token ids [B, L] (L ≤ context length) → outputs, pooled at [`Self::eot_positions`].
    pub fn forward_ids(&self, ids: &[i64], b: usize, l: usize, device: &Device) -> TextOutput {
        let eot = self.eot_positions(ids, l);
        let ids_t = Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [b, l]), device);
        let embeds = burn::tensor::module::embedding(self.token_embedding.val(), ids_t);
        self.forward_embeds(embeds, &eot)
    }

    /// Runs the tower on token embeddings [B, L, W] (positions are added here), pooling row b
    /// at `eot[b]`. Differentiable with respect to `embeds`; if the tower lives on a plain
    /// device and `embeds` on an autodiff one, the tower's parameters are constants.
    pub fn forward_embeds(&self, embeds: Tensor<3>, eot: &[usize]) -> TextOutput {
        let [b, l, w] = embeds.dims();
        let pos = self.position_embedding.val().slice([0..l, 0..w]);
        let mut x = embeds + pos.unsqueeze::<3>();
        for layer in &self.layers {
            x = layer.forward(x, true);
        }
        let x = self.final_layer_norm.forward(x);
        let device = x.device();
        let rows: Vec<i64> = eot
            .iter()
            .enumerate()
            .map(|(i, &p)| (i * l + p.min(l - 1)) as i64)
            .collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), &device);
        let pooled = x.clone().reshape([b * l, w]).select(0, idx);
        TextOutput {
            last_hidden_state: x,
            pooled,
        }
    }
}

/// Names and PyTorch shapes of `text_model.*`.
pub fn text_shapes(c: &TextConfig, out: &mut Vec<(String, Vec<usize>)>) {
    let w = c.hidden_size;
    let p = "text_model";
    out.push((
        format!("{p}.embeddings.token_embedding.weight"),
        vec![c.vocab_size, w],
    ));
    out.push((
        format!("{p}.embeddings.position_embedding.weight"),
        vec![c.max_position_embeddings, w],
    ));
    for i in 0..c.num_hidden_layers {
        super::layers::block_shapes(
            &format!("{p}.encoder.layers.{i}"),
            TextTransformer::shape(c),
            out,
        );
    }
    out.push((format!("{p}.final_layer_norm.weight"), vec![w]));
    out.push((format!("{p}.final_layer_norm.bias"), vec![w]));
}
