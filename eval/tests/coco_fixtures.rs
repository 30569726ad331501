//! The vendored pycocotools fixtures: all 12 statistics and every per-category AP and AP50 must
//! match to 1e-9.

use ovkd_eval::{COCO_STAT_NAMES, CocoEvaluator, GroundTruth, load_results};
use std::path::Path;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/coco_eval");

fn check_case(name: &str) {
    let dir = Path::new(FIXTURES).join(name);
    let gt = GroundTruth::from_path(&dir.join("gt.json")).unwrap();
    let dets = load_results(&dir.join("dets.json")).unwrap();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let report = CocoEvaluator::new(&gt, &dets).unwrap().evaluate();
    let mut worst = 0.0f64;
    for n in COCO_STAT_NAMES {
        let want = expected["stats"][n].as_f64().unwrap();
        let got = report.stat(n).unwrap();
        assert!(
            (got - want).abs() <= 1e-9,
            "{name} {n}: got {got}, want {want}"
        );
        worst = worst.max((got - want).abs());
    }
    let per_cat = expected["per_category"].as_object().unwrap();
    assert_eq!(
        per_cat.len(),
        report.per_category.len(),
        "{name}: category count"
    );
    for c in &report.per_category {
        let e = &per_cat[&c.id.to_string()];
        for (field, got) in [("ap", c.ap), ("ap50", c.ap50)] {
            let want = e[field].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-9,
                "{name} category {} {field}: got {got}, want {want}",
                c.id
            );
            worst = worst.max((got - want).abs());
        }
    }
    eprintln!("{name}: largest difference {worst:e}");
}

#[test]
fn small_matches_pycocotools() {
    check_case("small");
}

#[test]
fn crowded_matches_pycocotools() {
    check_case("crowded");
}

#[test]
fn many_cats_matches_pycocotools() {
    check_case("many_cats");
}
