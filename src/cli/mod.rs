//! One module per command group; each has a clap `*Command` and a `run`.

pub mod data;
pub mod eval;
pub mod export;
pub mod export_onnx;
pub mod info;
pub mod pipeline;
pub mod predict;
pub mod predict_seg;
pub mod proposals;
pub mod pseudo_boxes;
pub mod report;
pub mod sweep;
pub mod teacher;
pub mod train_detector;
pub mod train_segmenter;

use crate::device::DeviceSpec;
use std::path::PathBuf;

/// The flags every command that trains in a run directory takes (`ovkd proposals`,
/// `ovkd train detector`, `ovkd train segmenter`); the pipeline passes them the same way.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The experiment config (TOML; `extends` allowed).
    #[arg(long)]
    pub config: PathBuf,
    /// The run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Continue from the newest checkpoint of this command in RUN (a fresh start if none).
    #[arg(long)]
    pub resume: bool,
    /// Override a config value, e.g. `--set train.steps=200` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// What every command gets from the global flags.
#[derive(Debug, Clone)]
pub struct Context {
    /// The device named by `--device`, resolved lazily by commands that use tensors.
    pub device: DeviceSpec,
}
