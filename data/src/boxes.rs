//! [`Boxes`]: axis-aligned boxes `[x1, y1, x2, y2]` in input-image pixels.
//!
//! Pixel `(col, row)` covers `[col, col + 1) x [row, row + 1)`, so the tight box of a mask whose
//! pixels span columns `c0..=c1` is `[c0, ., c1 + 1, .]` and COCO's `[x, y, w, h]` (as
//! pycocotools' `toBbox` writes it) is `[x1, y1, x2 - x1, y2 - y1]`. COCO's layout exists only at
//! the file boundary ([`Boxes::from_coco_xywh`], [`Boxes::to_coco_xywh`]).

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// One box, `[x1, y1, x2, y2]`.
pub type Xyxy = [f32; 4];

/// Converts COCO's `[x, y, w, h]` to `[x1, y1, x2, y2]`.
pub fn xywh_to_xyxy(b: [f64; 4]) -> Xyxy {
    [
        b[0] as f32,
        b[1] as f32,
        (b[0] + b[2]) as f32,
        (b[1] + b[3]) as f32,
    ]
}

/// Converts `[x1, y1, x2, y2]` to COCO's `[x, y, w, h]`.
pub fn xyxy_to_xywh(b: Xyxy) -> [f64; 4] {
    let [x1, y1, x2, y2] = b.map(f64::from);
    [x1, y1, x2 - x1, y2 - y1]
}

/// Area of one box; 0 for an empty or inverted one.
pub fn box_area(b: Xyxy) -> f32 {
    (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
}

/// Intersection over union of two boxes (0 when both are empty).
pub fn box_iou(a: Xyxy, b: Xyxy) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = box_area(a) + box_area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// A list of boxes `[x1, y1, x2, y2]` (f32, input-image pixels), `[N, 4]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Boxes {
    data: Vec<Xyxy>,
}

impl Boxes {
    /// Boxes from `[x1, y1, x2, y2]` rows.
    pub fn new(data: Vec<Xyxy>) -> Self {
        Self { data }
    }

    /// No boxes.
    pub fn empty() -> Self {
        Self::default()
    }

    /// From COCO `[x, y, w, h]` rows (the file layout).
    pub fn from_coco_xywh(rows: &[[f64; 4]]) -> Self {
        Self::new(rows.iter().copied().map(xywh_to_xyxy).collect())
    }

    /// To COCO `[x, y, w, h]` rows (the file layout).
    pub fn to_coco_xywh(&self) -> Vec<[f64; 4]> {
        self.data.iter().copied().map(xyxy_to_xywh).collect()
    }

    /// Number of boxes, N.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when there are no boxes.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The rows, `[N][4]`.
    pub fn as_slice(&self) -> &[Xyxy] {
        &self.data
    }

    /// The rows, consuming the list.
    pub fn into_vec(self) -> Vec<Xyxy> {
        self.data
    }

    /// Box `i`.
    pub fn get(&self, i: usize) -> Option<Xyxy> {
        self.data.get(i).copied()
    }

    /// Appends a box.
    pub fn push(&mut self, b: Xyxy) {
        self.data.push(b);
    }

    /// Iterates over the rows.
    pub fn iter(&self) -> impl Iterator<Item = Xyxy> + '_ {
        self.data.iter().copied()
    }

    /// Areas, `[N]`.
    pub fn areas(&self) -> Vec<f32> {
        self.data.iter().copied().map(box_area).collect()
    }

    /// IoU of every box here with every box of `other`: `[N][M]`.
    pub fn iou_matrix(&self, other: &Boxes) -> Vec<Vec<f32>> {
        self.data
            .iter()
            .map(|&a| other.data.iter().map(|&b| box_iou(a, b)).collect())
            .collect()
    }

    /// Clips every box to the image `[0, width] x [0, height]`.
    pub fn clip(&mut self, width: f32, height: f32) {
        for b in &mut self.data {
            b[0] = b[0].clamp(0.0, width);
            b[1] = b[1].clamp(0.0, height);
            b[2] = b[2].clamp(0.0, width);
            b[3] = b[3].clamp(0.0, height);
        }
    }

    /// Mirrors the boxes left-right in an image of `width` pixels: `x -> width - x`.
    pub fn hflip(&mut self, width: f32) {
        for b in &mut self.data {
            let (x1, x2) = (b[0], b[2]);
            b[0] = width - x2;
            b[2] = width - x1;
        }
    }

    /// Scales x by `sx` and y by `sy` (an image resized by those factors).
    pub fn scale(&mut self, sx: f32, sy: f32) {
        for b in &mut self.data {
            b[0] *= sx;
            b[1] *= sy;
            b[2] *= sx;
            b[3] *= sy;
        }
    }

    /// Shifts every box by `(dx, dy)` (a crop or a pad).
    pub fn translate(&mut self, dx: f32, dy: f32) {
        for b in &mut self.data {
            b[0] += dx;
            b[1] += dy;
            b[2] += dx;
            b[3] += dy;
        }
    }

    /// Indices of the boxes at least `min_size` wide and high.
    pub fn nonempty_indices(&self, min_size: f32) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| {
                let b = self.data[i];
                b[2] - b[0] >= min_size && b[3] - b[1] >= min_size
            })
            .collect()
    }

    /// Keeps the boxes at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Boxes {
        Boxes::new(indices.iter().map(|&i| self.data[i]).collect())
    }

    /// As a float tensor `[N, 4]` on `device`.
    pub fn to_tensor(&self, device: &Device) -> Tensor<2> {
        let flat: Vec<f32> = self.data.iter().flatten().copied().collect();
        Tensor::<2>::from_data(TensorData::new(flat, [self.len(), 4]), device)
    }

    /// From a float tensor `[N, 4]`.
    pub fn from_tensor(t: Tensor<2>) -> Self {
        let flat: Vec<f32> = t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        Self::new(
            flat.chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect(),
        )
    }
}

impl From<Vec<Xyxy>> for Boxes {
    fn from(data: Vec<Xyxy>) -> Self {
        Self::new(data)
    }
}

impl FromIterator<Xyxy> for Boxes {
    fn from_iter<I: IntoIterator<Item = Xyxy>>(iter: I) -> Self {
        Self::new(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coco_round_trip_and_area() {
        let rows = [[10.0, 20.0, 5.0, 8.0], [0.5, 0.25, 100.0, 1.0]];
        let b = Boxes::from_coco_xywh(&rows);
        assert_eq!(b.get(0), Some([10.0, 20.0, 15.0, 28.0]));
        assert_eq!(b.to_coco_xywh(), rows.to_vec());
        assert_eq!(b.areas(), vec![40.0, 100.0]);
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = Boxes::new(vec![[0.0, 0.0, 2.0, 2.0], [10.0, 10.0, 11.0, 11.0]]);
        let b = Boxes::new(vec![[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]]);
        let m = a.iou_matrix(&b);
        assert!((m[0][0] - 1.0 / 7.0).abs() < 1e-6);
        assert_eq!(m[0][1], 1.0);
        assert_eq!(m[1][0], 0.0);
    }

    #[test]
    fn flip_scale_clip() {
        let mut b = Boxes::new(vec![[1.0, 2.0, 4.0, 6.0]]);
        b.hflip(10.0);
        assert_eq!(b.get(0), Some([6.0, 2.0, 9.0, 6.0]));
        b.hflip(10.0);
        assert_eq!(b.get(0), Some([1.0, 2.0, 4.0, 6.0]));
        b.scale(2.0, 0.5);
        assert_eq!(b.get(0), Some([2.0, 1.0, 8.0, 3.0]));
        b.translate(-3.0, 0.0);
        b.clip(4.0, 2.0);
        assert_eq!(b.get(0), Some([0.0, 1.0, 4.0, 2.0]));
        assert_eq!(b.nonempty_indices(1.0), vec![0]);
    }

    #[test]
    fn tensor_round_trip() {
        let device = Device::default();
        let b = Boxes::new(vec![[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.5, 8.0]]);
        let t = b.to_tensor(&device);
        assert_eq!(t.dims(), [2, 4]);
        assert_eq!(Boxes::from_tensor(t), b);
    }
}
