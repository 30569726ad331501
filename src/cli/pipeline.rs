//! `ovkd pipeline`: every stage of an experiment, in order, in one run directory.

use super::Context;
use crate::config::experiment;
use crate::pipeline::runner::{Outcome, RunOptions, Stage, run_stages};
use crate::pipeline::stages;
use anyhow::{Context as _, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// Arguments of `ovkd pipeline`.
#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// The experiment config (TOML; `extends` allowed), e.g. `configs/ov-shapes.toml`.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Run directory (default: `runs/NAME`, `runs/NAME-quick` with `--preset quick`).
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// Apply a built-in preset over the config: `quick` runs every stage on a small OV-Shapes
    /// in a few minutes (numbers only better than chance).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Override a config value, e.g. `--set detector.train.lr=0.02` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Rerun this stage and every later one, whatever their inputs.
    #[arg(long, value_name = "STAGE")]
    pub from: Option<String>,
    /// Run only this stage (the stages it reads must have finished).
    #[arg(long, value_name = "STAGE", conflicts_with = "from")]
    pub only: Option<String>,
    /// Print the stages and exit.
    #[arg(long)]
    pub list: bool,
}

/// What a finished pipeline run reports.
pub struct PipelineResult {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Each stage and what happened to it.
    pub outcomes: Vec<(String, Outcome)>,
}

/// Runs `ovkd pipeline`.
pub fn run(ctx: &Context, a: PipelineArgs) -> Result<()> {
    let r = run_pipeline(ctx, &a)?;
    if a.list {
        return Ok(());
    }
    println!("{:<18} {:>10}", "stage", "seconds");
    for (name, outcome) in &r.outcomes {
        match outcome {
            Outcome::Ran(s) => println!("{name:<18} {s:>10.1}"),
            Outcome::Skipped => println!("{name:<18} {:>10}", "unchanged"),
        }
    }
    let report = r.run_dir.join("report/index.html");
    if report.is_file() {
        println!("report: {}", report.display());
    }
    Ok(())
}

/// Loads the experiment, writes `RUN/config.toml`, and runs the stages.
pub fn run_pipeline(ctx: &Context, a: &PipelineArgs) -> Result<PipelineResult> {
    let (layered, exp) = experiment::load(&a.config, a.preset.as_deref(), &a.sets)
        .with_context(|| format!("reading the experiment {}", a.config.display()))?;
    let stages = stages::stages(ctx, &layered, &exp)?;
    let refs: Vec<&dyn Stage> = stages.iter().map(|s| s as &dyn Stage).collect();
    let run_dir = a
        .run
        .clone()
        .unwrap_or_else(|| default_run_dir(&exp.name, a.preset.as_deref()));
    if a.list {
        println!(
            "stages of {} (run directory {}):",
            a.config.display(),
            run_dir.display()
        );
        for s in &refs {
            println!("  {:<18} reads {}", s.name(), s.upstream().join(", "));
        }
        return Ok(PipelineResult {
            run_dir,
            outcomes: Vec::new(),
        });
    }
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    write_resolved(&run_dir, &layered.table)?;
    let opts = RunOptions {
        from: a.from.clone(),
        only: a.only.clone(),
    };
    let outcomes = run_stages(&refs, &layered.table, &run_dir, &opts)
        .with_context(|| format!("pipeline in {}", run_dir.display()))?;
    Ok(PipelineResult { run_dir, outcomes })
}

/// `runs/NAME` or `runs/NAME-PRESET`.
pub fn default_run_dir(name: &str, preset: Option<&str>) -> PathBuf {
    match preset {
        Some(p) => Path::new("runs").join(format!("{name}-{p}")),
        None => Path::new("runs").join(name),
    }
}

fn write_resolved(run_dir: &Path, table: &toml::Table) -> Result<()> {
    let text = format!(
        "# The resolved config this run used (extends, preset and --set applied).\n{}",
        toml::to_string_pretty(table).context("serialising the resolved config")?
    );
    let path = run_dir.join("config.toml");
    ovkd_data::io::write_atomic(&path, text.as_bytes()).with_context(|| path.display().to_string())
}
