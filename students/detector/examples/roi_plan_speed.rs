//! Times the host side of RoIAlign at R50-FPN scale: the sparse plan of 4,096 RoIs (batch 8 x
//! 512 sampled proposals) over P2-P5 of 512 px images (`MultiScaleRoiAlign::plan`, 2 x 2 samples
//! per bin, about 2 M taps), and its transpose (the backward's, on the host):
//!
//! ```sh
//! cargo run --release -p ovkd-detector --example roi_plan_speed
//! ```

use burn::tensor::{Device, Tensor};
use ovkd_backbone::FeatureMap;
use ovkd_detector::roi_align::{MultiScaleRoiAlign, Roi, RoiAlignConfig};
use rand::{Rng, SeedableRng};

#[path = "support/median.rs"]
mod median;
use median::median_ms;

fn main() {
    // As `ovkd` does: freed buffers are kept for reuse rather than returned to the kernel.
    ovkd_backbone::ops::heap::retain_freed_memory();
    let device = Device::default();
    let (batch, side) = (8usize, 512usize);
    // The plan reads only the maps' shapes: one channel is enough.
    let features: Vec<FeatureMap> = [4usize, 8, 16, 32]
        .iter()
        .map(|&s| FeatureMap {
            stride: s,
            tensor: Tensor::zeros([batch, 1, side / s, side / s], &device),
        })
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let rois: Vec<Roi> = (0..batch * 512)
        .map(|i| {
            let (x, y) = (
                rng.random_range(0.0..480.0f32),
                rng.random_range(0.0..480.0f32),
            );
            let (w, h) = (
                rng.random_range(8.0..300.0f32),
                rng.random_range(8.0..300.0f32),
            );
            Roi {
                batch: i / 512,
                bbox: [x, y, (x + w).min(512.0), (y + h).min(512.0)],
            }
        })
        .collect();
    let pooler = MultiScaleRoiAlign::new(RoiAlignConfig {
        aligned: false,
        ..RoiAlignConfig::default()
    });
    let plan = pooler.plan(&features, &rois);
    let nnz = plan.matrix().nnz();
    let build = median_ms(11, || {
        drop(std::hint::black_box(pooler.plan(&features, &rois)))
    });
    let transpose = median_ms(11, || drop(std::hint::black_box(plan.matrix().transpose())));
    println!(
        "{} RoIs, {nnz} taps, {} threads: plan {build:.2} ms, transpose {transpose:.2} ms",
        rois.len(),
        rayon::current_num_threads()
    );
}
