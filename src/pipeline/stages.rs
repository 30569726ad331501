//! The stages of `ovkd pipeline`, each a thin wrapper over the command a user would type for
//! it (`ovkd data synth`, `ovkd teacher pretrain`, `ovkd train detector`, ...), so a pipeline run
//! and a hand-typed sequence of commands do the same work and write the same files.
//!
//! Run-directory layout: `data/` (the images and annotations), `teacher/` (the teacher
//! checkpoint and its zero-shot score), `detector.toml` / `segmenter.toml` (the students'
//! resolved configs), what the student commands write (`detector/`, `segmenter/`, `cache/`,
//! `eval/`), `export/` and `report/`.

use super::runner::Stage;
use crate::cli::Context;
use crate::config::Layered;
use crate::config::experiment::{DataSource, Experiment, TeacherSource};
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};

type Work = Box<dyn Fn(&Path, bool) -> Result<()>>;

/// A stage that runs commands and owns some paths of the run directory.
pub struct CommandStage {
    name: &'static str,
    upstream: &'static [&'static str],
    keys: &'static [&'static str],
    /// Paths (relative to the run directory) removed before a fresh, not resumed, run.
    outputs: Vec<&'static str>,
    work: Work,
}

impl Stage for CommandStage {
    fn name(&self) -> &'static str {
        self.name
    }
    fn upstream(&self) -> &'static [&'static str] {
        self.upstream
    }
    fn config_keys(&self) -> &'static [&'static str] {
        self.keys
    }
    fn run(&self, run_dir: &Path, resume: bool) -> Result<()> {
        if !resume {
            for out in &self.outputs {
                let p = run_dir.join(out);
                if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                        .with_context(|| format!("clearing {}", p.display()))?;
                } else if p.exists() {
                    std::fs::remove_file(&p)
                        .with_context(|| format!("clearing {}", p.display()))?;
                }
            }
        }
        (self.work)(run_dir, resume)
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs `ovkd ARGS` in this process on the pipeline's device.
fn ovkd(ctx: &Context, args: Vec<String>) -> Result<()> {
    crate::run_subcommand(ctx, &args).with_context(|| format!("ovkd {}", args.join(" ")))
}

/// Where the teacher checkpoint of a run is.
pub fn teacher_path(exp: &Experiment, run_dir: &Path) -> PathBuf {
    match &exp.teacher {
        TeacherSource::Builtin { .. } => run_dir.join("teacher"),
        TeacherSource::Clip { checkpoint } => checkpoint.clone(),
    }
}

/// Writes a student's config file into the run: its section of the experiment, with
/// `data.root` and `teacher.path` pointing at this run's data and teacher unless the section
/// sets them. Returns the file.
fn write_student_config(
    exp: &Experiment,
    section: &toml::Table,
    file: &str,
    run_dir: &Path,
) -> Result<PathBuf> {
    let mut t = section.clone();
    // Already merged in by the experiment loader.
    t.remove("config");
    let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let data = t
        .entry("data")
        .or_insert_with(|| toml::Value::Table(Default::default()));
    if let Some(d) = data.as_table_mut() {
        d.entry("root")
            .or_insert_with(|| toml::Value::String(s(&abs(run_dir.join("data")))));
    }
    let teacher = t
        .entry("teacher")
        .or_insert_with(|| toml::Value::Table(Default::default()));
    if let Some(d) = teacher.as_table_mut() {
        d.entry("path")
            .or_insert_with(|| toml::Value::String(s(&abs(teacher_path(exp, run_dir)))));
    }
    let path = run_dir.join(file);
    let text = toml::to_string_pretty(&t).context("serialising a student config")?;
    ovkd_data::io::write_atomic(&path, text.as_bytes()).with_context(|| s(&path))?;
    Ok(path)
}

/// The stages of an experiment, in order. `layered` is the experiment as loaded (for the
/// students' sections, checked here so that a bad key fails before any work starts).
pub fn stages(ctx: &Context, layered: &Layered, exp: &Experiment) -> Result<Vec<CommandStage>> {
    let mut out = Vec::new();
    out.push(data_stage(ctx, exp)?);
    out.push(teacher_stage(ctx, exp));
    if let Some(section) = &exp.detector {
        // Checked now, with the experiment's files and lines, so a bad key fails before work.
        student_view(layered, "detector")?
            .deserialize::<crate::cli::train_detector::DetExperimentConfig>()?;
        out.extend(detector_stages(ctx, exp, section));
    }
    if let Some(section) = &exp.segmenter {
        student_view(layered, "segmenter")?
            .deserialize::<crate::cli::train_segmenter::SegTrainConfig>()?;
        out.extend(segmenter_stages(ctx, exp, section));
    }
    if exp.detector.is_some() || exp.segmenter.is_some() {
        out.push(eval_stage(ctx, exp));
    }
    if exp.detector.is_some() || exp.segmenter.is_some() {
        out.push(export_stage(
            ctx,
            exp.detector.is_some(),
            exp.segmenter.is_some(),
        ));
    }
    out.push(report_stage(ctx));
    Ok(out)
}

/// A student's section as its own config, without the `config` key the loader already used.
fn student_view(layered: &Layered, student: &str) -> Result<Layered> {
    let mut view = layered.sub(student)?;
    view.table.remove("config");
    Ok(view)
}

fn data_stage(ctx: &Context, exp: &Experiment) -> Result<CommandStage> {
    let ctx = ctx.clone();
    let source = exp.data.clone();
    Ok(CommandStage {
        name: "data",
        upstream: &[],
        keys: &["data"],
        outputs: vec!["data"],
        work: Box::new(move |run, _| match &source {
            DataSource::OvShapes {
                preset,
                seed,
                settings,
            } => {
                let mut args = vec![
                    "data".into(),
                    "synth".into(),
                    "--out".into(),
                    s(&run.join("data")),
                    "--seed".into(),
                    seed.to_string(),
                    "--preset".into(),
                    preset.clone(),
                ];
                for (k, v) in settings {
                    let v = match v {
                        toml::Value::String(x) => x.clone(),
                        other => other.to_string(),
                    };
                    args.push("--set".into());
                    args.push(format!("{k}={v}"));
                }
                ovkd(&ctx, args)
            }
            other => crate::pipeline::real_data::prepare(other, &run.join("data")),
        }),
    })
}

fn teacher_stage(ctx: &Context, exp: &Experiment) -> CommandStage {
    let ctx = ctx.clone();
    let source = exp.teacher.clone();
    CommandStage {
        name: "teacher",
        upstream: &["data"],
        keys: &["teacher"],
        outputs: vec!["teacher"],
        work: Box::new(move |run, _| match &source {
            TeacherSource::Builtin {
                preset,
                steps,
                seed,
            } => {
                let data = s(&run.join("data"));
                let out = run.join("teacher");
                let mut args = vec![
                    "teacher".into(),
                    "pretrain".into(),
                    "--data".into(),
                    data.clone(),
                    "--out".into(),
                    s(&out),
                    "--preset".into(),
                    preset.clone(),
                    "--seed".into(),
                    seed.to_string(),
                    // A time limit would make the result depend on the machine's speed.
                    "--max-seconds".into(),
                    "0".into(),
                ];
                if let Some(n) = steps {
                    args.extend(["--steps".into(), n.to_string()]);
                }
                ovkd(&ctx, args)?;
                ovkd(
                    &ctx,
                    vec![
                        "teacher".into(),
                        "eval".into(),
                        "--checkpoint".into(),
                        s(&out),
                        "--data".into(),
                        data,
                        "--out".into(),
                        s(&out.join("zero_shot.json")),
                    ],
                )
            }
            TeacherSource::Clip { checkpoint } => {
                for file in ["config.json", "model.safetensors", "tokenizer.json"] {
                    if !checkpoint.join(file).is_file() {
                        bail!(
                            "teacher.checkpoint {}: no {file} (expected a Hugging Face CLIP folder with config.json, model.safetensors, tokenizer.json)",
                            checkpoint.display()
                        );
                    }
                }
                Ok(())
            }
        }),
    }
}

fn detector_stages(ctx: &Context, exp: &Experiment, section: &toml::Table) -> Vec<CommandStage> {
    let mk = |name: &'static str,
              upstream: &'static [&'static str],
              keys: &'static [&'static str],
              outputs: Vec<&'static str>,
              args: fn(&Path, &Path) -> Vec<String>| {
        let ctx = ctx.clone();
        let exp = exp.clone();
        let section = section.clone();
        CommandStage {
            name,
            upstream,
            keys,
            outputs,
            work: Box::new(move |run, _| {
                let cfg = write_student_config(&exp, &section, "detector.toml", run)?;
                ovkd(&ctx, args(&cfg, run))
            }),
        }
    };
    vec![
        // The proposals depend on the RPN's model, its own section and the data; not on the
        // detector's training settings nor on the teacher.
        mk(
            "proposals",
            &["data"],
            &["detector.detector", "detector.proposals", "detector.data"],
            vec!["proposals"],
            |cfg, run| student_args(&["proposals", "--no-cache"], cfg, run),
        ),
        // The teacher's embeddings of those proposals: what the caches hold depends on the
        // distillation method (the region cache for ViLD-image and pseudo boxes, the bag cache
        // for BARON).
        mk(
            "embed",
            &["proposals", "teacher"],
            &[
                "detector.proposals",
                "detector.teacher",
                "detector.cache",
                "detector.distill.method",
                "detector.distill.image_weight",
                "detector.distill.pseudo_boxes",
                "detector.distill.baron.bags",
            ],
            vec!["cache/regions", "cache/bags.parquet"],
            |cfg, run| student_args(&["proposals", "--cache-only"], cfg, run),
        ),
        mk(
            "train-detector",
            &["embed"],
            &["detector"],
            vec![
                "detector",
                "eval/det.json",
                "eval/det_vis",
                "eval/det_plots",
            ],
            |cfg, run| student_args(&["train", "detector"], cfg, run),
        ),
    ]
}

fn segmenter_stages(ctx: &Context, exp: &Experiment, section: &toml::Table) -> Vec<CommandStage> {
    let ctx = ctx.clone();
    let exp = exp.clone();
    let section = section.clone();
    vec![CommandStage {
        name: "train-segmenter",
        upstream: &["data", "teacher"],
        keys: &["segmenter"],
        outputs: vec![
            "segmenter",
            "eval/seg.json",
            "eval/seg_vis",
            "eval/seg_plots",
        ],
        work: Box::new(move |run, _| {
            let cfg = write_student_config(&exp, &section, "segmenter.toml", run)?;
            ovkd(&ctx, student_args(&["train", "segmenter"], &cfg, run))
        }),
    }]
}

/// Scores the detector's val detections with `ovkd eval det` (the same numbers the training
/// command printed) and draws the PR curves and per-class AP bars for the report; paints the
/// segmenter's predictions on a few val images ([`super::seg_vis`]).
fn eval_stage(ctx: &Context, exp: &Experiment) -> CommandStage {
    let ctx = ctx.clone();
    let (det, seg, draw) = (
        exp.detector.is_some(),
        exp.segmenter.is_some(),
        exp.eval.draw,
    );
    CommandStage {
        name: "eval",
        upstream: &["train-detector", "train-segmenter"],
        keys: &["eval"],
        outputs: vec!["eval/det_plots", "eval/det.md", "eval/seg_vis"],
        work: Box::new(move |run, _| {
            if seg {
                super::seg_vis::draw_val(&ctx, run, &run.join("eval/seg_vis"), draw)?;
            }
            if !det {
                return Ok(());
            }
            let dets = run.join("eval/detections.json");
            if !dets.is_file() {
                bail!("{}: missing (train-detector writes it)", dets.display());
            }
            ovkd(
                &ctx,
                vec![
                    "eval".into(),
                    "det".into(),
                    "--gt".into(),
                    s(&run.join("data/val/instances.json")),
                    "--dets".into(),
                    s(&dets),
                    "--vocab".into(),
                    s(&run.join("data/vocab.toml")),
                    "--out".into(),
                    s(&run.join("eval/det.json")),
                    "--markdown".into(),
                    s(&run.join("eval/det.md")),
                    "--plots".into(),
                    s(&run.join("eval/det_plots")),
                ],
            )
        }),
    }
}

/// `ovkd export bundle` for each trained student, into `RUN/export/{detector,segmenter}`
/// (each bundle written whole into a temporary folder and renamed into place).
fn export_stage(ctx: &Context, detector: bool, segmenter: bool) -> CommandStage {
    let ctx = ctx.clone();
    CommandStage {
        name: "export",
        upstream: &["train-detector", "train-segmenter"],
        keys: &[],
        outputs: vec!["export"],
        work: Box::new(move |run, _| {
            for (on, task, student) in [
                (detector, "det", "detector"),
                (segmenter, "seg", "segmenter"),
            ] {
                if on {
                    ovkd(
                        &ctx,
                        vec![
                            "export".into(),
                            "bundle".into(),
                            "--task".into(),
                            task.into(),
                            "--checkpoint".into(),
                            s(run),
                            "--out".into(),
                            s(&run.join("export").join(student)),
                        ],
                    )?;
                }
            }
            Ok(())
        }),
    }
}

/// `ovkd COMMAND --config CFG --run RUN --resume`: the student commands continue from their
/// checkpoints, and start afresh in a directory the stage has just cleared.
fn student_args(command: &[&str], cfg: &Path, run: &Path) -> Vec<String> {
    let mut args: Vec<String> = command.iter().map(|c| c.to_string()).collect();
    args.extend([
        "--config".into(),
        s(cfg),
        "--run".into(),
        s(run),
        "--resume".into(),
    ]);
    args
}

fn report_stage(ctx: &Context) -> CommandStage {
    let ctx = ctx.clone();
    CommandStage {
        name: "report",
        upstream: &[
            "data",
            "teacher",
            "train-detector",
            "train-segmenter",
            "eval",
            "export",
        ],
        keys: &["eval"],
        outputs: vec!["report"],
        work: Box::new(move |run, _| {
            ovkd(
                &ctx,
                vec![
                    "report".into(),
                    s(run),
                    "--out".into(),
                    s(&run.join("report")),
                ],
            )
        }),
    }
}
