//! `--device` for the bench: the `ovkd` binary's own parser and `auto` rule (`src/device.rs`,
//! compiled in here), so a GPU session checks the exact code `ovkd --device auto` runs.

#[allow(dead_code)]
#[path = "../../../src/device.rs"]
mod spec;

use anyhow::Result;
use burn::tensor::Device;

/// Parses `auto`, `cpu`, `tch-cpu` or `tch-cuda[:N]`; returns the resolved name and device.
pub fn parse(s: &str) -> Result<(String, Device)> {
    let (spec, device) = spec::DeviceSpec::parse(s)?.resolve();
    Ok((spec.name(), device))
}
