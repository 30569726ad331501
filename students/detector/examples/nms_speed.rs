//! Times the RPN's host-side selection at R50-FPN scale: `nms` on 2,000 random boxes at IoU 0.7
//! (most of them kept, as with an untrained RPN), and the pre-NMS top 2,000 of a 49,152-anchor
//! level by `top_by_score_desc` against a full stable sort:
//!
//! ```sh
//! cargo run --release -p ovkd-detector --example nms_speed
//! ```

use ovkd_detector::nms::{nms, sort_by_score_desc, top_by_score_desc};
use rand::{Rng, SeedableRng};

#[path = "support/median.rs"]
mod median;
use median::median_ms;

fn main() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for (side, size) in [(512.0f32, 40.0f32), (512.0, 120.0), (128.0, 32.0)] {
        let n = 2000;
        let boxes: Vec<[f32; 4]> = (0..n)
            .map(|_| {
                let (x, y) = (rng.random_range(0.0..side), rng.random_range(0.0..side));
                let (w, h) = (rng.random_range(4.0..size), rng.random_range(4.0..size));
                [x, y, x + w, y + h]
            })
            .collect();
        let scores: Vec<f32> = (0..n).map(|_| rng.random()).collect();
        let kept = nms(&boxes, &scores, 0.7).len();
        let ms = median_ms(21, || drop(std::hint::black_box(nms(&boxes, &scores, 0.7))));
        println!(
            "nms: {n} boxes in a {side} px square, sides 4-{size} px: {kept} kept, {ms:.2} ms"
        );
    }
    let n = 49_152;
    let scores: Vec<f32> = (0..n).map(|_| rng.random()).collect();
    let sort = median_ms(21, || {
        std::hint::black_box(&sort_by_score_desc(&scores, (0..n).collect())[..2000]);
    });
    let select = median_ms(21, || {
        std::hint::black_box(top_by_score_desc(&scores, (0..n).collect(), 2000));
    });
    println!("top 2000 of {n}: full stable sort {sort:.2} ms, selection {select:.2} ms");
}
