//! Times the host's region crops (ViLD's 1x and 1.5x views, resized to 224 x 224 and
//! normalised) of 300 boxes on a 640 x 480 image, as `ovkd teacher embed` prepares them per
//! image: one crop after another on one thread, and `PreprocessConfig::region_crops` (boxes in
//! parallel on every core): `cargo run --release -p ovkd-teacher --example crop_speed`.
use std::time::Instant;

use image::RgbImage;
use ovkd_teacher::embed::VILD_CONTEXT;
use ovkd_teacher::preprocess::{PreprocessConfig, scale_box};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The median of 7 runs of `f`, in seconds.
fn median<F: FnMut() -> Vec<f32>>(mut f: F) -> (f64, Vec<f32>) {
    let mut out = f();
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            out = f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[3], out)
}

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (w, h) = (640u32, 480u32);
    let img = RgbImage::from_fn(w, h, |_, _| {
        image::Rgb([rng.random(), rng.random(), rng.random()])
    });
    let boxes: Vec<[f32; 4]> = (0..300)
        .map(|_| {
            let bw = rng.random_range(8.0..320.0f32);
            let bh = rng.random_range(8.0..240.0f32);
            let x = rng.random_range(0.0..w as f32 - bw);
            let y = rng.random_range(0.0..h as f32 - bh);
            [x, y, x + bw, y + bh]
        })
        .collect();
    let p = PreprocessConfig::clip(224);
    let (serial, a) = median(|| {
        // As `Teacher::region_crops` did before session 14.
        let mut out = Vec::with_capacity(boxes.len() * 2 * 3 * 224 * 224);
        for b in &boxes {
            out.extend(p.crop(&img, *b).unwrap());
            out.extend(p.crop(&img, scale_box(*b, VILD_CONTEXT, w, h)).unwrap());
        }
        out
    });
    let (parallel, b) = median(|| p.region_crops(&img, &boxes, VILD_CONTEXT).unwrap());
    assert_eq!(a, b, "the parallel crops differ from the serial ones");
    let n = 2 * boxes.len();
    println!(
        "{n} crops: one thread {:.1} ms ({:.0} crops/s); region_crops on {} threads {:.1} ms ({:.0} crops/s)",
        1e3 * serial,
        n as f64 / serial,
        rayon::current_num_threads(),
        1e3 * parallel,
        n as f64 / parallel
    );
}
