//! Deterministic synthetic inputs that `reference.py` rebuilds bit for bit (boxes, labels) or
//! in distribution (noise images, unit text embeddings), so that both sides do the same work.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};

/// A value in `[0, 1)` for the integer triple `(i, j, k)`: a multiplicative hash, written the
/// same way in `reference.py` (`unit`), so both sides draw the same boxes without sharing a
/// random generator.
pub fn unit(i: u64, j: u64, k: u64) -> f64 {
    let x = i
        .wrapping_mul(7919)
        .wrapping_add(j.wrapping_mul(104_729))
        .wrapping_add(k.wrapping_mul(15_485_863))
        .wrapping_add(1);
    let h = (x.wrapping_mul(2_654_435_761) >> 7) & 0xFF_FFFF;
    h as f64 / (1u64 << 24) as f64
}

/// `[n, d]` random L2-normalised rows on `device` (text embeddings for timing).
pub fn unit_rows(n: usize, d: usize, device: &Device) -> Tensor<2> {
    let t = Tensor::<2>::random([n, d], Distribution::Normal(0.0, 1.0), device);
    t.clone().div(t.square().sum_dim(1).sqrt())
}

/// Milliseconds since `t`.
pub fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_matches_the_python_reference_values() {
        // reference.py: [unit(i, j, k) for (i, j, k) in ((0, 0, 0), (1, 2, 3), (7, 0, 2))]
        let got = [unit(0, 0, 0), unit(1, 2, 3), unit(7, 0, 2)];
        let want = [0.23606795072555542, 0.8748744130134583, 0.7859930992126465];
        assert_eq!(got, want);
    }

    #[test]
    fn unit_is_spread_over_the_interval() {
        let v: Vec<f64> = (0..1000).map(|i| unit(i, 3, 1)).collect();
        assert!(v.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
        let low = v.iter().filter(|&&x| x < 0.25).count();
        assert!((180..320).contains(&low), "{low}");
    }
}
