//! `ovkd train segmenter` and `ovkd predict --task seg` as a user runs them, on a tiny
//! OV-Shapes with a teacher pre-trained for a few steps: every output appears in its format,
//! a finished run refuses to restart without --resume, bad configs name file and line.

use std::path::Path;
use std::process::{Command, Output};

fn ovkd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ovkd"))
        .args(args)
        .output()
        .expect("run ovkd")
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny data set and a teacher trained for two steps, in `run/data` and `run/teacher`.
fn setup(run: &Path) {
    ok(&ovkd(&[
        "data",
        "synth",
        "--out",
        s(&run.join("data")),
        "--preset",
        "quick",
        "--train-images",
        "6",
        "--val-images",
        "3",
        "--pretrain-images",
        "8",
        "--image-size",
        "64",
    ]));
    ok(&ovkd(&[
        "teacher",
        "pretrain",
        "--data",
        s(&run.join("data")),
        "--out",
        s(&run.join("teacher")),
        "--preset",
        "quick",
        "--steps",
        "2",
    ]));
}

fn config(dir: &Path) -> std::path::PathBuf {
    let quick =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/segmenter/ov_shapes_quick.toml");
    let path = dir.join("seg.toml");
    std::fs::write(
        &path,
        format!(
            "extends = \"{}\"\n[train]\nsteps = 4\nbatch_size = 2\ncheckpoint_every = 2\n\n[distill.self_train]\nafter_step = 2\n",
            quick.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn train_evaluate_and_predict_on_a_tiny_ov_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    setup(&run);
    let cfg = config(tmp.path());
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "segmenter",
            "--config",
            s(&cfg),
            "--run",
            s(&run),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        ovkd(&args)
    };
    let out = train(&[]);
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("seen mIoU"), "{stdout}");

    // The student's and the teacher's scores, in `ovkd eval seg --out` format.
    for name in ["seg.json", "seg_teacher.json"] {
        let text = std::fs::read_to_string(run.join("eval").join(name)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["num_classes"], 13, "{name}");
        assert_eq!(v["iou"].as_array().unwrap().len(), 13, "{name}");
        for key in ["mIoU", "seen_mIoU", "unseen_mIoU", "hIoU"] {
            assert!(v.get(key).is_some(), "{name} lacks {key}");
        }
    }
    // Checkpoints, the metrics table with the self-training switch, the resolved config.
    let seg = run.join("segmenter");
    assert!(seg.join("ckpt-000004/model.bpk").is_file());
    assert!(seg.join("config.toml").is_file());
    assert!(seg.join("metrics.parquet").is_file());
    let csv = std::fs::read_to_string(seg.join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "self_training").unwrap();
    let switch: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(col).unwrap())
        .collect();
    assert_eq!(switch.len(), 4);
    assert!(
        switch[0].starts_with('0') && switch[3].starts_with('1'),
        "{switch:?}"
    );
    let pseudo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(seg.join("pseudo_labels.json")).unwrap())
            .unwrap();
    assert!(pseudo["val_novel_pixels"].as_u64().unwrap() > 0);
    // The teacher's dense features of val (its zero-shot floor) are cached for the next run;
    // the training images' are not computed at all, since the pseudo-labels come from region
    // crops (`distill.pseudo.from = "regions"`, inherited from ov_shapes.toml).
    assert!(run.join("cache/seg-dense-val-32.safetensors").is_file());
    assert!(!run.join("cache/seg-dense-train-32.safetensors").exists());

    // A run directory with checkpoints is not silently restarted.
    let again = train(&[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));

    // Predict any class names.
    let pred = tmp.path().join("pred");
    let img = run.join("data/val/images/000001.png");
    let out = ovkd(&[
        "predict",
        "--task",
        "seg",
        "--classes",
        "star|five-pointed star,heart,ring",
        "--checkpoint",
        s(&run),
        "--out",
        s(&pred),
        s(&img),
    ]);
    ok(&out);
    let labels = image::open(pred.join("000001.png")).unwrap();
    assert_eq!((labels.width(), labels.height()), (64, 64));
    assert!(labels.to_luma8().pixels().all(|p| p[0] <= 3));
    let overlay = image::open(pred.join("000001_overlay.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (64, 64));
    let classes = std::fs::read_to_string(pred.join("classes.json")).unwrap();
    assert!(classes.contains("\"2\": \"heart\""), "{classes}");
}

#[test]
fn a_bad_config_key_names_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[train]\nsteps = 4\nlr = 0.1\n\n[distill.pseudo]\nthreshhold = 0.5\n",
    )
    .unwrap();
    let out = ovkd(&[
        "train",
        "segmenter",
        "--config",
        s(&cfg),
        "--run",
        s(&tmp.path().join("run")),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:6"), "{err}");
    assert!(err.contains("threshhold"), "{err}");
}
