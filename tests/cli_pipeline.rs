//! `ovkd pipeline` and `ovkd sweep` end to end on a tiny OV-Shapes experiment: stages skip when
//! unchanged and rerun downstream of a change, a run killed during training finishes with the
//! same numbers as one that was not, and a sweep records its failing run and goes on. The
//! export stage's bundles, moved away with the run, its teacher and its data deleted, predict
//! exactly what `ovkd predict --checkpoint` did on the run; a corrupt or missing file is named.

mod common;
use common::{ok, ovkd, s};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const EXPERIMENT: &str = r#"
name = "tiny"

[data]
source = "ov-shapes"
preset = "quick"
seed = 2

[data.settings]
train_images = 4
val_images = 2
pretrain_images = 64
image_size = 64
pretrain_image_size = 64

[teacher]
source = "builtin"
preset = "quick"
steps = 2

[detector.detector]
preset = "tiny"
box_head.fc_dim = 32
roi_heads.batch_size_per_image = 32

[detector.distill]
image_regions_per_image = 8

[detector.proposals]
top_k = 20
batch = 4

[detector.proposals.train]
steps = 2
lr = 0.001
batch_size = 2
checkpoint_every = 2

[detector.train]
steps = 8
lr = 0.001
batch_size = 2
checkpoint_every = 2
seed = 4

[detector.eval]
batch = 2
draw = 1
"#;

fn experiment(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(&p, EXPERIMENT).unwrap();
    p
}

fn stats(run: &Path) -> serde_json::Value {
    let det: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("eval/det.json")).unwrap()).unwrap();
    serde_json::json!({"stats": det["stats"], "splits": det["splits"]})
}

/// Which stages a pipeline run ran (not skipped), from its stage table.
fn ran(out: &str) -> Vec<String> {
    let table = out.split("stage ").last().unwrap_or_default();
    table
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (name, secs) = (it.next()?, it.next()?);
            secs.parse::<f64>().ok().map(|_| name.to_string())
        })
        .collect()
}

#[test]
fn pipeline_skips_reruns_downstream_and_a_killed_run_ends_with_the_same_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = experiment(tmp.path());
    let a = tmp.path().join("a");
    let all = [
        "data",
        "teacher",
        "proposals",
        "embed",
        "train-detector",
        "eval",
        "export",
        "report",
    ];
    let out = ok(&["pipeline", "--config", s(&cfg), "--run", s(&a)]);
    assert_eq!(ran(&out), all, "{out}");
    assert!(out.contains("report/index.html"), "{out}");
    assert!(a.join("report/index.html").is_file() && a.join("config.toml").is_file());
    let resolved = std::fs::read_to_string(a.join("config.toml")).unwrap();
    assert!(resolved.contains("steps = 8"), "{resolved}");
    let first = stats(&a);

    // Nothing changed: nothing runs.
    let out = ok(&["pipeline", "--config", s(&cfg), "--run", s(&a)]);
    assert!(ran(&out).is_empty(), "{out}");

    // A training setting changed: training and what reads it rerun, the rest is kept.
    let out = ok(&[
        "pipeline",
        "--config",
        s(&cfg),
        "--run",
        s(&a),
        "--set",
        "detector.train.steps=6",
    ]);
    assert_eq!(
        ran(&out),
        ["train-detector", "eval", "export", "report"],
        "{out}"
    );

    // A different distillation weight changes what the caches must hold: the teacher embeds
    // the same proposals again (`embed`), the RPN and its proposals are kept.
    let out = ok(&[
        "pipeline",
        "--config",
        s(&cfg),
        "--run",
        s(&a),
        "--set",
        "detector.train.steps=6",
        "--set",
        "detector.distill.image_weight=0.25",
    ]);
    assert_eq!(
        ran(&out),
        ["embed", "train-detector", "eval", "export", "report"],
        "{out}"
    );
    assert!(a.join("cache/regions").is_dir(), "{out}");

    // Killed during training, then started again: the same numbers as the uninterrupted run.
    let b = tmp.path().join("b");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ovkd"))
        .args([
            "--device",
            "cpu",
            "pipeline",
            "--config",
            s(&cfg),
            "--run",
            s(&b),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = b.join("detector/ckpt-000002");
    let mut killed = false;
    for _ in 0..60_000 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if ckpt.is_dir() {
            child.kill().unwrap();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait().unwrap();
    assert!(
        killed,
        "the run ended before its first detector checkpoint could be seen"
    );
    assert!(!b.join(".stages/train-detector.json").exists());
    let out = ok(&["pipeline", "--config", s(&cfg), "--run", s(&b)]);
    assert_eq!(
        ran(&out),
        ["train-detector", "eval", "export", "report"],
        "{out}"
    );
    assert_eq!(stats(&b), first);
}

#[test]
fn a_bad_key_stops_the_pipeline_before_any_work_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = experiment(tmp.path());
    let run = tmp.path().join("run");
    let (success, text) = ovkd(&[
        "pipeline",
        "--config",
        s(&cfg),
        "--run",
        s(&run),
        "--set",
        "detector.train.lr=-1",
    ]);
    assert!(!success);
    assert!(
        text.contains("`detector.train.lr`") && text.contains("--set #1"),
        "{text}"
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("top_k = 20", "top_kk = 20");
    std::fs::write(&cfg, text).unwrap();
    let (success, text) = ovkd(&["pipeline", "--config", s(&cfg), "--run", s(&run)]);
    assert!(!success);
    assert!(
        text.contains("tiny.toml:30") && text.contains("`detector.proposals.top_kk`"),
        "{text}"
    );
    assert!(!run.join("data").exists(), "no stage ran");
}

#[test]
fn a_sweep_records_its_failing_run_goes_on_and_skips_finished_runs_on_restart() {
    let tmp = tempfile::tempdir().unwrap();
    experiment(tmp.path());
    let sweep = tmp.path().join("sweep.toml");
    std::fs::write(
        &sweep,
        "config = \"tiny.toml\"\nmetric = \"det.stats.AP50\"\n[grid]\n\"detector.train.lr\" = [0.001, -1.0]\n",
    )
    .unwrap();
    let out_dir = tmp.path().join("out");
    let out = ok(&[
        "sweep",
        "--config",
        s(&sweep),
        "--out",
        s(&out_dir),
        "--jobs",
        "2",
    ]);
    assert!(out.contains("1 of 2 runs failed"), "{out}");
    let csv = std::fs::read_to_string(out_dir.join("results.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(
        rows[1].starts_with("lr=0.001,ok,"),
        "the finished run first: {csv}"
    );
    assert!(rows[2].starts_with("lr=-1.0,failed,"), "{csv}");
    assert!(
        rows[2].contains("detector.train.lr"),
        "the error is recorded: {csv}"
    );
    assert!(rows[0].contains("det.stats.AP50") && rows[0].contains("teacher.zero_shot.all"));
    assert!(out_dir.join("results.parquet").is_file());
    assert!(
        std::fs::read_to_string(out_dir.join("results.md"))
            .unwrap()
            .contains("## Failed runs")
    );

    let again = ok(&["sweep", "--config", s(&sweep), "--out", s(&out_dir)]);
    assert!(
        again.contains("lr=0.001: finished earlier, skipped"),
        "{again}"
    );
    assert!(again.contains("lr=-1.0: FAILED"), "{again}");
}

/// [`EXPERIMENT`] with a segmenter too (two steps of the quick segmenter config).
fn experiment_with_segmenter(dir: &Path) -> PathBuf {
    let seg = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/segmenter/ov_shapes_quick.toml");
    let p = dir.join("tiny.toml");
    let text = format!(
        "{EXPERIMENT}\n[segmenter]\nconfig = {:?}\n\n[segmenter.train]\nsteps = 2\nbatch_size = 2\ncheckpoint_every = 2\n\n[segmenter.distill.self_train]\nafter_step = 1\n",
        seg.display().to_string()
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn fails(args: &[&str]) -> String {
    let (success, text) = ovkd(args);
    assert!(!success, "ovkd {args:?} should have failed:\n{text}");
    text
}

/// Every file of a folder, by name, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// `ovkd predict` of `task` with `source` (`--checkpoint X` or `--bundle X`) into `out`, for
/// `classes` (default: the student's vocabulary).
fn predict(task: &str, source: [&str; 2], classes: Option<&str>, images: &[PathBuf], out: &Path) {
    let mut args = vec![
        "predict",
        "--task",
        task,
        source[0],
        source[1],
        "--out",
        s(out),
    ];
    if let Some(c) = classes {
        args.extend(["--classes", c]);
    }
    if task == "det" {
        args.extend(["--score-thresh", "0.0"]);
    }
    args.extend(images.iter().map(|p| s(p)));
    ok(&args);
}

#[test]
fn bundles_predict_as_their_run_did_with_nothing_else_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = experiment_with_segmenter(tmp.path());
    let run = tmp.path().join("run");
    let out = ok(&["pipeline", "--config", s(&cfg), "--run", s(&run)]);
    let stages = ran(&out);
    assert_eq!(
        stages[stages.len() - 2..],
        ["export".to_string(), "report".to_string()],
        "{out}"
    );
    for student in ["detector", "segmenter"] {
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(run.join("export").join(student).join("bundle.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(m["format"], "ovkd-bundle");
        assert!(
            m["files"]["text/model.safetensors"]["sha256"].is_string(),
            "{m}"
        );
    }
    let report = std::fs::read_to_string(run.join("report/index.md")).unwrap();
    assert!(report.contains("../export/detector"), "{report}");

    // Nothing changed: the export stage (like every other) is skipped.
    let again = ok(&["pipeline", "--config", s(&cfg), "--run", s(&run)]);
    assert!(ran(&again).is_empty(), "{again}");

    // The images live outside the run, which is about to go.
    let images_dir = tmp.path().join("images");
    std::fs::create_dir_all(&images_dir).unwrap();
    let mut images = Vec::new();
    for e in std::fs::read_dir(run.join("data/val/images")).unwrap() {
        let p = e.unwrap().path();
        let to = images_dir.join(p.file_name().unwrap());
        std::fs::copy(&p, &to).unwrap();
        images.push(to);
    }
    images.sort();
    let vocab: toml::Table =
        toml::from_str(&std::fs::read_to_string(run.join("data/vocab.toml")).unwrap()).unwrap();
    let name = |split: &str| {
        vocab["class"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["split"].as_str() == Some(split))
            .unwrap()["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // One base name, one novel, one the vocabulary does not have.
    let classes = format!("{},{},purple blob", name("base"), name("novel"));
    let by_run = tmp.path().join("by_run");
    for task in ["det", "seg"] {
        predict(
            task,
            ["--checkpoint", s(&run)],
            Some(&classes),
            &images,
            &by_run.join(task),
        );
        // Without --classes: the run's own vocabulary.
        predict(
            task,
            ["--checkpoint", s(&run)],
            None,
            &images,
            &by_run.join(format!("{task}-vocab")),
        );
    }

    // Move the bundles away and delete the run with its teacher and data.
    let bundles = tmp.path().join("bundles");
    std::fs::rename(run.join("export"), &bundles).unwrap();
    std::fs::remove_dir_all(&run).unwrap();
    let by_bundle = tmp.path().join("by_bundle");
    for (task, student) in [("det", "detector"), ("seg", "segmenter")] {
        predict(
            task,
            ["--bundle", s(&bundles.join(student))],
            Some(&classes),
            &images,
            &by_bundle.join(task),
        );
        // Without --classes: the bundle's vocabulary and the embeddings it carries give what
        // the run gave for its vocabulary.
        let vocab = format!("{task}-vocab");
        predict(
            task,
            ["--bundle", s(&bundles.join(student))],
            None,
            &images,
            &by_bundle.join(&vocab),
        );
        assert_eq!(
            files(&by_run.join(&vocab)),
            files(&by_bundle.join(&vocab)),
            "{vocab}"
        );
    }
    let listed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(by_bundle.join("seg-vocab/classes.json")).unwrap())
            .unwrap();
    let n_vocab = vocab["class"].as_array().unwrap().len();
    assert_eq!(
        listed.as_object().unwrap().len(),
        n_vocab + 1,
        "background and every vocabulary class: {listed}"
    );
    let det_run = files(&by_run.join("det"));
    assert_eq!(det_run, files(&by_bundle.join("det")));
    let dets: Vec<serde_json::Value> = serde_json::from_slice(
        &det_run
            .iter()
            .find(|(n, _)| n == "detections.json")
            .unwrap()
            .1,
    )
    .unwrap();
    assert!(!dets.is_empty(), "a threshold of 0 keeps detections");
    // A name the vocabulary does not have is embedded by the bundle's own text tower: asked
    // for alone, it labels boxes (among three names a tiny model may rank it below the
    // others in every box's top-k).
    let alone = tmp.path().join("alone");
    predict(
        "det",
        ["--bundle", s(&bundles.join("detector"))],
        Some("purple blob"),
        &images,
        &alone,
    );
    let alone: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(alone.join("detections.json")).unwrap()).unwrap();
    assert!(
        !alone.is_empty() && alone.iter().all(|d| d["category_id"] == 1),
        "the name outside the vocabulary labels boxes"
    );
    let seg_run = files(&by_run.join("seg"));
    assert!(seg_run.iter().filter(|(n, _)| n.ends_with(".png")).count() >= 2 * images.len());
    assert_eq!(seg_run, files(&by_bundle.join("seg")));

    // The wrong task, a changed byte, a missing file: each error names what is wrong.
    let det = bundles.join("detector");
    let x = tmp.path().join("x");
    let text = fails(&[
        "predict",
        "--task",
        "seg",
        "--bundle",
        s(&det),
        "--classes",
        "star",
        "--out",
        s(&x),
        s(&images[0]),
    ]);
    assert!(text.contains("a det bundle, but --task seg"), "{text}");
    let weights = det.join("student.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    let args = [
        "predict",
        "--bundle",
        s(&det),
        "--classes",
        "star",
        "--out",
        s(&x),
        s(&images[0]),
    ];
    let text = fails(&args);
    assert!(
        text.contains("student.safetensors") && text.contains("corrupt"),
        "{text}"
    );
    bytes[last] ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    std::fs::remove_file(det.join("text/tokenizer.json")).unwrap();
    let text = fails(&args);
    assert!(
        text.contains("text/tokenizer.json") && text.contains("missing"),
        "{text}"
    );
}
