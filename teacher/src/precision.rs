//! The teacher's inference precision: float32, or its image tower's weights and activations in
//! bfloat16 or float16, as transformers runs a `CLIPModel` after `.to(torch.bfloat16)`.
//!
//! Half precision is for LibTorch devices: on GPUs it halves the memory traffic and runs on
//! tensor cores, and on CPUs with bfloat16 instructions (AVX-512 BF16, AMX) bfloat16 runs the
//! ViT-B/32 tower at 3.3× float32's throughput (BENCHMARKS, Speed). burn-flex converts bfloat16
//! matmuls to float32, so there it is slower, and float16 is a GPU format (on CPU LibTorch's
//! float16 matmuls are two orders of magnitude slower). As in PyTorch's fused kernels, LayerNorm and
//! the attention core compute in float32, and the embeddings are normalised in float32.
//! Measured on a random ViT-B/32 (`ovkd-speed teacher --dtype`, `tch-cpu`, 16 region crops),
//! the lowest cosine of an embedding to the float32 model's: bfloat16 0.99994, float16
//! 0.999999, where transformers gives 0.99994 and 0.999999 for the same weights and crops.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

/// The floating-point format the teacher computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 (the default, and what the caches were built with so far).
    #[default]
    F32,
    /// bfloat16: float32's range, 8 bits of mantissa.
    Bf16,
    /// IEEE float16.
    F16,
}

impl Precision {
    /// The tensor format.
    pub fn dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::Bf16 => FloatDType::BF16,
            Self::F16 => FloatDType::F16,
        }
    }

    /// `x` in this precision (itself if it is already).
    pub fn cast_in<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        to_dtype(x, self.dtype().into())
    }

    /// `module` with every float parameter in this precision, except LayerNorms' (see
    /// [`in_f32`]).
    pub fn cast_module<M: Module>(self, module: M) -> M {
        module.map(&mut CastParams {
            dtype: self.dtype(),
            containers: Vec::new(),
        })
    }
}

/// `x` in float32 (itself if it is already: no copy, no autodiff node).
pub fn to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    to_dtype(x, DType::F32)
}

/// `x` in `dtype` (itself if it is already).
pub fn to_dtype<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype {
        x
    } else {
        x.cast(FloatDType::from(dtype))
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "fp16" | "float16" => Ok(Self::F16),
            other => Err(format!("precision `{other}`: expected f32, bf16 or f16")),
        }
    }
}

/// `f(x)` computed in float32 and returned in `x`'s format. LayerNorm runs this way (and the
/// attention core, `clip::attention`) in half precision, as PyTorch's fused kernels compute
/// inside: Burn composes LayerNorm from element-wise operations, each of which would round.
pub fn in_f32<const D: usize>(x: Tensor<D>, f: impl FnOnce(Tensor<D>) -> Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    to_dtype(f(to_f32(x)), dtype)
}

/// Casts every float parameter but those of LayerNorms (which [`in_f32`] runs in float32).
struct CastParams {
    dtype: FloatDType,
    /// The types of the modules being entered, innermost last.
    containers: Vec<String>,
}

impl ModuleMapper for CastParams {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.containers.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self
            .containers
            .last()
            .is_some_and(|c| c == "Struct:LayerNorm")
        {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.dtype), mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_ones_are_named() {
        for p in [Precision::F32, Precision::Bf16, Precision::F16] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
        }
        assert_eq!("bfloat16".parse::<Precision>(), Ok(Precision::Bf16));
        let err = "fp8".parse::<Precision>().unwrap_err();
        assert!(err.contains("fp8") && err.contains("bf16"), "{err}");
    }
}
