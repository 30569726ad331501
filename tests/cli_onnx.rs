//! `ovkd export onnx` as a user runs it: a tiny OV-Shapes run trains both students for a few
//! steps, each is exported with `--check-inputs`, and `bench/onnx_check.py` runs the ONNX file
//! in onnxruntime against ovkd's own outputs when Python can import onnxruntime (set
//! `OVKD_ONNX_PYTHON`; skipped with a printed reason otherwise). Bad sizes are refused.

use std::path::Path;
use std::process::{Command, Output};

fn ovkd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ovkd"))
        .args(["--device", "cpu"])
        .args(args)
        .output()
        .expect("run ovkd")
}

fn ok(o: Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const DET: &str = r#"
[detector]
preset = "tiny"
box_head.fc_dim = 32
roi_heads.batch_size_per_image = 16

[distill]
image_weight = 0.0

[train]
steps = 2
lr = 0.001
batch_size = 2
checkpoint_every = 2
seed = 1

[eval]
batch = 2
draw = 0
"#;

fn python() -> Option<String> {
    let py = std::env::var("OVKD_ONNX_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import onnxruntime, onnx, numpy, safetensors"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        println!(
            "SKIPPED the onnxruntime check: `{py}` cannot import onnxruntime, onnx, numpy and \
             safetensors (set OVKD_ONNX_PYTHON)"
        );
    }
    ok.then_some(py)
}

fn check(py: &str, onnx: &Path) -> String {
    let stem = onnx.with_extension("");
    let out = Command::new(py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/onnx_check.py"))
        .arg(onnx)
        .arg(format!("{}.inputs.safetensors", stem.display()))
        .arg(format!("{}.expected.safetensors", stem.display()))
        .output()
        .expect("run python");
    let text = ok(out);
    println!("{text}");
    assert!(text.contains("PASS"), "{text}");
    text
}

#[test]
fn export_both_students_and_check_them_in_onnxruntime() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let data = run.join("data");
    ok(ovkd(&[
        "data",
        "synth",
        "--out",
        s(&data),
        "--preset",
        "quick",
        "--train-images",
        "4",
        "--val-images",
        "2",
        "--pretrain-images",
        "8",
        "--image-size",
        "64",
    ]));
    ok(ovkd(&[
        "teacher",
        "pretrain",
        "--data",
        s(&data),
        "--out",
        s(&run.join("teacher")),
        "--preset",
        "quick",
        "--steps",
        "1",
    ]));
    let quick =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/segmenter/ov_shapes_quick.toml");
    let seg_cfg = tmp.path().join("seg.toml");
    std::fs::write(
        &seg_cfg,
        format!(
            "extends = \"{}\"\n[train]\nsteps = 2\nbatch_size = 2\ncheckpoint_every = 2\n\n[distill.self_train]\nafter_step = 1\n",
            quick.display()
        ),
    )
    .unwrap();
    ok(ovkd(&[
        "train",
        "segmenter",
        "--config",
        s(&seg_cfg),
        "--run",
        s(&run),
        "--quiet",
    ]));
    let det_cfg = tmp.path().join("det.toml");
    std::fs::write(&det_cfg, DET).unwrap();
    ok(ovkd(&[
        "train",
        "detector",
        "--config",
        s(&det_cfg),
        "--run",
        s(&run),
        "--quiet",
    ]));

    let out_dir = tmp.path().join("onnx");
    let seg = out_dir.join("seg.onnx");
    let text = ok(ovkd(&[
        "export",
        "onnx",
        "--checkpoint",
        s(&run),
        "--task",
        "seg",
        "--size",
        "64x96",
        "--out",
        s(&seg),
        "--check-inputs",
    ]));
    assert!(text.contains("wrote"), "{text}");
    let det = out_dir.join("det.onnx");
    ok(ovkd(&[
        "export",
        "onnx",
        "--checkpoint",
        s(&run),
        "--task",
        "det",
        "--size",
        "96x64",
        "--classes",
        "star,ring|circle outline,heart",
        "--out",
        s(&det),
        "--check-inputs",
    ]));
    for f in [
        "seg.onnx",
        "seg.inputs.safetensors",
        "seg.expected.safetensors",
        "det.onnx",
        "det.inputs.safetensors",
        "det.expected.safetensors",
    ] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    // An ONNX file starts with field 1 (ir_version = 8): bytes 0x08 0x08.
    assert_eq!(&std::fs::read(&seg).unwrap()[..2], &[0x08, 0x08]);

    let bad = ovkd(&[
        "export",
        "onnx",
        "--checkpoint",
        s(&run),
        "--task",
        "seg",
        "--size",
        "100x64",
        "--out",
        s(&out_dir.join("bad.onnx")),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("multiples of 32"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    if let Some(py) = python() {
        let t = check(&py, &seg);
        assert!(t.contains("logits") && t.contains("labels"), "{t}");
        let t = check(&py, &det);
        assert!(
            t.contains("class_logits") && t.contains("rpn_objectness_p2"),
            "{t}"
        );
    }
}
