//! BARON (Wu et al., 2023): distilling bags of regions. Per step, each image's cached bags are
//! drawn; the student's pseudo-words of every bag member, plus a sine embedding of the member's
//! place in the bag, go (with word dropout, in each of the bag's box orders) through the frozen
//! text tower to a bag embedding, which a symmetric InfoNCE with queued negatives aligns with
//! the teacher's embedding of the bag's enclosing crop. A single-region term does the same for
//! each bag's centre against the teacher's region embedding. Classification goes through the
//! tower too: the sampled RoIs' pseudo-words → tower → cosine with the class text embeddings and
//! the learned background, over the temperature.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use ovkd_detector::{Detector, RoiSample, TrainOutput};
use rand::Rng;
use rand::seq::index::sample;
use serde::{Deserialize, Serialize};

use super::DetError;
use super::bag_cache::CachedBag;
use super::bags::{BagConfig, enclosing_box, relative_to};
use super::infonce::{EmbedQueue, symmetric_infonce};
use super::pseudo_words::{PseudoWordEncoder, sine_embedding};
use super::task::augment_box;

/// BARON's settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BaronConfig {
    /// How the proposals stage grows bags (centres, grid, probabilities, orders).
    pub bags: BagConfig,
    /// Bags drawn per image per step from its cached ones.
    pub bags_per_image: usize,
    /// Pseudo-words per region P. A full bag is `9 P + 2` tokens, which must fit the text
    /// tower's context (32 for the built-in teacher: P ≤ 3; the paper uses 4 with CLIP's 77).
    pub pseudo_words: usize,
    /// Probability of dropping each pseudo-word of a bag sequence (a region keeps at least
    /// one); paper 0.5.
    pub word_dropout: f32,
    /// Temperature of the sine position embedding's frequencies (official 1.2).
    pub pos_temperature: f32,
    /// Norm of the position embedding relative to the mean norm of the tower's token
    /// embeddings.
    pub pos_weight: f32,
    /// Logit scale of the bag InfoNCE (official `bag_temp`: 30).
    pub logit_scale: f32,
    /// Weight of the bag InfoNCE.
    pub bag_weight: f32,
    /// Logit scale of the single-region InfoNCE (official `single_temp`: 50).
    pub single_logit_scale: f32,
    /// Weight of the single-region InfoNCE (official 0.1).
    pub single_weight: f32,
    /// Entries of each negative queue (official 1024).
    pub queue_size: usize,
    /// Weight of the classification loss through the text tower.
    pub cls_weight: f32,
}

impl Default for BaronConfig {
    fn default() -> Self {
        Self {
            bags: BagConfig::default(),
            bags_per_image: 8,
            pseudo_words: 3,
            word_dropout: 0.5,
            pos_temperature: 1.2,
            pos_weight: 1.0,
            logit_scale: 30.0,
            bag_weight: 1.0,
            single_logit_scale: 50.0,
            single_weight: 0.1,
            queue_size: 1024,
            cls_weight: 1.0,
        }
    }
}

/// A bag of a step, in the augmented image's pixels.
#[derive(Debug, Clone)]
pub struct StepBag {
    /// Index of its image in the batch.
    pub image: usize,
    /// The image's id (the queues' same-image mask).
    pub image_id: i64,
    /// Member boxes `[M, 4]`.
    pub members: Vec<[f32; 4]>,
    /// Members relative to the enclosing box.
    pub normed: Vec<[f32; 4]>,
    /// Index of the centre among the members.
    pub center: usize,
    /// Box orders (permutations of `0..M`).
    pub orders: Vec<Vec<usize>>,
    /// Per order, per member (in that order), per pseudo-word: kept?
    pub keep: Vec<Vec<Vec<bool>>>,
    /// The teacher's enclosing-crop embedding `[D]`.
    pub teacher_bag: Vec<f32>,
    /// The teacher's centre-region embedding `[D]`.
    pub teacher_center: Vec<f32>,
}

/// Draws up to `cfg.bags_per_image` of `bags` (an image's cached bags) for image `j` of a step
/// and maps them through its augmentation; the word-dropout masks come from `rng`.
#[allow(clippy::too_many_arguments)]
pub fn draw_step_bags<R: Rng + ?Sized>(
    bags: &[CachedBag],
    image: usize,
    image_id: i64,
    scale: [f32; 2],
    flipped: bool,
    size: [usize; 2],
    cfg: &BaronConfig,
    rng: &mut R,
) -> Vec<StepBag> {
    let k = cfg.bags_per_image.min(bags.len());
    let mut picked = sample(rng, bags.len(), k).into_vec();
    picked.sort_unstable();
    picked
        .into_iter()
        .map(|i| {
            let b = &bags[i].bag;
            let members: Vec<[f32; 4]> = b
                .members
                .iter()
                .map(|&m| augment_box(m, scale, flipped, size))
                .collect();
            let normed = relative_to(&members, enclosing_box(&members));
            let keep = b
                .orders
                .iter()
                .map(|o| {
                    o.iter()
                        .map(|_| {
                            let mut words: Vec<bool> = (0..cfg.pseudo_words)
                                .map(|_| rng.random::<f32>() >= cfg.word_dropout)
                                .collect();
                            if !words.iter().any(|&x| x) {
                                words[0] = true;
                            }
                            words
                        })
                        .collect()
                })
                .collect();
            StepBag {
                image,
                image_id,
                center: b.cells.iter().position(|&c| c == 4).unwrap_or(0),
                members,
                normed,
                orders: b.orders.clone(),
                keep,
                teacher_bag: bags[i].teacher_bag.clone(),
                teacher_center: bags[i].teacher_center.clone(),
            }
        })
        .collect()
}

/// The member boxes of `bags` per image (the student embeds them as distillation boxes), in
/// bag order within each image.
pub fn member_boxes(bags: &[StepBag], images: usize) -> Vec<Vec<[f32; 4]>> {
    let mut out = vec![Vec::new(); images];
    for b in bags {
        out[b.image].extend_from_slice(&b.members);
    }
    out
}

/// The negative queues (saved with each checkpoint, so a resumed run sees the same ones).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BaronQueues {
    /// Student bag embeddings.
    pub bag_student: EmbedQueue,
    /// Teacher bag embeddings.
    pub bag_teacher: EmbedQueue,
    /// Student single-region embeddings.
    pub single_student: EmbedQueue,
    /// Teacher single-region embeddings.
    pub single_teacher: EmbedQueue,
}

impl BaronQueues {
    /// Empty queues of `capacity` for embeddings of size `dim`.
    pub fn new(capacity: usize, dim: usize) -> Self {
        let q = || EmbedQueue::new(capacity, dim);
        Self {
            bag_student: q(),
            bag_teacher: q(),
            single_student: q(),
            single_teacher: q(),
        }
    }
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.detach()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

/// Cross-entropy of `logits` `[R, 1 + C]` against the RoI samples' labels (0 background,
/// class + 1), averaged: `[1]`.
pub fn roi_cross_entropy(logits: Tensor<2>, samples: &[RoiSample]) -> Tensor<1> {
    let labels: Vec<i64> = samples
        .iter()
        .flat_map(|s| s.labels.iter().map(|&l| l as i64))
        .collect();
    let r = labels.len();
    let device = logits.device();
    if r == 0 {
        return Tensor::zeros([1], &device);
    }
    let idx = Tensor::<2, Int>::from_data(TensorData::new(labels, [r, 1]), &device);
    log_softmax(logits, 1)
        .gather(1, idx)
        .mean()
        .neg()
        .reshape([1])
}

/// BARON's loss terms of a step: `(classification, bag, single)`, each weighted, and the
/// number of bag sequences. `out` is the detector's training output for this step's batch with
/// [`member_boxes`] of `bags` as its distillation boxes; `text_embeds` `[C, D]` the training
/// classes. The queues are read, then this step's embeddings are pushed.
pub fn baron_losses(
    model: &Detector,
    encoder: &PseudoWordEncoder,
    out: &TrainOutput,
    bags: &[StepBag],
    text_embeds: Tensor<2>,
    cfg: &BaronConfig,
    queues: &mut BaronQueues,
) -> Result<(Tensor<1>, Tensor<1>, Tensor<1>, usize), DetError> {
    let device = text_embeds.device();
    let zero = || Tensor::<1>::zeros([1], &device);
    let roi_words = out.roi_pseudo_words.clone().ok_or_else(|| {
        DetError::Other("BARON needs a box head with pseudo-words (box_head.pseudo_words)".into())
    })?;
    let roi_embeds = encoder.encode_regions(roi_words)?;
    let cls = roi_cross_entropy(model.box_head.logits(roi_embeds, text_embeds), &out.samples)
        .mul_scalar(cfg.cls_weight);
    let Some(words) = out.distill_pseudo_words.clone() else {
        return Ok((cls, zero(), zero(), 0));
    };
    let (q, pw) = (words.dims()[0], words.dims()[1]);
    let w = encoder.width;
    let p = pw / w;
    if p != cfg.pseudo_words {
        return Err(DetError::Other(format!(
            "the box head makes {p} pseudo-words per region but distill.baron.pseudo_words is {}",
            cfg.pseudo_words
        )));
    }
    let dim = text_embeds_dim(bags);
    // Rows of the distillation boxes: bags in order within each image, images in order.
    let mut first_row = vec![0usize; bags.len()];
    {
        let images = bags.iter().map(|b| b.image).max().map_or(0, |m| m + 1);
        let mut per_image_start = vec![0usize; images + 1];
        for b in bags {
            per_image_start[b.image + 1] += b.members.len();
        }
        for i in 0..images {
            per_image_start[i + 1] += per_image_start[i];
        }
        let mut used = vec![0usize; images];
        for (k, b) in bags.iter().enumerate() {
            first_row[k] = per_image_start[b.image] + used[b.image];
            used[b.image] += b.members.len();
        }
    }
    // Position embeddings of every member row, scaled to the tokens' norm.
    let mut pos = vec![0f32; q * w];
    let scale = encoder.token_norm * cfg.pos_weight / ((w / 2).max(1) as f32).sqrt();
    for (k, b) in bags.iter().enumerate() {
        let e = sine_embedding(&b.normed, w, cfg.pos_temperature);
        for (m, row) in e.chunks(w).enumerate() {
            let r = first_row[k] + m;
            for (dst, v) in pos[r * w..(r + 1) * w].iter_mut().zip(row) {
                *dst = v * scale;
            }
        }
    }
    let pos = Tensor::<3>::from_data(TensorData::new(pos, [q, 1, w]), &device);
    let table = (words.clone().reshape([q, p, w]) + pos).reshape([q * p, w]);
    let mut seqs = Vec::new();
    let mut groups = Vec::new();
    let mut ids = Vec::new();
    let mut teacher = Vec::new();
    for (k, b) in bags.iter().enumerate() {
        for (o, order) in b.orders.iter().enumerate() {
            let mut seq = Vec::new();
            for (slot, &m) in order.iter().enumerate() {
                let row = first_row[k] + m;
                for (wd, &keep) in b.keep[o][slot].iter().enumerate() {
                    if keep {
                        seq.push(row * p + wd);
                    }
                }
            }
            seqs.push(seq);
            groups.push(k as u64);
            ids.push(b.image_id);
            teacher.extend_from_slice(&b.teacher_bag);
        }
    }
    let s = seqs.len();
    let student = encoder.encode(table, &seqs)?;
    let teacher = Tensor::<2>::from_data(TensorData::new(teacher, [s, dim]), &device);
    let bag = symmetric_infonce(
        student.clone(),
        teacher.clone(),
        &groups,
        &ids,
        &queues.bag_student,
        &queues.bag_teacher,
        cfg.logit_scale,
    )
    .mul_scalar(cfg.bag_weight);

    // Single regions: each bag's centre (one row per distinct centre).
    let mut centres: Vec<(i64, [u32; 4])> = Vec::new();
    let mut rows = Vec::new();
    let mut t_single = Vec::new();
    let mut single_ids = Vec::new();
    for (k, b) in bags.iter().enumerate() {
        let key = (b.image_id, b.members[b.center].map(f32::to_bits));
        if centres.contains(&key) {
            continue;
        }
        centres.push(key);
        rows.push((first_row[k] + b.center) as i64);
        t_single.extend_from_slice(&b.teacher_center);
        single_ids.push(b.image_id);
    }
    let single = if cfg.single_weight > 0.0 && !rows.is_empty() {
        let n = rows.len();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &device);
        let s_emb = encoder.encode_regions(words.select(0, idx))?;
        let t_emb = Tensor::<2>::from_data(TensorData::new(t_single, [n, dim]), &device);
        let groups: Vec<u64> = (0..n as u64).collect();
        let l = symmetric_infonce(
            s_emb.clone(),
            t_emb.clone(),
            &groups,
            &single_ids,
            &queues.single_student,
            &queues.single_teacher,
            cfg.single_logit_scale,
        )
        .mul_scalar(cfg.single_weight);
        queues.single_student.push(&single_ids, &host(s_emb));
        queues.single_teacher.push(&single_ids, &host(t_emb));
        l
    } else {
        zero()
    };
    queues.bag_student.push(&ids, &host(student));
    queues.bag_teacher.push(&ids, &host(teacher));
    Ok((cls, bag, single, s))
}

fn text_embeds_dim(bags: &[StepBag]) -> usize {
    bags.first().map_or(0, |b| b.teacher_bag.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::det::bags::Bag;
    use rand::SeedableRng;

    #[test]
    fn drawn_bags_follow_the_flip_and_keep_a_word_per_region() {
        let bag = Bag::new(
            [10.0, 10.0, 20.0, 20.0],
            vec![3, 4],
            0.0,
            vec![vec![0, 1], vec![1, 0]],
        );
        let cached = CachedBag {
            bag,
            teacher_bag: vec![1.0, 0.0],
            teacher_center: vec![0.0, 1.0],
        };
        let cfg = BaronConfig {
            word_dropout: 1.0,
            ..BaronConfig::default()
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let got = draw_step_bags(&[cached], 0, 7, [1.0, 1.0], true, [40, 40], &cfg, &mut rng);
        assert_eq!(got.len(), 1);
        let b = &got[0];
        // Flipped in a 40-wide image: the left neighbour [0, 10, 10, 20] lands at [30, 10, 40, 20].
        assert_eq!(
            b.members,
            vec![[30.0, 10.0, 40.0, 20.0], [20.0, 10.0, 30.0, 20.0]]
        );
        assert_eq!(b.center, 1);
        assert_eq!(b.normed[1], [0.0, 0.0, 0.5, 1.0]);
        // Dropout 1: exactly the first word of each region survives.
        for order in &b.keep {
            for words in order {
                assert_eq!(words.iter().filter(|&&k| k).count(), 1);
                assert!(words[0]);
            }
        }
        assert_eq!(member_boxes(&got, 2)[0].len(), 2);
    }
}
