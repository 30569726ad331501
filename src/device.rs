//! `--device`: which Burn backend runs the tensors.

use anyhow::{Result, bail};
use burn::tensor::Device;

/// A parsed `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The best the binary offers: `tch-cuda:0`, then `tch-cpu`, then `cpu`.
    Auto,
    /// burn-flex, pure Rust, on the CPU.
    Cpu,
    /// LibTorch on the CPU (feature `tch`).
    TchCpu,
    /// LibTorch on CUDA device N (feature `tch`).
    TchCuda(usize),
}

impl DeviceSpec {
    /// Parses `auto`, `cpu`, `tch-cpu` or `tch-cuda[:N]`.
    pub fn parse(s: &str) -> Result<Self> {
        let spec = match s {
            "auto" => Self::Auto,
            "cpu" | "flex" => Self::Cpu,
            "tch-cpu" => Self::TchCpu,
            "tch-cuda" => Self::TchCuda(0),
            other => match other.strip_prefix("tch-cuda:") {
                Some(n) => Self::TchCuda(n.parse().map_err(|_| {
                    anyhow::anyhow!("--device {other}: `{n}` is not a CUDA device index")
                })?),
                None => bail!("--device {other}: expected one of auto, cpu, tch-cpu, tch-cuda:N"),
            },
        };
        if !cfg!(feature = "tch") && matches!(spec, Self::TchCpu | Self::TchCuda(_)) {
            bail!(
                "--device {s} needs the LibTorch backend: rebuild with `--features tch` \
                 (LIBTORCH_USE_PYTORCH=1 and a pip-installed PyTorch)"
            );
        }
        if let Self::TchCuda(n) = spec {
            let count = burn_tch_cuda_device_count();
            if n >= count {
                bail!(
                    "--device {s}: LibTorch sees {count} CUDA device{} here{}; use `--device \
                     tch-cpu`, or `auto` (the GPU where there is one, else the CPU)",
                    if count == 1 { "" } else { "s" },
                    if count == 0 {
                        " (no NVIDIA driver or GPU, or a PyTorch built without CUDA)"
                    } else {
                        ""
                    }
                );
            }
        }
        Ok(spec)
    }

    /// Resolves `auto` and returns the concrete spec and its Burn device.
    #[allow(deprecated)] // `Device::libtorch*`: burn-tch is deprecated upstream, still ours
    pub fn resolve(self) -> (Self, Device) {
        match self {
            Self::Auto => {
                if burn_tch_cuda_available() {
                    Self::TchCuda(0).resolve()
                } else if cfg!(feature = "tch") {
                    Self::TchCpu.resolve()
                } else {
                    Self::Cpu.resolve()
                }
            }
            Self::Cpu => (self, Device::flex()),
            #[cfg(feature = "tch")]
            Self::TchCpu => (self, Device::libtorch()),
            #[cfg(feature = "tch")]
            Self::TchCuda(n) => (self, Device::libtorch_cuda(n)),
            #[cfg(not(feature = "tch"))]
            Self::TchCpu | Self::TchCuda(_) => unreachable!("rejected by DeviceSpec::parse"),
        }
    }

    /// The name users type, e.g. `tch-cuda:0`.
    pub fn name(self) -> String {
        match self {
            Self::Auto => "auto".into(),
            Self::Cpu => "cpu".into(),
            Self::TchCpu => "tch-cpu".into(),
            Self::TchCuda(n) => format!("tch-cuda:{n}"),
        }
    }
}

/// Whether LibTorch sees a CUDA device.
pub fn burn_tch_cuda_available() -> bool {
    burn_tch_cuda_device_count() > 0
}

/// How many CUDA devices LibTorch sees (`torch.cuda.device_count()`; burn-tch's device type 0
/// is CUDA). A LibTorch without CUDA support, or a machine without a driver or GPU, answers 0.
#[cfg(feature = "tch")]
#[allow(deprecated)] // burn-tch is deprecated upstream, but it is the backend that links LibTorch
pub fn burn_tch_cuda_device_count() -> usize {
    use burn::backend::{Backend, LibTorch};
    <LibTorch as Backend>::device_count(0)
}

/// Always 0: a binary built without the `tch` feature has no LibTorch to ask.
#[cfg(not(feature = "tch"))]
pub fn burn_tch_cuda_device_count() -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_rejects_garbage() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("auto").unwrap(), DeviceSpec::Auto);
        let err = DeviceSpec::parse("gpu").unwrap_err().to_string();
        assert!(err.contains("expected one of"), "{err}");
        assert!(DeviceSpec::parse("tch-cuda:x").is_err());
    }

    /// A CUDA index LibTorch does not see is refused when parsed, naming the count, rather than
    /// LibTorch panicking at the first tensor.
    #[cfg(feature = "tch")]
    #[test]
    fn a_cuda_device_that_is_not_there_is_refused() {
        let count = burn_tch_cuda_device_count();
        let err = DeviceSpec::parse(&format!("tch-cuda:{count}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("LibTorch sees {count} CUDA device")) && err.contains("tch-cpu"),
            "{err}"
        );
        if count > 0 {
            assert_eq!(
                DeviceSpec::parse("tch-cuda").unwrap(),
                DeviceSpec::TchCuda(0)
            );
        }
    }

    #[test]
    fn auto_picks_cuda_then_tch_cpu_then_cpu() {
        let (spec, _) = DeviceSpec::Auto.resolve();
        #[cfg(feature = "tch")]
        {
            let want = if burn_tch_cuda_available() {
                DeviceSpec::TchCuda(0)
            } else {
                DeviceSpec::TchCpu
            };
            assert_eq!(spec, want);
        }
        #[cfg(not(feature = "tch"))]
        {
            assert!(!burn_tch_cuda_available());
            assert_eq!(spec, DeviceSpec::Cpu);
            let err = DeviceSpec::parse("tch-cuda:0").unwrap_err().to_string();
            assert!(err.contains("--features tch"), "{err}");
        }
    }
}
