//! `ovkd data`: make, look at, count and check data.

use super::Context;
use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use ovkd_data::ov_shapes::{self, Preset, SynthConfig};
use ovkd_data::validate::{FileKind, ValidateOptions, validate_file};
use ovkd_data::{Vocabulary, coco::CocoDataset, show, stats};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Make, look at, count and check data.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Generate OV-Shapes: shape images, COCO boxes and masks, semantic masks, captions, vocab.
    ///
    /// OV-Shapes is the built-in open-vocabulary benchmark: scenes of coloured shapes, some of
    /// whose classes are novel (in train they appear in images and captions, unlabelled).
    /// The same --seed and settings give byte-identical files. Layout of DIR:
    ///
    ///   vocab.toml, meta.json;
    ///   {train,val}/images/NNNNNN.png, instances.json (COCO; train: base classes only),
    ///   semantic/NNNNNN.png (0 background, k class id, 255 ignore = novel in train),
    ///   captions.jsonl; train/instances_full.json (every object, for analysis);
    ///   pretrain/images/*.png + captions.jsonl (the teacher's image-caption corpus).
    #[command(verbatim_doc_comment)]
    Synth(SynthArgs),
    /// Draw images with their boxes, class names, instance masks, semantic mask and caption
    /// into PNGs, one per image, to look at.
    ///
    /// Each OUT/NNNNNN.png has three panels: the image; the image with every labelled object's
    /// box, class name and (striped) instance mask; the semantic mask (black = background,
    /// grey hatching = ignore 255). Below them: the caption and a legend. In the train split of
    /// OV-Shapes the novel objects get only a grey "novel, no box" tag: they have no box or
    /// mask there, and their pixels are ignore in the semantic mask. Pretrain images are
    /// drawn with their caption only.
    #[command(verbatim_doc_comment)]
    Show(ShowArgs),
    /// Print instance and image counts per class for every split (or for one COCO/LVIS file).
    ///
    /// For an OV-Shapes directory: images, instances and images without any instance per
    /// split, then per class (marked base or novel) its instances and, in brackets, the images
    /// containing it, in train (labelled: no novel), train (all objects), val and pretrain
    /// (counted from the captions). --json prints the same numbers as JSON.
    Stats(StatsArgs),
    /// Check a COCO/LVIS instances file, a COCO results file, a vocabulary TOML or a whole
    /// OV-Shapes directory, and print every problem (file, record, field); exits non-zero when
    /// there are any.
    ///
    /// Checked: the JSON parses (a truncated file is named as such, with line and column);
    /// required fields and their types; duplicate image, annotation and category ids;
    /// annotations pointing at unknown images or categories; boxes with negative size or
    /// outside their image (beyond --box-tolerance); RLE and polygon segmentations against the
    /// image size; LVIS fields (frequency, neg/not-exhaustive category ids); with an image
    /// directory, that every image file exists and has its record's size; for a results file,
    /// its ids against --gt; for a directory, also each semantic mask against its image's size.
    /// Every problem in a file is printed, one per line, not only the first.
    Validate(ValidateArgs),
}

/// A preset of sizes for `data synth`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PresetArg {
    /// 64 train / 32 val / 256 pretrain images at 96 px (seconds).
    Quick,
    /// 2,000 / 300 / 10,000 images at 128 px.
    Default,
    /// 10,000 / 1,000 / 50,000 images at 256 px.
    Large,
}

/// Arguments of `ovkd data synth`.
#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Directory to write. It is replaced if it is an earlier OV-Shapes directory; any other
    /// non-empty directory is refused.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Master seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sizes and resolution to start from.
    #[arg(long, value_enum, default_value = "default")]
    pub preset: PresetArg,
    /// Number of train images (overrides the preset).
    #[arg(long)]
    pub train_images: Option<usize>,
    /// Number of val images (overrides the preset).
    #[arg(long)]
    pub val_images: Option<usize>,
    /// Number of pretrain image-caption pairs (overrides the preset).
    #[arg(long)]
    pub pretrain_images: Option<usize>,
    /// Side of the square train/val and pretrain images in pixels (overrides the preset).
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Any other setting, e.g. `--set novel=star,ring --set max_objects=8 --set noise=0`;
    /// `--set help=1` lists them. All settings end up in DIR/meta.json.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Worker threads for generating images in parallel (default: one per core). The files do
    /// not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Arguments of `ovkd data show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// An OV-Shapes directory (from `data synth`) or a COCO/LVIS instances JSON file.
    #[arg(value_name = "DIR_OR_JSON")]
    pub input: PathBuf,
    /// Directory for the drawings (created if needed).
    #[arg(long, value_name = "OUT")]
    pub out: PathBuf,
    /// Split of an OV-Shapes directory: train (novel objects tagged, with no box or mask),
    /// val (everything labelled) or pretrain (captions only). Ignored for a JSON input.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Draw at most this many images (the first ones, in file order).
    #[arg(long, default_value_t = 16)]
    pub limit: usize,
    /// Image directory for a JSON input (default: images/ beside it, else its folder).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
}

/// Arguments of `ovkd data stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// An OV-Shapes directory or a COCO/LVIS instances JSON file.
    #[arg(value_name = "DIR_OR_JSON")]
    pub input: PathBuf,
    /// Print JSON instead of a table (the same counts, for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `ovkd data validate`.
#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// A COCO/LVIS instances file, a COCO results file (a JSON list), a vocabulary (.toml), or
    /// an OV-Shapes directory (every file in it, semantic masks included).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Image directory: check that every image file exists and has its record's size
    /// (default: images/ beside the file, if there is one).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Ground truth for a results file: its image and category ids must exist there.
    #[arg(long, value_name = "JSON")]
    pub gt: Option<PathBuf>,
    /// Pixels a box may overshoot its image before it is reported.
    #[arg(long, default_value_t = 1.0)]
    pub box_tolerance: f64,
}

/// Runs a `data` subcommand.
pub fn run(_ctx: &Context, cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Synth(a) => synth(a),
        DataCommand::Show(a) => show_cmd(a),
        DataCommand::Stats(a) => stats_cmd(a),
        DataCommand::Validate(a) => validate_cmd(a),
    }
}

fn synth(a: SynthArgs) -> Result<()> {
    let preset = match a.preset {
        PresetArg::Quick => Preset::Quick,
        PresetArg::Default => Preset::Default,
        PresetArg::Large => Preset::Large,
    };
    let mut cfg = SynthConfig::preset(preset);
    cfg.seed = a.seed;
    if let Some(n) = a.train_images {
        cfg.train_images = n;
    }
    if let Some(n) = a.val_images {
        cfg.val_images = n;
    }
    if let Some(n) = a.pretrain_images {
        cfg.pretrain_images = n;
    }
    if let Some(s) = a.image_size {
        cfg.image_size = s;
        cfg.pretrain_image_size = s;
    }
    if a.set.iter().any(|s| s.starts_with("help")) {
        let v = serde_json::to_value(&cfg)?;
        println!("settings for --set KEY=VALUE (current values for this preset):");
        for (k, v) in v.as_object().into_iter().flatten() {
            println!("  {k} = {v}");
        }
        return Ok(());
    }
    cfg.apply_overrides(&a.set)?;
    cfg.shapes()?;
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("setting up --threads")?;
    }
    let start = Instant::now();
    let total = cfg.train_images + cfg.val_images + cfg.pretrain_images;
    let bar = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images ({eta} left)")
            .expect("valid template"),
    );
    let summary = ov_shapes::generate_with_progress(&a.out, &cfg, &|_| bar.inc(1))
        .with_context(|| format!("generating OV-Shapes into {}", a.out.display()))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let m = &summary.meta;
    println!(
        "OV-Shapes (preset {}, seed {}) written to {} in {secs:.1} s",
        m.preset,
        m.seed,
        summary.root.display()
    );
    for (name, c) in &m.splits {
        println!(
            "  {name:<9} {:>6} images {:>7} objects {:>7} annotations",
            c.images, c.objects, c.annotations
        );
    }
    let novel: Vec<&str> = m
        .classes
        .iter()
        .filter(|c| c.split.is_novel())
        .map(|c| c.name.as_str())
        .collect();
    println!(
        "  {} classes ({} novel: {}), {} colours, {} px",
        m.classes.len(),
        novel.len(),
        novel.join(", "),
        m.colours.len(),
        m.config.image_size
    );
    println!(
        "look at it: ovkd data show {} --out {}",
        summary.root.display(),
        summary.root.join("show").display()
    );
    Ok(())
}

fn show_cmd(a: ShowArgs) -> Result<()> {
    let opts = show::ShowOptions {
        split: Some(a.split.clone()),
        limit: a.limit,
        images_dir: a.images.clone(),
        ..Default::default()
    };
    let files = show::show(&a.input, &a.out, &opts)
        .with_context(|| format!("drawing {}", a.input.display()))?;
    println!(
        "drew {} image(s) of {} into {}",
        files.len(),
        a.input.display(),
        a.out.display()
    );
    for f in files.iter().take(3) {
        println!("  {}", f.display());
    }
    Ok(())
}

fn stats_cmd(a: StatsArgs) -> Result<()> {
    let st = stats::stats_for_path(&a.input)
        .with_context(|| format!("counting {}", a.input.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", st.to_table());
    }
    Ok(())
}

fn validate_cmd(a: ValidateArgs) -> Result<()> {
    let file = &a.file;
    if file.is_dir() {
        let reports = ovkd_data::validate::validate_ov_shapes_dir(file);
        let n: usize = reports.iter().map(|r| r.problems.len()).sum();
        for r in &reports {
            if r.is_ok() {
                println!("{}: ok", r.file.display());
            }
            for p in &r.problems {
                println!("{p}");
            }
        }
        if n == 0 {
            return Ok(());
        }
        return report_problems(file, n, || {});
    }
    if file.extension().is_some_and(|e| e == "toml") {
        return match Vocabulary::load(file) {
            Ok(v) => {
                println!(
                    "{}: ok (vocabulary {:?}: {} classes, {} base/seen, {} novel/unseen)",
                    file.display(),
                    v.name,
                    v.len(),
                    v.base().count(),
                    v.novel().count()
                );
                Ok(())
            }
            Err(ovkd_data::Error::Problems(ps)) => report_problems(file, ps.len(), || {
                for p in &ps {
                    println!("{p}");
                }
            }),
            Err(e) => report_problems(file, 1, || println!("{e}")),
        };
    }
    let images_dir = a.images.clone().or_else(|| {
        let beside = file.parent().unwrap_or(Path::new(".")).join("images");
        beside.is_dir().then_some(beside)
    });
    let gt = match &a.gt {
        Some(p) => Some(CocoDataset::read(p).context("reading --gt")?),
        None => None,
    };
    let opts = ValidateOptions {
        images_dir: images_dir.clone(),
        box_tolerance: a.box_tolerance,
    };
    let report = validate_file(file, &opts, gt.as_ref());
    if report.is_ok() {
        match report.kind {
            FileKind::Results => println!(
                "{}: ok (results file, {} detections{})",
                file.display(),
                report.annotations,
                if gt.is_some() {
                    ", ids checked against --gt"
                } else {
                    ""
                }
            ),
            _ => println!(
                "{}: ok ({} images, {} annotations, {} categories{})",
                file.display(),
                report.images,
                report.annotations,
                report.categories,
                match &images_dir {
                    Some(d) => format!("; image files checked in {}", d.display()),
                    None => "; image files not checked (no --images)".into(),
                }
            ),
        }
        return Ok(());
    }
    report_problems(file, report.problems.len(), || {
        for p in &report.problems {
            println!("{p}");
        }
    })
}

fn report_problems(file: &Path, n: usize, print: impl FnOnce()) -> Result<()> {
    print();
    bail!(
        "{n} problem{} in {}",
        if n == 1 { "" } else { "s" },
        file.display()
    )
}
