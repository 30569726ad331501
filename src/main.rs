//! `ovkd`: open-vocabulary knowledge distillation from the command line.
//!
//! One subcommand per stage; each reads a config or explicit paths and writes into a run
//! directory. See the README for the two commands a newcomer runs first.

mod cli;
mod config;
mod device;
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
    /// Score detections (box AP, COCO or LVIS rules) or segmentations (mIoU).
    Eval(cli::eval::EvalCommand),
    /// Write an HTML (and Markdown) report of a run directory.
    Report(cli::report::ReportArgs),
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if let Err(err) = run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let ctx = cli::Context {
        device: device::DeviceSpec::parse(&cli.device)?,
    };
    match cli.command {
        Command::Info => cli::info::run(&ctx),
        Command::Data(cmd) => cli::data::run(&ctx, cmd),
        Command::Teacher(cmd) => cli::teacher::run(&ctx, cmd),
        Command::Eval(cmd) => cli::eval::run(&ctx, cmd),
        Command::Report(a) => cli::report::run(&ctx, a),
    }
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
        .with_target(false)
        .without_time()
        .init();
}
