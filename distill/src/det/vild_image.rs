//! ViLD-image: the student's region embeddings of the cached proposals are pulled towards the
//! teacher's embeddings of the same boxes (1x + 1.5x crops, summed, renormalised) with an L1
//! loss, summed over the embedding dimensions and averaged over the regions (Gu et al., 2022,
//! eq. 3). This is how novel objects, which no box names, still teach the student.

use burn::tensor::Tensor;

use super::DetError;
use super::task::RegionSource;

/// How many of an image's `n` cached regions (best first) ViLD-image uses: `top_k`, or all of
/// them when `top_k` is 0 (`distill.image_top_k`).
pub(crate) fn best_count(top_k: usize, n: usize) -> usize {
    if top_k == 0 { n } else { top_k.min(n) }
}

/// The mean `[D]` of the teacher's region embeddings of `image_ids` in `src`, over each image's
/// best `top_k` regions (0: all): the common image component that [`center_targets`] removes.
/// An error when no image has a region.
pub fn region_mean(
    src: &dyn RegionSource,
    image_ids: &[i64],
    top_k: usize,
) -> Result<Vec<f32>, DetError> {
    let d = src.dim();
    let mut sum = vec![0f64; d];
    let mut n = 0usize;
    for &id in image_ids {
        let (boxes, embeds) = src.regions(id)?;
        let k = best_count(top_k, boxes.len());
        for row in embeds.chunks_exact(d).take(k) {
            for (s, v) in sum.iter_mut().zip(row) {
                *s += *v as f64;
            }
            n += 1;
        }
    }
    if n == 0 {
        return Err(DetError::Other(
            "modality-gap centring: the region cache has no regions to average".into(),
        ));
    }
    Ok(sum.into_iter().map(|s| (s / n as f64) as f32).collect())
}

/// Removes `mean` `[D]` from every row of `embeds` `[N * D]` (row-major) and L2-normalises the
/// rows again (norm clamped at 1e-12), in place.
pub fn center_targets(embeds: &mut [f32], mean: &[f32]) {
    let d = mean.len();
    assert!(
        d > 0 && embeds.len() % d == 0,
        "centring: {} values are not rows of {d}",
        embeds.len()
    );
    for row in embeds.chunks_exact_mut(d) {
        for (v, m) in row.iter_mut().zip(mean) {
            *v -= m;
        }
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        for v in row.iter_mut() {
            *v /= norm;
        }
    }
}

/// `weight · mean_q Σ_d |student[q, d] − teacher[q, d]|` → `[1]`.
///
/// `student` `[Q, D]` (L2-normalised, differentiable), `teacher` `[Q, D]` (L2-normalised,
/// constant). With no regions (`Q = 0`) the loss is 0.
pub fn vild_image_loss(student: Tensor<2>, teacher: Tensor<2>, weight: f32) -> Tensor<1> {
    let [q, d] = student.dims();
    assert_eq!(
        teacher.dims(),
        [q, d],
        "ViLD-image: student and teacher embeddings differ in shape"
    );
    if q == 0 {
        return Tensor::zeros([1], &student.device());
    }
    student
        .sub(teacher)
        .abs()
        .sum()
        .mul_scalar(weight / q as f32)
        .reshape([1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn l1_summed_over_dims_averaged_over_regions() {
        let device = Device::default();
        let s = Tensor::<2>::from_data(
            TensorData::new(vec![0.6f32, 0.8, 0.0, 1.0, 0.0, 0.0], [2, 3]),
            &device,
        );
        let t = Tensor::<2>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 0.0, 0.0, 0.0, 1.0], [2, 3]),
            &device,
        );
        // Region 0: |0.6| + |-0.2| + 0 = 0.8; region 1: 1 + 0 + 1 = 2; mean 1.4; x 0.5.
        let l = vild_image_loss(s.clone(), t.clone(), 0.5)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!((l[0] - 0.7).abs() < 1e-6, "{l:?}");
        let l = vild_image_loss(s, t, 1.0)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!((l[0] - 1.4).abs() < 1e-6, "{l:?}");
    }

    #[test]
    fn gradient_is_the_sign_over_q() {
        let device = Device::default().autodiff();
        let s = Tensor::<2>::from_data(
            TensorData::new(vec![0.5f32, -0.5, 0.2, 0.1], [2, 2]),
            &device,
        )
        .require_grad();
        let t = Tensor::<2>::from_data(TensorData::new(vec![0.0f32; 4], [2, 2]), &device);
        let grads = vild_image_loss(s.clone(), t, 0.5).backward();
        let g = s
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        // d/ds of 0.5 / 2 · Σ |s| = 0.25 · sign(s).
        assert_eq!(g, vec![0.25, -0.25, 0.25, 0.25]);
    }

    /// Image embeddings = a common component + a class direction (the modality gap). Raw, the
    /// text nearest to every image is the one closest to the common component; centred, each
    /// image is nearest its own class text, and the rows stay unit vectors.
    #[test]
    fn centring_removes_the_common_component() {
        struct Src(Vec<f32>);
        impl RegionSource for Src {
            fn dim(&self) -> usize {
                4
            }
            fn regions(&self, _: i64) -> Result<(Vec<[f32; 4]>, Vec<f32>), DetError> {
                Ok((vec![[0.0; 4]; self.0.len() / 4], self.0.clone()))
            }
        }
        // Texts of classes a, b, c: e0, e1, e2. Common image component: 0.8 (e0 + e3)/sqrt2,
        // then each image has 0.3 of its own class direction.
        let common = [0.8 / 2f32.sqrt(), 0.0, 0.0, 0.8 / 2f32.sqrt()];
        let mut images = Vec::new();
        for class in 0..3 {
            let mut v = common;
            v[class] += 0.3;
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            images.extend(v.map(|x| x / n));
        }
        let nearest = |emb: &[f32]| -> Vec<usize> {
            emb.chunks(4)
                .map(|r| (0..3).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap())
                .collect()
        };
        // Raw: the class whose text is nearest the common component wins everywhere.
        assert_eq!(nearest(&images), vec![0, 0, 0]);
        let src = Src(images.clone());
        let mean = region_mean(&src, &[1, 2], 0).unwrap();
        let mut centred = images.clone();
        center_targets(&mut centred, &mean);
        assert_eq!(nearest(&centred), vec![0, 1, 2]);
        for r in centred.chunks(4) {
            let n: f32 = r.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-5, "{n}");
        }
        // top_k = 1 averages only each image's first region.
        let first = region_mean(&src, &[1], 1).unwrap();
        assert_eq!(first, images[..4].to_vec());
        assert!(region_mean(&Src(vec![]), &[1], 0).is_err());
    }

    #[test]
    fn no_regions_no_loss() {
        let device = Device::default();
        let z = Tensor::<2>::zeros([0, 4], &device);
        let l = vild_image_loss(z.clone(), z, 0.5)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(l, vec![0.0]);
    }
}
