//! BARON's contrastive loss: symmetric InfoNCE between the student's and the teacher's bag
//! embeddings, `logit_scale · cos`, with queues of earlier steps' embeddings as extra negatives.
//!
//! Two kinds of entries must not count as negatives: other orders of the same bag in this step
//! (they share the teacher embedding), and queue entries from the same image (a neighbouring
//! bag of the same picture is not a true negative, and with a short queue it may even be the
//! same bag from an earlier epoch). Their logits are set to −∞.

use std::collections::VecDeque;

use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// A first-in first-out queue of embeddings, each tagged with its image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbedQueue {
    /// Most entries kept.
    pub capacity: usize,
    /// Embedding size.
    pub dim: usize,
    /// `(image id, L2-normalised embedding)`, oldest first.
    pub entries: VecDeque<(i64, Vec<f32>)>,
}

impl EmbedQueue {
    /// An empty queue.
    pub fn new(capacity: usize, dim: usize) -> Self {
        Self {
            capacity,
            dim,
            entries: VecDeque::new(),
        }
    }

    /// Appends rows of `embeds` `[N * D]` with their image ids, dropping the oldest beyond
    /// the capacity.
    pub fn push(&mut self, image_ids: &[i64], embeds: &[f32]) {
        for (i, id) in image_ids.iter().enumerate() {
            self.entries
                .push_back((*id, embeds[i * self.dim..(i + 1) * self.dim].to_vec()));
        }
        while self.entries.len() > self.capacity {
            self.entries.pop_front();
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries as a `[K, D]` tensor on `device` and their image ids.
    fn tensor(&self, device: &burn::tensor::Device) -> (Tensor<2>, Vec<i64>) {
        let data: Vec<f32> = self.entries.iter().flat_map(|(_, e)| e.clone()).collect();
        let ids = self.entries.iter().map(|(i, _)| *i).collect();
        (
            Tensor::from_data(TensorData::new(data, [self.len(), self.dim]), device),
            ids,
        )
    }
}

/// Cross-entropy of rows of `logits` `[N, K]` with target column `i` for row `i`, where
/// `mask` `[N, K]` (true = excluded) is applied first: `[1]`.
fn masked_diagonal_ce(logits: Tensor<2>, mask: Vec<bool>) -> Tensor<1> {
    let [n, k] = logits.dims();
    let device = logits.device();
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, [n, k]), &device);
    let logits = logits.mask_fill(mask, f32::NEG_INFINITY);
    let lp = log_softmax(logits, 1);
    let idx = Tensor::<2, Int>::from_data(
        TensorData::new((0..n as i64).collect::<Vec<_>>(), [n, 1]),
        &device,
    );
    lp.gather(1, idx).mean().neg().reshape([1])
}

/// Symmetric InfoNCE: `½ CE(s · S Tᵀ) + ½ CE(s · T Sᵀ)` over the rows of `student` `[N, D]`
/// and `teacher` `[N, D]` (both L2-normalised; row `i` of one is the positive of row `i` of
/// the other), with `s` = `logit_scale`.
///
/// `groups[i]` names what row `i` is a view of (rows with equal groups are not each other's
/// negatives); `image_ids[i]` its image. Keys from `teacher_queue` (for student queries) and
/// `student_queue` (for teacher queries) are extra negatives, except those of the same image.
/// `N = 0` gives 0.
#[allow(clippy::too_many_arguments)]
pub fn symmetric_infonce(
    student: Tensor<2>,
    teacher: Tensor<2>,
    groups: &[u64],
    image_ids: &[i64],
    student_queue: &EmbedQueue,
    teacher_queue: &EmbedQueue,
    logit_scale: f32,
) -> Tensor<1> {
    let [n, d] = student.dims();
    assert_eq!(
        teacher.dims(),
        [n, d],
        "InfoNCE: student and teacher differ"
    );
    assert!(groups.len() == n && image_ids.len() == n);
    let device = student.device();
    if n == 0 {
        return Tensor::zeros([1], &device);
    }
    let direction = |queries: Tensor<2>, keys: Tensor<2>, queue: &EmbedQueue| {
        let (keys, qids) = if queue.is_empty() {
            (keys, Vec::new())
        } else {
            let (q, ids) = queue.tensor(&device);
            (Tensor::cat(vec![keys, q], 0), ids)
        };
        let k = n + qids.len();
        let mut mask = vec![false; n * k];
        for i in 0..n {
            for j in 0..n {
                mask[i * k + j] = i != j && groups[i] == groups[j];
            }
            for (j, qid) in qids.iter().enumerate() {
                mask[i * k + n + j] = *qid == image_ids[i];
            }
        }
        let logits = queries.matmul(keys.transpose()).mul_scalar(logit_scale);
        masked_diagonal_ce(logits, mask)
    };
    let a = direction(student.clone(), teacher.clone(), teacher_queue);
    let b = direction(teacher, student, student_queue);
    a.add(b).mul_scalar(0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn t(v: Vec<f32>, n: usize, d: usize) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, [n, d]), &Device::default())
    }

    fn ce(row: &[f64], target: usize) -> f64 {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        lse - row[target]
    }

    #[test]
    fn matches_a_hand_computation_with_queue_and_group_masks() {
        // Three unit 2-d vectors; rows 0 and 1 are two orders of one bag.
        let s = vec![1.0f32, 0.0, 0.6, 0.8, 0.0, 1.0];
        let te = vec![0.8f32, 0.6, 1.0, 0.0, 0.6, 0.8];
        let groups = [7, 7, 9];
        let ids = [1, 1, 2];
        let mut tq = EmbedQueue::new(4, 2);
        // Entry of image 2 (masked for row 2) and of image 5 (a negative for all).
        tq.push(&[2, 5], &[0.0, 1.0, -1.0, 0.0]);
        let mut sq = EmbedQueue::new(4, 2);
        sq.push(&[1], &[0.0, -1.0]);
        let scale = 2.0;
        let got = symmetric_infonce(
            t(s.clone(), 3, 2),
            t(te.clone(), 3, 2),
            &groups,
            &ids,
            &sq,
            &tq,
            scale,
        )
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()[0] as f64;

        let dot = |a: &[f32], b: &[f32]| (a[0] * b[0] + a[1] * b[1]) as f64 * scale as f64;
        let row = |v: &[f32], i: usize| v[2 * i..2 * i + 2].to_vec();
        let ninf = f64::NEG_INFINITY;
        // Student queries against teacher keys + teacher queue.
        let mut a = 0.0;
        for i in 0..3 {
            let q = row(&s, i);
            let mut r: Vec<f64> = (0..3)
                .map(|j| {
                    if i != j && groups[i] == groups[j] {
                        ninf
                    } else {
                        dot(&q, &row(&te, j))
                    }
                })
                .collect();
            r.push(if ids[i] == 2 {
                ninf
            } else {
                dot(&q, &[0.0, 1.0])
            });
            r.push(dot(&q, &[-1.0, 0.0]));
            a += ce(&r, i) / 3.0;
        }
        // Teacher queries against student keys + student queue.
        let mut b = 0.0;
        for i in 0..3 {
            let q = row(&te, i);
            let mut r: Vec<f64> = (0..3)
                .map(|j| {
                    if i != j && groups[i] == groups[j] {
                        ninf
                    } else {
                        dot(&q, &row(&s, j))
                    }
                })
                .collect();
            r.push(if ids[i] == 1 {
                ninf
            } else {
                dot(&q, &[0.0, -1.0])
            });
            b += ce(&r, i) / 3.0;
        }
        let want = 0.5 * (a + b);
        assert!((got - want).abs() < 1e-5, "got {got}, want {want}");

        // Without the masks the number differs (the masks matter).
        let plain = symmetric_infonce(
            t(s, 3, 2),
            t(te, 3, 2),
            &[1, 2, 3],
            &[8, 9, 10],
            &sq,
            &tq,
            scale,
        )
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()[0] as f64;
        assert!((plain - want).abs() > 1e-3);
    }

    #[test]
    fn queue_keeps_the_newest_entries() {
        let mut q = EmbedQueue::new(2, 1);
        q.push(&[1, 2, 3], &[0.1, 0.2, 0.3]);
        assert_eq!(
            q.entries.iter().cloned().collect::<Vec<_>>(),
            vec![(2, vec![0.2]), (3, vec![0.3])]
        );
        let json = serde_json::to_string(&q).unwrap();
        assert_eq!(serde_json::from_str::<EmbedQueue>(&json).unwrap(), q);
    }
}
