//! ViLD-image: the student's region embeddings of the cached proposals are pulled towards the
//! teacher's embeddings of the same boxes (1x + 1.5x crops, summed, renormalised) with an L1
//! loss, summed over the embedding dimensions and averaged over the regions (Gu et al., 2022,
//! eq. 3). This is how novel objects, which no box names, still teach the student.

use burn::tensor::Tensor;

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
