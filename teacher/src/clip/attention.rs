//! CLIP's multi-head self-attention, with transformers' parameter names and no dropout.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::layers::{load_linear, save_linear};
use crate::error::TeacherError;
use crate::weights::WeightMap;

/// `self_attn`: q/k/v/out projections of width W split over `num_heads` heads.
#[derive(Module, Debug)]
pub struct ClipAttention {
    /// Query projection, W → W.
    pub q_proj: Linear,
    /// Key projection, W → W.
    pub k_proj: Linear,
    /// Value projection, W → W.
    pub v_proj: Linear,
    /// Output projection, W → W.
    pub out_proj: Linear,
    /// Number of heads H (W / H per head).
    #[module(skip)]
    pub num_heads: usize,
}

impl ClipAttention {
    /// Loads `{prefix}.{q,k,v,out}_proj.{weight,bias}`.
    pub fn load(
        map: &mut WeightMap,
        prefix: &str,
        width: usize,
        num_heads: usize,
        device: &burn::tensor::Device,
    ) -> Result<Self, TeacherError> {
        Ok(Self {
            q_proj: load_linear(map, &format!("{prefix}.q_proj"), width, width, true, device)?,
            k_proj: load_linear(map, &format!("{prefix}.k_proj"), width, width, true, device)?,
            v_proj: load_linear(map, &format!("{prefix}.v_proj"), width, width, true, device)?,
            out_proj: load_linear(
                map,
                &format!("{prefix}.out_proj"),
                width,
                width,
                true,
                device,
            )?,
            num_heads,
        })
    }

    /// Writes the parameters back under transformers' names.
    pub fn save(&self, map: &mut WeightMap, prefix: &str) -> Result<(), TeacherError> {
        save_linear(&self.q_proj, map, &format!("{prefix}.q_proj"))?;
        save_linear(&self.k_proj, map, &format!("{prefix}.k_proj"))?;
        save_linear(&self.v_proj, map, &format!("{prefix}.v_proj"))?;
        save_linear(&self.out_proj, map, &format!("{prefix}.out_proj"))
    }

    /// Attention of the first token only (the class token) over all of [B, L, W] → [B, 1, W]:
    /// row 0 of [`Self::forward`] without `causal`, at the cost of the keys and values alone
    /// (the queries, scores, output projection and everything after them for one token).
    pub fn forward_first(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, l, w] = x.dims();
        let h = self.num_heads;
        let hd = w / h;
        let scale = (hd as f64).powf(-0.5);
        let split = |t: Tensor<3>, n: usize| t.reshape([b, n, h, hd]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone().slice([0..b, 0..1])), 1); // [B, H, 1, hd]
        let k = split(self.k_proj.forward(x.clone()), l);
        let v = split(self.v_proj.forward(x), l);
        let out = attention(q, k, v, None, None, options(scale, false)) // [B, H, 1, hd]
            .swap_dims(1, 2)
            .reshape([b, 1, w]);
        self.out_proj.forward(out)
    }

    /// Self-attention over [B, L, W] → [B, L, W]; `causal` masks future positions (text tower).
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let [b, l, w] = x.dims();
        let h = self.num_heads;
        let hd = w / h;
        let scale = (hd as f64).powf(-0.5);
        let split = |t: Tensor<3>| t.reshape([b, l, h, hd]).swap_dims(1, 2); // [B, H, L, hd]
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let out = attention(q, k, v, None, None, options(scale, causal)) // [B, H, L, hd]
            .swap_dims(1, 2)
            .reshape([b, l, w]);
        self.out_proj.forward(out)
    }
}

/// `softmax(q kᵀ · scale) v`, causal or not, as Burn's attention operation: the backend's
/// fused kernel where it has one and the tensors need no gradient (LibTorch's
/// `scaled_dot_product_attention`, burn-flex's own), else Burn's composition of matmuls and a
/// softmax. On the H200 the unfused form left the bfloat16 tower at 0.65× transformers, which
/// runs SDPA (BENCHMARKS, Speed, session 12). Causal masking is the option, not a mask
/// tensor: burn-tch hands bool masks to SDPA, which reads `true` as "attend", the opposite of
/// Burn's convention.
fn options(scale: f64, causal: bool) -> AttentionModuleOptions {
    AttentionModuleOptions {
        scale: Some(scale),
        softcap: None,
        is_causal: causal,
    }
}
