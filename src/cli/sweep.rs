//! `ovkd sweep`: one experiment run with some keys varied, the results in one table.

use super::Context;
use crate::pipeline::sweep::{SweepFile, collect, launch_child, run_dir, run_sweep};
use anyhow::{Context as _, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Arguments of `ovkd sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The sweep file (TOML: `config`, `metric`, `[grid]` and/or `[[run]]`; see the README).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Where the runs and the results table go (default: `runs/sweeps/NAME` for NAME.toml).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Override a config value in every run, e.g. `--set teacher.steps=400` (repeatable;
    /// after the sweep file's `[set]`, before each run's own `set`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Runs at a time.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
}

/// Runs `ovkd sweep`.
pub fn run(ctx: &Context, a: SweepArgs) -> Result<()> {
    let sweep = SweepFile::load(&a.config)?;
    let plan = sweep.plan()?;
    let stem = a
        .config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sweep".into());
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/sweeps").join(stem));
    let common = sweep.common_sets(&a.sets);
    // Fail on a bad base config before launching anything.
    crate::config::experiment::load(&sweep.config, sweep.preset.as_deref(), &common)
        .with_context(|| format!("the sweep's config {}", sweep.config.display()))?;
    let exe = std::env::current_exe().context("finding the ovkd executable")?;
    let global = vec!["--device".to_string(), ctx.device.name()];
    let total = plan.len();
    let done = AtomicUsize::new(0);
    println!("{total} runs in {} ({} at a time)", out.display(), a.jobs);
    run_sweep(
        &plan,
        &out,
        a.jobs,
        &|r, dir| {
            launch_child(
                &exe,
                &global,
                &sweep.config,
                sweep.preset.as_deref(),
                &common,
                r,
                dir,
            )
        },
        &|r, status, skipped| {
            let n = done.fetch_add(1, Ordering::SeqCst) + 1;
            let what = if skipped {
                "finished earlier, skipped".to_string()
            } else if status.status == "ok" {
                format!("ok in {:.0} s", status.seconds)
            } else {
                format!(
                    "FAILED after {:.0} s (log: {})",
                    status.seconds,
                    run_dir(&out, r).join("log.txt").display()
                )
            };
            println!("[{n}/{total}] {}: {what}", r.name);
        },
    )?;
    let df = collect(&plan, &out, &sweep.metric)?;
    let status = df.column("status")?.str()?;
    let failed = (0..df.height())
        .filter(|&i| status.get(i) == Some("failed"))
        .count();
    println!("{}", std::fs::read_to_string(out.join("results.md"))?);
    println!(
        "results: {} (.csv, .md); {failed} of {total} runs failed",
        out.join("results.parquet").display()
    );
    Ok(())
}
