//! Times `SparseMatrix::transpose` on a matrix shaped like RoIAlign's for R50-FPN at 512 px,
//! batch 8 (4,096 RoIs × 49 bins, 16 taps each, 174,000 feature pixels), which the detector's
//! backward transposes every step:
//!
//! ```sh
//! cargo run --release -p ovkd-backbone --example transpose_speed   # RAYON_NUM_THREADS=N to vary
//! ```

use ovkd_backbone::ops::SparseMatrixBuilder;

fn main() {
    // A fixed linear congruential sequence: the same matrix every run.
    let mut state = 1u64;
    let mut next = move |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % n
    };
    let (rows, cols) = (4096 * 49, 174_000usize);
    let mut b = SparseMatrixBuilder::new(cols);
    for _ in 0..rows {
        // Four samples of a bin, each spread over a 2 x 2 pixel neighbourhood.
        let base = next(cols - 600);
        for t in 0..16 {
            b.add(base + (t % 4) + 512 * (t / 4) % 600, 0.1);
        }
        b.end_row();
    }
    let a = b.build();
    println!(
        "{} x {}, {} entries, {} threads",
        a.rows(),
        a.cols(),
        a.nnz(),
        rayon::current_num_threads()
    );
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let at = a.transpose();
        println!(
            "transpose: {:.1} ms ({} rows)",
            t.elapsed().as_secs_f64() * 1e3,
            at.rows()
        );
    }
}
