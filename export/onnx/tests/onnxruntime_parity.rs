//! Exports randomly initialised tiny students (every parameter and batch-norm statistic
//! perturbed, so no layer is an identity), writes the check inputs and the Burn outputs, and
//! runs `bench/onnx_check.py` in onnxruntime. Skips, saying why, when Python cannot import
//! onnxruntime (set `OVKD_ONNX_PYTHON` to a Python that can, e.g. the venv
//! `bench/onnx_check.sh` makes).

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Distribution, Tensor};
use ovkd_backbone::{NormKind, ResNetConfig};
use ovkd_detector::box_head::{ImageBranch, TrunkKind};
use ovkd_detector::{DetectorConfig, detector};
use ovkd_onnx::{DetExport, SegExport, test_image, write_model, write_safetensors};
use ovkd_segmenter::{BackgroundKind, SegmenterConfig};

/// Scales every float tensor by `1 + U(-0.2, 0.2)` and adds `U(-0.1, 0.1)`: variances stay
/// positive (they start at 1), everything else moves off its initial value.
struct Perturb;

impl ModuleMapper for Perturb {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            let shape = t.shape();
            let device = t.device();
            let m = Tensor::random(shape.clone(), Distribution::Uniform(0.8, 1.2), &device);
            let a = Tensor::random(shape, Distribution::Uniform(-0.1, 0.1), &device);
            t.mul(m).add(a)
        })
    }
}

fn python() -> Option<String> {
    let py = std::env::var("OVKD_ONNX_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import onnxruntime, onnx, numpy, safetensors"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        Some(py)
    } else {
        println!(
            "SKIPPED: `{py}` cannot import onnxruntime, onnx, numpy and safetensors \
             (set OVKD_ONNX_PYTHON, or run bench/onnx_check.sh once to make its venv)"
        );
        None
    }
}

fn check_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/onnx_check.py")
}

fn run_check(py: &str, dir: &Path, stem: &str) {
    let out = Command::new(py)
        .arg(check_script())
        .arg(dir.join(format!("{stem}.onnx")))
        .arg(dir.join(format!("{stem}.inputs.safetensors")))
        .arg(dir.join(format!("{stem}.expected.safetensors")))
        .output()
        .expect("run python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "onnx_check failed:\n{text}");
}

fn unit_rows(k: usize, d: usize, device: &Device) -> Tensor<2> {
    let t = Tensor::<2>::random([k, d], Distribution::Normal(0.0, 1.0), device);
    t.clone().div(t.square().sum_dim(1).sqrt())
}

#[test]
fn segmenter_matches_onnxruntime() {
    let device = Device::default();
    device.seed(3);
    for (norm, size) in [(NormKind::Batch, [64, 96]), (NormKind::Frozen, [96, 64])] {
        let cfg = SegmenterConfig {
            backbone: ResNetConfig {
                widths: [8, 16, 16, 24],
                stem_channels: 8,
                norm,
                ..ResNetConfig::tiny()
            },
            decoder_channels: 16,
            refine_layers: 1,
            embed_dim: 12,
            temperature: 0.07,
            background: BackgroundKind::Learned,
        };
        let model = cfg.init(&device).unwrap().map(&mut Perturb);
        let classes = unit_rows(3, 12, &device);
        let spec = SegExport {
            size: size,
            pixel_mean: [0.45, 0.5, 0.55],
            pixel_std: [0.2, 0.25, 0.3],
            class_names: vec!["star".into(), "ring".into(), "heart".into()],
        };
        let onnx = ovkd_onnx::export_segmenter(&model, classes.clone(), &spec).unwrap();
        let image = test_image(size, &device);
        let expected =
            ovkd_onnx::segmenter::reference_outputs(&model, classes, &spec, image.clone()).unwrap();
        assert_eq!(expected[0].dims, vec![1, 4, size[0], size[1]]);
        let Some(py) = python() else { return };
        let dir = tempfile::tempdir().unwrap();
        write_model(&dir.path().join("seg.onnx"), &onnx).unwrap();
        write_safetensors(
            &dir.path().join("seg.inputs.safetensors"),
            &[ovkd_onnx::NamedTensor::from_float("image", image).unwrap()],
        )
        .unwrap();
        write_safetensors(&dir.path().join("seg.expected.safetensors"), &expected).unwrap();
        run_check(&py, dir.path(), "seg");
    }
}

#[test]
fn detector_matches_onnxruntime() {
    let device = Device::default();
    device.seed(5);
    let variants = [
        (NormKind::Batch, TrunkKind::TwoFc, ImageBranch::None),
        (
            NormKind::Frozen,
            TrunkKind::FourConvOneFc,
            ImageBranch::SeparateTrunk,
        ),
    ];
    for (norm, trunk, branch) in variants {
        let mut cfg = DetectorConfig::tiny(12);
        cfg.backbone.resnet = ResNetConfig {
            widths: [8, 16, 16, 24],
            stem_channels: 8,
            norm,
            ..ResNetConfig::tiny()
        };
        cfg.backbone.fpn_channels = 16;
        cfg.box_head.in_channels = 16;
        cfg.box_head.fc_dim = 32;
        cfg.box_head.conv_dim = 8;
        cfg.box_head.trunk = trunk;
        cfg.box_head.image_branch = branch;
        cfg.rpn.post_nms_top_n_test = 20;
        let model: detector::Detector = cfg.init(&device).unwrap().map(&mut Perturb);
        let text = unit_rows(4, 12, &device);
        let size = [128, 96];
        let spec = DetExport {
            size,
            class_names: ["a", "b", "c", "d"].map(String::from).to_vec(),
        };
        let onnx = ovkd_onnx::export_detector(&model, text.clone(), &spec).unwrap();
        // A BARON head (pseudo-words for the text tower) is refused, not exported wrong.
        let mut baron = cfg.clone();
        baron.box_head.pseudo_words = 3;
        baron.box_head.word_dim = 8;
        let err = ovkd_onnx::export_detector(&baron.init(&device).unwrap(), text.clone(), &spec)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("BARON") && err.contains("export bundle"),
            "{err}"
        );
        let image = test_image(size, &device);
        let boxes = ovkd_onnx::detector::check_boxes(&model, image.clone(), 16);
        assert!(boxes.len() > 4);
        let expected =
            ovkd_onnx::detector::reference_outputs(&model, text, image.clone(), &boxes).unwrap();
        let n = boxes.len();
        let flat: Vec<f32> = boxes.iter().flatten().copied().collect();
        let boxes_t = Tensor::<2>::from_data(burn::tensor::TensorData::new(flat, [n, 4]), &device);
        let Some(py) = python() else { return };
        let dir = tempfile::tempdir().unwrap();
        write_model(&dir.path().join("det.onnx"), &onnx).unwrap();
        write_safetensors(
            &dir.path().join("det.inputs.safetensors"),
            &[
                ovkd_onnx::NamedTensor::from_float("image", image).unwrap(),
                ovkd_onnx::NamedTensor::from_float("boxes", boxes_t).unwrap(),
            ],
        )
        .unwrap();
        write_safetensors(&dir.path().join("det.expected.safetensors"), &expected).unwrap();
        run_check(&py, dir.path(), "det");
    }
}
