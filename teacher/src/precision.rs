//! The teacher's inference precision: float32, or its image tower's weights and activations in
//! bfloat16 or float16, as transformers runs a `CLIPModel` after `.to(torch.bfloat16)`.
//!
//! Half precision is for LibTorch devices: on GPUs it halves the memory traffic and runs on
//! tensor cores, and on CPUs with bfloat16 instructions (AVX-512 BF16, AMX) bfloat16 runs the
//! ViT-B/32 tower at 3.3× float32's throughput (BENCHMARKS, Speed). burn-flex converts bfloat16
//! matmuls to float32, so there it is slower, and float16 is a GPU format (on CPU LibTorch's
//! float16 matmuls are two orders of magnitude slower). Every weight and activation of the tower
//! is in the chosen format; only the final L2 normalisation runs in float32, since a norm
//! rounded to bfloat16 leaves the vectors up to 0.2 % off unit length. Measured on a random
//! ViT-B/32 (`ovkd-speed teacher --dtype`, `tch-cpu`, 16 region crops), the lowest cosine of an
//! embedding to the float32 model's: bfloat16 0.99995, float16 0.999999, where transformers gives
//! 0.99994 and 0.999999 for the same weights and crops. (Running LayerNorm and the attention core
//! in float32 on top, as PyTorch's fused kernels do inside, changed nothing measurable: 0.99993
//! to 0.99994 either way on 64 crops.)

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

    /// `module` with every float parameter in this precision.
    pub fn cast_module<M: Module>(self, module: M) -> M {
        module.map(&mut CastParams(self.dtype()))
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

/// Casts every float parameter.
struct CastParams(FloatDType);

impl ModuleMapper for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.0), mapper)
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
