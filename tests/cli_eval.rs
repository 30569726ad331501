//! `ovkd eval det` and `ovkd eval seg` end to end: the JSON they write has the names other
//! tools read, the numbers are the reference's, and bad input fails with a message naming the
//! record.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn ovkd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ovkd"))
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

#[test]
fn det_writes_stats_per_category_and_splits() {
    let case = Path::new(ROOT).join("fixtures/coco_eval/small");
    let dir = tempfile::tempdir().unwrap();
    let expected = read_json(&case.join("expected.json"));
    // A vocabulary over the case's categories: the first two base, the rest novel.
    let ids: Vec<String> = expected["per_category"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut vocab = String::from("name = \"t\"\n");
    for (i, id) in ids.iter().enumerate() {
        let split = if i < 2 { "base" } else { "novel" };
        vocab.push_str(&format!(
            "[[class]]\nid = {id}\nname = \"c{id}\"\nsplit = \"{split}\"\n"
        ));
    }
    std::fs::write(dir.path().join("v.toml"), vocab).unwrap();
    let out = dir.path().join("eval/det.json");
    let plots = dir.path().join("plots");
    let st = ovkd()
        .args(["eval", "det", "--gt"])
        .arg(case.join("gt.json"))
        .arg("--dets")
        .arg(case.join("dets.json"))
        .arg("--vocab")
        .arg(dir.path().join("v.toml"))
        .arg("--out")
        .arg(&out)
        .arg("--plots")
        .arg(&plots)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let stdout = String::from_utf8_lossy(&st.stdout);
    assert!(stdout.contains("| AP | AP50 | AP75 |"), "{stdout}");
    let j = read_json(&out);
    for (name, want) in expected["stats"].as_object().unwrap() {
        let got = j["stats"][name].as_f64().unwrap();
        assert!((got - want.as_f64().unwrap()).abs() <= 1e-9, "{name}");
    }
    for id in &ids {
        let c = &j["per_category"][id];
        for k in ["ap", "ap50"] {
            let want = expected["per_category"][id][k].as_f64().unwrap();
            assert!((c[k].as_f64().unwrap() - want).abs() <= 1e-9, "{id} {k}");
        }
        assert!(c["recall"].is_number());
    }
    for split in ["base", "novel", "all"] {
        for k in ["AP", "AP50"] {
            let v = j["splits"][split][k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{split} {k} = {v}");
        }
    }
    // "all" covers every category, so it is the overall AP.
    let all = j["splits"]["all"]["AP"].as_f64().unwrap();
    assert!((all - j["stats"]["AP"].as_f64().unwrap()).abs() <= 1e-12);
    for f in [
        "pr_base.png",
        "pr_novel.png",
        "pr_all.png",
        "ap_per_class.png",
    ] {
        let (w, h) = png_size(&plots.join(f));
        assert!(w >= 300 && h >= 300, "{f}: {w}x{h}");
    }
    // Written atomically: nothing but the report in its folder.
    assert_eq!(std::fs::read_dir(out.parent().unwrap()).unwrap().count(), 1);
}

#[test]
fn det_rejects_a_malformed_record_by_index_and_field() {
    let case = Path::new(ROOT).join("fixtures/coco_eval/small");
    let dir = tempfile::tempdir().unwrap();
    let dets = dir.path().join("dets.json");
    std::fs::write(
        &dets,
        r#"[{"image_id": 3, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5},
            {"image_id": 3, "category_id": 1, "bbox": [1, 2, 3, 4], "score": NaN}]"#,
    )
    .unwrap();
    let st = ovkd()
        .args(["eval", "det", "--gt"])
        .arg(case.join("gt.json"))
        .arg("--dets")
        .arg(&dets)
        .output()
        .unwrap();
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(
        err.contains("results record 1: field `score`: is NaN"),
        "{err}"
    );
}

#[test]
fn det_with_empty_results_gives_zeros() {
    let case = Path::new(ROOT).join("fixtures/coco_eval/small");
    let dir = tempfile::tempdir().unwrap();
    let dets = dir.path().join("dets.json");
    std::fs::write(&dets, "[]").unwrap();
    let out = dir.path().join("det.json");
    let st = ovkd()
        .args(["eval", "det", "--gt"])
        .arg(case.join("gt.json"))
        .arg("--dets")
        .arg(&dets)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let j = read_json(&out);
    assert_eq!(j["stats"]["AP"].as_f64(), Some(0.0));
    assert_eq!(j["stats"]["AR100"].as_f64(), Some(0.0));
}

#[test]
fn seg_writes_the_reference_keys_and_splits() {
    let case = Path::new(ROOT).join("fixtures/miou");
    let expected = read_json(&case.join("expected.json"));
    let dir = tempfile::tempdir().unwrap();
    let mut vocab = String::new();
    for c in 0..12 {
        let split = if c < 8 { "seen" } else { "unseen" };
        vocab.push_str(&format!(
            "[[class]]\nid = {c}\nname = \"k{c}\"\nsplit = \"{split}\"\n"
        ));
    }
    std::fs::write(dir.path().join("v.toml"), vocab).unwrap();
    let out = dir.path().join("seg.json");
    let st = ovkd()
        .args(["eval", "seg", "--num-classes", "12", "--gt"])
        .arg(case.join("gt"))
        .arg("--pred")
        .arg(case.join("pred"))
        .arg("--vocab")
        .arg(dir.path().join("v.toml"))
        .arg("--out")
        .arg(&out)
        .arg("--plots")
        .arg(dir.path().join("plots"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let j = read_json(&out);
    for key in expected.as_object().unwrap().keys() {
        assert!(j.get(key).is_some(), "missing {key}");
    }
    for k in ["mIoU", "mAcc", "aAcc"] {
        let d = j[k].as_f64().unwrap() - expected[k].as_f64().unwrap();
        assert!(d.abs() <= 1e-9, "{k}");
    }
    // seen = classes 0..8 (all present); unseen = 8..12, of which 11 is absent (NaN).
    let iou: Vec<f64> = expected["iou"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect();
    let seen = iou[..8].iter().sum::<f64>() / 8.0;
    let unseen = iou[8..11].iter().sum::<f64>() / 3.0;
    assert!((j["seen_mIoU"].as_f64().unwrap() - seen).abs() <= 1e-12);
    assert!((j["unseen_mIoU"].as_f64().unwrap() - unseen).abs() <= 1e-12);
    let h = 2.0 * seen * unseen / (seen + unseen);
    assert!((j["hIoU"].as_f64().unwrap() - h).abs() <= 1e-12);
    let (w, _) = png_size(&dir.path().join("plots/iou_per_class.png"));
    assert!(w >= 300);
}
