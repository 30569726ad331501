//! The proposals file: class-agnostic boxes per training image whose teacher embeddings
//! ViLD-image distils. Parquet with one row per box: `image_id` (i64), `x1`, `y1`, `x2`, `y2`
//! (f32, image pixels) and `score` (f32), the layout `ovkd teacher embed --proposals` reads.
//!
//! Also the recall of a proposal set against ground truth, split by base / novel class: the
//! number that tells whether the proposal network learned to call novel objects background.

use std::collections::BTreeMap;
use std::path::Path;

use polars::prelude::*;
use serde::Serialize;

use super::DetError;

/// The proposals of one image, best first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageProposals {
    /// Boxes `[x1, y1, x2, y2]` in image pixels, `[N, 4]`.
    pub boxes: Vec<[f32; 4]>,
    /// Objectness score of each box, `[N]`, non-increasing.
    pub scores: Vec<f32>,
}

impl ImageProposals {
    /// Number of boxes.
    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }
}

/// Proposals of many images, by image id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProposalSet {
    /// Image id → its proposals.
    pub images: BTreeMap<i64, ImageProposals>,
}

impl ProposalSet {
    /// Total number of boxes.
    pub fn num_boxes(&self) -> usize {
        self.images.values().map(ImageProposals::len).sum()
    }

    /// Keeps the best `k` boxes of each image.
    pub fn truncate(&mut self, k: usize) {
        for p in self.images.values_mut() {
            p.boxes.truncate(k);
            p.scores.truncate(k);
        }
    }

    /// Writes the Parquet file (atomically), images by id, boxes best first.
    pub fn write_parquet(&self, path: &Path) -> Result<(), DetError> {
        let mut ids = Vec::new();
        let mut cols: [Vec<f32>; 5] = Default::default();
        for (&id, p) in &self.images {
            for (b, &s) in p.boxes.iter().zip(&p.scores) {
                ids.push(id);
                for k in 0..4 {
                    cols[k].push(b[k]);
                }
                cols[4].push(s);
            }
        }
        let [x1, y1, x2, y2, score] = cols;
        let e = |e: PolarsError| DetError::file(path, e.to_string());
        let mut df = df!(
            "image_id" => ids,
            "x1" => x1,
            "y1" => y1,
            "x2" => x2,
            "y2" => y2,
            "score" => score,
        )
        .map_err(e)?;
        let mut buf = Vec::new();
        ParquetWriter::new(&mut buf).finish(&mut df).map_err(e)?;
        ovkd_data::io::write_atomic(path, &buf).map_err(|err| DetError::file(path, err.to_string()))
    }

    /// Reads a Parquet proposals file. Boxes of an image are sorted by decreasing score; a
    /// null, a non-finite value or an inverted box is an error naming the row and the column.
    pub fn read_parquet(path: &Path) -> Result<Self, DetError> {
        let f = std::fs::File::open(path).map_err(|e| DetError::file(path, e.to_string()))?;
        let df = ParquetReader::new(f)
            .finish()
            .map_err(|e| DetError::file(path, format!("not a Parquet file: {e}")))?;
        let col = |name: &str| -> Result<Float32Chunked, DetError> {
            let c = df
                .column(name)
                .map_err(|_| DetError::file(path, format!("no column `{name}`")))?;
            let c = c
                .cast(&DataType::Float32)
                .map_err(|e| DetError::file(path, format!("column `{name}`: {e}")))?;
            Ok(c.f32()
                .map_err(|e| DetError::file(path, format!("column `{name}`: {e}")))?
                .clone())
        };
        let ids = df
            .column("image_id")
            .map_err(|_| DetError::file(path, "no column `image_id`"))?
            .cast(&DataType::Int64)
            .map_err(|e| DetError::file(path, format!("column `image_id`: {e}")))?;
        let ids = ids
            .i64()
            .map_err(|e| DetError::file(path, format!("column `image_id`: {e}")))?
            .clone();
        let cols = [
            col("x1")?,
            col("y1")?,
            col("x2")?,
            col("y2")?,
            col("score")?,
        ];
        let names = ["x1", "y1", "x2", "y2", "score"];
        let mut rows: BTreeMap<i64, Vec<([f32; 4], f32)>> = BTreeMap::new();
        for i in 0..df.height() {
            let id = ids
                .get(i)
                .ok_or_else(|| DetError::file(path, format!("row {i}: `image_id` is null")))?;
            let mut v = [0f32; 5];
            for k in 0..5 {
                v[k] = cols[k].get(i).filter(|x| x.is_finite()).ok_or_else(|| {
                    DetError::file(
                        path,
                        format!("row {i}: `{}` is null or not finite", names[k]),
                    )
                })?;
            }
            if v[2] < v[0] || v[3] < v[1] {
                return Err(DetError::file(
                    path,
                    format!(
                        "row {i} (image {id}): box [{}, {}, {}, {}] has x2 < x1 or y2 < y1",
                        v[0], v[1], v[2], v[3]
                    ),
                ));
            }
            rows.entry(id)
                .or_default()
                .push(([v[0], v[1], v[2], v[3]], v[4]));
        }
        let images = rows
            .into_iter()
            .map(|(id, mut v)| {
                // Stable: equal scores keep file order.
                v.sort_by(|a, b| b.1.total_cmp(&a.1));
                let (boxes, scores) = v.into_iter().unzip();
                (id, ImageProposals { boxes, scores })
            })
            .collect();
        Ok(Self { images })
    }
}

/// IoU of two boxes (0 when the union is empty).
pub(crate) fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Recall of ground-truth boxes of one group (e.g. the novel classes) by proposals.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RecallStats {
    /// Ground-truth boxes counted.
    pub gt: usize,
    /// Of those, how many some proposal covers with IoU ≥ 0.5 (within the top `k`).
    pub hit_50: usize,
    /// ... with IoU ≥ 0.7.
    pub hit_70: usize,
    /// `hit_50 / gt`.
    pub recall_50: f64,
    /// `hit_70 / gt`.
    pub recall_70: f64,
}

impl RecallStats {
    /// Counts one ground-truth box whose best IoU with the proposals is `best`.
    pub fn add(&mut self, best: f32) {
        self.gt += 1;
        if best >= 0.5 {
            self.hit_50 += 1;
        }
        if best >= 0.7 {
            self.hit_70 += 1;
        }
        let n = self.gt as f64;
        self.recall_50 = self.hit_50 as f64 / n;
        self.recall_70 = self.hit_70 as f64 / n;
    }
}

/// Best IoU of `gt` with any of the first `k` `proposals`.
pub fn best_iou(gt: &[f32; 4], proposals: &[[f32; 4]], k: usize) -> f32 {
    proposals
        .iter()
        .take(k)
        .map(|p| iou(gt, p))
        .fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parquet_round_trip_sorted_by_score() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proposals.parquet");
        let mut set = ProposalSet::default();
        set.images.insert(
            7,
            ImageProposals {
                boxes: vec![[1.0, 2.0, 30.5, 40.0], [0.0, 0.0, 10.0, 10.0]],
                scores: vec![0.9, 0.25],
            },
        );
        set.images.insert(
            3,
            ImageProposals {
                boxes: vec![[5.0, 5.0, 6.0, 7.0]],
                scores: vec![0.5],
            },
        );
        set.write_parquet(&path).unwrap();
        let back = ProposalSet::read_parquet(&path).unwrap();
        assert_eq!(back, set);
        assert_eq!(back.num_boxes(), 3);
        let mut top1 = back.clone();
        top1.truncate(1);
        assert_eq!(top1.images[&7].boxes, vec![[1.0, 2.0, 30.5, 40.0]]);
    }

    #[test]
    fn unsorted_rows_are_sorted_and_bad_rows_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.parquet");
        let mut df = df!(
            "image_id" => [1i64, 1, 2],
            "x1" => [0.0f32, 1.0, 0.0],
            "y1" => [0.0f32, 1.0, 0.0],
            "x2" => [4.0f32, 5.0, 3.0],
            "y2" => [4.0f32, 5.0, 3.0],
            "score" => [0.1f32, 0.8, 0.3],
        )
        .unwrap();
        let mut f = std::fs::File::create(&path).unwrap();
        ParquetWriter::new(&mut f).finish(&mut df).unwrap();
        let set = ProposalSet::read_parquet(&path).unwrap();
        assert_eq!(set.images[&1].scores, vec![0.8, 0.1]);
        assert_eq!(set.images[&1].boxes[0], [1.0, 1.0, 5.0, 5.0]);

        let mut bad = df!(
            "image_id" => [1i64, 9],
            "x1" => [0.0f32, 8.0],
            "y1" => [0.0f32, 0.0],
            "x2" => [4.0f32, 3.0],
            "y2" => [4.0f32, 3.0],
            "score" => [0.1f32, 0.8],
        )
        .unwrap();
        let mut f = std::fs::File::create(&path).unwrap();
        ParquetWriter::new(&mut f).finish(&mut bad).unwrap();
        let err = ProposalSet::read_parquet(&path).unwrap_err().to_string();
        assert!(err.contains("row 1 (image 9)"), "{err}");
        assert!(err.contains("p.parquet"), "{err}");
    }

    #[test]
    fn recall_counts_hits_at_both_thresholds() {
        let props = [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]];
        let mut r = RecallStats::default();
        r.add(best_iou(&[0.0, 0.0, 10.0, 10.0], &props, 10)); // 1.0
        r.add(best_iou(&[20.0, 20.0, 30.0, 36.0], &props, 10)); // 100/160 = 0.625
        r.add(best_iou(&[20.0, 20.0, 30.0, 30.0], &props, 1)); // only the first: 0
        assert_eq!((r.gt, r.hit_50, r.hit_70), (3, 2, 1));
        assert!((r.recall_50 - 2.0 / 3.0).abs() < 1e-12);
    }
}
