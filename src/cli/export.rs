//! `ovkd export`: a trained student in a form other programs load.

use anyhow::Result;
use clap::Subcommand;

use super::Context;

/// The `ovkd export` subcommands.
#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    /// A student's inference graph at a fixed input size as ONNX (opset 17), the vocabulary's
    /// text embeddings baked in; `--check-inputs` adds the files `bench/onnx_check.py` checks
    /// it with.
    Onnx(super::export_onnx::OnnxArgs),
}

/// Runs `ovkd export`.
pub fn run(ctx: &Context, cmd: ExportCommand) -> Result<()> {
    match cmd {
        ExportCommand::Onnx(args) => super::export_onnx::run(ctx, args),
    }
}
