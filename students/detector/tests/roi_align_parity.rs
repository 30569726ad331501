//! RoIAlign against torchvision: the project's shared fixture (four single-level cases, outputs
//! and input gradients) and a multi-level case made by `bench/reference/make_detector_fixtures.py`.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::{Array, crate_path, max_abs_diff, read_safetensors};
use ovkd_backbone::FeatureMap;
use ovkd_detector::roi_align::{MultiScaleRoiAlign, Roi, RoiAlignConfig, roi_align};

const TOL: f32 = 1e-4;

fn tensor4(a: &Array, device: &Device) -> Tensor<4> {
    let s: [usize; 4] = a.shape.clone().try_into().expect("rank 4");
    Tensor::from_data(TensorData::new(a.data.clone(), s), device)
}

fn grad_of(t: &Tensor<4>, grads: &burn::tensor::Gradients) -> Vec<f32> {
    t.grad(grads)
        .expect("input gradient")
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

#[test]
fn single_level_cases_match_torchvision_outputs_and_gradients() {
    let fx = read_safetensors(&crate_path(
        "../../fixtures/roi_align/roi_align.safetensors",
    ));
    let device = Device::default().autodiff();
    for case in 0..4 {
        let get = |k: &str| &fx[&format!("case{case}.{k}")];
        let input = tensor4(get("input"), &device).require_grad();
        let rois: Vec<Roi> = get("rois")
            .data
            .chunks_exact(5)
            .map(|r| Roi {
                batch: r[0] as usize,
                bbox: [r[1], r[2], r[3], r[4]],
            })
            .collect();
        let p = &get("params").data;
        let out = roi_align(
            input.clone(),
            &rois,
            get("spatial_scale").data[0],
            [p[0] as usize, p[1] as usize],
            p[2] as i32,
            p[3] != 0.0,
        );
        assert_eq!(out.dims().to_vec(), get("output").shape, "case {case}");
        let grad_output = tensor4(get("grad_output"), &device);
        let loss = out.clone().mul(grad_output).sum();
        let out_diff = max_abs_diff(
            &out.into_data().try_to_vec::<f32>().unwrap(),
            &get("output").data,
        );
        let grads = loss.backward();
        let grad_diff = max_abs_diff(&grad_of(&input, &grads), &get("grad_input").data);
        println!(
            "case {case}: max |Δoutput| = {out_diff:.2e}, max |Δgrad_input| = {grad_diff:.2e}"
        );
        assert!(out_diff < TOL, "case {case}: output differs by {out_diff}");
        assert!(
            grad_diff < TOL,
            "case {case}: grad_input differs by {grad_diff}"
        );
    }
}

#[test]
fn multi_level_matches_torchvision_multiscale_roi_align() {
    let fx = read_safetensors(&crate_path(
        "tests/fixtures/multiscale_roi_align.safetensors",
    ));
    let device = Device::default().autodiff();
    let feats: Vec<FeatureMap> = (2..=5)
        .map(|l| FeatureMap {
            stride: 1 << l,
            tensor: tensor4(&fx[&format!("p{l}")], &device).require_grad(),
        })
        .collect();
    let mut rois = Vec::new();
    for b in 0..2 {
        for c in fx[&format!("boxes{b}")].data.chunks_exact(4) {
            rois.push(Roi {
                batch: b,
                bbox: [c[0], c[1], c[2], c[3]],
            });
        }
    }
    // torchvision's MultiScaleRoIAlign: aligned=False, sampling_ratio=2, 7x7.
    let pooler = MultiScaleRoiAlign::new(RoiAlignConfig {
        aligned: false,
        ..RoiAlignConfig::default()
    });
    let levels: Vec<f32> = pooler
        .assign_levels(&feats, &rois)
        .into_iter()
        .map(|l| l as f32)
        .collect();
    assert_eq!(levels, fx["levels"].data, "level assignment");
    let distinct: std::collections::BTreeSet<i64> = levels.iter().map(|&l| l as i64).collect();
    assert!(
        distinct.len() == 4,
        "the case should exercise several levels: {distinct:?}"
    );

    let out = pooler.forward(&feats, &rois);
    let loss = out.clone().mul(tensor4(&fx["grad_output"], &device)).sum();
    let out_diff = max_abs_diff(
        &out.into_data().try_to_vec::<f32>().unwrap(),
        &fx["output"].data,
    );
    let grads = loss.backward();
    println!("multi-level: max |Δoutput| = {out_diff:.2e}");
    assert!(out_diff < TOL, "output differs by {out_diff}");
    for (i, f) in feats.iter().enumerate() {
        let d = max_abs_diff(
            &grad_of(&f.tensor, &grads),
            &fx[&format!("grad_p{}", i + 2)].data,
        );
        println!("multi-level: max |Δgrad P{}| = {d:.2e}", i + 2);
        assert!(d < TOL, "grad of P{} differs by {d}", i + 2);
    }
}
