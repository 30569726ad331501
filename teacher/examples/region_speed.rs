//! Region-embedding throughput of a ViT-B/32-sized CLIP image tower with random weights.
//!
//! `cargo run --release -p ovkd-teacher --example region_speed -- [--crops N] [--batch B]
//! [--dump crops.safetensors]`. Prints crops/s for the model alone (preprocessed crops in,
//! normalised embeddings out) and end to end (image + boxes in: cropping both the 1x and 1.5x
//! views, preprocessing, encoding, pairing). `--dump` writes the exact crops it encoded, so
//! that the reference run (bench/teacher_speed.py) measures transformers on the same inputs.

use std::time::Instant;

use burn::tensor::Device;
use ovkd_teacher::clip::{ClipConfig, ClipModel};
use ovkd_teacher::embed::Teacher;
use ovkd_teacher::tokenizer::{ClipTokenizer, build_word_level};
use ovkd_teacher::weights::{HostTensor, WeightMap};
use rand::{Rng, SeedableRng};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let crops: usize = arg("--crops")
        .map(|s| s.parse().expect("--crops N"))
        .unwrap_or(64);
    let batch: usize = arg("--batch")
        .map(|s| s.parse().expect("--batch B"))
        .unwrap_or(32);
    let reps: usize = arg("--reps")
        .map(|s| s.parse().expect("--reps R"))
        .unwrap_or(2);
    let device = Device::flex();
    // transformers' CLIPConfig defaults are ViT-B/32 (width 768, 12 layers, patch 32, 224 px).
    let cfg: ClipConfig = serde_json::from_str("{}").expect("defaults");
    let model = ClipModel::random(&cfg, 0, &device).expect("random model");
    let dir = std::env::temp_dir().join(format!("ovkd-region-speed-{}", std::process::id()));
    build_word_level(&["a photo".to_string()], &dir.join("tokenizer.json")).expect("tokenizer");
    let tok = ClipTokenizer::from_file(&dir.join("tokenizer.json"), 77).expect("tokenizer");
    let mut teacher = Teacher::new(model, tok, "random".into(), &device);
    teacher.max_batch = batch;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let img = image::RgbImage::from_fn(640, 480, |_, _| {
        image::Rgb([rng.random(), rng.random(), rng.random()])
    });
    let boxes: Vec<[f32; 4]> = (0..crops / 2)
        .map(|_| {
            let x1 = rng.random_range(0.0..500.0f32);
            let y1 = rng.random_range(0.0..380.0f32);
            [
                x1,
                y1,
                x1 + rng.random_range(20.0..140.0),
                y1 + rng.random_range(20.0..100.0),
            ]
        })
        .collect();
    let px = teacher.region_crops(&img, &boxes).expect("crops");
    let n = 2 * boxes.len();
    if let Some(path) = arg("--dump") {
        let mut m = WeightMap::new(std::path::Path::new(&path));
        m.insert(
            "pixel_values".into(),
            HostTensor {
                shape: vec![n, 3, 224, 224],
                data: px.clone(),
            },
        );
        m.save_safetensors(std::path::Path::new(&path))
            .expect("dump");
    }
    // Warm-up.
    let _ = teacher
        .embed_pixels(&px[..3 * 224 * 224 * batch.min(n)], batch.min(n))
        .into_data();
    let mut best_model = f64::INFINITY;
    let mut best_e2e = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        let _ = teacher.embed_pixels(&px, n).into_data();
        best_model = best_model.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let _ = teacher
            .region_embeds(&img, &boxes)
            .expect("regions")
            .into_data();
        best_e2e = best_e2e.min(t.elapsed().as_secs_f64());
    }
    println!(
        "ovkd cpu (burn-flex) model only   : {:8.2} crops/s ({n} crops, batch {batch})",
        n as f64 / best_model
    );
    println!(
        "ovkd cpu (burn-flex) end to end   : {:8.2} crops/s ({} boxes x 2 crops)",
        n as f64 / best_e2e,
        boxes.len()
    );
    let _ = std::fs::remove_dir_all(dir);
}
