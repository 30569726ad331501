//! `ovkd export`: a trained student in forms that run without the run directory.
//!
//! `ovkd export onnx` writes the student's inference graph as ONNX (see
//! [`super::export_onnx`]).
//!
//! `ovkd export bundle` writes a self-contained folder (see [`ovkd_distill::bundle`] for its
//! layout): the student's weights and config, the vocabulary it was trained with and that
//! vocabulary's text embeddings, and the teacher's text tower, tokenizer and prompt templates,
//! so that `ovkd predict --bundle B` runs on that vocabulary, or embeds new class names
//! (`--classes ...`), with nothing else.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use clap::{Args, Subcommand};
use ovkd_distill::bundle::{
    BundleTask, BundleWriter, FORMAT, FORMAT_VERSION, Manifest, STUDENT_CONFIG, STUDENT_WEIGHTS,
    TEXT_DIR, VOCAB, VOCAB_EMBEDS,
};
use ovkd_distill::det::InferenceConfig;
use ovkd_teacher::clip::TextTower;
use ovkd_teacher::embed::{TextTeacher, tokenizer_file};
use serde::{Deserialize, Serialize};

use super::Context;
use super::predict::{Task, host_embeds};
use super::train_detector::ClassList;

/// `ovkd export` subcommands.
#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    /// A self-contained bundle of a student for `ovkd predict --bundle`: weights
    /// (safetensors), config, vocabulary and its text embeddings, the teacher's text tower,
    /// tokenizer and prompt templates.
    Bundle(BundleArgs),
    /// A student's inference graph at a fixed input size as ONNX (opset 17), the vocabulary's
    /// text embeddings baked in; `--check-inputs` adds the files `bench/onnx_check.py` checks
    /// it with.
    Onnx(super::export_onnx::OnnxArgs),
}

/// Arguments of `ovkd export bundle`.
#[derive(Args, Debug)]
pub struct BundleArgs {
    /// Which student.
    #[arg(long, value_enum, default_value = "det")]
    pub task: Task,
    /// A checkpoint folder (`ckpt-NNNNNN/`) or a run directory (its newest checkpoint of the
    /// task's student).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The teacher whose text tower goes into the bundle (default: the one the run trained
    /// with).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// The bundle folder to write (replaced whole if it exists).
    #[arg(long)]
    pub out: PathBuf,
}

/// The detector's inference settings in a bundle's manifest.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DetSettings {
    /// Score source, ensemble weights, NMS, threshold, top-k (the run's `eval.inference`).
    pub inference: InferenceConfig,
    /// Longer image side the images are resized to before detecting; `None`: as they are.
    pub size: Option<usize>,
}

/// The segmenter's inference settings in a bundle's manifest.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SegSettings {
    /// Per-channel mean the pixels (in [0, 1]) are normalised with.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

/// Runs `ovkd export`.
pub fn run(ctx: &Context, cmd: ExportCommand) -> Result<()> {
    match cmd {
        ExportCommand::Bundle(a) => bundle(ctx, a),
        ExportCommand::Onnx(a) => super::export_onnx::run(ctx, a),
    }
}

/// What a bundle is made of, whichever the student.
struct Parts<'a, M: Module> {
    task: BundleTask,
    ckpt: &'a Path,
    model: &'a M,
    student_config: serde_json::Value,
    templates: Vec<String>,
    inference: serde_json::Value,
    embed_dim: usize,
    data_root: Option<PathBuf>,
    teacher: PathBuf,
    /// The texts each vocabulary class is embedded from, as the run embedded them.
    class_texts: &'a dyn Fn(&ovkd_data::Vocabulary) -> Vec<Vec<String>>,
}

fn bundle(ctx: &Context, a: BundleArgs) -> Result<()> {
    let (_, device) = ctx.device.resolve();
    let teacher_of = |from_run: &Option<PathBuf>| match (&a.teacher, from_run) {
        (Some(t), _) | (None, Some(t)) => Ok(t.clone()),
        (None, None) => bail!("--teacher: the run's config names no teacher"),
    };
    let manifest = match a.task {
        Task::Det => {
            use super::train_detector::{checkpoint_dir, config_of_checkpoint, load_detector};
            let ckpt = checkpoint_dir(&a.checkpoint, "detector")?;
            let (cfg, det_cfg) = config_of_checkpoint(&ckpt)?;
            let model = load_detector(&ckpt, &det_cfg, &device)?;
            write(
                &a.out,
                Parts {
                    task: BundleTask::Det,
                    ckpt: &ckpt,
                    model: &model,
                    student_config: serde_json::to_value(&det_cfg)?,
                    templates: cfg.teacher.templates.clone(),
                    inference: serde_json::to_value(DetSettings {
                        inference: cfg.eval.inference.clone(),
                        size: None,
                    })?,
                    embed_dim: det_cfg.box_head.embed_dim,
                    data_root: cfg.data.root.clone(),
                    teacher: teacher_of(&cfg.teacher.path)?,
                    class_texts: &|v| ClassList::of_config(v, &cfg.teacher).names,
                },
            )?
        }
        Task::Seg => {
            use super::train_segmenter::{checkpoint_dir, config_of_checkpoint, load_segmenter};
            let ckpt = checkpoint_dir(&a.checkpoint)?;
            let cfg = config_of_checkpoint(&ckpt)?;
            let model = load_segmenter(&cfg, &ckpt, &device)
                .with_context(|| format!("loading {}", ckpt.display()))?;
            write(
                &a.out,
                Parts {
                    task: BundleTask::Seg,
                    ckpt: &ckpt,
                    model: &model,
                    student_config: serde_json::to_value(&cfg.segmenter)?,
                    templates: cfg.distill.templates.clone(),
                    inference: serde_json::to_value(SegSettings {
                        mean: cfg.data.augment.mean,
                        std: cfg.data.augment.std,
                    })?,
                    embed_dim: cfg.segmenter.embed_dim,
                    data_root: cfg.data.root.clone(),
                    teacher: teacher_of(&cfg.teacher.path)?,
                    class_texts: &|v| ClassList::texts(v, cfg.teacher.synonyms).names,
                },
            )?
        }
    };
    let bytes: u64 = manifest.files.values().map(|f| f.bytes).sum();
    println!(
        "exported the {} bundle to {} ({} files, {:.1} MB)",
        manifest.task.name(),
        a.out.display(),
        manifest.files.len() + 1,
        bytes as f64 / 1e6
    );
    Ok(())
}

/// Writes the bundle of `p` to `out`: the student, then the teacher's text half, then the
/// vocabulary embedded by that bundled text half (so the bundle's own tower made them).
fn write<M: Module>(out: &Path, p: Parts<'_, M>) -> Result<Manifest> {
    let data_root = p
        .data_root
        .context("the run's config names no data root (data.root), so no vocabulary")?;
    let w = BundleWriter::create(out)?;
    w.write_module(STUDENT_WEIGHTS, p.model)?;
    w.write_json(STUDENT_CONFIG, &p.student_config)?;
    w.copy(&data_root.join("vocab.toml"), VOCAB)?;

    let (tower, unused) = TextTower::load(&p.teacher, &Device::flex())
        .with_context(|| format!("loading the teacher's text tower {}", p.teacher.display()))?;
    if !unused.is_empty() {
        tracing::warn!(
            "{}: {} tensors neither text nor image: {unused:?}",
            p.teacher.display(),
            unused.len()
        );
    }
    if tower.embed_dim() != p.embed_dim {
        bail!(
            "the teacher {} embeds into D = {} but the student into {}",
            p.teacher.display(),
            tower.embed_dim(),
            p.embed_dim
        );
    }
    let text_dir = w.dir().join(TEXT_DIR);
    tower.save(&text_dir)?;
    drop(tower);
    w.copy(
        &tokenizer_file(&p.teacher),
        &format!("{TEXT_DIR}/tokenizer.json"),
    )?;

    let (text, _) = TextTeacher::load(&text_dir, &Device::flex())?;
    let vocab = ovkd_data::Vocabulary::load(w.dir().join(VOCAB))?;
    let names = (p.class_texts)(&vocab);
    let embeds = host_embeds(
        text.class_embeds(&names, &p.templates)
            .context("embedding the vocabulary")?,
    )?;
    w.write_embeds(VOCAB_EMBEDS, &embeds, names.len())?;

    Ok(w.finish(Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        task: p.task,
        ovkd_version: env!("CARGO_PKG_VERSION").into(),
        source: std::path::absolute(p.ckpt)
            .unwrap_or_else(|_| p.ckpt.to_path_buf())
            .display()
            .to_string(),
        embed_dim: p.embed_dim,
        templates: p.templates,
        inference: p.inference,
        files: Default::default(),
    })?)
}
