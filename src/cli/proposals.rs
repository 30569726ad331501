//! `ovkd proposals`: the class-agnostic proposals whose teacher embeddings ViLD-image distils.
//!
//! Trains the detector's backbone + RPN on the base boxes of the train split (the box head is
//! not trained), then proposes the best `proposals.top_k` boxes (after NMS) of every training
//! image; or takes any proposals file (`proposals.file`: Parquet or COCO-style results JSON).
//! Writes into the run directory:
//!
//! ```text
//! RUN/proposals/ckpt-NNNNNN/        the RPN's checkpoints; metrics.csv, metrics.parquet
//! RUN/proposals/proposals.parquet   image_id, x1, y1, x2, y2, score (best first per image)
//! RUN/proposals/recall.json         recall of base and novel objects (IoU 0.5 / 0.7) at
//!                                   several k, from train/instances_full.json when present
//! ```
//!
//! Then, when ViLD-image is on, the teacher (`RUN/teacher` or `teacher.path`) embeds them into
//! the region cache (`RUN/cache/regions` or `cache.regions`) with `ovkd teacher embed` and
//! `ovkd teacher merge`; `--no-cache` leaves that to the user.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use burn::module::Module;
use clap::Args;
use image::RgbImage;
use ovkd_data::DatasetDir;
use ovkd_data::coco::CocoDataset;
use ovkd_data::loader::load_rgb;
use ovkd_detector::{Detector, ImageBatch};
use ovkd_distill::det::bags::{bag_centers, sample_bags};
use ovkd_distill::det::task::step_rng;
use ovkd_distill::det::{
    Bag, BagCache, BagConfig, CachedBag, DetTask, DetTaskMode, ImageProposals, ProposalSet,
    RecallStats, best_iou,
};
use ovkd_distill::train::{LoopOptions, TrainConfig, train};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::Context;
use super::train_detector::{
    ClassList, DetExperimentConfig, RunPaths, chw01, load_teacher, progress_bar, resolve_detector,
    tensor2, train_loader,
};

/// Arguments of `ovkd proposals`.
#[derive(Args, Debug)]
pub struct ProposalsArgs {
    /// Config, run directory, --resume, --set, --quiet.
    #[command(flatten)]
    pub common: super::RunArgs,
    /// Do not fill the region-embedding cache (by default, when ViLD-image or pseudo boxes
    /// need it, the teacher embeds the proposals into `cache.regions`, as `ovkd teacher
    /// embed` does) nor BARON's bag cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Only fill the caches, from the proposals an earlier `ovkd proposals --no-cache` wrote
    /// to `RUN/proposals/proposals.parquet` (the pipeline's `embed` stage).
    #[arg(long, conflicts_with = "no_cache")]
    pub cache_only: bool,
}

fn default_proposal_train() -> TrainConfig {
    let mut t: TrainConfig = toml::from_str("steps = 600\nlr = 0.001\nbatch_size = 8")
        .expect("the built-in proposal training config parses");
    t.optimizer = Default::default();
    t.checkpoint_every = 200;
    t
}

/// The proposals stage's settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProposalsSection {
    /// Take this proposals file (Parquet with image_id, x1, y1, x2, y2, score, or a COCO-style
    /// results JSON) instead of training an RPN.
    pub file: Option<PathBuf>,
    /// Boxes kept per training image, best first, after NMS.
    pub top_k: usize,
    /// NMS IoU threshold between an image's proposals.
    pub nms_thresh: f32,
    /// Images per forward pass when proposing.
    pub batch: usize,
    /// Training of the class-agnostic RPN on the base boxes.
    pub train: TrainConfig,
}

impl Default for ProposalsSection {
    fn default() -> Self {
        Self {
            file: None,
            top_k: 300,
            nms_thresh: 0.7,
            batch: 16,
            train: default_proposal_train(),
        }
    }
}

/// Reads a proposals file: Parquet, or COCO-style results JSON (`[{image_id, bbox: [x, y, w,
/// h], score}]`).
pub fn read_proposal_file(path: &Path) -> Result<ProposalSet> {
    if path.extension().is_some_and(|e| e == "json") {
        let results = ovkd_data::coco::read_results(path)?;
        let mut rows: BTreeMap<i64, Vec<([f32; 4], f32)>> = BTreeMap::new();
        for (i, r) in results.iter().enumerate() {
            let Some(b) = r.bbox else {
                bail!("{}: record {i}: no `bbox`", path.display());
            };
            rows.entry(r.image_id as i64)
                .or_default()
                .push((ovkd_data::boxes::xywh_to_xyxy(b), r.score as f32));
        }
        let images = rows
            .into_iter()
            .map(|(id, mut v)| {
                v.sort_by(|a, b| b.1.total_cmp(&a.1));
                let (boxes, scores) = v.into_iter().unzip();
                (id, ImageProposals { boxes, scores })
            })
            .collect();
        Ok(ProposalSet { images })
    } else {
        Ok(ProposalSet::read_parquet(path)?)
    }
}

/// Proposes boxes for every image of a split with `model`'s RPN (`top_k` per image, after NMS
/// at `nms_thresh`).
#[allow(clippy::too_many_arguments)]
pub fn propose_split(
    model: &Detector,
    data: &DatasetDir,
    split: &str,
    top_k: usize,
    nms_thresh: f32,
    batch: usize,
    device: &burn::tensor::Device,
    quiet: bool,
) -> Result<ProposalSet> {
    let mut model = model.clone();
    let rpn = &mut model.rpn.config;
    rpn.post_nms_top_n_test = top_k;
    rpn.pre_nms_top_n_test = rpn.pre_nms_top_n_test.max(top_k);
    rpn.nms_thresh = nms_thresh;
    let coco = CocoDataset::read(data.instances_path(split))?;
    let mut images = coco.images.clone();
    images.sort_by_key(|i| i.id);
    let bar = progress_bar(images.len(), "images proposed", quiet);
    let mut set = ProposalSet::default();
    for chunk in images.chunks(batch.max(1)) {
        let rgbs: Vec<RgbImage> = chunk
            .iter()
            .map(|im| load_rgb(&data.images_dir(split).join(&im.file_name)))
            .collect::<Result<_, _>>()?;
        let inputs: Vec<(Vec<f32>, [usize; 2])> = rgbs.iter().map(chw01).collect();
        let views: Vec<(&[f32], [usize; 2])> =
            inputs.iter().map(|(v, s)| (v.as_slice(), *s)).collect();
        let b = ImageBatch::from_chw(&views, 32, device)?;
        for (im, (boxes, scores)) in chunk.iter().zip(model.propose(&b)) {
            set.images.insert(
                im.id as i64,
                ImageProposals {
                    boxes: boxes.0,
                    scores,
                },
            );
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(set)
}

/// Recall of the ground truth in `gt_path` by `set`, per split of `classes` and per k.
pub fn proposal_recall(
    set: &ProposalSet,
    gt_path: &Path,
    classes: &ClassList,
    ks: &[usize],
) -> Result<BTreeMap<String, BTreeMap<String, RecallStats>>> {
    let coco = CocoDataset::read(gt_path)?;
    let novel: HashSet<u64> = classes
        .ids
        .iter()
        .zip(&classes.novel)
        .filter(|(_, n)| **n)
        .map(|(id, _)| *id)
        .collect();
    let empty = ImageProposals::default();
    let mut out: BTreeMap<String, BTreeMap<String, RecallStats>> = BTreeMap::new();
    for &k in ks {
        let per = out.entry(format!("top{k}")).or_default();
        for a in &coco.annotations {
            if a.is_crowd() {
                continue;
            }
            let p = set.images.get(&(a.image_id as i64)).unwrap_or(&empty);
            let best = best_iou(&a.bbox_xyxy(), &p.boxes, k);
            let split = if novel.contains(&a.category_id) {
                "novel"
            } else {
                "base"
            };
            per.entry(split.into()).or_default().add(best);
            per.entry("all".into()).or_default().add(best);
        }
    }
    Ok(out)
}

/// Prints a recall table.
pub fn print_recall(recall: &BTreeMap<String, BTreeMap<String, RecallStats>>) {
    println!("| proposals | base R@0.5 | novel R@0.5 | base R@0.7 | novel R@0.7 |");
    println!("| --- | --- | --- | --- | --- |");
    let mut keys: Vec<&String> = recall.keys().collect();
    keys.sort_by_key(|k| k.trim_start_matches("top").parse::<usize>().unwrap_or(0));
    for k in keys {
        let r = &recall[k];
        let get = |s: &str| r.get(s).cloned().unwrap_or_default();
        let (b, n) = (get("base"), get("novel"));
        println!(
            "| {k} | {:.1} | {:.1} | {:.1} | {:.1} |",
            100.0 * b.recall_50,
            100.0 * n.recall_50,
            100.0 * b.recall_70,
            100.0 * n.recall_70
        );
    }
}

/// Runs `ovkd proposals`.
pub fn run(ctx: &Context, args: ProposalsArgs) -> Result<()> {
    let t0 = Instant::now();
    let cfg: DetExperimentConfig = crate::config::load_command_config(
        &args.common.config,
        &args.common.sets,
        "proposals",
        "detector",
    )?;
    let paths = RunPaths::new(&cfg, &args.common.run);
    let out_dir = args.common.run.join("proposals");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let data = DatasetDir::open(&paths.data)
        .with_context(|| format!("opening the data set {}", paths.data.display()))?;
    let vocab = data.vocabulary()?;
    let all = ClassList::of(&vocab);
    let base = all.base();
    let p = &cfg.proposals;

    let written = out_dir.join("proposals.parquet");
    let mut set = match &p.file {
        _ if args.cache_only => read_proposal_file(&written).with_context(|| {
            format!(
                "--cache-only: reading the proposals {} (run `ovkd proposals --no-cache` first)",
                written.display()
            )
        })?,
        Some(file) => {
            let mut s = read_proposal_file(file)?;
            s.truncate(p.top_k);
            println!(
                "{}: {} boxes of {} images",
                file.display(),
                s.num_boxes(),
                s.images.len()
            );
            s
        }
        None => {
            // Only the backbone and RPN are trained: the box head's size does not matter, and
            // the teacher is not needed, so any embedding size will do.
            let det_cfg =
                resolve_detector(&cfg.detector, cfg_embed_dim(&cfg.detector).unwrap_or(1))?;
            let (spec, device) = ctx.device.resolve();
            let ad = device.clone().autodiff();
            let loader = train_loader(&data, &base.ids, &p.train, &cfg.data)?;
            ad.seed(p.train.seed);
            let model = det_cfg.init(&ad)?;
            println!(
                "proposals: training the RPN on the base boxes of {} images for {} steps on {}",
                loader.num_batches() * p.train.batch_size,
                p.train.steps,
                spec.name()
            );
            let dim = det_cfg.box_head.embed_dim;
            let task = DetTask::new(
                loader,
                None,
                cfg.distill.clone(),
                DetTaskMode::RpnOnly,
                tensor2(&vec![0.0; dim], 1, dim, &ad),
                p.train.seed,
                p.train.steps,
                ad.clone(),
            )?
            .with_prefetch(cfg.data.prefetch);
            let opts = LoopOptions {
                resume: args.common.resume,
                progress: !args.common.quiet,
                stop_after: None,
                label: "rpn".into(),
            };
            let t_train = Instant::now();
            let trained = train(&p.train, &out_dir, model, &opts, task)?;
            println!(
                "trained the RPN for {} steps in {:.1} s",
                trained.steps_done,
                t_train.elapsed().as_secs_f64()
            );
            let model = trained.model.valid();
            let t_prop = Instant::now();
            let s = propose_split(
                &model,
                &data,
                "train",
                p.top_k,
                p.nms_thresh,
                p.batch,
                &device,
                args.common.quiet,
            )?;
            println!(
                "proposed {} boxes for {} images in {:.1} s",
                s.num_boxes(),
                s.images.len(),
                t_prop.elapsed().as_secs_f64()
            );
            s
        }
    };
    set.truncate(p.top_k);
    let file = written;
    if !args.cache_only {
        write_proposals(&set, &file, &data, &all, p.top_k, t0)?;
    }
    if cfg.distill.needs_region_cache() && !args.no_cache {
        // ViLD-image reads the teacher's embeddings of these boxes from the cache: fill it
        // with the teacher's own command, so `ovkd pipeline` needs no separate stage.
        if !paths.teacher.join("model.safetensors").exists() {
            bail!(
                "{}: no teacher checkpoint to embed the proposals with (or pass --no-cache and run `ovkd teacher embed` yourself)",
                paths.teacher.display()
            );
        }
        if paths.regions.exists() {
            std::fs::remove_dir_all(&paths.regions)
                .with_context(|| format!("clearing {}", paths.regions.display()))?;
        }
        let s = |p: &Path| p.display().to_string();
        let t_cache = Instant::now();
        crate::run_subcommand(
            ctx,
            &[
                "teacher".into(),
                "embed".into(),
                "--checkpoint".into(),
                s(&paths.teacher),
                "--split".into(),
                s(&data.root.join("train")),
                "--proposals".into(),
                s(&file),
                "--top-k".into(),
                p.top_k.to_string(),
                "--out".into(),
                s(&paths.regions),
            ],
        )?;
        crate::run_subcommand(ctx, &["teacher".into(), "merge".into(), s(&paths.regions)])?;
        println!(
            "cached the teacher's region embeddings in {} ({:.1} s)",
            paths.regions.display(),
            t_cache.elapsed().as_secs_f64()
        );
    }
    if cfg.distill.needs_bag_cache() && !args.no_cache {
        let t_bags = Instant::now();
        let cache = make_bag_cache(
            &data,
            &set,
            &paths.teacher,
            &cfg.distill.baron.bags,
            cfg.train.seed,
            args.common.quiet,
        )?;
        if let Some(dir) = paths.bags.parent() {
            // Without a region cache nothing has made `RUN/cache` yet.
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        cache.write_parquet(&paths.bags, cfg.distill.baron.bags.overlap)?;
        println!(
            "BARON: {} bags around the proposals of {} images, embedded by the teacher into {} ({:.1} s)",
            cache.num_bags(),
            cache.images.len(),
            paths.bags.display(),
            t_bags.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Writes the proposals to `file` (Parquet) and their recall of the train split's objects
/// beside it (`recall.json`), and prints both.
fn write_proposals(
    set: &ProposalSet,
    file: &Path,
    data: &DatasetDir,
    all: &ClassList,
    top_k: usize,
    t0: Instant,
) -> Result<()> {
    set.write_parquet(file)?;
    let gt = data
        .instances_full_path()
        .unwrap_or_else(|| data.instances_path("train"));
    let mut ks: Vec<usize> = [10, 50, 100].into_iter().filter(|&k| k < top_k).collect();
    ks.push(top_k);
    let recall = proposal_recall(set, &gt, all, &ks)?;
    let out_dir = file.parent().unwrap_or(Path::new("."));
    ovkd_data::io::write_json_atomic(out_dir.join("recall.json"), &recall, true)?;
    println!("recall of {} by the proposals:", gt.display());
    print_recall(&recall);
    println!(
        "wrote {} in {:.1} s",
        file.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// BARON's bags of every training image, grown around its proposals and base boxes, with
/// the teacher's embedding of each bag's enclosing crop (1x) and of its centre (ViLD's 1x +
/// 1.5x crops). The bags are drawn once, from `seed`.
pub fn make_bag_cache(
    data: &DatasetDir,
    set: &ProposalSet,
    teacher_path: &Path,
    cfg: &BagConfig,
    seed: u64,
    quiet: bool,
) -> Result<BagCache> {
    if !teacher_path.join("model.safetensors").exists() {
        bail!(
            "{}: no teacher checkpoint to embed BARON's bags with",
            teacher_path.display()
        );
    }
    let teacher = load_teacher(teacher_path)?;
    let coco = CocoDataset::read(data.instances_path("train"))?;
    let by_image = coco.annotations_by_image();
    let mut images = coco.images.clone();
    images.sort_by_key(|i| i.id);
    let host = |t: burn::tensor::Tensor<2>| -> Result<Vec<f32>> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading teacher embeddings: {e:?}"))
    };
    let mut cache = BagCache {
        dim: teacher.dim(),
        ..Default::default()
    };
    let empty = ImageProposals::default();
    let bar = progress_bar(images.len(), "images bagged", quiet);
    for im in &images {
        let img = load_rgb(&data.images_dir("train").join(&im.file_name))?;
        let size = [img.height() as usize, img.width() as usize];
        let p = set.images.get(&(im.id as i64)).unwrap_or(&empty);
        let gt: Vec<[f32; 4]> = by_image
            .get(&im.id)
            .map(|v| {
                v.iter()
                    .map(|&k| &coco.annotations[k])
                    .filter(|a| !a.is_crowd())
                    .map(|a| a.bbox_xyxy())
                    .collect()
            })
            .unwrap_or_default();
        let centres = bag_centers(&p.boxes, &p.scores, &gt, cfg);
        let mut rng = step_rng(seed, "baron-bag-cache", 0, im.id as usize);
        let bags: Vec<Bag> = centres
            .iter()
            .flat_map(|&c| sample_bags(c, size, cfg, &mut rng))
            .collect();
        if bags.is_empty() {
            bar.inc(1);
            continue;
        }
        // Bags in parallel, as `region_crops` does for the centres.
        let crops = bags
            .par_iter()
            .map(|b| {
                teacher
                    .preprocess
                    .crop(&img, b.spanned)
                    .with_context(|| format!("image {}: bag crop {:?}", im.id, b.spanned))
            })
            .collect::<Result<Vec<Vec<f32>>>>()?
            .concat();
        let bag_embeds = host(teacher.embed_pixels(&crops, bags.len()))?;
        let centre_boxes: Vec<[f32; 4]> = bags.iter().map(|b| b.center).collect();
        let centre_embeds = host(
            teacher
                .region_embeds(&img, &centre_boxes)
                .with_context(|| format!("image {}: centre regions", im.id))?,
        )?;
        let d = cache.dim;
        cache.images.insert(
            im.id as i64,
            bags.into_iter()
                .enumerate()
                .map(|(i, bag)| CachedBag {
                    bag,
                    teacher_bag: bag_embeds[i * d..(i + 1) * d].to_vec(),
                    teacher_center: centre_embeds[i * d..(i + 1) * d].to_vec(),
                })
                .collect(),
        );
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(cache)
}

/// `box_head.embed_dim` if the `[detector]` table sets it.
fn cfg_embed_dim(table: &toml::Table) -> Option<usize> {
    table
        .get("box_head")?
        .as_table()?
        .get("embed_dim")?
        .as_integer()
        .map(|v| v as usize)
}
