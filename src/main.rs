//! `ovkd`: open-vocabulary knowledge distillation from the command line.
//!
//! One subcommand per stage; each reads a config or explicit paths and writes into a run
//! directory. See the README for the two commands a newcomer runs first.

mod cli;
mod config;
mod device;
mod pipeline;
mod report;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Distil a frozen CLIP teacher's open vocabulary into a detector and a segmenter, and score
/// them with box AP and mIoU as pycocotools and mmsegmentation do.
#[derive(Parser, Debug)]
#[command(name = "ovkd", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Where tensors live: `auto`, `cpu` (burn-flex), `tch-cpu` or `tch-cuda:N` (built with the
    /// `tch` feature).
    #[arg(long, global = true, default_value = "auto")]
    device: String,
    /// More log output (`-v` debug, `-vv` trace); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the version, the compiled backends and the device `--device` resolves to.
    Info,
    /// Make, look at, count and check data: the OV-Shapes generator (`synth`), drawings
    /// (`show`), counts (`stats`) and COCO/LVIS/vocabulary checks (`validate`).
    #[command(subcommand)]
    Data(cli::data::DataCommand),
    /// The CLIP teacher: parity checks, tokenizer, pre-training, zero-shot eval, region cache.
    Teacher(cli::teacher::TeacherCommand),
    /// Class-agnostic proposals for ViLD-image: train an RPN on the base boxes (or take a
    /// file) and propose boxes for every training image.
    Proposals(cli::proposals::ProposalsArgs),
    /// Train a student.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Predict with a trained student for any class names: COCO results and drawings.
    Predict(cli::predict::PredictArgs),
    /// Score detections (box AP, COCO or LVIS rules) or segmentations (mIoU).
    Eval(cli::eval::EvalCommand),
    /// Export a trained student: `bundle` (self-contained, for `ovkd predict --bundle`) or `onnx`
    /// (its inference graph as an ONNX file).
    #[command(subcommand)]
    Export(cli::export::ExportCommand),
    /// Write an HTML (and Markdown) report of a run directory.
    Report(cli::report::ReportArgs),
    /// Run every stage of an experiment in one run directory (data, teacher, proposals,
    /// students, eval, report), skipping stages whose inputs are unchanged.
    Pipeline(cli::pipeline::PipelineArgs),
    /// Run an experiment many times with keys varied and collect every run's metrics into one
    /// table (Parquet, CSV, Markdown).
    Sweep(cli::sweep::SweepArgs),
}

#[derive(Subcommand, Debug)]
enum TrainCommand {
    /// The detector: ViLD (ViLD-text + ViLD-image), then box AP on the val split.
    Detector(cli::train_detector::TrainDetectorArgs),
    /// The segmenter: LSeg with MaskCLIP+ pseudo-labels and self-training, then mIoU.
    Segmenter(cli::train_segmenter::TrainSegmenterArgs),
}

fn main() {
    ovkd_backbone::ops::heap::retain_freed_memory();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if let Err(err) = run(cli) {
        eprintln!("error: {}", cli::error_message(&err));
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let ctx = cli::Context {
        device: device::DeviceSpec::parse(&cli.device)?,
    };
    tracing::info!("device: {}", ctx.device.resolve().0.name());
    match cli.command {
        Command::Info => cli::info::run(&ctx),
        Command::Data(cmd) => cli::data::run(&ctx, cmd),
        Command::Teacher(cmd) => cli::teacher::run(&ctx, cmd),
        Command::Proposals(args) => cli::proposals::run(&ctx, args),
        Command::Train(TrainCommand::Detector(args)) => cli::train_detector::run(&ctx, args),
        Command::Train(TrainCommand::Segmenter(args)) => cli::train_segmenter::run(&ctx, args),
        Command::Predict(args) => cli::predict::run(&ctx, args),
        Command::Eval(cmd) => cli::eval::run(&ctx, cmd),
        Command::Export(cmd) => cli::export::run(&ctx, cmd),
        Command::Report(a) => cli::report::run(&ctx, a),
        Command::Pipeline(a) => cli::pipeline::run(&ctx, a),
        Command::Sweep(a) => cli::sweep::run(&ctx, a),
    }
}

/// Runs `ovkd ARGS...` in this process with `ctx`'s device: the pipeline's stages are the
/// commands a user would type.
pub(crate) fn run_subcommand(ctx: &cli::Context, args: &[String]) -> Result<()> {
    let mut argv = vec!["ovkd".to_string(), "--device".into(), ctx.device.name()];
    argv.extend(args.iter().cloned());
    tracing::info!("ovkd {}", args.join(" "));
    let cli = Cli::try_parse_from(argv)?;
    run(cli)
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
}
