//! `ovkd teacher ...`: check a CLIP checkpoint against reference outputs, tokenize, pre-train
//! and evaluate the built-in teacher, and fill the region-embedding cache.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use ovkd_teacher::cache::{CacheWriter, ShardSpec, merge};
use ovkd_teacher::embed::Teacher;
use ovkd_teacher::precision::Precision;
use ovkd_teacher::pretrain::{PretrainConfig, PretrainEvent, pretrain};
use ovkd_teacher::pretrain_batch::{BatchConfig, Corpus};
use ovkd_teacher::shapes::{image_path, load_rgb, read_coco};
use ovkd_teacher::shapes::{read_captions, read_vocab};
use ovkd_teacher::tokenizer::ClipTokenizer;
use ovkd_teacher::zero_shot::{RegionCrops, ZeroShotSet, dense_eval};
use polars::prelude::{DataType, Float32Chunked, ParquetReader, SerReader};

use super::Context;

/// `ovkd teacher`.
#[derive(Debug, Args)]
pub struct TeacherCommand {
    #[command(subcommand)]
    command: TeacherSub,
}

#[derive(Debug, Subcommand)]
enum TeacherSub {
    /// Run a checkpoint on reference inputs and print the largest absolute difference of every
    /// output tensor the expected file holds; exit non-zero above --tol.
    Parity(ParityArgs),
    /// Print the token ids of each line of standard input (truncated to the context length,
    /// end token kept, no padding).
    Tokenize(TokenizeArgs),
    /// Pre-train the built-in teacher on OV-Shapes image-caption pairs.
    Pretrain(PretrainArgs),
    /// Zero-shot top-1 accuracy on single-object crops of OV-Shapes' val split.
    Eval(EvalArgs),
    /// Write ViLD region embeddings of proposals (or annotated boxes) into the cache.
    Embed(EmbedArgs),
    /// Check a cache's shards and join their indexes into index.parquet.
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
struct ParityArgs {
    /// Checkpoint directory (config.json + model.safetensors) or a .safetensors file.
    #[arg(long)]
    checkpoint: PathBuf,
    /// safetensors with `pixel_values` [B, 3, S, S] and `input_ids` [B, L].
    #[arg(long)]
    inputs: PathBuf,
    /// safetensors with the reference outputs.
    #[arg(long)]
    expected: PathBuf,
    /// Largest absolute difference allowed.
    #[arg(long, default_value_t = 1e-4)]
    tol: f32,
}

#[derive(Debug, Args)]
struct TokenizeArgs {
    /// tokenizer.json.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Context length.
    #[arg(long, default_value_t = 77)]
    context_length: usize,
    /// One JSON array of id arrays instead of one line per text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct PretrainArgs {
    /// OV-Shapes directory (with pretrain/ and vocab.toml).
    #[arg(long)]
    data: PathBuf,
    /// Output checkpoint directory.
    #[arg(long)]
    out: PathBuf,
    /// quick, default or large.
    #[arg(long, default_value = "default")]
    preset: String,
    /// Override the number of steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Override the time limit in seconds (0: none).
    #[arg(long)]
    max_seconds: Option<u64>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override any setting of the preset, `key=value` (repeatable), e.g. `--set lr=2e-3`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Debug, Args)]
struct EvalArgs {
    /// Checkpoint directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// OV-Shapes directory (val/ and vocab.toml).
    #[arg(long)]
    data: PathBuf,
    /// Prompt template.
    #[arg(long, default_value = "a photo of a {}.")]
    prompt: String,
    /// Which objects: `val` (val/instances.json, the target), `train` (train/instances_full.json:
    /// val-like scenes, novel objects too) or `pretrain` (the objects of the pre-training
    /// corpus located by colour, cropped as in training: does the teacher fit its own data?).
    #[arg(long, default_value = "val")]
    on: String,
    /// At most this many objects (evenly spaced); all by default.
    #[arg(long)]
    max_objects: Option<usize>,
    /// Which crops embed an object: `vild` (1x and 1.5x about the box centre, summed: what
    /// distillation uses, and the target's measure) or `1x` (the box alone).
    #[arg(long, default_value = "vild")]
    crops: String,
    /// Also print the confusion matrix (rows: true class, columns: predicted).
    #[arg(long)]
    confusion: bool,
    /// Also score MaskCLIP dense features on the first N val scenes (per-pixel argmax over
    /// "background" and the classes against the semantic masks).
    #[arg(long, value_name = "N")]
    dense: Option<usize>,
    /// Side the scenes are resized to for the dense check (a multiple of the patch size).
    #[arg(long, default_value_t = 128)]
    dense_size: usize,
    /// Also write the report as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct EmbedArgs {
    /// Checkpoint directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Split directory with instances.json and images/.
    #[arg(long)]
    split: PathBuf,
    /// Proposals: Parquet (image_id, x1, y1, x2, y2, score) or COCO-style JSON results
    /// ([{image_id, bbox: [x, y, w, h], score}]). Without it, the annotated boxes.
    #[arg(long)]
    proposals: Option<PathBuf>,
    /// Keep the best K proposals per image.
    #[arg(long, default_value_t = 300)]
    top_k: usize,
    /// Cache directory.
    #[arg(long)]
    out: PathBuf,
    /// This process's shard, i/n.
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Crops per forward pass.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Images per flush (a resumed run redoes at most this many).
    #[arg(long, default_value_t = 16)]
    flush_every: usize,
    /// What the image tower computes in: f32, or bf16 / f16 for speed on LibTorch devices
    /// (bf16 on `tch-cpu` with AVX-512 BF16 or AMX, bf16 / f16 on `tch-cuda:N`; embeddings
    /// within cosine 0.999 of f32's). Recorded in `cache.json`: a cache is resumed only in the
    /// precision it was started in.
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

#[derive(Debug, Args)]
struct MergeArgs {
    /// Cache directory.
    cache: PathBuf,
}

/// Runs `ovkd teacher ...`.
pub fn run(ctx: &Context, cmd: TeacherCommand) -> Result<()> {
    match cmd.command {
        TeacherSub::Parity(a) => parity(ctx, a),
        TeacherSub::Tokenize(a) => tokenize(a),
        TeacherSub::Pretrain(a) => run_pretrain(ctx, a),
        TeacherSub::Eval(a) => eval(ctx, a),
        TeacherSub::Embed(a) => embed(ctx, a),
        TeacherSub::Merge(a) => {
            let r = merge(&a.cache).with_context(|| format!("merging {}", a.cache.display()))?;
            println!(
                "{} images, {} regions in {} shard(s): {} B of vectors + {} B of index = {:.1} B/region",
                r.images, r.regions, r.shards, r.vector_bytes, r.index_bytes, r.bytes_per_region
            );
            Ok(())
        }
    }
}

fn parity(ctx: &Context, a: ParityArgs) -> Result<()> {
    let (spec, device) = ctx.device.resolve();
    let diffs = ovkd_teacher::parity::run_parity(&a.checkpoint, &a.inputs, &a.expected, &device)
        .with_context(|| format!("parity of {}", a.checkpoint.display()))?;
    println!("device: {}", spec.name());
    println!("{:<28} {:<16} {:>12}", "tensor", "shape", "max_abs_diff");
    let mut worst = 0.0f32;
    for d in &diffs {
        println!(
            "{:<28} {:<16} {:>12.3e}",
            d.name,
            format!("{:?}", d.shape),
            d.max_abs_diff
        );
        if d.max_abs_diff.is_nan() || d.max_abs_diff > worst {
            worst = if d.max_abs_diff.is_nan() {
                f32::INFINITY
            } else {
                d.max_abs_diff
            };
        }
    }
    if diffs.is_empty() {
        bail!("{}: no tensor to compare", a.expected.display());
    }
    if worst > a.tol {
        bail!("largest difference {worst:.3e} exceeds --tol {:.1e}", a.tol);
    }
    println!("all {} tensors within {:.1e}", diffs.len(), a.tol);
    Ok(())
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let tok = ClipTokenizer::from_file(&a.tokenizer, a.context_length)?;
    let stdin = std::io::stdin();
    let mut all = Vec::new();
    let out = std::io::stdout();
    let mut out = out.lock();
    for (i, line) in stdin.lock().lines().enumerate() {
        let line = line.with_context(|| format!("reading line {} of standard input", i + 1))?;
        let ids = tok
            .encode(&line)
            .with_context(|| format!("line {}", i + 1))?;
        if a.json {
            all.push(ids);
        } else {
            let s: Vec<String> = ids.iter().map(u32::to_string).collect();
            writeln!(out, "{}", s.join(" "))?;
        }
    }
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&all)?)?;
    }
    Ok(())
}

fn run_pretrain(ctx: &Context, a: PretrainArgs) -> Result<()> {
    let (_, device) = ctx.device.resolve();
    let mut cfg = PretrainConfig::preset(&a.preset)?;
    if let Some(s) = a.steps {
        cfg.steps = s;
    }
    if let Some(s) = a.max_seconds {
        cfg.max_seconds = s;
    }
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    for kv in &a.set {
        cfg.set(kv)?;
    }
    println!("settings: {}", serde_json::to_string(&cfg)?);
    let bar = ProgressBar::new(cfg.steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps {per_sec} {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    let batch = cfg.batch_size;
    let t0 = Instant::now();
    let mut ema = f64::NAN;
    let report = pretrain(&a.data, &a.out, &cfg, &device, |ev| match ev {
        PretrainEvent::Step { step, loss, lr } => {
            ema = if ema.is_nan() {
                loss
            } else {
                0.95 * ema + 0.05 * loss
            };
            bar.set_position(step as u64);
            let pairs = (step * batch) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {ema:.3}, lr {lr:.2e}, {pairs:.0} pairs/s"));
        }
        PretrainEvent::Probe(r) => {
            let line = format!(
                "step {:>5} {:>7.1} s  loss {:.3}  1/T {:5.1}  zero-shot top-1 on {} val objects: all {:.1}%  base {:.1}%  novel {:.1}%",
                r.step,
                r.seconds,
                r.loss,
                r.inverse_temperature,
                r.objects,
                100.0 * r.all,
                100.0 * r.base,
                100.0 * r.novel
            );
            // A hidden bar (output not a terminal) drops println; the checks must still show.
            if bar.is_hidden() {
                println!("{line}");
            } else {
                bar.println(line);
            }
        }
    })
    .with_context(|| format!("pre-training on {}", a.data.display()))?;
    bar.finish();
    let t = &report.time;
    println!(
        "{} steps in {:.1} s ({:.3} steps/s), final loss {:.4}, 1/T {:.1}; {} pairs ({} objects located by colour); saved to {}",
        report.steps,
        report.seconds,
        report.steps as f64 / report.seconds.max(1e-9),
        report.final_loss,
        report.logit_scale,
        report.pairs,
        report.objects,
        a.out.display()
    );
    println!(
        "time: data {:.1} s, forward {:.1} s, backward {:.1} s, optimizer {:.1} s, zero-shot checks {:.1} s, checkpoints {:.1} s",
        t.data, t.forward, t.backward, t.optimizer, t.eval, t.save
    );
    Ok(())
}

fn eval(ctx: &Context, a: EvalArgs) -> Result<()> {
    let (_, device) = ctx.device.resolve();
    let (teacher, _) = Teacher::load(&a.checkpoint, &device)
        .with_context(|| format!("loading {}", a.checkpoint.display()))?;
    let size = teacher.preprocess.size;
    let set = match a.on.as_str() {
        "val" => ZeroShotSet::from_val(&a.data, size, a.max_objects),
        "train" => ZeroShotSet::from_coco(
            &a.data,
            &a.data.join("train"),
            "instances_full.json",
            size,
            a.max_objects,
        ),
        "pretrain" => {
            let pairs = read_captions(&a.data.join("pretrain"))?;
            let corpus = Corpus::load(&pairs, BatchConfig::default().colour_tolerance)?;
            let vocab = read_vocab(&a.data.join("vocab.toml"))?;
            ZeroShotSet::from_corpus(&corpus, vocab, size, a.max_objects)
        }
        other => anyhow::bail!("--on {other}: expected val, train or pretrain"),
    }
    .with_context(|| format!("reading the {} objects of {}", a.on, a.data.display()))?;
    let crops = match a.crops.as_str() {
        "vild" => RegionCrops::Vild,
        "1x" => RegionCrops::Tight,
        other => anyhow::bail!("--crops {other}: expected vild or 1x"),
    };
    let r = set
        .evaluate_as(&teacher, &a.prompt, crops)
        .with_context(|| format!("zero-shot eval on {}", a.data.display()))?;
    println!(
        "zero-shot top-1 on {} single-object crops of {}/{} ({}), prompt {:?}",
        r.crops,
        a.data.display(),
        a.on,
        match crops {
            RegionCrops::Vild => "ViLD 1x + 1.5x crops",
            RegionCrops::Tight => "1x crops only",
        },
        a.prompt
    );
    println!(
        "{:<14} {:<6} {:>6} {:>8}",
        "class", "split", "crops", "top-1"
    );
    for (name, split, n, acc) in &r.per_class {
        println!("{name:<14} {split:<6} {n:>6} {:>7.1}%", 100.0 * acc);
    }
    println!(
        "{:<14} {:<6} {:>6} {:>7.1}%",
        "all",
        "",
        r.crops,
        100.0 * r.all
    );
    println!(
        "{:<14} {:<6} {:>6} {:>7.1}%",
        "base",
        "",
        "",
        100.0 * r.base
    );
    println!(
        "{:<14} {:<6} {:>6} {:>7.1}%",
        "novel",
        "",
        "",
        100.0 * r.novel
    );
    if a.confusion {
        let short: Vec<String> = r
            .per_class
            .iter()
            .map(|c| c.0.chars().take(5).collect())
            .collect();
        println!("confusion (rows: true, columns: predicted)");
        println!(
            "{:<10} {}",
            "",
            short.iter().map(|s| format!("{s:>5}")).collect::<String>()
        );
        for (name, row) in short.iter().zip(&r.confusion) {
            println!(
                "{name:<10} {}",
                row.iter().map(|n| format!("{n:>5}")).collect::<String>()
            );
        }
    }
    let dense = match a.dense {
        Some(n) => {
            let d = dense_eval(&teacher, &a.data, &a.prompt, n, a.dense_size)
                .with_context(|| format!("dense eval on {}", a.data.display()))?;
            println!(
                "MaskCLIP dense on {} val scenes at {} px: pixel accuracy {:.1}%, mIoU {:.1}% (classes only {:.1}%), object pixels right among the classes {:.1}%",
                d.images,
                d.input_size,
                100.0 * d.pixel_accuracy,
                100.0 * d.miou,
                100.0 * d.class_miou,
                100.0 * d.object_pixel_accuracy
            );
            let cells: Vec<String> = d
                .per_class_iou
                .iter()
                .map(|(n, x)| format!("{n} {:.1}", 100.0 * x))
                .collect();
            println!("IoU: {}", cells.join(", "));
            Some(d)
        }
        None => None,
    };
    if let Some(out) = a.out {
        let v = serde_json::json!({ "zero_shot": r, "dense": dense });
        ovkd_teacher::io::write_atomic(&out, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}

/// Boxes per image id, best first, from a proposal file.
fn read_proposals(
    path: &Path,
    top_k: usize,
) -> Result<std::collections::HashMap<i64, Vec<[f32; 4]>>> {
    let mut rows: Vec<(i64, [f32; 4], f32)> = Vec::new();
    let is_json = path.extension().is_some_and(|e| e == "json");
    if is_json {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{}: not JSON", path.display()))?;
        let arr = v
            .as_array()
            .or_else(|| v.get("annotations").and_then(|a| a.as_array()))
            .with_context(|| {
                format!(
                    "{}: expected a list of {{image_id, bbox, score}}",
                    path.display()
                )
            })?;
        for (i, r) in arr.iter().enumerate() {
            let id = r["image_id"]
                .as_i64()
                .with_context(|| format!("{}: record {i}: field `image_id`", path.display()))?;
            let b: Vec<f32> = r["bbox"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_f64().map(|x| x as f32))
                        .collect()
                })
                .unwrap_or_default();
            if b.len() != 4 {
                bail!(
                    "{}: record {i}: field `bbox` must be [x, y, w, h]",
                    path.display()
                );
            }
            let score = r["score"].as_f64().unwrap_or(1.0) as f32;
            rows.push((id, [b[0], b[1], b[0] + b[2], b[1] + b[3]], score));
        }
    } else {
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let df = ParquetReader::new(f)
            .finish()
            .with_context(|| format!("{}: not Parquet", path.display()))?;
        let col = |n: &str| -> Result<Float32Chunked> {
            Ok(df
                .column(n)
                .with_context(|| format!("{}: column `{n}`", path.display()))?
                .cast(&DataType::Float32)?
                .f32()?
                .clone())
        };
        let ids = df
            .column("image_id")
            .with_context(|| format!("{}: column `image_id`", path.display()))?
            .cast(&DataType::Int64)?
            .i64()?
            .clone();
        let (x1, y1, x2, y2, s) = (
            col("x1")?,
            col("y1")?,
            col("x2")?,
            col("y2")?,
            col("score")?,
        );
        for i in 0..df.height() {
            let g = |c: &Float32Chunked, n: &str| {
                c.get(i)
                    .with_context(|| format!("{}: row {i}: `{n}` is null", path.display()))
            };
            rows.push((
                ids.get(i)
                    .with_context(|| format!("{}: row {i}: `image_id` is null", path.display()))?,
                [g(&x1, "x1")?, g(&y1, "y1")?, g(&x2, "x2")?, g(&y2, "y2")?],
                g(&s, "score")?,
            ));
        }
    }
    let mut by: std::collections::HashMap<i64, Vec<([f32; 4], f32)>> = Default::default();
    for (id, b, s) in rows {
        by.entry(id).or_default().push((b, s));
    }
    Ok(by
        .into_iter()
        .map(|(id, mut v)| {
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            v.truncate(top_k);
            (id, v.into_iter().map(|x| x.0).collect())
        })
        .collect())
}

/// One image's regions, ready for the teacher: its id, its boxes (clipped to the image,
/// degenerate ones dropped) and their crops (`PreprocessConfig::region_crops`).
struct Prepared {
    id: i64,
    boxes: Vec<[f32; 4]>,
    crops: Vec<f32>,
}

/// Reads `img` from `split`, takes its boxes from `boxes_of` (by image id) and crops them.
fn prepare_regions(
    img: &ovkd_data::coco::CocoImage,
    split: &Path,
    boxes_of: &std::collections::HashMap<i64, Vec<[f32; 4]>>,
    preprocess: &ovkd_teacher::preprocess::PreprocessConfig,
) -> Result<Prepared> {
    let rgb = load_rgb(&image_path(split, &img.file_name)).with_context(|| {
        format!(
            "image {} ({}) of {}",
            img.id,
            img.file_name,
            split.display()
        )
    })?;
    let (w, h) = (rgb.width() as f32, rgb.height() as f32);
    let boxes = boxes_of
        .get(&(img.id as i64))
        .map_or(&[][..], Vec::as_slice);
    // Clip to the image; drop degenerate boxes (they carry no region to embed).
    let boxes: Vec<[f32; 4]> = boxes
        .iter()
        .map(|b| {
            [
                b[0].clamp(0.0, w),
                b[1].clamp(0.0, h),
                b[2].clamp(0.0, w),
                b[3].clamp(0.0, h),
            ]
        })
        .filter(|b| b[2] - b[0] >= 1.0 && b[3] - b[1] >= 1.0)
        .collect();
    let crops = preprocess
        .region_crops(&rgb, &boxes, ovkd_teacher::embed::VILD_CONTEXT)
        .with_context(|| format!("image {} ({})", img.id, img.file_name))?;
    Ok(Prepared {
        id: img.id as i64,
        boxes,
        crops,
    })
}

fn embed(ctx: &Context, a: EmbedArgs) -> Result<()> {
    let (_, device) = ctx.device.resolve();
    let shard = ShardSpec::parse(&a.shard)?;
    let (mut teacher, unused) = Teacher::load(&a.checkpoint, &device)
        .with_context(|| format!("loading {}", a.checkpoint.display()))?;
    if !unused.is_empty() {
        tracing::warn!("{} unused checkpoint tensors: {:?}", unused.len(), unused);
    }
    teacher.max_batch = a.batch;
    let teacher = teacher.with_precision(a.precision);
    let coco_path = a.split.join("instances.json");
    let coco = read_coco(&coco_path)?;
    // Each image's boxes: its proposals, or without them its annotations (x1, y1, x2, y2),
    // grouped once rather than searched for per image.
    let boxes_of = match &a.proposals {
        Some(p) => read_proposals(p, a.top_k)?,
        None => {
            let mut by: std::collections::HashMap<i64, Vec<[f32; 4]>> = Default::default();
            for x in &coco.annotations {
                let b = x.bbox.map(|v| v as f32);
                by.entry(x.image_id as i64).or_default().push([
                    b[0],
                    b[1],
                    b[0] + b[2],
                    b[1] + b[3],
                ]);
            }
            by
        }
    };
    let mut images = coco.images.clone();
    images.sort_by_key(|i| i.id);
    let mut writer = CacheWriter::open(
        &a.out,
        teacher.dim(),
        &teacher.checkpoint_hash,
        teacher.precision,
        shard,
    )?;
    let mine: Vec<_> = images
        .iter()
        .enumerate()
        .filter(|(pos, img)| shard.owns(*pos) && !writer.is_done(img.id as i64))
        .map(|(_, img)| img.clone())
        .collect();
    println!(
        "shard {}: {} images to embed ({} already done)",
        a.shard,
        mine.len(),
        writer.done_count()
    );
    let bar = ProgressBar::new(mine.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} images {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    let t0 = Instant::now();
    let mut regions = 0usize;
    // The next image is read and cropped on another thread (its boxes in parallel) while the
    // teacher embeds this one: on a GPU the host's crops are what the tower waits for. The
    // rendezvous channel keeps at most two images' crops in memory (each box's two views are
    // 1.2 MB at 224 px).
    let preprocess = &teacher.preprocess;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Prepared>>(0);
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(|| {
            // The sender moves in and is dropped when the reader ends, which ends the loop below.
            let tx = tx;
            for img in &mine {
                let prepared = prepare_regions(img, &a.split, &boxes_of, preprocess);
                let failed = prepared.is_err();
                // A closed channel: the embedding side stopped on an error of its own.
                if tx.send(prepared).is_err() || failed {
                    break;
                }
            }
        });
        // Owning the receiver here: an early return drops it, which stops the reader.
        for (n, prepared) in rx.into_iter().enumerate() {
            let Prepared { id, boxes, crops } = prepared?;
            let e = teacher.embed_region_crops(&crops, boxes.len());
            let v = e
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            writer.add(id, &boxes, &v)?;
            regions += boxes.len();
            if (n + 1) % a.flush_every.max(1) == 0 {
                writer.flush()?;
            }
            bar.inc(1);
            bar.set_message(format!(
                "{:.1} regions/s",
                regions as f64 / t0.elapsed().as_secs_f64().max(1e-9)
            ));
        }
        Ok(())
    })?;
    writer.flush()?;
    bar.finish();
    let bytes_per_region = teacher.dim() * ovkd_teacher::cache::BYTES_PER_VALUE;
    println!(
        "{regions} regions in {:.1} s; {bytes_per_region} B of f16 vector per region (+ index); run `ovkd teacher merge {}` when every shard is done",
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}
