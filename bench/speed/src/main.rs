//! `ovkd-speed`: times ovkd's training and inference steps for `bench/speed.sh`, which runs the
//! same work in PyTorch (`bench/speed/reference.py`) interleaved with it and prints the ratios.
//!
//! Every workload prints one JSON object on stdout: the device it resolved, and the per-step
//! times in milliseconds of each phase (`forward`, `backward`, `optim`, `total`), warm-up
//! excluded. The device is synchronised at each phase boundary, so GPU times are real.

mod detector;
mod device;
mod segmenter;
mod smallnet;
mod synth;
mod teacher;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Times one workload and prints its per-step times as JSON.
#[derive(Parser, Debug)]
#[command(name = "ovkd-speed")]
struct Cli {
    /// `auto`, `cpu` (burn-flex), `tch-cpu` or `tch-cuda:N` (built with `--features tch`);
    /// `auto` is the `ovkd` binary's rule: `tch-cuda:0`, else `tch-cpu`, else `cpu`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// The small conv net: 8 convolutions 3→32→64→128→256, stride-2 stages, AdamW,
    /// cross-entropy; one training step.
    Smallnet(smallnet::Args),
    /// The detector student (`--preset tiny` or `resnet50_fpn`): one training step with the
    /// RPN, RoI-head and ViLD-text losses, AdamW.
    Detector(detector::Args),
    /// The segmenter student: one training step with LSeg's loss, AdamW.
    Segmenter(segmenter::Args),
    /// The teacher's image tower (ViT-B/32 size, random weights) on region crops: inference.
    Teacher(teacher::Args),
}

fn main() -> Result<()> {
    // As `ovkd` itself does, so that the timings are the tool's.
    ovkd_backbone::ops::heap::retain_freed_memory();
    let cli = Cli::parse();
    let (name, device) = device::parse(&cli.device)?;
    eprintln!("ovkd-speed: device {name}");
    let times = match cli.workload {
        Workload::Smallnet(args) => smallnet::run(&args, &device, cli.warmup, cli.steps)?,
        Workload::Detector(args) => detector::run(&args, &device, cli.warmup, cli.steps)?,
        Workload::Segmenter(args) => segmenter::run(&args, &device, cli.warmup, cli.steps)?,
        Workload::Teacher(args) => teacher::run(&args, &device, cli.warmup, cli.steps)?,
    };
    let out = serde_json::json!({
        "device": name,
        "steps": cli.steps,
        "times_ms": times,
    });
    println!("{out}");
    Ok(())
}

/// Per-step times of the phases of a step, in milliseconds.
#[derive(Debug, Default, serde::Serialize)]
pub struct PhaseTimes {
    /// Forward pass and loss.
    pub forward: Vec<f64>,
    /// `loss.backward()`.
    pub backward: Vec<f64>,
    /// Optimizer step.
    pub optim: Vec<f64>,
    /// The whole step.
    pub total: Vec<f64>,
}

impl PhaseTimes {
    /// Records one step's phases (milliseconds) when `timed` (warm-up steps are not).
    pub fn push(&mut self, timed: bool, forward: f64, backward: f64, optim: f64, total: f64) {
        if timed {
            self.forward.push(forward);
            self.backward.push(backward);
            self.optim.push(optim);
            self.total.push(total);
        }
    }
}

/// Times `warmup + steps` training steps of `model` (the first `warmup` untimed): the forward
/// pass and loss (`loss_of`), `backward`, and the optimizer update at `lr`, each phase closed
/// by a sync of the autodiff device `ad` so that asynchronous backends are timed whole.
pub fn time_training<M: burn::module::Module>(
    mut model: M,
    optim: &mut burn::optim::ModuleOptimizer,
    lr: f64,
    ad: &burn::tensor::Device,
    warmup: usize,
    steps: usize,
    mut loss_of: impl FnMut(&M) -> Result<burn::tensor::Tensor<1>>,
) -> Result<PhaseTimes> {
    use std::time::Instant;
    let mut times = PhaseTimes::default();
    for step in 0..warmup + steps {
        let t0 = Instant::now();
        let loss = loss_of(&model)?;
        ad.sync()?;
        let forward = synth::ms(t0);
        let t1 = Instant::now();
        let grads = loss.backward();
        ad.sync()?;
        let backward = synth::ms(t1);
        let t2 = Instant::now();
        let grads = burn::optim::GradientsParams::from_grads(grads, &model);
        model = optim.step(lr, model, grads);
        ad.sync()?;
        times.push(
            step >= warmup,
            forward,
            backward,
            synth::ms(t2),
            synth::ms(t0),
        );
    }
    Ok(times)
}
