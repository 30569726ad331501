//! The tiny detector end to end: shapes of the training and inference outputs, and a single
//! synthetic image overfit for a few dozen steps (the loss must fall by a clear margin).

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use ovkd_detector::box_head::l2_normalize;
use ovkd_detector::boxes::iou;
use ovkd_detector::{
    Boxes, DetectorConfig, ImageBatch, PostprocessConfig, Targets, select_detections,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A 64x64 grey image with a red square and a blue bar, and their boxes.
fn synthetic_image() -> (Vec<f32>, [usize; 2], Targets) {
    let (h, w) = (64, 64);
    let mut img = vec![0.5f32; 3 * h * w];
    let mut paint = |x0: usize, y0: usize, x1: usize, y1: usize, rgb: [f32; 3]| {
        for (c, v) in rgb.iter().enumerate() {
            for y in y0..y1 {
                for x in x0..x1 {
                    img[(c * h + y) * w + x] = *v;
                }
            }
        }
    };
    paint(8, 10, 30, 32, [0.9, 0.1, 0.1]);
    paint(36, 40, 60, 52, [0.1, 0.2, 0.9]);
    let targets = Targets {
        boxes: Boxes(vec![[8.0, 10.0, 30.0, 32.0], [36.0, 40.0, 60.0, 52.0]]),
        labels: vec![0, 2],
    };
    (img, [h, w], targets)
}

/// The tests seed the device's random generator, which burn-flex shares process-wide: run them
/// one at a time so each starts from its own seed.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tiny_config() -> DetectorConfig {
    let mut cfg = DetectorConfig::tiny(32);
    cfg.box_head.fc_dim = 64;
    cfg.roi_heads.batch_size_per_image = 64;
    cfg.rpn.pre_nms_top_n_train = 200;
    cfg.rpn.post_nms_top_n_train = 100;
    cfg.rpn.pre_nms_top_n_test = 200;
    cfg.rpn.post_nms_top_n_test = 50;
    cfg
}

#[test]
fn tiny_detector_overfits_one_image() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::default().autodiff();
    device.seed(0);
    let cfg = tiny_config();
    let mut model = cfg.init(&device).unwrap();
    let (img, size, targets) = synthetic_image();
    let batch = ImageBatch::from_chw(&[(&img, size)], 32, &device).unwrap();
    let text = l2_normalize(Tensor::<2>::random(
        [3, 32],
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.0)
        .init();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut history = Vec::new();
    let mut terms = Vec::new();
    for step in 0..40 {
        let out = model
            .forward_train(&batch, &[targets.clone()], text.clone(), None, &mut rng)
            .unwrap();
        let total = out.losses.total();
        let v = total.clone().into_data().try_to_vec::<f32>().unwrap()[0];
        assert!(v.is_finite(), "step {step}: loss {v}");
        history.push(v);
        terms.push(out.losses.values().map(|(_, v)| v));
        let grads = GradientsParams::from_grads(total.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    let first: f32 = history[..3].iter().sum::<f32>() / 3.0;
    let last: f32 = history[history.len() - 3..].iter().sum::<f32>() / 3.0;
    println!("loss {first:.3} → {last:.3}: {history:?}");
    assert!(
        last < 0.5 * first,
        "loss did not fall enough: {first} → {last}"
    );

    // The trained model finds the two objects with their classes.
    let valid = model.valid();
    let batch = ImageBatch::from_chw(&[(&img, size)], 32, &Device::default()).unwrap();
    let preds = valid.forward_inference(&batch);
    let p = &preds[0];
    let probs = valid
        .class_probs(p.region_embeds.clone(), text.clone().inner())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let dets = select_detections(&p.boxes, &probs, 3, size, &PostprocessConfig::default());
    println!("detections: {dets:?}");
    // Each object is found (IoU > 0.5) with its class among the two best detections.
    for (b, &l) in targets.boxes.as_slice().iter().zip(&targets.labels) {
        let hit =
            (0..dets.len().min(2)).any(|i| iou(b, &dets.boxes.0[i]) > 0.5 && dets.labels[i] == l);
        assert!(
            hit,
            "object {b:?} (class {l}) not among the top detections {dets:?}"
        );
    }
}

#[test]
fn train_and_inference_outputs_have_the_documented_shapes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::default().autodiff();
    device.seed(1);
    let cfg = tiny_config();
    let model = cfg.init(&device).unwrap();
    let (img, size, targets) = synthetic_image();
    // Mixed sizes: the second image is smaller and gets padded.
    let small: Vec<f32> = (0..3 * 40 * 50).map(|i| (i % 7) as f32 / 7.0).collect();
    let batch = ImageBatch::from_chw(&[(&img, size), (&small, [40, 50])], 32, &device).unwrap();
    assert_eq!(batch.padded_size(), [64, 64]);
    let text = l2_normalize(Tensor::<2>::random(
        [3, 32],
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    let small_targets = Targets {
        boxes: Boxes(vec![[5.0, 5.0, 20.0, 30.0]]),
        labels: vec![1],
    };
    let distill = vec![
        Boxes(vec![[0.0, 0.0, 20.0, 20.0], [10.0, 10.0, 50.0, 40.0]]),
        Boxes(vec![[1.0, 2.0, 30.0, 38.0]]),
    ];
    let out = model
        .forward_train(
            &batch,
            &[targets, small_targets],
            text.clone(),
            Some(&distill),
            &mut ChaCha8Rng::seed_from_u64(3),
        )
        .unwrap();
    let r: usize = out.samples.iter().map(|s| s.len()).sum();
    assert_eq!(out.roi_logits.dims(), [r, 4]);
    assert_eq!(out.roi_region_embeds.dims(), [r, 32]);
    assert_eq!(out.distill_embeds.as_ref().unwrap().dims(), [3, 32]);
    for (name, v) in out.losses.values() {
        assert!(v.is_finite() && v >= 0.0, "{name} = {v}");
    }
    // The distillation embeddings are differentiable back to the backbone.
    let grads = out.distill_embeds.unwrap().sum().backward();
    assert!(
        model
            .backbone
            .body
            .conv1
            .weight
            .val()
            .grad(&grads)
            .is_some()
    );

    let preds = model.valid().forward_inference(&ImageBatch {
        images: batch.images.clone().inner(),
        sizes: batch.sizes.clone(),
    });
    assert_eq!(preds.len(), 2);
    for (p, [h, w]) in preds.iter().zip([[64usize, 64], [40, 50]]) {
        let n = p.boxes.len();
        assert!(n > 0 && n <= 50);
        assert_eq!(p.proposals.len(), n);
        assert_eq!(p.region_embeds.dims(), [n, 32]);
        for b in p.boxes.as_slice() {
            assert!(b[2] <= w as f32 && b[3] <= h as f32 && b[0] >= 0.0 && b[1] >= 0.0);
        }
    }
    assert!(matches!(
        model.forward_train(&batch, &[], text, None, &mut ChaCha8Rng::seed_from_u64(0)),
        Err(ovkd_detector::DetectorError::BatchMismatch { .. })
    ));
}
