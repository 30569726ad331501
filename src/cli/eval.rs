//! `ovkd eval det` and `ovkd eval seg`: box AP (COCO or LVIS rules) and mIoU, printed as
//! Markdown tables and written as JSON for the pipeline, reports and sweeps.

use super::Context;
use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use ovkd_eval::{GroundTruth, Rules, Vocabulary};
use std::path::PathBuf;
use std::time::Instant;

/// Score detections or segmentations.
#[derive(Args, Debug)]
pub struct EvalCommand {
    #[command(subcommand)]
    command: EvalSubcommand,
}

#[derive(Subcommand, Debug)]
enum EvalSubcommand {
    /// Box AP of COCO-format results against COCO or LVIS ground truth, exactly as
    /// pycocotools (or the `lvis` package) computes it.
    Det(DetArgs),
    /// mIoU of predicted label PNGs against ground-truth label PNGs, as mmsegmentation
    /// computes it.
    Seg(SegArgs),
}

#[derive(Args, Debug)]
struct DetArgs {
    /// Ground truth: a COCO (or LVIS) annotation JSON.
    #[arg(long)]
    gt: PathBuf,
    /// Detections: a COCO results JSON (`[{"image_id", "category_id", "bbox", "score"}]`).
    #[arg(long)]
    dets: PathBuf,
    /// Vocabulary TOML with base/novel splits: adds AP and AP50 per split.
    #[arg(long)]
    vocab: Option<PathBuf>,
    /// Use LVIS's federated rules even if the ground truth lacks LVIS's fields.
    #[arg(long)]
    lvis: bool,
    /// Write the report as JSON here (`stats`, `per_category`, `splits`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the tables as Markdown here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write precision-recall curves and a per-class AP chart (PNG) into this folder.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Also print one row per category.
    #[arg(long)]
    per_class: bool,
}

#[derive(Args, Debug)]
struct SegArgs {
    /// Folder of ground-truth label PNGs (8- or 16-bit single channel).
    #[arg(long)]
    gt: PathBuf,
    /// Folder of predicted label PNGs with the same file names.
    #[arg(long)]
    pred: PathBuf,
    /// Number of classes (label values `0..N`).
    #[arg(long)]
    num_classes: usize,
    /// Ground-truth value to ignore.
    #[arg(long, default_value_t = 255)]
    ignore_index: u64,
    /// Vocabulary TOML (ids are label values) with seen/unseen splits: adds seen and unseen
    /// mIoU and hIoU.
    #[arg(long)]
    vocab: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the tables as Markdown here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write a per-class IoU chart (PNG) into this folder.
    #[arg(long)]
    plots: Option<PathBuf>,
}

/// Runs an `ovkd eval` subcommand.
pub fn run(_ctx: &Context, cmd: EvalCommand) -> Result<()> {
    match cmd.command {
        EvalSubcommand::Det(args) => run_det(args),
        EvalSubcommand::Seg(args) => run_seg(args),
    }
}

fn load_vocab(path: &Option<PathBuf>) -> Result<Option<Vocabulary>> {
    path.as_ref()
        .map(|p| Vocabulary::from_path(p).context("reading the vocabulary"))
        .transpose()
}

fn run_det(args: DetArgs) -> Result<()> {
    let t0 = Instant::now();
    // The two files are independent: read them side by side.
    let (gt, dets) = rayon::join(
        || GroundTruth::from_path(&args.gt),
        || ovkd_eval::load_results(&args.dets),
    );
    let gt = gt.context("reading the ground truth")?;
    let dets = dets.context("reading the detections")?;
    let vocab = load_vocab(&args.vocab)?;
    let t_load = t0.elapsed();
    let rules = args.lvis.then_some(Rules::Lvis);
    let mut report = ovkd_eval::evaluate_detections(&gt, &dets, rules)
        .with_context(|| format!("evaluating {}", args.dets.display()))?;
    if let Some(v) = &vocab {
        report.apply_vocabulary(v);
        let unknown: Vec<i64> = v
            .classes
            .iter()
            .map(|c| c.id)
            .filter(|id| !report.table.cat_ids.contains(id))
            .collect();
        if !unknown.is_empty() {
            tracing::warn!(
                "{} vocabulary classes are not categories of the ground truth and are left out: {:?}",
                unknown.len(),
                unknown
            );
        }
    }
    tracing::debug!(
        "{} images, {} annotations, {} detections; read in {:.2?}, evaluated in {:.2?}",
        gt.images.len(),
        gt.annotations.len(),
        dets.len(),
        t_load,
        t0.elapsed() - t_load
    );
    let md = report.to_markdown(args.per_class);
    println!("{md}");
    if let Some(out) = &args.out {
        report
            .write_json(out)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if let Some(path) = &args.markdown {
        let full = report.to_markdown(true);
        ovkd_eval::io::write_atomic(path, full.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.plots {
        let paths = ovkd_eval::plots::plot_det(&report, dir).context("drawing the plots")?;
        for p in paths {
            tracing::info!("wrote {}", p.display());
        }
    }
    Ok(())
}

fn run_seg(args: SegArgs) -> Result<()> {
    if args.num_classes == 0 {
        bail!("--num-classes must be at least 1");
    }
    let vocab = load_vocab(&args.vocab)?;
    let mut report =
        ovkd_eval::evaluate_dirs(&args.gt, &args.pred, args.num_classes, args.ignore_index)
            .with_context(|| {
                format!(
                    "scoring {} against {}",
                    args.pred.display(),
                    args.gt.display()
                )
            })?;
    if let Some(v) = &vocab {
        report.apply_vocabulary(v);
    }
    println!("{}", report.to_markdown());
    if let Some(out) = &args.out {
        report
            .write_json(out)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if let Some(path) = &args.markdown {
        ovkd_eval::io::write_atomic(path, report.to_markdown().as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &args.plots {
        let paths = ovkd_eval::plots::plot_seg(&report, vocab.as_ref(), dir)
            .context("drawing the plots")?;
        for p in paths {
            tracing::info!("wrote {}", p.display());
        }
    }
    Ok(())
}
