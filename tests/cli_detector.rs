//! The detector's commands end to end on a tiny OV-Shapes with a one-step teacher:
//! `ovkd proposals` -> `ovkd teacher embed` -> `ovkd train detector` (ViLD-text + ViLD-image,
//! ensemble scores) -> `ovkd predict` -> `ovkd eval det`.

use std::path::Path;
use std::process::Command;

fn ovkd(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ovkd"))
        .args(["--device", "cpu"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ovkd {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `ovkd train detector --config CONFIG --run RUN --quiet EXTRA...`: its output.
fn train_detector(config: &Path, run: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "detector",
        "--config",
        s(config),
        "--run",
        s(run),
        "--quiet",
    ];
    args.extend_from_slice(extra);
    ovkd(&args)
}

/// `DIR/run` with a tiny OV-Shapes in `run/data` and a one-step teacher in `run/teacher`:
/// (run, data).
fn tiny_run(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let run = dir.join("run");
    let data = run.join("data");
    ovkd(&[
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
        "64",
        "--image-size",
        "64",
        "--seed",
        "2",
    ]);
    ovkd(&[
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
    ]);
    (run, data)
}

const CONFIG: &str = r#"
[detector]
preset = "tiny"
box_head.fc_dim = 32
box_head.image_branch = "shared_trunk"
roi_heads.batch_size_per_image = 32

[distill]
image_regions_per_image = 8

[proposals]
top_k = 20
batch = 4

[proposals.train]
steps = 2
lr = 0.001
batch_size = 2
checkpoint_every = 2

[train]
steps = 3
lr = 0.001
batch_size = 2
checkpoint_every = 2
seed = 4

[eval]
batch = 2
draw = 1

[eval.inference]
scores = "ensemble"
"#;

#[test]
fn proposals_cache_train_predict_and_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, data) = tiny_run(tmp.path());
    let config = tmp.path().join("det.toml");
    std::fs::write(&config, CONFIG).unwrap();

    // Proposals: a 2-step RPN, top 20 per training image, with their recall.
    let out = ovkd(&[
        "proposals",
        "--config",
        s(&config),
        "--run",
        s(&run),
        "--quiet",
    ]);
    assert!(out.contains("novel R@0.5"), "{out}");
    let props = run.join("proposals/proposals.parquet");
    assert!(props.is_file());
    let recall: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("proposals/recall.json")).unwrap())
            .unwrap();
    assert!(
        recall["top20"]["all"]["gt"].as_u64().unwrap() > 0,
        "{recall}"
    );

    // ... and the teacher embedded them into the cache ViLD-image reads.
    assert!(
        out.contains("cached the teacher's region embeddings"),
        "{out}"
    );
    assert!(run.join("cache/regions/index.parquet").is_file());

    // Training with both ViLD losses, then the ensemble on val.
    let out = train_detector(&config, &run, &[]);
    assert!(out.contains("trained 3 of 3 steps"), "{out}");
    assert!(out.contains("AP50 base"), "{out}");
    let csv = std::fs::read_to_string(run.join("detector/metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let k = header.iter().position(|h| *h == "vild_regions").unwrap();
    for row in csv.lines().skip(1) {
        let q: f64 = row.split(',').nth(k).unwrap().parse().unwrap();
        assert!(q > 0.0, "ViLD-image saw no cached region: {row}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval/det.json")).unwrap()).unwrap();
    for split in ["base", "novel", "all"] {
        let ap50 = report["splits"][split]["AP50"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&ap50), "{split}: {ap50}");
    }

    // The run's detections go through `ovkd eval det` like any results file.
    let dets = run.join("eval/detections.json");
    let out = ovkd(&[
        "eval",
        "det",
        "--gt",
        s(&data.join("val/instances.json")),
        "--dets",
        s(&dets),
        "--vocab",
        s(&data.join("vocab.toml")),
    ]);
    assert!(out.contains("AP50"), "{out}");

    let vocab = std::fs::read_to_string(data.join("vocab.toml")).unwrap();
    let vocab: toml::Table = toml::from_str(&vocab).unwrap();
    let classes = vocab["class"].as_array().unwrap();

    // --dump-regions: what the heads said about every val region, one line per image; it
    // changes nothing about the detections.
    let dump = tmp.path().join("regions.jsonl");
    let out = train_detector(
        &config,
        &run,
        &[
            "--eval-only",
            "--eval-name",
            "dump",
            "--dump-regions",
            s(&dump),
        ],
    );
    assert!(out.contains("AP50 base"), "{out}");
    assert_eq!(
        std::fs::read(run.join("eval/dump.detections.json")).unwrap(),
        std::fs::read(&dets).unwrap()
    );
    let text = std::fs::read_to_string(&dump).unwrap();
    let num_classes = classes.len();
    assert_eq!(text.lines().count(), 2, "one line per val image");
    for line in text.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let n = r["boxes"].as_array().unwrap().len();
        assert!(n > 0, "{line}");
        assert_eq!(r["proposal_scores"].as_array().unwrap().len(), n);
        let text_rows = r["text_logits"].as_array().unwrap();
        let image_rows = r["image_cosines"].as_array().unwrap();
        assert_eq!((text_rows.len(), image_rows.len()), (n, n));
        let c = image_rows[0].as_array().unwrap().len();
        assert_eq!(c, num_classes);
        assert_eq!(
            text_rows[0].as_array().unwrap().len(),
            1 + c,
            "background + classes"
        );
        for cos in image_rows.iter().flat_map(|row| row.as_array().unwrap()) {
            assert!(cos.as_f64().unwrap().abs() <= 1.0 + 1e-5, "{cos}");
        }
    }

    // Predict any names: one base, one novel, one the vocabulary does not have.
    let name = |split: &str| {
        classes
            .iter()
            .find(|c| c["split"].as_str() == Some(split))
            .unwrap()["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (base, novel) = (name("base"), name("novel"));
    let pred = tmp.path().join("pred");
    let images: Vec<_> = std::fs::read_dir(data.join("val/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let list = format!("{base},{novel},purple blob");
    let mut args = vec![
        "predict",
        "--classes",
        &list,
        "--checkpoint",
        s(&run),
        "--out",
        s(&pred),
        "--score-thresh",
        "0.0",
    ];
    args.extend(images.iter().map(|p| s(p)));
    let out = ovkd(&args);
    assert!(out.contains("detections in 2 images"), "{out}");
    let results: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(pred.join("detections.json")).unwrap())
            .unwrap();
    assert!(!results.is_empty());
    for r in &results {
        let c = r["category_id"].as_u64().unwrap();
        assert!((1..=3).contains(&c), "{r}");
        assert_eq!(r["bbox"].as_array().unwrap().len(), 4);
    }
    let splits: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(pred.join("classes.json")).unwrap()).unwrap();
    let split: Vec<&str> = splits
        .iter()
        .map(|c| c["split"].as_str().unwrap())
        .collect();
    assert_eq!(split, ["base", "novel", "novel"]);
    assert_eq!(
        std::fs::read_dir(&pred)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with("_det.png"))
            .count(),
        2
    );
}

/// `ovkd ARGS`, expected to fail: its stderr.
fn ovkd_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ovkd"))
        .args(["--device", "cpu"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "ovkd {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn baron_with_pseudo_boxes_end_to_end_and_a_bad_method_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, data) = tiny_run(tmp.path());
    let config = tmp.path().join("det.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let sets = [
        "--set",
        "distill.method=baron",
        "--set",
        "distill.pseudo_boxes=true",
        "--set",
        "distill.pseudo_box.threshold=0",
        "--set",
        "eval.inference.scores=text",
    ];
    // BARON alone: no region cache, so nothing else has made RUN/cache.
    ovkd(&[
        "proposals",
        "--config",
        s(&config),
        "--run",
        s(&run),
        "--quiet",
        "--set",
        "distill.method=baron",
    ]);
    assert!(run.join("cache/bags.parquet").is_file());
    assert!(!run.join("cache/regions").exists());
    // Again with pseudo boxes (the RPN's checkpoints are reused).
    let mut args = vec![
        "proposals",
        "--config",
        s(&config),
        "--run",
        s(&run),
        "--quiet",
        "--resume",
    ];
    args.extend(sets);
    let out = ovkd(&args);
    // Pseudo boxes need the region cache, BARON the bag cache.
    assert!(run.join("cache/regions/index.parquet").is_file(), "{out}");
    assert!(
        out.contains("BARON:") && out.contains("bags around"),
        "{out}"
    );
    assert!(run.join("cache/bags.parquet").is_file());

    let out = train_detector(&config, &run, &sets);
    assert!(out.contains("trained 3 of 3 steps"), "{out}");
    assert!(out.contains("AP50 base"), "{out}");
    // Threshold 0: every caption class the annotations lack gets a box.
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("detector/pseudo_boxes.json")).unwrap(),
    )
    .unwrap();
    let boxes = report["boxes"].as_u64().unwrap();
    assert!(
        boxes > 0 && boxes == report["candidates"].as_u64().unwrap(),
        "{report}"
    );
    assert!(report["precision"].as_f64().is_some(), "{report}");
    let csv = std::fs::read_to_string(run.join("detector/metrics.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    for col in ["baron_cls", "baron_bag", "baron_single", "baron_bags"] {
        assert!(header.split(',').any(|h| h == col), "{header}");
    }
    // The saved detector has the pseudo-word projection; predict reads it through the tower.
    let saved = std::fs::read_to_string(run.join("detector/config.toml")).unwrap();
    assert!(saved.contains("pseudo_words = 3"), "{saved}");
    // BARON trains no ViLD-image branch, so the config's shared-trunk branch is dropped
    // (untrained weights would only make noise in any score that read them).
    assert!(saved.contains("image_branch = \"none\""), "{saved}");
    assert!(out.contains("trains no image branch"), "{out}");
    let img = std::fs::read_dir(data.join("val/images"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // A BARON detector exports to a bundle that reads its pseudo-words with the bundled text
    // tower: the same detections as from the run, for given names and for the vocabulary.
    let bundle = tmp.path().join("bundle");
    ovkd(&[
        "export",
        "bundle",
        "--checkpoint",
        s(&run),
        "--out",
        s(&bundle),
    ]);
    let predict = |source: [&str; 2], classes: Option<&str>, out: &Path| {
        let mut args = vec!["predict", source[0], source[1], "--out", s(out)];
        args.extend(["--score-thresh", "0.0", s(&img)]);
        if let Some(c) = classes {
            args.extend(["--classes", c]);
        }
        let text = ovkd(&args);
        assert!(text.contains("detections in 1 images"), "{text}");
        let read = |f: &str| std::fs::read(out.join(f)).unwrap();
        (read("detections.json"), read("classes.json"))
    };
    for classes in [Some("circle,star"), None] {
        let tag = if classes.is_some() { "given" } else { "vocab" };
        let by_run = predict(
            ["--checkpoint", s(&run)],
            classes,
            &tmp.path().join(format!("pred-run-{tag}")),
        );
        let by_bundle = predict(
            ["--bundle", s(&bundle)],
            classes,
            &tmp.path().join(format!("pred-bundle-{tag}")),
        );
        assert_eq!(by_run, by_bundle, "{tag}");
        let dets: Vec<serde_json::Value> = serde_json::from_slice(&by_run.0).unwrap();
        assert!(!dets.is_empty(), "a threshold of 0 keeps detections");
        // Without --classes, the run's vocabulary with its splits.
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&by_run.1).unwrap();
        let vocab = ovkd_data::Vocabulary::load(data.join("vocab.toml")).unwrap();
        let want = if classes.is_some() {
            2
        } else {
            vocab.classes.len()
        };
        assert_eq!(listed.len(), want, "{listed:?}");
        if classes.is_none() {
            for (c, l) in vocab.classes.iter().zip(&listed) {
                assert_eq!(l["name"], c.name.as_str());
                assert_eq!(l["split"] == "novel", c.is_novel(), "{l}");
            }
        }
    }

    let err = ovkd_fails(&[
        "train",
        "detector",
        "--config",
        s(&config),
        "--run",
        s(&run),
        "--set",
        "distill.method=barn",
    ]);
    assert!(
        err.contains("distill.method") && err.contains("barn"),
        "{err}"
    );
}

/// `ovkd teacher embed` reads and crops the next image while the teacher embeds one: an image
/// missing mid-run stops it with the image named (not a hang, not a half-written record), the
/// images before it stay in the cache, and the rerun resumes there and writes the vectors a run
/// without the gap writes.
#[test]
fn teacher_embed_stops_at_a_missing_image_and_resumes_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, data) = tiny_run(tmp.path());
    let train = data.join("train");
    let teacher = run.join("teacher");
    let embed = |out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_ovkd"))
            .args(["--device", "cpu", "teacher", "embed", "--checkpoint"])
            .args([s(&teacher), "--split", s(&train), "--out", s(out)])
            .args(["--flush-every", "1"])
            .output()
            .unwrap()
    };
    let full = tmp.path().join("full");
    assert!(embed(&full).status.success());

    let mut images: Vec<_> = std::fs::read_dir(train.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    images.sort();
    assert_eq!(images.len(), 4);
    let hidden = images[2].clone();
    let aside = tmp.path().join("aside.png");
    std::fs::rename(&hidden, &aside).unwrap();
    let part = tmp.path().join("part");
    let out = embed(&part);
    let err = String::from_utf8_lossy(&out.stderr);
    let name = hidden.file_name().unwrap().to_str().unwrap();
    assert!(!out.status.success() && err.contains(name), "{err}");

    std::fs::rename(&aside, &hidden).unwrap();
    let out = embed(&part);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("2 images to embed (2 already done)"),
        "{stdout}"
    );
    let shard = |dir: &Path| std::fs::read(dir.join("shard-0-of-1.f16")).unwrap();
    assert!(!shard(&full).is_empty());
    assert_eq!(shard(&part), shard(&full));
}
