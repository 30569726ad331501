//! RoIAlign (He et al. 2017), single- and multi-level, differentiable with respect to the
//! feature maps.
//!
//! The sample positions and bilinear weights depend only on the boxes, which get no gradient
//! (as in torchvision). So they are computed on the CPU, following torchvision's
//! `roi_align_kernel.cpp` exactly (a sample with `y < -1`, `y > H`, `x < -1` or `x > W`
//! contributes 0; coordinates are clamped at 0 and at `H - 1`/`W - 1`; each bin averages its
//! `grid_h * grid_w` samples), merged into distinct (pixel, weight) taps per output bin: a
//! constant sparse matrix from the channel-last flattened feature maps of all levels to the
//! output bins (built in parallel over RoIs). The tensor side is one
//! [`sparse_matmul`](ovkd_backbone::ops::sparse_matmul), whose backward is the transposed
//! product; on burn-flex and LibTorch neither materialises the `[taps, C]` rows of every bin.
//!
//! On a LibTorch GPU ([`roi_align_device::runs_on`]) [`MultiScaleRoiAlign`] computes the same
//! taps on the device instead ([`MultiScaleRoiAlign::taps`]), so the GPU does not wait for the
//! host to build and upload the plan (BENCHMARKS, Speed, session 13).

use std::sync::Arc;

use burn::tensor::Tensor;
use ovkd_backbone::FeatureMap;
use ovkd_backbone::ops::roi_align_device::{self, RoiAlignTaps, TapLevel};
use ovkd_backbone::ops::{SparseMatrix, SparseMatrixBuilder, sparse_matmul};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::boxes::box_area;

/// Multi-level RoIAlign settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoiAlignConfig {
    /// `[out_h, out_w]` (7x7 for the box head).
    pub output_size: [usize; 2],
    /// Samples per bin along each axis; `<= 0` is adaptive, `ceil(roi_size / out_size)`.
    pub sampling_ratio: i32,
    /// Half-pixel correction (detectron2's ROIAlignV2); torchvision's `MultiScaleRoIAlign`
    /// uses `false`.
    pub aligned: bool,
    /// Box size assigned to `canonical_level` (224, ImageNet's crop).
    pub canonical_scale: f32,
    /// Level a box of `canonical_scale` pixels goes to (4).
    pub canonical_level: i32,
}

impl Default for RoiAlignConfig {
    fn default() -> Self {
        Self {
            output_size: [7, 7],
            sampling_ratio: 2,
            aligned: true,
            canonical_scale: 224.0,
            canonical_level: 4,
        }
    }
}

/// A region: the image it belongs to in the batch and its box in that level's input pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Roi {
    /// Index of the image in the batch.
    pub batch: usize,
    /// `[x1, y1, x2, y2]` in input pixels (multiplied by `spatial_scale`).
    pub bbox: [f32; 4],
}

/// torchvision's `LevelMapper`: `floor(canonical_level + log2(sqrt(area) / canonical_scale) +
/// 1e-6)`, clamped to `[k_min, k_max]` (f32, as torchvision).
pub fn map_level(
    bbox: &[f32; 4],
    k_min: i32,
    k_max: i32,
    canonical_scale: f32,
    canonical_level: i32,
) -> i32 {
    let s = box_area(bbox).max(0.0).sqrt();
    let lvl = (canonical_level as f32 + (s / canonical_scale).log2() + 1e-6).floor();
    if lvl.is_nan() {
        return k_min;
    }
    (lvl.max(k_min as f32).min(k_max as f32)) as i32
}

/// A RoIAlign as a sparse linear map: `K * out_h * out_w` output bins (RoI-major, then bin
/// row, then bin column) by the pixels of the channel-last flattened feature maps.
#[derive(Clone, Debug)]
pub struct RoiAlignPlan {
    matrix: Arc<SparseMatrix>,
}

impl RoiAlignPlan {
    /// Distinct taps per bin after merging (the widest bin sets it).
    pub fn taps(&self) -> usize {
        self.matrix.max_row_nnz()
    }

    /// The map: `[K * out_h * out_w, pixels]`.
    pub fn matrix(&self) -> &SparseMatrix {
        &self.matrix
    }

    /// Applies the map: `flat` is `[P, C]` (all levels, channel-last, concatenated) →
    /// `[K, C, out_h, out_w]`.
    fn apply(&self, flat: Tensor<2>, k: usize, out: [usize; 2]) -> Tensor<4> {
        let [_, c] = flat.dims();
        sparse_matmul(&self.matrix, flat)
            .reshape([k, out[0], out[1], c])
            .permute([0, 3, 1, 2])
    }
}

/// RoIs pooled per parallel task when building a plan.
const PLAN_CHUNK: usize = 32;

/// The plan of `rois`, the `i`-th pooled on `geom_of(i)`, over `pixels` flattened pixels.
fn build_plan<'a>(
    rois: &[Roi],
    geom_of: impl Fn(usize) -> &'a TapLevel + Sync,
    pixels: usize,
    out: [usize; 2],
    sampling_ratio: i32,
    aligned: bool,
) -> RoiAlignPlan {
    let parts = rois
        .par_chunks(PLAN_CHUNK)
        .enumerate()
        .map(|(c, chunk)| {
            let mut b = SparseMatrixBuilder::new(pixels);
            for (i, roi) in chunk.iter().enumerate() {
                let geom = geom_of(c * PLAN_CHUNK + i);
                assert!(
                    roi.batch < geom.n,
                    "RoI batch index {} out of range ({} images)",
                    roi.batch,
                    geom.n
                );
                roi_taps(
                    &roi.bbox,
                    geom,
                    roi.batch,
                    out,
                    sampling_ratio,
                    aligned,
                    &mut b,
                );
            }
            b.build()
        })
        .collect();
    RoiAlignPlan {
        matrix: Arc::new(SparseMatrix::vstack(parts, pixels)),
    }
}

/// The taps of one RoI on one level, appended bin by bin (`out_h * out_w` rows) to `plan`.
#[allow(clippy::too_many_arguments)]
fn roi_taps(
    bbox: &[f32; 4],
    geom: &TapLevel,
    batch: usize,
    out: [usize; 2],
    sampling_ratio: i32,
    aligned: bool,
    plan: &mut SparseMatrixBuilder,
) {
    let offset = if aligned { 0.5 } else { 0.0 };
    let start_w = bbox[0] as f64 * geom.scale - offset;
    let start_h = bbox[1] as f64 * geom.scale - offset;
    let end_w = bbox[2] as f64 * geom.scale - offset;
    let end_h = bbox[3] as f64 * geom.scale - offset;
    let mut roi_w = end_w - start_w;
    let mut roi_h = end_h - start_h;
    if !aligned {
        roi_w = roi_w.max(1.0);
        roi_h = roi_h.max(1.0);
    }
    let bin_h = roi_h / out[0] as f64;
    let bin_w = roi_w / out[1] as f64;
    let grid_h = if sampling_ratio > 0 {
        sampling_ratio as i64
    } else {
        (roi_h / out[0] as f64).ceil() as i64
    };
    let grid_w = if sampling_ratio > 0 {
        sampling_ratio as i64
    } else {
        (roi_w / out[1] as f64).ceil() as i64
    };
    let count = (grid_h * grid_w).max(1) as f64;
    let base = geom.offset + batch * geom.h * geom.w;

    // One axis' samples of one bin: (low, high, weight of low, weight of high), or None when
    // the sample lies outside [-1, size].
    let axis = |start: f64, bin: f64, grid: i64, p: usize, size: usize| {
        let sizef = size as f64;
        (0..grid.max(0))
            .map(|i| {
                let mut v = start + p as f64 * bin + (i as f64 + 0.5) * bin / grid as f64;
                if v < -1.0 || v > sizef {
                    return None;
                }
                if v <= 0.0 {
                    v = 0.0;
                }
                let mut low = v as usize;
                let high;
                if low >= size - 1 {
                    low = size - 1;
                    high = low;
                    v = low as f64;
                } else {
                    high = low + 1;
                }
                let l = v - low as f64;
                Some((low, high, 1.0 - l, l))
            })
            .collect::<Vec<_>>()
    };

    // A bin's columns of samples depend on its column alone: computed once per RoI.
    let xs_of: Vec<_> = (0..out[1])
        .map(|pw| axis(start_w, bin_w, grid_w, pw, geom.w))
        .collect();
    for ph in 0..out[0] {
        let ys = axis(start_h, bin_h, grid_h, ph, geom.h);
        for xs in &xs_of {
            for y in ys.iter().flatten() {
                for x in xs.iter().flatten() {
                    let (yl, yh, hy, ly) = *y;
                    let (xl, xh, hx, lx) = *x;
                    for (yy, xx, wt) in [
                        (yl, xl, hy * hx),
                        (yl, xh, hy * lx),
                        (yh, xl, ly * hx),
                        (yh, xh, ly * lx),
                    ] {
                        plan.add(base + yy * geom.w + xx, wt / count);
                    }
                }
            }
            plan.end_row();
        }
    }
}

/// `[N, C, H, W]` → `[N * H * W, C]`.
fn channel_last(x: Tensor<4>) -> Tensor<2> {
    let [n, c, h, w] = x.dims();
    x.permute([0, 2, 3, 1]).reshape([n * h * w, c])
}

/// Single-level RoIAlign, torchvision's `ops.roi_align`: `input` `[N, C, H, W]`, boxes scaled
/// by `spatial_scale` → `[K, C, out_h, out_w]`. `rois` must not be empty.
pub fn roi_align(
    input: Tensor<4>,
    rois: &[Roi],
    spatial_scale: f32,
    output_size: [usize; 2],
    sampling_ratio: i32,
    aligned: bool,
) -> Tensor<4> {
    assert!(!rois.is_empty(), "roi_align: no RoIs");
    let [n, _, h, w] = input.dims();
    let geom = TapLevel {
        offset: 0,
        n,
        h,
        w,
        scale: spatial_scale as f64,
    };
    build_plan(
        rois,
        |_| &geom,
        n * h * w,
        output_size,
        sampling_ratio,
        aligned,
    )
    .apply(channel_last(input), rois.len(), output_size)
}

/// Multi-level RoIAlign (torchvision's `MultiScaleRoIAlign`): each box is pooled from the
/// level [`map_level`] picks among the given maps (their levels must be consecutive, finest
/// first, e.g. P2..P5), with spatial scale `1 / stride`.
#[derive(Clone, Debug, Default)]
pub struct MultiScaleRoiAlign {
    /// Settings.
    pub config: RoiAlignConfig,
}

impl MultiScaleRoiAlign {
    /// A pooler with these settings.
    pub fn new(config: RoiAlignConfig) -> Self {
        Self { config }
    }

    /// The index into `features` each RoI is pooled from.
    pub fn assign_levels(&self, features: &[FeatureMap], rois: &[Roi]) -> Vec<usize> {
        let k_min = features[0].level() as i32;
        let k_max = features[features.len() - 1].level() as i32;
        rois.iter()
            .map(|r| {
                (map_level(
                    &r.bbox,
                    k_min,
                    k_max,
                    self.config.canonical_scale,
                    self.config.canonical_level,
                ) - k_min) as usize
            })
            .collect()
    }

    /// `features` (each `[N, C, H_l, W_l]`, same `C`), `rois` (at least one) →
    /// `[K, C, out_h, out_w]` in the order of `rois`.
    pub fn forward(&self, features: &[FeatureMap], rois: &[Roi]) -> Tensor<4> {
        assert!(!rois.is_empty(), "MultiScaleRoiAlign: no RoIs");
        assert!(!features.is_empty(), "MultiScaleRoiAlign: no feature maps");
        // The device's layout change first: on an asynchronous device it runs while the host
        // builds the plan.
        let flat = Tensor::cat(
            features
                .iter()
                .map(|f| channel_last(f.tensor.clone()))
                .collect(),
            0,
        );
        let out = self.config.output_size;
        if self.config.sampling_ratio > 0 && roi_align_device::runs_on(&flat.device()) {
            let [_, c] = flat.dims();
            return roi_align_device::roi_align_taps(Arc::new(self.taps(features, rois)), flat)
                .reshape([rois.len(), out[0], out[1], c])
                .permute([0, 3, 1, 2]);
        }
        let planning = ovkd_backbone::ops::profiler::range("ovkd::roi_align::plan");
        let plan = self.plan(features, rois);
        drop(planning);
        plan.apply(flat, rois.len(), out)
    }

    /// What [`roi_align_device::roi_align_taps`] needs to pool `rois` from `features` (the
    /// device's route on a LibTorch GPU; the same bins as [`plan`](Self::plan)'s).
    ///
    /// # Panics
    /// When the sampling ratio is adaptive (`<= 0`).
    pub fn taps(&self, features: &[FeatureMap], rois: &[Roi]) -> RoiAlignTaps {
        let levels = self.assign_levels(features, rois);
        RoiAlignTaps {
            levels: level_geoms(features),
            boxes: rois.iter().map(|r| r.bbox).collect(),
            batch: rois.iter().map(|r| r.batch).collect(),
            level: levels,
            output_size: self.config.output_size,
            sampling_ratio: usize::try_from(self.config.sampling_ratio)
                .ok()
                .filter(|&s| s > 0)
                .expect("the device's taps need a fixed sampling ratio"),
            aligned: self.config.aligned,
        }
    }

    /// The sparse map [`forward`](Self::forward) applies (for inspection and tests).
    pub fn plan(&self, features: &[FeatureMap], rois: &[Roi]) -> RoiAlignPlan {
        let geoms = level_geoms(features);
        let pixels = geoms.last().map_or(0, |g| g.offset + g.n * g.h * g.w);
        let levels = self.assign_levels(features, rois);
        build_plan(
            rois,
            |i| &geoms[levels[i]],
            pixels,
            self.config.output_size,
            self.config.sampling_ratio,
            self.config.aligned,
        )
    }
}

/// Where each of `features` sits in their channel-last concatenation.
fn level_geoms(features: &[FeatureMap]) -> Vec<TapLevel> {
    let mut geoms = Vec::with_capacity(features.len());
    let mut offset = 0;
    for f in features {
        let [n, _, h, w] = f.tensor.dims();
        geoms.push(TapLevel {
            offset,
            n,
            h,
            w,
            scale: 1.0 / f.stride as f64,
        });
        offset += n * h * w;
    }
    geoms
}

/// A device-less helper for callers that hold boxes per image: flattens them into [`Roi`]s
/// (image order, then box order).
pub fn rois_from_boxes(per_image: &[&[[f32; 4]]]) -> Vec<Roi> {
    per_image
        .iter()
        .enumerate()
        .flat_map(|(b, boxes)| boxes.iter().map(move |&bbox| Roi { batch: b, bbox }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn level_mapper_matches_torchvision_rule() {
        // sqrt(area) = 224 → level 4; 112 → 3; 56 → 2; 448 → 5; tiny → clamped to 2.
        let m = |s: f32| map_level(&[0.0, 0.0, s, s], 2, 5, 224.0, 4);
        assert_eq!(
            [m(224.0), m(112.0), m(56.0), m(448.0), m(1.0), m(2000.0)],
            [4, 3, 2, 5, 2, 5]
        );
        assert_eq!(m(111.9), 2);
        assert_eq!(map_level(&[5.0, 5.0, 5.0, 5.0], 2, 5, 224.0, 4), 2);
    }

    /// A box that covers whole pixels of a constant map pools to that constant, on the level
    /// the mapper picks; multi-level output equals single-level RoIAlign on that level.
    #[test]
    fn multi_level_equals_single_level_on_the_assigned_level() {
        let device = Device::default();
        let feats: Vec<FeatureMap> = [(4usize, 32usize), (8, 16), (16, 8), (32, 4)]
            .into_iter()
            .map(|(s, h)| FeatureMap {
                stride: s,
                tensor: Tensor::random([2, 3, h, h], Distribution::Normal(0.0, 1.0), &device),
            })
            .collect();
        let rois = vec![
            Roi {
                batch: 0,
                bbox: [3.0, 5.0, 30.0, 40.0],
            }, // small → P2
            Roi {
                batch: 1,
                bbox: [0.0, 0.0, 127.0, 100.0],
            }, // ~112 → P3
            Roi {
                batch: 1,
                bbox: [10.0, 20.0, 20.0, 24.0],
            }, // → P2
            Roi {
                batch: 0,
                bbox: [-10.0, 0.0, 128.0, 128.0],
            }, // ~133 → P3
        ];
        let pooler = MultiScaleRoiAlign::new(RoiAlignConfig::default());
        let levels = pooler.assign_levels(&feats, &rois);
        assert_eq!(levels, vec![0, 1, 0, 1]);
        let got = pooler.forward(&feats, &rois);
        assert_eq!(got.dims(), [4, 3, 7, 7]);
        let got = got.into_data().try_to_vec::<f32>().unwrap();
        for (k, (roi, &l)) in rois.iter().zip(&levels).enumerate() {
            let one = roi_align(
                feats[l].tensor.clone(),
                &[*roi],
                1.0 / feats[l].stride as f32,
                [7, 7],
                2,
                true,
            )
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
            let part = &got[k * 3 * 49..(k + 1) * 3 * 49];
            for (a, b) in part.iter().zip(&one) {
                assert!((a - b).abs() < 1e-6, "roi {k}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn constant_map_pools_to_the_constant() {
        let device = Device::default();
        let x = Tensor::<4>::ones([1, 2, 10, 10], &device).mul_scalar(3.0);
        let out = roi_align(
            x,
            &[Roi {
                batch: 0,
                bbox: [1.0, 1.0, 8.0, 9.0],
            }],
            1.0,
            [3, 3],
            0,
            true,
        );
        for v in out.into_data().try_to_vec::<f32>().unwrap() {
            assert!((v - 3.0).abs() < 1e-5);
        }
    }

    /// The device's taps (the route on a LibTorch GPU, run here on LibTorch's CPU) pool the
    /// same bins as the host plan, and give the same feature gradient, for RoIs on every level,
    /// partly outside their map, smaller than a pixel and larger than the image, with and
    /// without the half-pixel correction.
    #[cfg(feature = "tch")]
    fn check_device_taps(device: Device) {
        let ad = device.autodiff();
        ad.seed(9);
        let feats: Vec<FeatureMap> = [(4usize, 32usize), (8, 16), (16, 8), (32, 4)]
            .into_iter()
            .map(|(s, h)| FeatureMap {
                stride: s,
                tensor: Tensor::random([2, 3, h, h], Distribution::Normal(0.0, 1.0), &ad),
            })
            .collect();
        let boxes = [
            [3.0, 5.0, 30.0, 40.0],
            [0.0, 0.0, 127.0, 100.0],
            [10.0, 20.0, 10.4, 20.3],
            [-10.0, -4.0, 140.0, 133.0],
            [100.0, 90.0, 131.0, 127.9],
            [-30.0, 60.0, 5.0, 70.0],
        ];
        let rois: Vec<Roi> = boxes
            .iter()
            .enumerate()
            .map(|(i, &bbox)| Roi { batch: i % 2, bbox })
            .collect();
        for aligned in [false, true] {
            let pooler = MultiScaleRoiAlign::new(RoiAlignConfig {
                aligned,
                ..RoiAlignConfig::default()
            });
            let flat0 = Tensor::cat(
                feats
                    .iter()
                    .map(|f| channel_last(f.tensor.clone()))
                    .collect(),
                0,
            );
            let [bins, c] = [rois.len() * 49, 3];
            let up = Tensor::<2>::random([bins, c], Distribution::Normal(0.0, 1.0), &ad);
            let run = |device_route: bool| {
                let flat = flat0.clone().detach().require_grad();
                let y = if device_route {
                    roi_align_device::roi_align_taps(
                        Arc::new(pooler.taps(&feats, &rois)),
                        flat.clone(),
                    )
                } else {
                    sparse_matmul(&pooler.plan(&feats, &rois).matrix, flat.clone())
                };
                let grads = y.clone().mul(up.clone()).sum().backward();
                let dx = flat.grad(&grads).expect("flat has a gradient");
                let v = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
                (v(y), v(dx))
            };
            let (y, dx) = run(true);
            let (y_ref, dx_ref) = run(false);
            for (what, got, want) in [("y", &y, &y_ref), ("dx", &dx, &dx_ref)] {
                assert_eq!(got.len(), want.len());
                for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "aligned {aligned}, {what}[{i}]: {a} vs {b}"
                    );
                }
            }
            assert!(y_ref.iter().any(|&v| v != 0.0) && dx_ref.iter().any(|&v| v != 0.0));
        }
    }

    #[cfg(feature = "tch")]
    #[allow(deprecated)] // burn-tch's device
    #[test]
    fn device_taps_pool_as_the_host_plan_on_libtorch() {
        check_device_taps(Device::libtorch());
    }

    /// The same where LibTorch sees a GPU (where the detector takes this route).
    #[cfg(feature = "tch")]
    #[allow(deprecated)] // burn-tch's CUDA device
    #[test]
    fn device_taps_pool_as_the_host_plan_on_libtorch_cuda() {
        if !tch::Cuda::is_available() {
            eprintln!("no CUDA device: the device's RoIAlign taps are not checked on CUDA here");
            return;
        }
        assert!(roi_align_device::runs_on(&Device::libtorch_cuda(0)));
        check_device_taps(Device::libtorch_cuda(0));
    }
}
