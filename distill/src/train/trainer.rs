//! The training loop shared by every student: schedule, clipping, progress, a metrics row per
//! step, atomic checkpoints, exact resume, and a clean stop on a NaN or infinite loss.
//!
//! The task supplies one closure that computes the named loss terms of step `s` for the model;
//! everything that must be identical between an interrupted and an uninterrupted run (which
//! images step `s` sees, the random choices it makes) must be a function of the seed and `s`
//! alone, never of how many steps this process has run.

use super::checkpoint::{CheckpointError, Checkpoints, LoopState};
use super::metrics::{MetricsError, MetricsLog};
use super::optimizer::{OptimizerConfig, clip_global_norm};
use super::schedule::ScheduleConfig;
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Settings of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Images per step.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    /// The optimiser.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Warm-up and decay.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Clip gradients to this global L2 norm (none when absent).
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// Save a checkpoint every this many steps (and always at the end).
    #[serde(default = "default_ckpt_every")]
    pub checkpoint_every: usize,
    /// How many checkpoints to keep.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Seed for initialisation, data order and sampling.
    #[serde(default)]
    pub seed: u64,
}

fn default_batch() -> usize {
    8
}
fn default_ckpt_every() -> usize {
    500
}
fn default_keep() -> usize {
    2
}

/// What a step returns: named loss terms, summed into the loss that is minimised.
pub struct StepOutput {
    /// Named scalar terms, each already weighted, each `[1]`.
    pub terms: Vec<(String, Tensor<1>)>,
    /// Images this step processed (for the speed column).
    pub images: usize,
    /// Extra values to log that are not minimised (e.g. accuracy), by name.
    pub extra: Vec<(String, f64)>,
}

/// Why a training run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite.
    #[error(
        "step {step}: loss is not finite ({}); last good checkpoint: {}",
        terms.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
        last_checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into())
    )]
    NonFinite {
        /// The 0-based step.
        step: usize,
        /// Every loss term's value at that step.
        terms: Vec<(String, f64)>,
        /// The newest checkpoint, from which a run with other settings can resume.
        last_checkpoint: Option<PathBuf>,
    },
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The metrics table could not be written.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Resuming with a seed other than the checkpoint's would not reproduce the run.
    #[error("{}: was trained with seed {found}, this run has seed {expected}", path.display())]
    SeedMismatch {
        /// The checkpoint.
        path: PathBuf,
        /// Its seed.
        found: u64,
        /// This run's.
        expected: u64,
    },
    /// `dir` has checkpoints but the run was not asked to resume.
    #[error("{}: already holds checkpoints (newest {}); pass --resume to continue it or choose another directory", dir.display(), newest.display())]
    NotEmpty {
        /// The run directory.
        dir: PathBuf,
        /// Its newest checkpoint.
        newest: PathBuf,
    },
    /// The task's step failed.
    #[error("step {step}: {message}")]
    Step {
        /// The 0-based step.
        step: usize,
        /// The task's error.
        message: String,
    },
}

/// How to run the loop.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// Continue from the newest checkpoint in the directory, if any.
    pub resume: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Stop after this many steps of this process (to test resume); `None` runs to the end.
    pub stop_after: Option<usize>,
    /// A label for the progress bar.
    pub label: String,
}

impl Default for LoopOptions {
    fn default() -> Self {
        Self {
            resume: false,
            progress: true,
            stop_after: None,
            label: "train".into(),
        }
    }
}

/// The result of [`train`].
pub struct Trained<M> {
    /// The model after the last step run.
    pub model: M,
    /// Steps done in total (equals `cfg.steps` unless stopped early).
    pub steps_done: usize,
    /// The checkpoint written last.
    pub last_checkpoint: Option<PathBuf>,
    /// Extra state returned by the task at the last checkpoint.
    pub extra: serde_json::Value,
}

/// Trains `model` for `cfg.steps` steps in `dir` (checkpoints and `metrics.{csv,parquet}`).
///
/// `step_fn(&model, step)` returns the loss terms of `step`; `extra_state()` is saved with each
/// checkpoint and handed back through `restore(extra)` on resume.
pub fn train<M, F>(
    cfg: &TrainConfig,
    dir: &Path,
    model: M,
    opts: &LoopOptions,
    mut task: F,
) -> Result<Trained<M>, TrainError>
where
    M: Module,
    F: TrainTask<M>,
{
    std::fs::create_dir_all(dir).map_err(|source| {
        TrainError::Checkpoint(CheckpointError::Io {
            path: dir.to_path_buf(),
            source,
        })
    })?;
    let ckpts = Checkpoints::new(dir, cfg.keep_checkpoints);
    let mut optim = cfg.optimizer.init();
    let mut model = model;
    let mut start = 0;
    let mut last_checkpoint = None;
    if let Some((_, path)) = ckpts.latest() {
        if !opts.resume {
            return Err(TrainError::NotEmpty {
                dir: dir.to_path_buf(),
                newest: path,
            });
        }
        let (m, o, state) = ckpts.load(&path, model, optim)?;
        if state.seed != cfg.seed {
            return Err(TrainError::SeedMismatch {
                path,
                found: state.seed,
                expected: cfg.seed,
            });
        }
        model = m;
        optim = o;
        start = state.step;
        task.restore(&state.extra);
        tracing::info!(
            "resuming {} from {} (step {start})",
            opts.label,
            path.display()
        );
        last_checkpoint = Some(path);
    }

    let bar = if opts.progress {
        let bar = indicatif::ProgressBar::new(cfg.steps as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .expect("valid template"),
        );
        bar.set_prefix(opts.label.clone());
        bar.set_position(start as u64);
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };

    let mut metrics: Option<MetricsLog> = None;
    let end = match opts.stop_after {
        Some(n) => (start + n).min(cfg.steps),
        None => cfg.steps,
    };
    let mut step = start;
    while step < end {
        let t0 = Instant::now();
        let out = task
            .step(&model, step)
            .map_err(|message| TrainError::Step { step, message })?;
        let names: Vec<String> = out.terms.iter().map(|(k, _)| k.clone()).collect();
        let parts: Vec<Tensor<1>> = out.terms.iter().map(|(_, t)| t.clone()).collect();
        let total = Tensor::cat(parts.clone(), 0).sum();
        let values: Vec<f64> = Tensor::cat(parts, 0)
            .detach()
            .into_data()
            .try_into_vec_as::<f64>()
            .unwrap_or_else(|_| vec![f64::NAN]);
        let loss: f64 = values.iter().sum();
        let terms: Vec<(String, f64)> = names.iter().cloned().zip(values.iter().copied()).collect();
        if !loss.is_finite() {
            bar.abandon();
            return Err(TrainError::NonFinite {
                step,
                terms,
                last_checkpoint,
            });
        }
        let grads = total.backward();
        let mut grads = GradientsParams::from_grads(grads, &model);
        let grad_norm = match cfg.clip_grad_norm {
            Some(max) => clip_global_norm(&model, &mut grads, max),
            None => f64::NAN,
        };
        let lr = cfg.schedule.lr_at(cfg.lr, step, cfg.steps);
        model = optim.step(lr, model, grads);
        let secs = t0.elapsed().as_secs_f64();

        let log = match &mut metrics {
            Some(m) => m,
            None => {
                let mut cols: Vec<&str> = vec!["lr", "loss"];
                cols.extend(names.iter().map(String::as_str));
                cols.extend(out.extra.iter().map(|(k, _)| k.as_str()));
                cols.extend(["grad_norm", "img_per_s", "seconds"]);
                metrics.insert(MetricsLog::open(dir, &cols, start)?)
            }
        };
        let mut row: Vec<(&str, f64)> = vec![("lr", lr), ("loss", loss)];
        row.extend(terms.iter().map(|(k, v)| (k.as_str(), *v)));
        row.extend(out.extra.iter().map(|(k, v)| (k.as_str(), *v)));
        row.extend([
            ("grad_norm", grad_norm),
            ("img_per_s", out.images as f64 / secs.max(1e-9)),
            ("seconds", secs),
        ]);
        log.push(step, &row)?;
        bar.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} {:.1} img/s",
            out.images as f64 / secs
        ));
        bar.inc(1);

        step += 1;
        if step % cfg.checkpoint_every.max(1) == 0 || step == cfg.steps || step == end {
            let state = LoopState {
                step,
                seed: cfg.seed,
                extra: task.extra_state(),
            };
            last_checkpoint = Some(ckpts.save(&model, &optim, &state)?);
            log.write_parquet()?;
        }
    }
    bar.finish_and_clear();
    Ok(Trained {
        model,
        steps_done: step,
        last_checkpoint,
        extra: task.extra_state(),
    })
}

/// What a training task provides to [`train`].
pub trait TrainTask<M> {
    /// The loss terms of step `step` for `model`.
    fn step(&mut self, model: &M, step: usize) -> Result<StepOutput, String>;
    /// State saved with each checkpoint (default: none).
    fn extra_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Restores what [`extra_state`](Self::extra_state) saved (default: nothing).
    fn restore(&mut self, _extra: &serde_json::Value) {}
}

impl<M, F> TrainTask<M> for F
where
    F: FnMut(&M, usize) -> Result<StepOutput, String>,
{
    fn step(&mut self, model: &M, step: usize) -> Result<StepOutput, String> {
        self(model, step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::schedule::Decay;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Device, TensorData};

    fn cfg(steps: usize) -> TrainConfig {
        TrainConfig {
            steps,
            batch_size: 4,
            lr: 0.05,
            optimizer: OptimizerConfig::default(),
            schedule: ScheduleConfig {
                warmup_steps: 2,
                warmup_factor: 0.1,
                decay: Decay::Cosine { min_factor: 0.0 },
            },
            clip_grad_norm: Some(10.0),
            checkpoint_every: 3,
            keep_checkpoints: 2,
            seed: 7,
        }
    }

    /// Regress y = 2a - b + 1 on inputs that depend only on the step.
    fn regression(model: &Linear, step: usize) -> Result<StepOutput, String> {
        let device = model.weight.val().device();
        let xs: Vec<f32> = (0..8)
            .map(|i| (((step * 8 + i) * 37 % 17) as f32) / 17.0 - 0.5)
            .collect();
        let ys: Vec<f32> = xs.chunks(2).map(|p| 2.0 * p[0] - p[1] + 1.0).collect();
        let x = Tensor::<2>::from_data(TensorData::new(xs, [4, 2]), &device);
        let y = Tensor::<2>::from_data(TensorData::new(ys, [4, 1]), &device);
        let err = model.forward(x) - y;
        Ok(StepOutput {
            terms: vec![("loss_mse".into(), err.square().mean().reshape([1]))],
            images: 4,
            extra: vec![],
        })
    }

    fn weights(m: &Linear) -> Vec<f32> {
        let mut w = m.weight.val().into_data().try_into_vec::<f32>().unwrap();
        w.extend(
            m.bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap(),
        );
        w
    }

    fn fresh() -> Linear {
        let device = Device::flex().autodiff();
        device.seed(3);
        LinearConfig::new(2, 1).init(&device)
    }

    #[test]
    fn resume_gives_the_same_weights_and_metrics_as_an_uninterrupted_run() {
        let quiet = LoopOptions {
            progress: false,
            ..Default::default()
        };
        let a = tempfile::tempdir().unwrap();
        let full = train(&cfg(10), a.path(), fresh(), &quiet, regression).unwrap();

        let b = tempfile::tempdir().unwrap();
        let first = train(
            &cfg(10),
            b.path(),
            fresh(),
            &LoopOptions {
                stop_after: Some(4),
                ..quiet.clone()
            },
            regression,
        )
        .unwrap();
        assert_eq!(first.steps_done, 4);
        // Not resuming into a directory with checkpoints is refused.
        let err = train(&cfg(10), b.path(), fresh(), &quiet, regression)
            .err()
            .unwrap();
        assert!(matches!(err, TrainError::NotEmpty { .. }), "{err}");
        let rest = train(
            &cfg(10),
            b.path(),
            fresh(),
            &LoopOptions {
                resume: true,
                ..quiet.clone()
            },
            regression,
        )
        .unwrap();
        assert_eq!(rest.steps_done, 10);
        assert_eq!(weights(&full.model), weights(&rest.model));
        let ma = std::fs::read_to_string(a.path().join("metrics.csv")).unwrap();
        let mb = std::fs::read_to_string(b.path().join("metrics.csv")).unwrap();
        let strip = |s: &str| {
            s.lines()
                .map(|l| l.rsplitn(4, ',').nth(3).unwrap().to_string())
                .collect::<Vec<_>>()
        };
        // Identical up to the timing columns.
        assert_eq!(strip(&ma), strip(&mb));
        // Only the newest two checkpoints are kept.
        let kept: Vec<usize> = Checkpoints::new(b.path(), 2)
            .list()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(kept, vec![9, 10]);
        // And the loss went down.
        let losses: Vec<f64> = ma
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
            .collect();
        assert!(losses[9] < losses[0], "{losses:?}");
    }

    #[test]
    fn a_nan_loss_stops_with_the_step_terms_and_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let quiet = LoopOptions {
            progress: false,
            ..Default::default()
        };
        let err = train(
            &cfg(10),
            dir.path(),
            fresh(),
            &quiet,
            |m: &Linear, step: usize| {
                let mut out = regression(m, step)?;
                if step == 4 {
                    out.terms.push((
                        "loss_bad".into(),
                        Tensor::<1>::from_floats([f32::NAN], &m.weight.val().device()),
                    ));
                }
                Ok(out)
            },
        )
        .err()
        .unwrap();
        let msg = err.to_string();
        assert!(msg.starts_with("step 4: loss is not finite"), "{msg}");
        assert!(msg.contains("loss_bad=NaN"), "{msg}");
        assert!(msg.contains("ckpt-000003"), "{msg}");
    }
}
