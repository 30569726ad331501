//! Small building blocks shared by both towers: Linear/LayerNorm loading, the MLP and the
//! pre-norm encoder block, and quick_gelu.

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Device, Tensor, TensorData};
use ovkd_backbone::ops::{linear, silu};

use super::attention::ClipAttention;
use super::config::Activation;
use crate::error::{TeacherError, to_vec};
use crate::weights::{HostTensor, WeightMap};

/// QuickGELU's slope: `quick_gelu(x) = x * sigmoid(QUICK_GELU_SLOPE * x)`.
pub const QUICK_GELU_SLOPE: f64 = 1.702;

/// `x * sigmoid(1.702 x)`: OpenAI CLIP's GELU approximation (not in Burn).
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone() * burn::tensor::activation::sigmoid(x.mul_scalar(QUICK_GELU_SLOPE))
}

/// Applies the configured MLP non-linearity.
pub fn activate<const D: usize>(x: Tensor<D>, act: Activation) -> Tensor<D> {
    match act {
        Activation::QuickGelu => quick_gelu(x),
        Activation::Gelu => burn::tensor::activation::gelu(x),
    }
}

/// Host tensor → device tensor of rank D.
pub(crate) fn to_device<const D: usize>(t: HostTensor, device: &Device) -> Tensor<D> {
    let shape: Vec<usize> = t.shape.clone();
    Tensor::<D>::from_data(TensorData::new(t.data, shape), device)
}

/// Device tensor → host tensor.
pub(crate) fn to_host<const D: usize>(t: Tensor<D>) -> Result<HostTensor, TeacherError> {
    let shape = t.dims().to_vec();
    Ok(HostTensor {
        shape,
        data: to_vec(t)?,
    })
}

/// Loads a PyTorch `nn.Linear` (`weight` [out, in], `bias` [out]) into Burn's [in, out] layout.
pub fn load_linear(
    map: &mut WeightMap,
    prefix: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
    device: &Device,
) -> Result<Linear, TeacherError> {
    let w = map
        .take(&format!("{prefix}.weight"), &[d_out, d_in])?
        .transposed();
    let bias = if bias {
        let b = map.take(&format!("{prefix}.bias"), &[d_out])?;
        Some(Param::from_tensor(to_device::<1>(b, device)))
    } else {
        None
    };
    Ok(Linear {
        weight: Param::from_tensor(to_device::<2>(w, device)),
        bias,
    })
}

/// Writes a Burn `Linear` back as PyTorch's [out, in] `weight` (+ `bias`).
pub fn save_linear(l: &Linear, map: &mut WeightMap, prefix: &str) -> Result<(), TeacherError> {
    map.insert(
        format!("{prefix}.weight"),
        to_host(l.weight.val())?.transposed(),
    );
    if let Some(b) = &l.bias {
        map.insert(format!("{prefix}.bias"), to_host(b.val())?);
    }
    Ok(())
}

/// Loads `{prefix}.weight` / `{prefix}.bias` of a LayerNorm of width `d`.
pub fn load_layer_norm(
    map: &mut WeightMap,
    prefix: &str,
    d: usize,
    eps: f64,
    device: &Device,
) -> Result<LayerNorm, TeacherError> {
    let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init(device);
    let g = map.take(&format!("{prefix}.weight"), &[d])?;
    let b = map.take(&format!("{prefix}.bias"), &[d])?;
    ln.gamma = Param::from_tensor(to_device::<1>(g, device));
    ln.beta = Some(Param::from_tensor(to_device::<1>(b, device)));
    Ok(ln)
}

/// Writes a LayerNorm's gamma/beta as `weight`/`bias`.
pub fn save_layer_norm(
    ln: &LayerNorm,
    map: &mut WeightMap,
    prefix: &str,
) -> Result<(), TeacherError> {
    map.insert(format!("{prefix}.weight"), to_host(ln.gamma.val())?);
    if let Some(b) = &ln.beta {
        map.insert(format!("{prefix}.bias"), to_host(b.val())?);
    }
    Ok(())
}

/// `mlp`: fc1 (W → I), activation, fc2 (I → W).
#[derive(Module, Debug)]
pub struct ClipMlp {
    /// W → I.
    pub fc1: Linear,
    /// I → W.
    pub fc2: Linear,
    /// The non-linearity.
    #[module(skip)]
    pub act: Activation,
    /// Whether QuickGELU's slope is folded into the weights ([`Self::fold_quick_gelu`]): the
    /// non-linearity is then a plain SiLU. A folded MLP cannot be saved.
    #[module(skip)]
    pub folded: bool,
}

impl ClipMlp {
    /// [.., W] → [.., W].
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let h = linear(&self.fc1, x);
        let h = if self.folded {
            silu(h)
        } else {
            activate(h, self.act)
        };
        linear(&self.fc2, h)
    }

    /// The same MLP with QuickGELU's slope `a` folded into its weights, for inference:
    /// `fc2(quick_gelu(fc1(x))) = fc2'(silu(fc1'(x)))` with `fc1' = a · fc1` (weight and bias)
    /// and `fc2'`'s weight divided by `a`, since `silu(a h) = a · quick_gelu(h)`. SiLU is one
    /// kernel on LibTorch ([`silu`]) where QuickGELU's composition is three (a scale, a sigmoid,
    /// a product): 6.1 ms of the ViT-B/32 tower's 36.5 ms bf16 step on the H200 (BENCHMARKS,
    /// Speed, session 13). Equal up to float rounding; other activations are left as they are.
    pub fn fold_quick_gelu(mut self) -> Self {
        if self.act != Activation::QuickGelu || self.folded {
            return self;
        }
        let a = QUICK_GELU_SLOPE;
        self.fc1.weight = self.fc1.weight.map(|w| w.mul_scalar(a));
        self.fc1.bias = self.fc1.bias.map(|b| b.map(|t| t.mul_scalar(a)));
        self.fc2.weight = self.fc2.weight.map(|w| w.div_scalar(a));
        self.folded = true;
        self
    }
}

/// Shape of one encoder block.
#[derive(Debug, Clone, Copy)]
pub struct BlockShape {
    /// Width W.
    pub width: usize,
    /// MLP width I.
    pub intermediate: usize,
    /// Heads.
    pub heads: usize,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// MLP non-linearity.
    pub act: Activation,
}

/// `encoder.layers.N`: pre-norm residual attention and MLP.
#[derive(Module, Debug)]
pub struct EncoderLayer {
    /// Norm before attention.
    pub layer_norm1: LayerNorm,
    /// Self-attention.
    pub self_attn: ClipAttention,
    /// Norm before the MLP.
    pub layer_norm2: LayerNorm,
    /// The MLP.
    pub mlp: ClipMlp,
}

impl EncoderLayer {
    /// Loads `{prefix}.*` in transformers' naming.
    pub fn load(
        map: &mut WeightMap,
        prefix: &str,
        s: BlockShape,
        device: &Device,
    ) -> Result<Self, TeacherError> {
        Ok(Self {
            layer_norm1: load_layer_norm(
                map,
                &format!("{prefix}.layer_norm1"),
                s.width,
                s.eps,
                device,
            )?,
            self_attn: ClipAttention::load(
                map,
                &format!("{prefix}.self_attn"),
                s.width,
                s.heads,
                device,
            )?,
            layer_norm2: load_layer_norm(
                map,
                &format!("{prefix}.layer_norm2"),
                s.width,
                s.eps,
                device,
            )?,
            mlp: ClipMlp {
                fc1: load_linear(
                    map,
                    &format!("{prefix}.mlp.fc1"),
                    s.width,
                    s.intermediate,
                    true,
                    device,
                )?,
                fc2: load_linear(
                    map,
                    &format!("{prefix}.mlp.fc2"),
                    s.intermediate,
                    s.width,
                    true,
                    device,
                )?,
                act: s.act,
                folded: false,
            },
        })
    }

    /// Writes the block back under transformers' names.
    ///
    /// # Errors
    /// When its MLP is folded for inference ([`ClipMlp::fold_quick_gelu`]): those weights are
    /// not transformers'.
    pub fn save(&self, map: &mut WeightMap, prefix: &str) -> Result<(), TeacherError> {
        if self.mlp.folded {
            return Err(TeacherError::InvalidRequest(format!(
                "{prefix}.mlp: an MLP folded for inference cannot be saved"
            )));
        }
        save_layer_norm(&self.layer_norm1, map, &format!("{prefix}.layer_norm1"))?;
        self.self_attn.save(map, &format!("{prefix}.self_attn"))?;
        save_layer_norm(&self.layer_norm2, map, &format!("{prefix}.layer_norm2"))?;
        save_linear(&self.mlp.fc1, map, &format!("{prefix}.mlp.fc1"))?;
        save_linear(&self.mlp.fc2, map, &format!("{prefix}.mlp.fc2"))
    }

    /// The first token's output only (non-causal): [B, L, W] → [B, 1, W], row 0 of
    /// [`Self::forward`].
    pub fn forward_first(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, _, w] = x.dims();
        let first = x.clone().slice([0..b, 0..1, 0..w]);
        let x = first + self.self_attn.forward_first(self.layer_norm1.forward(x));
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }

    /// [B, L, W] → [B, L, W].
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x), causal);
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// Names and shapes (PyTorch layout) of one block's tensors, for random init and checks.
pub fn block_shapes(prefix: &str, s: BlockShape, out: &mut Vec<(String, Vec<usize>)>) {
    let w = s.width;
    for ln in ["layer_norm1", "layer_norm2"] {
        out.push((format!("{prefix}.{ln}.weight"), vec![w]));
        out.push((format!("{prefix}.{ln}.bias"), vec![w]));
    }
    for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
        out.push((format!("{prefix}.self_attn.{p}.weight"), vec![w, w]));
        out.push((format!("{prefix}.self_attn.{p}.bias"), vec![w]));
    }
    out.push((format!("{prefix}.mlp.fc1.weight"), vec![s.intermediate, w]));
    out.push((format!("{prefix}.mlp.fc1.bias"), vec![s.intermediate]));
    out.push((format!("{prefix}.mlp.fc2.weight"), vec![w, s.intermediate]));
    out.push((format!("{prefix}.mlp.fc2.bias"), vec![w]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_gelu_matches_its_formula() {
        let device = Device::default();
        let x = Tensor::<1>::from_floats([-3.0, -0.5, 0.0, 0.7, 4.0], &device);
        let y = to_vec(quick_gelu(x)).unwrap();
        for (xi, yi) in [-3.0f32, -0.5, 0.0, 0.7, 4.0].iter().zip(y) {
            let want = xi / (1.0 + (-1.702 * xi).exp());
            assert!((want - yi).abs() < 1e-6, "{xi}: {yi} vs {want}");
        }
    }

    /// Folding QuickGELU's slope into the weights leaves the MLP's output as it was (up to
    /// float rounding), on whichever device runs the test (burn-flex in CI, LibTorch's one-kernel
    /// SiLU with `--features tch`); GELU MLPs are left alone; a folded block refuses to be saved.
    #[test]
    fn folding_quick_gelu_keeps_the_mlp() {
        use burn::nn::LinearConfig;
        use burn::tensor::Distribution;
        let device = Device::default();
        device.seed(2);
        let mlp = |act| ClipMlp {
            fc1: LinearConfig::new(12, 48).init(&device),
            fc2: LinearConfig::new(48, 12).init(&device),
            act,
            folded: false,
        };
        let x = Tensor::<3>::random([2, 5, 12], Distribution::Normal(0.0, 2.0), &device);
        let plain = mlp(Activation::QuickGelu);
        let want = to_vec(plain.forward(x.clone())).unwrap();
        let folded = plain.fold_quick_gelu();
        assert!(folded.folded);
        let got = to_vec(folded.forward(x.clone())).unwrap();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "[{i}]: {a} vs {b}");
        }
        // Folding twice is folding once.
        let again = to_vec(folded.fold_quick_gelu().forward(x.clone())).unwrap();
        assert_eq!(again, got);
        let gelu = mlp(Activation::Gelu).fold_quick_gelu();
        assert!(!gelu.folded);

        let shape = BlockShape {
            width: 12,
            intermediate: 48,
            heads: 2,
            eps: 1e-5,
            act: Activation::QuickGelu,
        };
        let mut map = WeightMap::new(std::path::Path::new("test"));
        let mut names = Vec::new();
        block_shapes("b", shape, &mut names);
        for (name, dims) in names {
            let n = dims.iter().product();
            map.insert(
                name,
                HostTensor {
                    shape: dims,
                    data: vec![0.1; n],
                },
            );
        }
        let layer = EncoderLayer::load(&mut map, "b", shape, &device).unwrap();
        let mut out = WeightMap::new(std::path::Path::new("out"));
        layer.save(&mut out, "b").unwrap();
        let layer = EncoderLayer {
            mlp: layer.mlp.fold_quick_gelu(),
            ..layer
        };
        let err = layer.save(&mut out, "b").unwrap_err().to_string();
        assert!(err.contains("b.mlp") && err.contains("folded"), "{err}");
    }
}
