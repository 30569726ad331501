//! Grouping detections the way the reference tools walk them, without comparison sorts over
//! the whole set: ids mapped to dense indices, records bucketed by category (or image) with a
//! stable counting sort, and each small bucket sorted by (image, descending score) in parallel.

use rayon::prelude::*;
use std::collections::HashMap;

/// Dense indices of sorted, de-duplicated ids: a direct table when the ids are compact (the
/// usual case), a hash map otherwise.
pub(crate) struct IdMap {
    min: i64,
    table: Vec<u32>,
    map: HashMap<i64, u32>,
}

impl IdMap {
    /// Maps `ids[i]` to `i`; `ids` must be sorted and unique.
    pub fn new(ids: &[i64]) -> Self {
        let (Some(&min), Some(&max)) = (ids.first(), ids.last()) else {
            return IdMap {
                min: 0,
                table: Vec::new(),
                map: HashMap::new(),
            };
        };
        let span = (max as i128 - min as i128 + 1) as u128;
        if span <= (4 * ids.len() + 4096) as u128 {
            let mut table = vec![u32::MAX; span as usize];
            for (i, &id) in ids.iter().enumerate() {
                table[(id - min) as usize] = i as u32;
            }
            IdMap {
                min,
                table,
                map: HashMap::new(),
            }
        } else {
            IdMap {
                min,
                table: Vec::new(),
                map: ids
                    .iter()
                    .enumerate()
                    .map(|(i, &id)| (id, i as u32))
                    .collect(),
            }
        }
    }

    /// The dense index of `id`.
    #[inline]
    pub fn get(&self, id: i64) -> Option<u32> {
        if self.table.is_empty() {
            return self.map.get(&id).copied();
        }
        let off = (id as i128) - (self.min as i128);
        if off < 0 || off >= self.table.len() as i128 {
            return None;
        }
        let v = self.table[off as usize];
        (v != u32::MAX).then_some(v)
    }
}

/// Orders `items` (record indices, in input order) into `n_buckets` groups by `bucket`, and
/// within each group by ascending `sub` then descending `score`, ties keeping input order:
/// what a stable sort on (bucket, sub, -score) gives. Returns the order and the group starts
/// (`starts[b]..starts[b + 1]`).
pub(crate) fn bucket_sort(
    items: &[u32],
    n_buckets: usize,
    bucket: impl Fn(u32) -> u32 + Sync,
    sub: impl Fn(u32) -> u32 + Sync,
    score: impl Fn(u32) -> f64 + Sync,
) -> (Vec<u32>, Vec<usize>) {
    let mut starts = vec![0usize; n_buckets + 1];
    for &i in items {
        starts[bucket(i) as usize + 1] += 1;
    }
    for b in 0..n_buckets {
        starts[b + 1] += starts[b];
    }
    let mut fill = starts.clone();
    let mut order = vec![0u32; items.len()];
    for &i in items {
        let b = bucket(i) as usize;
        order[fill[b]] = i;
        fill[b] += 1;
    }
    // Split into the buckets' slices and sort each on a compact copy of its keys.
    let mut slices: Vec<&mut [u32]> = Vec::with_capacity(n_buckets);
    let mut rest: &mut [u32] = &mut order;
    for b in 0..n_buckets {
        let (head, tail) = rest.split_at_mut(starts[b + 1] - starts[b]);
        slices.push(head);
        rest = tail;
    }
    slices.into_par_iter().for_each(|s| {
        if s.len() < 2 {
            return;
        }
        let mut keyed: Vec<(u32, f64, u32)> = s.iter().map(|&i| (sub(i), score(i), i)).collect();
        // Stable: equal (sub, score) keep the input order the counting sort preserved.
        keyed.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal))
        });
        for (dst, k) in s.iter_mut().zip(keyed) {
            *dst = k.2;
        }
    });
    (order, starts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_map_dense_and_sparse() {
        let m = IdMap::new(&[3, 5, 9]);
        assert_eq!(
            (m.get(3), m.get(9), m.get(4), m.get(-1), m.get(100)),
            (Some(0), Some(2), None, None, None)
        );
        let m = IdMap::new(&[-7, 1 << 40]);
        assert_eq!(
            (m.get(-7), m.get(1 << 40), m.get(0)),
            (Some(0), Some(1), None)
        );
        assert_eq!(IdMap::new(&[]).get(0), None);
    }

    #[test]
    fn bucket_sort_is_a_stable_sort_on_the_keys() {
        // (bucket, sub, score) per record.
        let recs = [
            (1, 0, 0.5),
            (0, 2, 0.1),
            (1, 0, 0.9),
            (0, 1, 0.3),
            (1, 0, 0.5),
            (0, 2, 0.7),
        ];
        let items: Vec<u32> = (0..recs.len() as u32).collect();
        let (order, starts) = bucket_sort(
            &items,
            2,
            |i| recs[i as usize].0,
            |i| recs[i as usize].1,
            |i| recs[i as usize].2,
        );
        assert_eq!(starts, vec![0, 3, 6]);
        assert_eq!(order, vec![3, 5, 1, 2, 0, 4]);
    }
}
