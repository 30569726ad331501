//! Hand-made cases for the rules that decide close calls: tied scores, crowd regions, empty
//! results, malformed records. Expected statistics are pycocotools 2.0.11's for the same
//! inputs (run with `COCO.loadRes` + `COCOeval(..., "bbox")`).

use ovkd_eval::{
    COCO_STAT_NAMES, CocoEvaluator, Detection, GroundTruth, Rules, evaluate_detections,
    parse_results,
};

fn gt(anns: &str) -> GroundTruth {
    let doc = format!(
        r#"{{"images": [{{"id": 1}}, {{"id": 2}}],
            "categories": [{{"id": 1, "name": "a"}}, {{"id": 2, "name": "b"}}],
            "annotations": [{anns}]}}"#
    );
    GroundTruth::from_json(doc.as_bytes(), "gt").unwrap()
}

fn det(image_id: i64, category_id: i64, bbox: [f64; 4], score: f64) -> Detection {
    Detection {
        image_id,
        category_id,
        bbox,
        score,
    }
}

fn stats(gt: &GroundTruth, dets: &[Detection]) -> Vec<f64> {
    let r = CocoEvaluator::new(gt, dets).unwrap().evaluate();
    COCO_STAT_NAMES.iter().map(|n| r.stat(n).unwrap()).collect()
}

const BOX: &str = r#""bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0"#;

#[test]
fn tied_scores_keep_file_order_within_an_image() {
    // The false positive comes first in the file, so it ranks first: precision 1/2.
    let g = gt(&format!(
        r#"{{"id": 1, "image_id": 1, "category_id": 1, {BOX}}}"#
    ));
    let d = [
        det(1, 1, [50.0, 50.0, 10.0, 10.0], 0.5),
        det(1, 1, [0.0, 0.0, 10.0, 10.0], 0.5),
    ];
    let want = [
        0.5, 0.5, 0.5, 0.5, -1.0, -1.0, 0.0, 1.0, 1.0, 1.0, -1.0, -1.0,
    ];
    assert_eq!(stats(&g, &d), want);
}

#[test]
fn tied_scores_across_images_follow_image_id_order() {
    // Image 1's false positive outranks image 2's true positive although it comes later in
    // the file: pycocotools concatenates per image in id order before its stable sort.
    let g = gt(&format!(
        r#"{{"id": 1, "image_id": 2, "category_id": 1, {BOX}}}"#
    ));
    let d = [
        det(2, 1, [0.0, 0.0, 10.0, 10.0], 0.5),
        det(1, 1, [0.0, 0.0, 10.0, 10.0], 0.5),
    ];
    let want = [
        0.5, 0.5, 0.5, 0.5, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0,
    ];
    assert_eq!(stats(&g, &d), want);
}

#[test]
fn crowd_regions_absorb_detections_which_are_ignored() {
    let g = gt(&format!(
        r#"{{"id": 1, "image_id": 1, "category_id": 1, {BOX}}},
           {{"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 100, 200, 200],
             "area": 40000, "iscrowd": 1}}"#
    ));
    let d = [
        det(1, 1, [110.0, 110.0, 20.0, 20.0], 0.9),
        det(1, 1, [150.0, 150.0, 20.0, 20.0], 0.8),
        det(1, 1, [1.0, 1.0, 10.0, 10.0], 0.7),
        det(1, 1, [400.0, 400.0, 10.0, 10.0], 0.6),
    ];
    let want = [
        0.39999999999999997,
        0.9999999999999999,
        0.0,
        0.39999999999999997,
        -1.0,
        -1.0,
        0.0,
        0.4,
        0.4,
        0.4,
        -1.0,
        -1.0,
    ];
    assert_eq!(stats(&g, &d), want);
}

#[test]
fn empty_results_give_zeros_where_there_is_ground_truth() {
    let g = gt(&format!(
        r#"{{"id": 1, "image_id": 1, "category_id": 1, {BOX}}},
           {{"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000,
             "iscrowd": 0}}"#
    ));
    let dets = parse_results(b"[]", "dets.json").unwrap();
    let r = evaluate_detections(&g, &dets, None).unwrap();
    assert_eq!(r.rules, Rules::Coco);
    let s: Vec<f64> = COCO_STAT_NAMES.iter().map(|n| r.stat(n).unwrap()).collect();
    // No medium-sized ground truth: -1 there, as pycocotools gives; zeros elsewhere.
    assert_eq!(
        s,
        [0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0]
    );
    assert_eq!(r.per_category[0].ap, 0.0);
    assert_eq!(r.per_category[1].ap, -1.0, "category 2 has no ground truth");
}

#[test]
fn malformed_detections_name_the_record_and_field() {
    let g = gt(&format!(
        r#"{{"id": 1, "image_id": 1, "category_id": 1, {BOX}}}"#
    ));
    let ok = det(1, 1, [0.0, 0.0, 1.0, 1.0], 0.5);
    let cases = [
        (
            det(9, 1, [0.0, 0.0, 1.0, 1.0], 0.5),
            "results record 1: field `image_id`: image 9 is not in the ground truth",
        ),
        (
            det(1, 7, [0.0, 0.0, 1.0, 1.0], 0.5),
            "results record 1: field `category_id`: category 7 is not in the ground truth",
        ),
        (
            det(1, 1, [0.0, 0.0, 1.0, 1.0], f64::NAN),
            "results record 1: field `score`: is NaN",
        ),
        (
            det(1, 1, [0.0, 0.0, 1.0, -2.0], 0.5),
            "results record 1: field `bbox`: negative size (w 1, h -2) in [x, y, w, h] = [0.0, 0.0, 1.0, -2.0]",
        ),
    ];
    for (bad, msg) in cases {
        let e = CocoEvaluator::new(&g, &[ok, bad])
            .err()
            .unwrap()
            .to_string();
        assert_eq!(e, msg);
    }
}

#[test]
fn inconsistent_ground_truth_is_an_error() {
    let doc = br#"{"images": [{"id": 1}], "categories": [{"id": 1}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1},
                        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1}]}"#;
    let g = GroundTruth::from_json(doc, "gt").unwrap();
    let e = CocoEvaluator::new(&g, &[]).err().unwrap().to_string();
    assert_eq!(
        e,
        "ground truth annotations[1] (id 1): field `id`: duplicate annotation id (also annotations[0])"
    );
    let doc = br#"{"images": [{"id": 1}], "categories": [{"id": 1}],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1}]}"#;
    let g = GroundTruth::from_json(doc, "gt").unwrap();
    let e = CocoEvaluator::new(&g, &[]).err().unwrap().to_string();
    assert_eq!(
        e,
        "ground truth annotations[0] (id 1): field `image_id`: image 3 is not in `images`"
    );
}

#[test]
fn only_the_100_best_detections_per_image_and_category_count() {
    // 100 false positives outscore the one true positive: it falls past maxDets and AR is 0.
    let g = gt(&format!(
        r#"{{"id": 1, "image_id": 1, "category_id": 1, {BOX}}}"#
    ));
    let mut d: Vec<Detection> = (0..100)
        .map(|i| det(1, 1, [500.0 + i as f64, 500.0, 5.0, 5.0], 0.9))
        .collect();
    d.push(det(1, 1, [0.0, 0.0, 10.0, 10.0], 0.1));
    let r = CocoEvaluator::new(&g, &d).unwrap().evaluate();
    assert_eq!(r.stat("AR100"), Some(0.0));
    // With one false positive fewer it makes the cut (rank 100).
    d.remove(0);
    let r = CocoEvaluator::new(&g, &d).unwrap().evaluate();
    assert_eq!(r.stat("AR100"), Some(1.0));
    assert_eq!(r.stat("AR10"), Some(0.0));
}
