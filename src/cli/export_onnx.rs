//! `ovkd export onnx`: a student's inference graph at a fixed input size as an ONNX file, with
//! the vocabulary's text embeddings baked in (see `ovkd_onnx::segmenter` and
//! `ovkd_onnx::detector` for the inputs and outputs of each graph).
//!
//! `--check-inputs` also writes, next to `FILE.onnx`, `FILE.inputs.safetensors` (the image,
//! and for the detector the boxes: its own proposals plus one square per pooling level) and
//! `FILE.expected.safetensors` (what ovkd's Burn model computes for them), which
//! `bench/onnx_check.py` compares with onnxruntime's outputs.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use burn::tensor::{Device, Tensor, TensorData};
use clap::Args;
use ovkd_distill::seg::DenseTeacher;
use ovkd_onnx::{DetExport, NamedTensor, SegExport};
use ovkd_teacher::embed::Teacher;

use super::Context;
use super::predict::Task;
use super::predict::parse_classes;

/// Arguments of `ovkd export onnx`.
#[derive(Args, Debug)]
pub struct OnnxArgs {
    /// A checkpoint folder or a run directory (its newest checkpoint of the student).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Which student.
    #[arg(long, value_enum)]
    pub task: Task,
    /// The fixed input size, `HxW` (multiples of 32), e.g. `128x128`.
    #[arg(long)]
    pub size: String,
    /// The ONNX file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Comma-separated class names (`|` separates synonyms) baked into the graph; default:
    /// every class of the run's vocabulary, in file order.
    #[arg(long)]
    pub classes: Option<String>,
    /// The teacher whose text tower embeds the names (default: the run's).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Also write the check inputs and ovkd's outputs for them next to the ONNX file.
    #[arg(long)]
    pub check_inputs: bool,
    /// The image for `--check-inputs` (resized to `--size`); default: a synthetic pattern.
    #[arg(long)]
    pub check_image: Option<PathBuf>,
    /// Detector, `--check-inputs`: at most this many of its own proposals as boxes.
    #[arg(long, default_value_t = 64)]
    pub check_boxes: usize,
}

/// `HxW` → `[H, W]`.
fn parse_size(s: &str) -> Result<[usize; 2]> {
    let parse = || -> Option<[usize; 2]> {
        let (h, w) = s.split_once(['x', 'X'])?;
        Some([h.trim().parse().ok()?, w.trim().parse().ok()?])
    };
    let size = parse().with_context(|| format!("--size {s:?}: expected HxW, e.g. 128x128"))?;
    ovkd_onnx::check_size(size).with_context(|| format!("--size {s}"))?;
    Ok(size)
}

/// The class names: `--classes`, or the vocabulary at `vocab` (each class with its synonyms).
fn class_names(arg: Option<&str>, vocab: &Path) -> Result<Vec<Vec<String>>> {
    let classes = match arg {
        Some(a) => parse_classes(a)?,
        None => {
            let v = ovkd_data::Vocabulary::load(vocab).with_context(|| {
                format!(
                    "no --classes given and the run's vocabulary {} cannot be read",
                    vocab.display()
                )
            })?;
            v.classes
                .iter()
                .map(|c| c.all_names().map(str::to_string).collect())
                .collect()
        }
    };
    if classes.is_empty() {
        bail!("--classes: give at least one class name");
    }
    Ok(classes)
}

/// The image for the check: `--check-image` resized to `size`, or the synthetic pattern.
fn check_image(path: Option<&Path>, size: [usize; 2], device: &Device) -> Result<Tensor<4>> {
    let Some(path) = path else {
        return Ok(ovkd_onnx::test_image(size, device));
    };
    let img = ovkd_data::loader::load_rgb(path)
        .with_context(|| format!("reading --check-image {}", path.display()))?;
    let [h, w] = size;
    let img = image::imageops::resize(&img, w as u32, h as u32, image::imageops::Triangle);
    let v = ovkd_data::transforms::normalise(&img, [0.0; 3], [1.0; 3]);
    Ok(Tensor::from_data(TensorData::new(v, [1, 3, h, w]), device))
}

/// `FILE.onnx` → `FILE.{suffix}`.
fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    out.with_file_name(format!("{stem}.{suffix}"))
}

fn write_checks(out: &Path, inputs: &[NamedTensor], expected: &[NamedTensor]) -> Result<()> {
    let (i, e) = (
        sibling(out, "inputs.safetensors"),
        sibling(out, "expected.safetensors"),
    );
    ovkd_onnx::write_safetensors(&i, inputs)?;
    ovkd_onnx::write_safetensors(&e, expected)?;
    println!(
        "check files: {}, {}\n  verify: python3 bench/onnx_check.py {} {} {}",
        i.display(),
        e.display(),
        out.display(),
        i.display(),
        e.display()
    );
    Ok(())
}

fn write_model(args: &OnnxArgs, onnx: &ovkd_onnx::ModelProto, what: &str, k: usize) -> Result<()> {
    ovkd_onnx::write_model(&args.out, onnx)?;
    println!(
        "wrote {} ({what}; {}, {k} classes + background, {} nodes)",
        args.out.display(),
        args.size,
        onnx.graph.nodes.len()
    );
    Ok(())
}

/// The run directory of a checkpoint (`RUN/<student>/ckpt-N`) and the class names to bake in:
/// `--classes`, or the vocabulary of the run's data (`data_root`, default `RUN/data`).
fn run_and_classes(
    ckpt: &Path,
    data_root: Option<&Path>,
    args: &OnnxArgs,
) -> Result<(PathBuf, Vec<Vec<String>>)> {
    let run_dir = ckpt
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let root = data_root.map_or_else(|| run_dir.join("data"), Path::to_path_buf);
    let classes = class_names(args.classes.as_deref(), &root.join("vocab.toml"))?;
    Ok((run_dir, classes))
}

/// Runs `ovkd export onnx`.
pub fn run(ctx: &Context, args: OnnxArgs) -> Result<()> {
    let size = parse_size(&args.size)?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match args.task {
        Task::Seg => run_seg(ctx, &args, size),
        Task::Det => run_det(ctx, &args, size),
    }
}

fn run_seg(ctx: &Context, args: &OnnxArgs, size: [usize; 2]) -> Result<()> {
    use super::train_segmenter::{checkpoint_dir, config_of_checkpoint, load_segmenter};
    let ckpt = checkpoint_dir(&args.checkpoint)?;
    let cfg = config_of_checkpoint(&ckpt)?;
    let (run_dir, classes) = run_and_classes(&ckpt, cfg.data.root.as_deref(), args)?;
    let (_, device) = ctx.device.resolve();
    let teacher_dir = args
        .teacher
        .clone()
        .or(cfg.teacher.path.clone())
        .unwrap_or_else(|| run_dir.join("teacher"));
    let (teacher, _) = Teacher::load(&teacher_dir, &device)
        .with_context(|| format!("loading the teacher {}", teacher_dir.display()))?;
    let embeds = DenseTeacher::class_embeds(&teacher, &classes, &cfg.distill.templates)
        .map_err(anyhow::Error::msg)
        .context("embedding the class names")?;
    drop(teacher);
    let model = load_segmenter(&cfg, &ckpt, &device)
        .with_context(|| format!("loading {}", ckpt.display()))?;
    let spec = SegExport {
        size,
        pixel_mean: cfg.data.augment.mean,
        pixel_std: cfg.data.augment.std,
        class_names: classes.iter().map(|c| c[0].clone()).collect(),
    };
    let onnx = ovkd_onnx::export_segmenter(&model, embeds.clone(), &spec)?;
    write_model(args, &onnx, "segmenter", spec.class_names.len())?;
    if args.check_inputs {
        let image = check_image(args.check_image.as_deref(), size, &device)?;
        let expected =
            ovkd_onnx::segmenter::reference_outputs(&model, embeds, &spec, image.clone())?;
        write_checks(
            &args.out,
            &[NamedTensor::from_float("image", image)?],
            &expected,
        )?;
    }
    Ok(())
}

fn run_det(ctx: &Context, args: &OnnxArgs, size: [usize; 2]) -> Result<()> {
    use super::train_detector::{
        checkpoint_dir, config_of_checkpoint, load_detector, load_teacher, tensor2, text_embeds,
    };
    let ckpt = checkpoint_dir(&args.checkpoint, "detector")?;
    let (cfg, det_cfg) = config_of_checkpoint(&ckpt)?;
    let (run_dir, classes) = run_and_classes(&ckpt, cfg.data.root.as_deref(), args)?;
    let teacher_path = args
        .teacher
        .clone()
        .or(cfg.teacher.path.clone())
        .unwrap_or_else(|| run_dir.join("teacher"));
    let teacher = load_teacher(&teacher_path)?;
    let cache = run_dir.join("cache").join("text");
    let (text, dim) = text_embeds(&teacher, &classes, &cfg.teacher.templates, &cache)?;
    drop(teacher);
    if dim != det_cfg.box_head.embed_dim {
        bail!(
            "{}: its embeddings have {dim} dimensions but the detector's {}",
            teacher_path.display(),
            det_cfg.box_head.embed_dim
        );
    }
    let (_, device) = ctx.device.resolve();
    let model = load_detector(&ckpt, &det_cfg, &device)?;
    let text = tensor2(&text, classes.len(), dim, &device);
    let spec = DetExport {
        size,
        class_names: classes.iter().map(|c| c[0].clone()).collect(),
    };
    let onnx = ovkd_onnx::export_detector(&model, text.clone(), &spec)?;
    write_model(
        args,
        &onnx,
        "detector: backbone, FPN, RPN head, RoI head",
        spec.class_names.len(),
    )?;
    if args.check_inputs {
        let image = check_image(args.check_image.as_deref(), size, &device)?;
        let boxes = ovkd_onnx::detector::check_boxes(&model, image.clone(), args.check_boxes);
        let expected = ovkd_onnx::detector::reference_outputs(&model, text, image.clone(), &boxes)?;
        let n = boxes.len();
        let flat: Vec<f32> = boxes.iter().flatten().copied().collect();
        let boxes = Tensor::<2>::from_data(TensorData::new(flat, [n, 4]), &device);
        write_checks(
            &args.out,
            &[
                NamedTensor::from_float("image", image)?,
                NamedTensor::from_float("boxes", boxes)?,
            ],
            &expected,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_must_be_multiples_of_32() {
        assert_eq!(parse_size("128x96").unwrap(), [128, 96]);
        assert_eq!(parse_size("64X64").unwrap(), [64, 64]);
        assert!(parse_size("100x64").is_err());
        assert!(parse_size("64").is_err());
        assert!(parse_size("0x64").is_err());
    }

    #[test]
    fn check_files_sit_next_to_the_model() {
        assert_eq!(
            sibling(Path::new("out/seg.onnx"), "inputs.safetensors"),
            PathBuf::from("out/seg.inputs.safetensors")
        );
    }
}
