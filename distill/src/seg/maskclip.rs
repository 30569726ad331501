//! MaskCLIP (Zhou et al., ECCV 2022): per-pixel class scores from the teacher's dense features,
//! with the paper's two refinements, following its reference code (`maskclip_head.py`):
//!
//! - *prompt denoising*: a class whose best confidence anywhere in the image is below a
//!   threshold is taken to be absent and removed from the image's candidates;
//! - *key smoothing*: the class probabilities of a patch whose best confidence is below a
//!   threshold are replaced by the key-similarity-weighted sum of every patch's probabilities
//!   (patches that look alike to the last block's keys should agree).
//!
//! Two choices differ from the reference code, both so that the result stays a probability
//! that a confidence threshold can read: negative key similarities are dropped (the weights are
//! non-negative and each smoothed row is renormalised to sum to 1), and prompt denoising never
//! removes the image's most confident class (when every class is below the threshold the
//! reference code would leave all of them at the same floor).

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};

/// MaskCLIP's scoring settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaskClipConfig {
    /// Softmax temperature over the cosine scores (CLIP and MaskCLIP: 0.01, i.e. logit
    /// scale 100).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Prompt-denoising threshold on a class's best confidence in the image (MaskCLIP: 0.5);
    /// absent to skip.
    #[serde(default)]
    pub prompt_denoise: Option<f64>,
    /// Key-smoothing threshold: patches whose best confidence is below it are smoothed
    /// (MaskCLIP: 1.0, i.e. every patch); absent to skip.
    #[serde(default)]
    pub key_smooth: Option<f64>,
    /// Subtract the data set's mean dense embedding from every patch's (and renormalise)
    /// before scoring. A small teacher's image embeddings can share a large common component
    /// that carries no class information but adds a class-dependent bias (its cosine with each
    /// text embedding) to every pixel's scores; removing it lets the class-specific part decide.
    #[serde(default)]
    pub center: bool,
}

fn default_temperature() -> f64 {
    0.01
}

impl Default for MaskClipConfig {
    fn default() -> Self {
        Self {
            temperature: default_temperature(),
            prompt_denoise: Some(0.5),
            key_smooth: Some(1.0),
            center: false,
        }
    }
}

/// Cosine scores of normalised dense embeddings `[D, h, w]` against normalised class
/// embeddings `[C, D]`: `[C, h, w]`.
pub fn dense_cosine(embeds: Tensor<3>, class_embeds: Tensor<2>) -> Tensor<3> {
    let [d, h, w] = embeds.dims();
    let c = class_embeds.dims()[0];
    class_embeds
        .matmul(embeds.reshape([d, h * w]))
        .reshape([c, h, w])
}

/// Dense embeddings `[D, h, w]` with `mean` `[D]` subtracted from every position and each
/// position renormalised to unit length (see [`MaskClipConfig::center`]).
pub fn center_embeds(embeds: Tensor<3>, mean: Tensor<1>) -> Tensor<3> {
    let [d, h, w] = embeds.dims();
    let x = embeds.sub(mean.reshape([d, 1, 1]).expand([d, h, w]));
    let norm = x.clone().square().sum_dim(0).sqrt().clamp_min(1e-6); // [1, h, w]
    x.div(norm.expand([d, h, w]))
}

/// Prompt denoising on logits `[C, N]`: classes whose best probability over the `N` positions
/// is below `threshold` get a logit far below every other (the most confident class is kept).
pub fn prompt_denoise(logits: Tensor<2>, threshold: f64) -> Tensor<2> {
    let [c, _] = logits.dims();
    let best = softmax(logits.clone(), 0).max_dim(1); // [C, 1]
    let top = best.clone().max(); // [1]
    let keep_top = best.clone().equal(top.reshape([1, 1]).expand([c, 1]));
    let drop = best.lower_elem(threshold).bool_and(keep_top.bool_not()); // [C, 1]
    let floor = logits.clone().min().into_scalar::<f32>() - 1e4;
    let shape = logits.dims();
    logits.mask_fill(drop.expand(shape), floor)
}

/// Key smoothing on probabilities `[C, N]` with key features `[Dk, N]`: positions whose best
/// probability is below `threshold` take the renormalised sum of all positions' probabilities
/// weighted by the (non-negative part of the) cosine similarity of their keys.
pub fn key_smooth(probs: Tensor<2>, keys: Tensor<2>, threshold: f64) -> Tensor<2> {
    let [c, n] = probs.dims();
    let kn = keys
        .clone()
        .div(keys.square().sum_dim(0).sqrt().clamp_min(1e-6)); // [Dk, N]
    let weight = kn.clone().transpose().matmul(kn).clamp_min(0.0); // [N, N]
    let smoothed = probs.clone().matmul(weight.transpose()); // [C, N]
    let smoothed = smoothed.clone().div(smoothed.sum_dim(0).clamp_min(1e-12));
    let low = probs.clone().max_dim(0).lower_elem(threshold); // [1, N]
    probs.mask_where(low.expand([c, n]), smoothed)
}

/// MaskCLIP's per-patch class probabilities: dense embeddings `[D, h, w]`, key features
/// `[Dk, h, w]` and class embeddings `[C, D]` → probabilities over the `C` classes `[C, h, w]`.
pub fn maskclip_probs(
    cfg: &MaskClipConfig,
    embeds: Tensor<3>,
    keys: Tensor<3>,
    class_embeds: Tensor<2>,
) -> Tensor<3> {
    let [_, h, w] = embeds.dims();
    let c = class_embeds.dims()[0];
    let mut logits = dense_cosine(embeds, class_embeds)
        .reshape([c, h * w])
        .div_scalar(cfg.temperature);
    if let Some(t) = cfg.prompt_denoise {
        logits = prompt_denoise(logits, t);
    }
    let mut probs = softmax(logits, 0);
    if let Some(t) = cfg.key_smooth {
        let dk = keys.dims()[0];
        probs = key_smooth(probs, keys.reshape([dk, h * w]), t);
    }
    probs.reshape([c, h, w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t2(v: Vec<f32>, s: [usize; 2]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, s), &Device::default())
    }

    fn vec2(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    #[test]
    fn cosine_scores_are_dot_products_per_patch() {
        let device = Device::default();
        let embeds = Tensor::<3>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 1, 2]),
            &device,
        );
        let classes = t2(vec![1.0, 0.0, 0.6, 0.8], [2, 2]);
        let s = dense_cosine(embeds, classes)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        // [C=2, h=1, w=2]: patch 0 = (1, 0), patch 1 = (0, 1).
        assert_eq!(s, vec![1.0, 0.0, 0.6, 0.8]);
    }

    #[test]
    fn centring_removes_the_shared_component_and_keeps_unit_length() {
        let device = Device::default();
        // Two patches sharing the component (0, 0, 1): (0.6, 0, 0.8) and (0, 0.6, 0.8). Their
        // cosine is 0.64; with the mean (0.3, 0.3, 0.8) removed they are opposite.
        let embeds = Tensor::<3>::from_data(
            TensorData::new(vec![0.6f32, 0.0, 0.0, 0.6, 0.8, 0.8], [3, 1, 2]),
            &device,
        );
        let mean = Tensor::<1>::from_data(TensorData::new(vec![0.3f32, 0.3, 0.8], [3]), &device);
        let c = center_embeds(embeds, mean)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let want = [h, -h, -h, h, 0.0, 0.0];
        for (a, b) in c.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{c:?}");
        }
    }

    #[test]
    fn prompt_denoising_drops_weak_classes_but_keeps_the_best() {
        // Class 0 dominates both positions, class 1 never reaches 0.5, class 2 wins position 1
        // only weakly.
        let logits = t2(vec![5.0, 1.0, 0.0, 0.0, 0.0, 1.2], [3, 2]);
        let out = vec2(softmax(prompt_denoise(logits, 0.5), 0));
        // Class 1 (best prob well below 0.5) and class 2 (best ~0.45) are dropped.
        assert!(out[2] < 1e-6 && out[3] < 1e-6);
        assert!(out[4] < 1e-6 && out[5] < 1e-6);
        assert!((out[0] - 1.0).abs() < 1e-5 && (out[1] - 1.0).abs() < 1e-5);
        // With an impossible threshold, the most confident class still survives.
        let out = vec2(softmax(
            prompt_denoise(t2(vec![1.0, 0.0, 0.0, 1.0], [2, 2]), 2.0),
            0,
        ));
        assert!(out.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn key_smoothing_averages_alike_patches_and_keeps_confident_ones() {
        // Three patches; keys of 0 and 1 identical, 2 orthogonal.
        let keys = t2(vec![1.0, 1.0, 0.0, 0.0, 0.0, 1.0], [2, 3]);
        let probs = t2(vec![0.9, 0.5, 0.2, 0.1, 0.5, 0.8], [2, 3]);
        let out = vec2(key_smooth(probs, keys, 0.85));
        // Patch 0 is confident (0.9 ≥ 0.85): unchanged.
        assert!((out[0] - 0.9).abs() < 1e-6 && (out[3] - 0.1).abs() < 1e-6);
        // Patch 1 takes the mean of patches 0 and 1: (0.7, 0.3).
        assert!((out[1] - 0.7).abs() < 1e-6 && (out[4] - 0.3).abs() < 1e-6);
        // Patch 2 only resembles itself.
        assert!((out[2] - 0.2).abs() < 1e-6 && (out[5] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn probabilities_sum_to_one_per_patch() {
        let device = Device::default();
        let embeds = Tensor::<3>::random([4, 3, 3], burn::tensor::Distribution::Default, &device);
        let embeds = embeds.clone().div(embeds.square().sum_dim(0).sqrt());
        let keys = Tensor::<3>::random([5, 3, 3], burn::tensor::Distribution::Default, &device);
        let classes = Tensor::<2>::random([3, 4], burn::tensor::Distribution::Default, &device);
        let p = maskclip_probs(&MaskClipConfig::default(), embeds, keys, classes);
        assert_eq!(p.dims(), [3, 3, 3]);
        let sums = p.sum_dim(0).into_data().try_into_vec::<f32>().unwrap();
        for s in sums {
            assert!((s - 1.0).abs() < 1e-4, "{s}");
        }
    }
}
