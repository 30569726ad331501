//! The vendored mmsegmentation-convention fixture: per-class IoU and accuracy (null = NaN),
//! mIoU, mAcc and aAcc to 1e-9.

use ovkd_eval::{SegEvaluator, evaluate_dirs, read_label_png};
use std::path::Path;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/miou");

fn close(got: f64, want: &serde_json::Value, what: &str) {
    match want.as_f64() {
        None => assert!(
            want.is_null() && got.is_nan(),
            "{what}: got {got}, want null"
        ),
        Some(w) => assert!((got - w).abs() <= 1e-9, "{what}: got {got}, want {w}"),
    }
}

#[test]
fn directories_match_the_reference() {
    let dir = Path::new(FIXTURE);
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let n = expected["num_classes"].as_u64().unwrap() as usize;
    let r = evaluate_dirs(&dir.join("gt"), &dir.join("pred"), n, 255).unwrap();
    let images: Vec<String> = expected["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(r.images, images);
    for c in 0..n {
        close(r.iou[c], &expected["iou"][c], &format!("iou[{c}]"));
        close(r.acc[c], &expected["acc"][c], &format!("acc[{c}]"));
    }
    close(r.m_iou, &expected["mIoU"], "mIoU");
    close(r.m_acc, &expected["mAcc"], "mAcc");
    close(r.a_acc, &expected["aAcc"], "aAcc");
    // The JSON has the reference's keys, with null for NaN.
    let j: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    for key in [
        "num_classes",
        "ignore_index",
        "images",
        "iou",
        "acc",
        "mIoU",
        "mAcc",
        "aAcc",
    ] {
        assert!(j.get(key).is_some(), "missing {key}");
    }
    assert!(j["iou"][11].is_null());
    assert!(j["acc"][10].is_null());
}

#[test]
fn arrays_fed_one_by_one_give_the_same_scores() {
    // The in-process path (a segmenter's argmax, no PNGs) must agree with the directory path.
    let dir = Path::new(FIXTURE);
    let mut ev = SegEvaluator::new(12);
    let mut names: Vec<_> = std::fs::read_dir(dir.join("gt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in &names {
        let (gt, _, _) = read_label_png(&dir.join("gt").join(name)).unwrap();
        let (pred, _, _) = read_label_png(&dir.join("pred").join(name)).unwrap();
        let pred: Vec<i64> = pred.into_iter().map(i64::from).collect();
        ev.add(name, &gt, &pred).unwrap();
    }
    let a = ev.report();
    let b = evaluate_dirs(&dir.join("gt"), &dir.join("pred"), 12, 255).unwrap();
    assert_eq!(a.to_json(), b.to_json());
}
