//! CLIP's multi-head self-attention, with transformers' parameter names and no dropout.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};
use ovkd_backbone::ops::{is_flex, linear};

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
        let q = split(linear(&self.q_proj, x.clone().slice([0..b, 0..1])), 1); // [B, H, 1, hd]
        let k = split(linear(&self.k_proj, x.clone()), l);
        let v = split(linear(&self.v_proj, x), l);
        let out = core(q, k, v, scale, false) // [B, H, 1, hd]
            .swap_dims(1, 2)
            .reshape([b, 1, w]);
        linear(&self.out_proj, out)
    }

    /// Self-attention over [B, L, W] → [B, L, W]; `causal` masks future positions (text tower).
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let [b, l, w] = x.dims();
        let h = self.num_heads;
        let hd = w / h;
        let scale = (hd as f64).powf(-0.5);
        let split = |t: Tensor<3>| t.reshape([b, l, h, hd]).swap_dims(1, 2); // [B, H, L, hd]
        let q = split(linear(&self.q_proj, x.clone()));
        let k = split(linear(&self.k_proj, x.clone()));
        let v = split(linear(&self.v_proj, x));
        let out = core(q, k, v, scale, causal) // [B, H, L, hd]
            .swap_dims(1, 2)
            .reshape([b, l, w]);
        linear(&self.out_proj, out)
    }
}

/// `softmax(q kᵀ · scale) v` for `q` [B, H, Lq, hd] and `k`, `v` [B, H, L, hd] → [B, H, Lq, hd];
/// `causal` masks future positions.
///
/// Inference off burn-flex (LibTorch) runs Burn's attention operation, there LibTorch's fused
/// `scaled_dot_product_attention`: on the H200 the composed form left the bfloat16 tower at
/// 0.65× transformers, which runs SDPA (BENCHMARKS, Speed, session 12). On burn-flex, and under
/// autodiff (the built-in teacher's pre-training), it is the composition of matmuls and a
/// softmax it always was, so CPU results stay bit for bit those the targets were measured with
/// (the operation's burn-flex kernel and Burn's autodiff fallback round differently). Causal
/// masking goes in as the option, not a mask tensor: burn-tch hands bool masks to SDPA, which
/// reads `true` as "attend", the opposite of Burn's convention.
fn core(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64, causal: bool) -> Tensor<4> {
    let device = q.device();
    if !is_flex(&device) && !device.is_autodiff() {
        let options = AttentionModuleOptions {
            scale: Some(scale),
            softcap: None,
            is_causal: causal,
        };
        return attention(q, k, v, None, None, options);
    }
    let [b, h, lq, _] = q.dims();
    let l = k.dims()[2];
    let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale); // [B, H, Lq, L]
    if causal {
        let mask = causal_mask(l, &device);
        scores = scores.mask_fill(
            mask.unsqueeze::<4>().expand([b, h, lq, l]),
            f32::NEG_INFINITY,
        );
    }
    softmax(scores, 3).matmul(v)
}

/// [L, L] mask, true above the diagonal (positions a token may not see).
fn causal_mask(l: usize, device: &burn::tensor::Device) -> Tensor<2, Bool> {
    let data: Vec<bool> = (0..l * l).map(|i| (i % l) > (i / l)).collect();
    Tensor::<2, Bool>::from_data(burn::tensor::TensorData::new(data, [l, l]), device)
}
