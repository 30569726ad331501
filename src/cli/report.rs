//! `ovkd report RUN`: an HTML and Markdown page of a run's results.

use super::Context;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Write `RUN/report/index.html` (and `index.md`) from the files the run wrote: stage times,
/// evaluation tables, precision-recall curves, per-class bars, predictions on val images,
/// training curves and the resolved config.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run directory.
    pub run: PathBuf,
    /// Where to write the report (default: RUN/report).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `ovkd report`.
pub fn run(_ctx: &Context, a: ReportArgs) -> Result<()> {
    let out = a.out.unwrap_or_else(|| a.run.join("report"));
    let files = crate::report::write_report(&a.run, &out)?;
    println!(
        "report: {} ({} images; Markdown: {})",
        files.html.display(),
        files.images,
        files.markdown.display()
    );
    Ok(())
}
