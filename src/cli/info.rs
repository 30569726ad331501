//! `ovkd info`: what this binary is and where it would run.

use super::Context;
use anyhow::Result;

/// Prints the version, the backends compiled in and the device `--device` resolves to.
pub fn run(ctx: &Context) -> Result<()> {
    let (spec, device) = ctx.device.resolve();
    println!("ovkd {}", env!("CARGO_PKG_VERSION"));
    let backends = if cfg!(feature = "tch") {
        "cpu (burn-flex), tch-cpu, tch-cuda"
    } else {
        "cpu (burn-flex)"
    };
    println!("backends: {backends}");
    println!("device: {} ({device:?})", spec.name());
    Ok(())
}
