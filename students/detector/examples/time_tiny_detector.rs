//! Times the tiny detector on a 4x3x128x128 batch: training forward, backward, optimizer step,
//! and inference forward. Run with
//! `cargo run --release -p ovkd-detector --example time_tiny_detector [-- STEPS]`.

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use ovkd_detector::box_head::l2_normalize;
use ovkd_detector::{Boxes, DetectorConfig, ImageBatch, Targets};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let device = Device::default().autodiff();
    device.seed(0);
    let embed_dim = 512;
    let cfg = DetectorConfig::tiny(embed_dim);
    let mut model = cfg.init(&device).expect("tiny config is valid");
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (b, s) = (4, 128);
    let images: Vec<Vec<f32>> = (0..b)
        .map(|_| (0..3 * s * s).map(|_| rng.random::<f32>()).collect())
        .collect();
    let views: Vec<(&[f32], [usize; 2])> = images.iter().map(|i| (i.as_slice(), [s, s])).collect();
    let batch = ImageBatch::from_chw(&views, 32, &device).expect("valid images");
    let targets: Vec<Targets> = (0..b)
        .map(|_| {
            let n = 4;
            let boxes = (0..n)
                .map(|_| {
                    let (x, y) = (
                        rng.random_range(0.0..90.0f32),
                        rng.random_range(0.0..90.0f32),
                    );
                    let (w, h) = (
                        rng.random_range(10.0..38.0f32),
                        rng.random_range(10.0..38.0f32),
                    );
                    [x, y, x + w, y + h]
                })
                .collect();
            Targets {
                boxes: Boxes(boxes),
                labels: (0..n).map(|i| i % 5).collect(),
            }
        })
        .collect();
    let distill: Vec<Boxes> = targets.iter().map(|t| t.boxes.clone()).collect();
    let text = l2_normalize(Tensor::<2>::random(
        [5, embed_dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(1e-4)
        .init();

    let (mut t_fwd, mut t_bwd, mut t_opt) = (0.0, 0.0, 0.0);
    for step in 0..steps + 1 {
        let t0 = Instant::now();
        let out = model
            .forward_train(&batch, &targets, text.clone(), Some(&distill), &mut rng)
            .expect("valid batch");
        let total = out.losses.total();
        let loss = total.clone().into_data().try_to_vec::<f32>().unwrap()[0];
        let t1 = Instant::now();
        let grads = GradientsParams::from_grads(total.backward(), &model);
        let t2 = Instant::now();
        model = optim.step(1e-4, model, grads);
        // Force the update to finish before timing stops.
        let _ = model.box_head.bbox_pred.weight.val().into_data();
        let t3 = Instant::now();
        if step > 0 {
            t_fwd += (t1 - t0).as_secs_f64();
            t_bwd += (t2 - t1).as_secs_f64();
            t_opt += (t3 - t2).as_secs_f64();
        }
        eprintln!(
            "step {step}: loss {loss:.4}, fwd {:.3}s bwd {:.3}s opt {:.3}s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64()
        );
    }
    let valid = model.valid();
    let plain = ImageBatch {
        images: batch.images.clone().inner(),
        sizes: batch.sizes.clone(),
    };
    let _ = valid.forward_inference(&plain);
    let t0 = Instant::now();
    for _ in 0..steps {
        let _ = valid.forward_inference(&plain);
    }
    let t_inf = t0.elapsed().as_secs_f64() / steps as f64;
    let n = steps as f64;
    println!("| phase (batch 4x3x128x128, tiny detector, cpu) | seconds |");
    println!("| --- | --- |");
    println!(
        "| train forward (incl. RPN/RoI bookkeeping, losses) | {:.3} |",
        t_fwd / n
    );
    println!("| backward | {:.3} |", t_bwd / n);
    println!("| AdamW step | {:.3} |", t_opt / n);
    println!("| train step total | {:.3} |", (t_fwd + t_bwd + t_opt) / n);
    println!("| inference forward | {:.3} |", t_inf);
}
