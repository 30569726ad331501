//! RoIAlign's sampling taps computed on a LibTorch GPU.
//!
//! The detector's RoIAlign (`ovkd_detector::roi_align`) turns its boxes into a constant sparse
//! matrix on the host and multiplies the channel-last features by it ([`super::sparse_matmul`]).
//! On the H200 that host work and its upload left the GPU idle about 24 ms of a profiled 138 ms
//! R50-FPN training step at 512 px, batch 8 (the plan of 4,096 RoIs, 2 M taps: 16 ms; its 26 MB
//! upload: 8 ms; BENCHMARKS, Speed, session 13). Here the same taps (torchvision's
//! `roi_align_kernel` rules, in f64, as the host computes them) are computed on the device from
//! the boxes (a few kilobytes uploaded; 2.2 ms of host time a step), every bin with all
//! `grid_h * grid_w * 4` of its taps (samples outside the map get weight 0; the host merges taps
//! that hit the same pixel, so sums differ by rounding only). The product is LibTorch's
//! `embedding_bag`, its backward the device transpose of [`super::sparse_matmul`].
//!
//! [`runs_on`] says where the detector takes this route (LibTorch on a GPU, fixed sampling
//! ratio); everywhere else it keeps the host plan.

use std::sync::Arc;

use burn::tensor::{Device, Tensor};

/// Where one feature level sits in the channel-last concatenation of all levels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TapLevel {
    /// Pixels (rows of the concatenation) before this level.
    pub offset: usize,
    /// Images.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Input pixels to this level's pixels (`1 / stride`).
    pub scale: f64,
}

/// A multi-level RoIAlign over the concatenated levels: what [`roi_align_taps`] needs.
#[derive(Clone, Debug, PartialEq)]
pub struct RoiAlignTaps {
    /// The levels, in the order of the concatenation.
    pub levels: Vec<TapLevel>,
    /// Per RoI: `[x1, y1, x2, y2]` in input pixels.
    pub boxes: Vec<[f32; 4]>,
    /// Per RoI: its image.
    pub batch: Vec<usize>,
    /// Per RoI: its level (an index into `levels`).
    pub level: Vec<usize>,
    /// `[out_h, out_w]` bins per RoI.
    pub output_size: [usize; 2],
    /// Samples per bin along each axis (fixed, at least 1).
    pub sampling_ratio: usize,
    /// Half-pixel correction (ROIAlignV2).
    pub aligned: bool,
}

impl RoiAlignTaps {
    /// Rows of the concatenation (pixels of all levels).
    pub fn pixels(&self) -> usize {
        self.levels.iter().map(|l| l.n * l.h * l.w).sum()
    }
}

/// Whether the detector's RoIAlign computes its taps on `device` ([`roi_align_taps`]): LibTorch
/// on a GPU. On the CPU the host's merged plan is cheaper than the device's sort.
pub fn runs_on(device: &Device) -> bool {
    super::is_gpu(device)
}

/// The pooled bins of `spec`'s RoIs from `flat` `[P, C]` (all levels, channel-last,
/// concatenated) → `[R * out_h * out_w, C]`, RoI-major then bin row then bin column;
/// differentiable in `flat`. Any LibTorch device (the tests run it on the CPU).
///
/// # Panics
/// When `flat` is not on a LibTorch device (without the `tch` feature: always), when its rows
/// are not `spec.pixels()`, or when the spec is inconsistent.
pub fn roi_align_taps(spec: Arc<RoiAlignTaps>, flat: Tensor<2>) -> Tensor<2> {
    let r = spec.boxes.len();
    assert!(
        spec.batch.len() == r && spec.level.len() == r,
        "roi_align_taps: one image and one level per box"
    );
    assert!(spec.sampling_ratio > 0, "roi_align_taps: sampling ratio 0");
    assert_eq!(
        flat.dims()[0],
        spec.pixels(),
        "roi_align_taps: rows of flat"
    );
    #[cfg(feature = "tch")]
    if super::libtorch::is_libtorch(&flat.device()) {
        return libtorch::apply(spec, flat);
    }
    panic!("roi_align_taps: needs a LibTorch device (feature `tch`)")
}

#[cfg(feature = "tch")]
mod libtorch {
    use std::sync::{Arc, Mutex};

    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::libtorch::TchTensor;
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{Autodiff, Backend, LibTorch, backend_extension};
    use burn::tensor::Tensor;
    use tch::{Device, Kind};

    use super::RoiAlignTaps;
    use crate::ops::spmm::libtorch::{embedding_bag_sum, transposed_product_of, upload};

    /// The taps on the device: bin `b`'s are entries `b * per_bin .. (b + 1) * per_bin`.
    struct Taps {
        /// `[bins * per_bin]` rows of the concatenation.
        indices: tch::Tensor,
        /// `[bins * per_bin]` f32 weights (0 for samples outside their map).
        weights: tch::Tensor,
        per_bin: i64,
        bins: i64,
        pixels: i64,
    }

    /// One axis of every RoI's bins: for `start`, `bin`, `size` `[R]` (f64), the low and high
    /// pixel `[R, out, grid]` (i64) of each sample and their weights (f64), as
    /// `roi_align_kernel`'s `bilinear_interpolate`.
    fn axis(
        start: &tch::Tensor,
        bin: &tch::Tensor,
        size: &tch::Tensor,
        out: i64,
        grid: i64,
    ) -> [tch::Tensor; 4] {
        let device = start.device();
        let p = tch::Tensor::arange(out, (Kind::Double, device)).view([1, out, 1]);
        let i = tch::Tensor::arange(grid, (Kind::Double, device)).view([1, 1, grid]);
        let (start, bin, size) = (
            start.view([-1, 1, 1]),
            bin.view([-1, 1, 1]),
            size.view([-1, 1, 1]),
        );
        // The host's `start + p * bin + (i + 0.5) * bin / grid`, operation for operation.
        let v = &start + &p * &bin + (&i + 0.5) * &bin / grid as f64;
        let valid = v.ge(-1.0).logical_and(&v.le_tensor(&size));
        let v = v.clamp_min(0.0);
        let last = (&size - 1.0).expand_as(&v);
        let floor = v.floor();
        let edge = floor.ge_tensor(&last);
        let low = last.where_self(&edge, &floor);
        let high = last.where_self(&edge, &(&floor + 1.0));
        let v = low.where_self(&edge, &v);
        let l = &v - &low;
        let h = -&l + 1.0;
        let zero = l.zeros_like();
        [
            low.to_kind(Kind::Int64),
            high.to_kind(Kind::Int64),
            h.where_self(&valid, &zero),
            l.where_self(&valid, &zero),
        ]
    }

    impl Taps {
        fn build(spec: &RoiAlignTaps, device: Device) -> Self {
            let _range = crate::ops::profiler::range("ovkd::roi_align::device_taps");
            let r = spec.boxes.len() as i64;
            let [oh, ow] = spec.output_size.map(|v| v as i64);
            let g = spec.sampling_ratio as i64;
            // Per RoI, in one upload (each is a blocking copy): the box, its level's scale,
            // height and width, and where its image's map starts (exact in f64 below 2^53).
            const FIELDS: usize = 8;
            let mut host = Vec::with_capacity(spec.boxes.len() * FIELDS);
            for (i, b) in spec.boxes.iter().enumerate() {
                let l = &spec.levels[spec.level[i]];
                let base = l.offset + spec.batch[i] * l.h * l.w;
                host.extend(b.map(f64::from));
                host.extend([l.scale, l.h as f64, l.w as f64, base as f64]);
            }
            let per_roi = upload(&host, device).view([r, FIELDS as i64]);
            let field = |k: i64| per_roi.select(1, k);
            let (scale, height, width) = (field(4), field(5), field(6));
            let base = field(7).to_kind(Kind::Int64).view([r, 1, 1, 1, 1, 1]);
            let width_i = width.to_kind(Kind::Int64).view([r, 1, 1, 1, 1, 1]);

            let offset = if spec.aligned { 0.5 } else { 0.0 };
            let at = |k: i64| field(k) * &scale - offset;
            let (start_w, start_h, end_w, end_h) = (at(0), at(1), at(2), at(3));
            let (mut roi_w, mut roi_h) = (&end_w - &start_w, &end_h - &start_h);
            if !spec.aligned {
                roi_w = roi_w.clamp_min(1.0);
                roi_h = roi_h.clamp_min(1.0);
            }
            let bin_h = roi_h / oh as f64;
            let bin_w = roi_w / ow as f64;
            let [yl, yh, hy, ly] = axis(&start_h, &bin_h, &height, oh, g);
            let [xl, xh, hx, lx] = axis(&start_w, &bin_w, &width, ow, g);

            // Per sample the four corners, in the host's order: (yl, xl), (yl, xh), (yh, xl),
            // (yh, xh); [R, out, grid, 4] per axis, broadcast to [R, oh, ow, gy, gx, 4].
            let four = |a: &tch::Tensor, b: &tch::Tensor, c: &tch::Tensor, d: &tch::Tensor| {
                tch::Tensor::stack(&[a, b, c, d], -1)
            };
            let ys = four(&yl, &yl, &yh, &yh).view([r, oh, 1, g, 1, 4]);
            let xs = four(&xl, &xh, &xl, &xh).view([r, 1, ow, 1, g, 4]);
            let wy = four(&hy, &hy, &ly, &ly).view([r, oh, 1, g, 1, 4]);
            let wx = four(&hx, &lx, &hx, &lx).view([r, 1, ow, 1, g, 4]);
            let count = (g * g).max(1) as f64;
            let indices = (base + ys * width_i + xs).reshape([-1]);
            let weights = ((wy * wx) / count).to_kind(Kind::Float).reshape([-1]);
            Taps {
                indices,
                weights,
                per_bin: g * g * 4,
                bins: r * oh * ow,
                pixels: spec.pixels() as i64,
            }
        }

        /// `[bins, C]` from `flat` `[P, C]`.
        fn apply(&self, flat: &tch::Tensor) -> tch::Tensor {
            let offsets =
                tch::Tensor::arange(self.bins + 1, (Kind::Int64, flat.device())) * self.per_bin;
            embedding_bag_sum(flat, &self.indices, &offsets, &self.weights)
        }

        /// `[P, C]`: the transposed product with the bins' gradient `g` `[bins, C]`.
        fn apply_transposed(&self, g: &tch::Tensor) -> tch::Tensor {
            let rows = tch::Tensor::arange(self.indices.size()[0], (Kind::Int64, g.device()))
                .floor_divide_scalar(self.per_bin);
            transposed_product_of(&self.indices, &rows, &self.weights, self.pixels, g)
        }
    }

    /// The taps a forward built, for its backward.
    #[derive(Clone)]
    struct SavedTaps(Arc<Mutex<Option<Taps>>>);

    impl core::fmt::Debug for SavedTaps {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("SavedTaps")
        }
    }

    /// The pooling routed to the tensor's backend (LibTorch only; the caller checks).
    #[backend_extension(LibTorch, Autodiff)]
    pub trait RoiTapsBackend: Backend {
        /// `flat` `[P, C]` → `[R * out_h * out_w, C]`.
        fn roi_taps_pool(spec: Arc<RoiAlignTaps>, flat: FloatTensor<Self>) -> FloatTensor<Self>;
    }

    impl RoiTapsBackend for LibTorch {
        fn roi_taps_pool(spec: Arc<RoiAlignTaps>, flat: TchTensor) -> TchTensor {
            let taps = Taps::build(&spec, flat.tensor.device());
            TchTensor::new(taps.apply(&flat.tensor))
        }
    }

    #[derive(Debug)]
    struct RoiTapsBackward;

    impl Backward<LibTorch, 1> for RoiTapsBackward {
        type State = SavedTaps;

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let grad = grads.consume::<LibTorch>(&ops.node);
            let taps = ops
                .state
                .0
                .lock()
                .expect("the taps' lock is not poisoned")
                .take()
                .expect("a backward runs once");
            if let Some(parent) = ops.parents[0].as_ref() {
                let dx = taps.apply_transposed(&grad.tensor);
                grads.register::<LibTorch>(parent.id, TchTensor::new(dx));
            }
        }
    }

    impl<C: CheckpointStrategy> RoiTapsBackend for Autodiff<LibTorch, C> {
        fn roi_taps_pool(spec: Arc<RoiAlignTaps>, flat: FloatTensor<Self>) -> FloatTensor<Self> {
            match RoiTapsBackward
                .prepare::<C>([flat.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let flat = flat.into_primitive();
                    let taps = Taps::build(&spec, flat.tensor.device());
                    let y = TchTensor::new(taps.apply(&flat.tensor));
                    prep.finish(SavedTaps(Arc::new(Mutex::new(Some(taps)))), y)
                }
                OpsKind::UnTracked(prep) => prep.finish(
                    <LibTorch as RoiTapsBackend>::roi_taps_pool(spec, flat.into_primitive()),
                ),
            }
        }
    }

    pub fn apply(spec: Arc<RoiAlignTaps>, flat: Tensor<2>) -> Tensor<2> {
        type Dp = burn::backend::Dispatch;
        Tensor::from_dispatch(<Dp as RoiTapsBackend>::roi_taps_pool(
            spec,
            flat.into_dispatch(),
        ))
    }
}
