//! `--device` for the bench: the same names as the `ovkd` binary's.

use anyhow::{Result, bail};
use burn::tensor::Device;

/// Parses `cpu`, `tch-cpu` or `tch-cuda[:N]` into its name and Burn device.
pub fn parse(s: &str) -> Result<(String, Device)> {
    let device = match s {
        "cpu" | "flex" => Device::flex(),
        #[cfg(feature = "tch")]
        "tch-cpu" => Device::libtorch(),
        #[cfg(feature = "tch")]
        other if other.starts_with("tch-cuda") => {
            let n = match other.strip_prefix("tch-cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("--device {other}: bad CUDA index"))?,
                None => 0,
            };
            Device::libtorch_cuda(n)
        }
        other => bail!(
            "--device {other}: expected cpu{}",
            if cfg!(feature = "tch") {
                ", tch-cpu or tch-cuda:N"
            } else {
                " (tch-* needs --features tch)"
            }
        ),
    };
    Ok((s.to_string(), device))
}
