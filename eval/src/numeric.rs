//! The few numpy behaviours the reference numbers depend on, reproduced bit for bit.

/// `np.linspace(start, stop, num)` with `endpoint=True`: `i * step + start`, with the last
/// value set to `stop`. pycocotools' thresholds come from this, so `0.9` is
/// `0.8999999999999999` and `0.35` is `0.35000000000000003`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// numpy's pairwise summation of a contiguous float64 array (`np.sum`, and so `np.mean`):
/// blocks of up to 128 values summed in 8 interleaved accumulators, larger arrays split in
/// halves rounded to a multiple of 8. Matching it makes means bit-identical to numpy's.
pub fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.mean(s[s > -1])`, or -1 when nothing is valid: how pycocotools averages precision and
/// recall entries (`-1` marks "no ground truth").
pub fn mean_valid(values: impl IntoIterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.into_iter().filter(|&x| x > -1.0).collect();
    if v.is_empty() {
        -1.0
    } else {
        pairwise_sum(&v) / v.len() as f64
    }
}

/// `np.nanmean`: the mean of the non-NaN values (NaN when there are none). numpy replaces the
/// NaNs by zeros and sums the whole array pairwise, so the zeros are kept in place here too.
pub fn nanmean(values: &[f64]) -> f64 {
    let count = values.iter().filter(|x| !x.is_nan()).count();
    if count == 0 {
        return f64::NAN;
    }
    let zeroed: Vec<f64> = values
        .iter()
        .map(|&x| if x.is_nan() { 0.0 } else { x })
        .collect();
    pairwise_sum(&zeroed) / count as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_match_numpy() {
        // repr() of numpy's values.
        let iou = linspace(0.5, 0.95, 10);
        let expect = [
            0.5,
            0.55,
            0.6,
            0.65,
            0.7,
            0.75,
            0.8,
            0.85,
            0.8999999999999999,
            0.95,
        ];
        assert_eq!(iou, expect);
        let rec = linspace(0.0, 1.0, 101);
        assert_eq!(rec[35], 0.35000000000000003);
        assert_eq!(rec[41], 0.41000000000000003);
        assert_eq!(rec[57], 0.5700000000000001);
        assert_eq!(rec[94], 0.9400000000000001);
        assert_eq!(rec[95], 0.9500000000000001);
        assert_eq!(rec[100], 1.0);
        assert_eq!(rec[50], 0.5);
    }

    #[test]
    fn pairwise_differs_from_naive_like_numpy() {
        // np.sum of [0.1] * 10 is 1.0 (pairwise) whereas a left fold gives 0.9999999999999999.
        let v = vec![0.1; 10];
        assert_eq!(pairwise_sum(&v), 1.0);
        assert_eq!(v.iter().fold(0.0, |a, b| a + b), 0.9999999999999999);
        assert_eq!(mean_valid([-1.0, -1.0]), -1.0);
        assert_eq!(mean_valid([0.5, -1.0, 0.25]), 0.375);
        assert!(nanmean(&[f64::NAN]).is_nan());
        assert_eq!(nanmean(&[1.0, f64::NAN, 0.0]), 0.5);
    }
}
