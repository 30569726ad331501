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
    /// Which AdamW the training workloads step with: `ovkd` (`ovkd_backbone::ops::AdamW`,
    /// in place on LibTorch) or `burn` (`burn::optim::AdamW`), both at PyTorch's defaults.
    #[arg(long, value_enum, default_value_t = AdamWImpl::Ovkd)]
    adamw: AdamWImpl,
    /// Record the timed steps with PyTorch's profiler (LibTorch devices, `--features tch`) and
    /// write its Chrome trace here: every operator and CUDA kernel, for reading beside
    /// `bench/speed/reference.py --profile`'s. The printed times then include the profiler's
    /// overhead.
    #[arg(long)]
    profile: Option<std::path::PathBuf>,
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
    let mut extra = serde_json::Map::new();
    if cli.profile.is_some() && !cfg!(feature = "tch") {
        anyhow::bail!("--profile needs a LibTorch device (ovkd-speed built with --features tch)");
    }
    let schedule = Schedule {
        adamw: cli.adamw,
        warmup: cli.warmup,
        steps: cli.steps,
        profile: cli.profile.clone(),
        cuda: name.starts_with("tch-cuda"),
    };
    let times = match cli.workload {
        Workload::Smallnet(args) => smallnet::run(&args, &device, &schedule)?,
        Workload::Detector(args) => detector::run(&args, &device, &schedule)?,
        Workload::Segmenter(args) => segmenter::run(&args, &device, &schedule)?,
        Workload::Teacher(args) => {
            let (times, min_cosine) = teacher::run(&args, &device, &schedule)?;
            if let Some(c) = min_cosine {
                extra.insert("min_cosine_vs_f32".into(), c.into());
            }
            times
        }
    };
    let mut out = serde_json::json!({
        "device": name,
        "steps": cli.steps,
        "times_ms": times,
    });
    out.as_object_mut().expect("a JSON object").extend(extra);
    println!("{out}");
    Ok(())
}

/// How a workload is timed.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The optimiser.
    pub adamw: AdamWImpl,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// Where to write the profiler's trace of the timed steps, if anywhere.
    pub profile: Option<std::path::PathBuf>,
    /// Whether the device is a CUDA one (the profiler records its kernels).
    pub cuda: bool,
}

impl Schedule {
    /// Called before each step: starts the profiler before the first timed one.
    pub fn before_step(&self, step: usize) -> Result<()> {
        #[cfg(feature = "tch")]
        if step == self.warmup && self.profile.is_some() {
            ovkd_backbone::ops::profiler::start(self.cuda)?;
        }
        let _ = step;
        Ok(())
    }

    /// Called after the last step: writes the profiler's trace.
    pub fn finish(&self) -> Result<()> {
        #[cfg(feature = "tch")]
        if let Some(path) = &self.profile {
            ovkd_backbone::ops::profiler::stop(path)?;
            eprintln!("ovkd-speed: profile written to {}", path.display());
        }
        Ok(())
    }
}

/// The AdamW implementation a training workload steps with.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum AdamWImpl {
    /// `ovkd_backbone::ops::AdamW`.
    Ovkd,
    /// `burn::optim::AdamW` (the baseline of the in-place LibTorch update).
    Burn,
}

impl AdamWImpl {
    /// AdamW at PyTorch's defaults (betas 0.9/0.999, eps 1e-8, weight decay 1e-2).
    pub fn init(self) -> burn::optim::ModuleOptimizer {
        let config = ovkd_backbone::ops::AdamWConfig::new();
        match self {
            Self::Ovkd => config.init(),
            Self::Burn => config.burn_config().init(),
        }
    }
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

/// Times `schedule.warmup + schedule.steps` training steps of `model` (the warm-up untimed):
/// the forward pass and loss (`loss_of`), `backward`, and the `schedule.adamw` update at `lr`,
/// each phase closed by a sync of the autodiff device `ad` so that asynchronous backends are
/// timed whole.
pub fn time_training<M: burn::module::Module>(
    mut model: M,
    schedule: &Schedule,
    lr: f64,
    ad: &burn::tensor::Device,
    mut loss_of: impl FnMut(&M) -> Result<burn::tensor::Tensor<1>>,
) -> Result<PhaseTimes> {
    use std::time::Instant;
    let (warmup, steps) = (schedule.warmup, schedule.steps);
    let mut optim = schedule.adamw.init();
    let mut times = PhaseTimes::default();
    for step in 0..warmup + steps {
        schedule.before_step(step)?;
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
    schedule.finish()?;
    Ok(times)
}
