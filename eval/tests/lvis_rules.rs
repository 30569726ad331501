//! A hand-made federated case; expected statistics are the `lvis` package's (0.5.3,
//! `LVISEval(..., iou_type="bbox")`) for the same inputs.

use ovkd_eval::{
    Detection, GroundTruth, LVIS_STAT_NAMES, LvisEvaluator, Rules, evaluate_detections,
};

const GT: &str = r#"{
  "images": [{"id": 1, "neg_category_ids": [2], "not_exhaustive_category_ids": []},
             {"id": 2, "neg_category_ids": [], "not_exhaustive_category_ids": [2]}],
  "categories": [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "r"}],
  "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100},
                  {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 20, 20], "area": 400}]}"#;

fn det(image_id: i64, category_id: i64, bbox: [f64; 4], score: f64) -> Detection {
    Detection {
        image_id,
        category_id,
        bbox,
        score,
    }
}

#[test]
fn negative_unlisted_and_not_exhaustive_categories() {
    let gt = GroundTruth::from_json(GT.as_bytes(), "gt").unwrap();
    let dets = [
        // Image 1: a true positive of category 1, a false positive of category 2, which the
        // image lists as verified absent (so it counts).
        det(1, 1, [0.0, 0.0, 10.0, 10.0], 0.5),
        det(1, 2, [50.0, 50.0, 10.0, 10.0], 0.9),
        // Image 2: category 1 is neither annotated nor negative there: dropped.
        det(2, 1, [50.0, 50.0, 10.0, 10.0], 0.95),
        // Category 2 is not exhaustively annotated: the unmatched detection is ignored.
        det(2, 2, [0.0, 0.0, 20.0, 20.0], 0.4),
        det(2, 2, [100.0, 100.0, 20.0, 20.0], 0.99),
    ];
    let r = evaluate_detections(&gt, &dets, None).unwrap();
    assert_eq!(r.rules, Rules::Lvis);
    let want = [
        0.75,
        0.75,
        0.75,
        0.75,
        -1.0,
        -1.0,
        0.5,
        -1.0,
        0.9999999999999998,
        1.0,
        1.0,
        -1.0,
        -1.0,
    ];
    let got: Vec<f64> = LVIS_STAT_NAMES.iter().map(|n| r.stat(n).unwrap()).collect();
    assert_eq!(got, want);
}

#[test]
fn lvis_rules_need_every_category_frequency() {
    let doc = GT.replace(r#", "frequency": "r""#, "");
    let gt = GroundTruth::from_json(doc.as_bytes(), "gt").unwrap();
    let e = LvisEvaluator::new(&gt, &[]).err().unwrap().to_string();
    assert_eq!(
        e,
        "ground truth categories[1] (id 2): field `frequency`: missing (LVIS rules need `r`, `c` or `f` on every category)"
    );
    // COCO rules still apply to the same file when asked for.
    let r = evaluate_detections(&gt, &[], Some(Rules::Coco)).unwrap();
    assert_eq!(r.stat("AP"), Some(0.0));
}
