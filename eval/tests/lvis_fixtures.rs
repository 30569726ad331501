//! Cases made by `bench/eval_make_lvis_cases.py` with the `lvis` package (0.5.3, LVISEval
//! bbox): the 13 statistics and every per-category AP and AP50 must match to 1e-9.

use ovkd_eval::{GroundTruth, LVIS_STAT_NAMES, Rules, evaluate_detections, load_results};
use std::path::Path;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/lvis");

fn check_case(name: &str) {
    let dir = Path::new(FIXTURES).join(name);
    let gt = GroundTruth::from_path(&dir.join("gt.json")).unwrap();
    assert!(gt.has_lvis_fields());
    let dets = load_results(&dir.join("dets.json")).unwrap();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    // LVIS rules are chosen from the ground truth's fields.
    let report = evaluate_detections(&gt, &dets, None).unwrap();
    assert_eq!(report.rules, Rules::Lvis);
    let names: Vec<&str> = report.stats.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, LVIS_STAT_NAMES);
    let mut worst = 0.0f64;
    for n in LVIS_STAT_NAMES {
        let want = expected["stats"][n].as_f64().unwrap();
        let got = report.stat(n).unwrap();
        assert!(
            (got - want).abs() <= 1e-9,
            "{name} {n}: got {got}, want {want}"
        );
        worst = worst.max((got - want).abs());
    }
    let per_cat = expected["per_category"].as_object().unwrap();
    assert_eq!(per_cat.len(), report.per_category.len());
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
fn federated_filtering_matches_lvis() {
    check_case("federated");
}

#[test]
fn top_300_per_image_matches_lvis() {
    check_case("top300");
}

#[test]
fn ignore_flags_and_empty_frequency_bin_match_lvis() {
    check_case("ignore_no_rare");
}
