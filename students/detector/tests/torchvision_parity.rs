//! Anchors, box coding, matching and NMS against numbers made with torchvision
//! (`bench/reference/make_detector_fixtures.py`).

mod common;

use common::{boxes, floats, ints, max_abs_diff, read_json};
use ovkd_detector::boxes::iou_matrix;
use ovkd_detector::{AnchorConfig, BoxCoder, Matcher, batched_nms, nms};

fn nested_floats(v: &serde_json::Value) -> Vec<Vec<f32>> {
    v.as_array().unwrap().iter().map(floats).collect()
}

#[test]
fn anchors_match_torchvision_anchor_generator() {
    for (i, case) in read_json("tests/fixtures/anchors.json")
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let cfg = AnchorConfig {
            sizes: nested_floats(&case["sizes"]),
            aspect_ratios: nested_floats(&case["aspect_ratios"]),
            offset: 0.0,
        };
        let grids: Vec<[usize; 2]> = case["grid_sizes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let g = ints(g);
                [g[0] as usize, g[1] as usize]
            })
            .collect();
        let image = ints(&case["image_size"]);
        let got = cfg.grid_anchors(&grids, [image[0] as usize, image[1] as usize]);
        let want = boxes(&case["anchors"]);
        assert_eq!(got.len(), want.len(), "case {i}: anchor count");
        // torchvision's values are integers (rounded half sizes on integer shifts): exact.
        assert_eq!(got.0, want, "case {i}");
    }
}

#[test]
fn box_coder_matches_torchvision() {
    for case in read_json("tests/fixtures/box_coder.json")
        .as_array()
        .unwrap()
    {
        let w = floats(&case["weights"]);
        let coder = BoxCoder::new([w[0], w[1], w[2], w[3]]);
        let refs = boxes(&case["references"]);
        let enc = coder.encode(&boxes(&case["targets"]), &refs);
        let dec = coder.decode(&boxes(&case["deltas"]), &refs);
        let flat = |v: Vec<[f32; 4]>| v.into_iter().flatten().collect::<Vec<_>>();
        let de = max_abs_diff(&flat(enc), &flat(boxes(&case["encoded"])));
        let dd = max_abs_diff(&flat(dec), &flat(boxes(&case["decoded"])));
        assert!(de < 1e-5, "weights {w:?}: encode differs by {de}");
        // Decoded boxes reach ~1000 px (the clamp), so compare at f32 resolution there.
        assert!(dd < 1e-3, "weights {w:?}: decode differs by {dd}");
    }
}

#[test]
fn matcher_matches_torchvision() {
    for case in read_json("tests/fixtures/matcher.json").as_array().unwrap() {
        let m = Matcher::new(
            case["high"].as_f64().unwrap() as f32,
            case["low"].as_f64().unwrap() as f32,
            case["allow_low_quality_matches"].as_bool().unwrap(),
        );
        let preds = boxes(&case["pred_boxes"]);
        let q = iou_matrix(&boxes(&case["gt_boxes"]), &preds);
        let got: Vec<i64> = m
            .assign(&q, preds.len())
            .into_iter()
            .map(|x| x.code())
            .collect();
        assert_eq!(got, ints(&case["matches"]), "{m:?}");
    }
}

#[test]
fn nms_matches_torchvision() {
    for case in read_json("tests/fixtures/nms.json").as_array().unwrap() {
        let b = boxes(&case["boxes"]);
        let s = floats(&case["scores"]);
        let t = case["iou_threshold"].as_f64().unwrap() as f32;
        let keep: Vec<i64> = nms(&b, &s, t).into_iter().map(|i| i as i64).collect();
        assert_eq!(keep, ints(&case["keep"]), "nms at {t}");
        let idxs: Vec<usize> = ints(&case["idxs"])
            .into_iter()
            .map(|i| i as usize)
            .collect();
        let keep: Vec<i64> = batched_nms(&b, &s, &idxs, t)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        assert_eq!(keep, ints(&case["batched_keep"]), "batched_nms at {t}");
    }
}
