//! One module per command group; each has a clap `*Command` and a `run`.

pub mod data;
pub mod eval;
pub mod info;
pub mod pipeline;
pub mod predict;
pub mod proposals;
pub mod report;
pub mod sweep;
pub mod teacher;
pub mod train_detector;

use crate::device::DeviceSpec;

/// What every command gets from the global flags.
#[derive(Debug, Clone)]
pub struct Context {
    /// The device named by `--device`, resolved lazily by commands that use tensors.
    pub device: DeviceSpec,
}
