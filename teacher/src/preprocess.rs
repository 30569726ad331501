//! CLIP's image preprocessing: the shorter side resized bicubically as PIL does it (which is
//! what transformers' `CLIPImageProcessor` calls), a centre crop, [0, 1] scaling and CLIP's mean
//! and std; and the crop-and-resize of boxes for region embeddings.

use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::TeacherError;

/// CLIP's per-channel mean (RGB, on [0, 1] values).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel std.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Preprocessing settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    /// Output side S (the model's image size).
    pub size: usize,
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel std.
    pub std: [f32; 3],
}

impl PreprocessConfig {
    /// CLIP's mean and std at side `size`.
    pub fn clip(size: usize) -> Self {
        Self {
            size,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// Whole image: shorter side → S (PIL bicubic), centre crop S x S, normalise.
    /// Returns [3, S, S] channel-major.
    pub fn image(&self, img: &RgbImage) -> Result<Vec<f32>, TeacherError> {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(TeacherError::InvalidRequest("empty image".into()));
        }
        let s = self.size as u32;
        // transformers' get_resize_output_image_size: the long side is int(S * long / short).
        let (nw, nh) = if w <= h {
            (s, ((s as u64 * h as u64) / w as u64) as u32)
        } else {
            (((s as u64 * w as u64) / h as u64) as u32, s)
        };
        let resized = if (nw, nh) == (w, h) {
            img.clone()
        } else {
            pil_resize_bicubic(img, nw, nh)
        };
        // transformers' center_crop: top = (H - S) // 2, left = (W - S) // 2.
        let top = (nh - s) / 2;
        let left = (nw - s) / 2;
        let mut out = vec![0.0f32; 3 * self.size * self.size];
        let plane = self.size * self.size;
        for y in 0..s {
            for x in 0..s {
                let p = resized.get_pixel(left + x, top + y);
                let i = (y * s + x) as usize;
                for c in 0..3 {
                    out[c * plane + i] = (p[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
                }
            }
        }
        Ok(out)
    }

    /// A box [x1, y1, x2, y2] (image pixels, continuous coordinates) cropped and resized to
    /// S x S, then normalised. Returns [3, S, S]. See [`resample_box`] for the sampling.
    pub fn crop(&self, img: &RgbImage, b: [f32; 4]) -> Result<Vec<f32>, TeacherError> {
        check_box(img, b)?;
        let mut out = vec![0.0f32; 3 * self.size * self.size];
        self.crop_into(img, b, &mut out);
        Ok(out)
    }

    /// [`crop`](Self::crop) of a box already checked, written into `out` (`3 * S * S`).
    fn crop_into(&self, img: &RgbImage, b: [f32; 4], out: &mut [f32]) {
        resample_box_into(img, b, self.size, self.size, false, out);
        self.normalise(out);
    }

    /// The crops of region embeddings: of each box the box itself and the box scaled by
    /// `context` about its centre (clipped to the image; ViLD's 1.5x view), each through
    /// [`crop`](Self::crop), written in place. Boxes in parallel (on a GPU the host's crops are
    /// what the tower waits for: one thread makes about 1,800 a second, `cargo run --release -p
    /// ovkd-teacher --example crop_speed`). Returns `[2N, 3, S, S]` flattened, box i's views at 2i and 2i + 1.
    /// Checks every box first ([`check_box`]; the error names the box's index).
    pub fn region_crops(
        &self,
        img: &RgbImage,
        boxes: &[[f32; 4]],
        context: f32,
    ) -> Result<Vec<f32>, TeacherError> {
        for (i, b) in boxes.iter().enumerate() {
            check_box(img, *b)
                .map_err(|e| TeacherError::InvalidRequest(format!("box {i}: {e}")))?;
        }
        let per = 3 * self.size * self.size;
        let mut out = vec![0.0f32; boxes.len() * 2 * per];
        out.par_chunks_mut(2 * per)
            .zip(boxes.par_iter())
            .for_each(|(views, b)| {
                let (own, wide) = views.split_at_mut(per);
                self.crop_into(img, *b, own);
                // Scaled about a valid box's centre and clipped: valid too.
                let w = scale_box(*b, context, img.width(), img.height());
                self.crop_into(img, w, wide);
            });
        Ok(out)
    }

    /// Maps [3, h, w] channel-major values in 0..=255 to CLIP's normalised inputs, in place.
    pub fn normalise(&self, px: &mut [f32]) {
        let plane = px.len() / 3;
        for (c, ch) in px.chunks_mut(plane.max(1)).enumerate().take(3) {
            for v in ch {
                *v = (*v / 255.0 - self.mean[c]) / self.std[c];
            }
        }
    }

    /// The whole image resized (no crop, PIL bicubic) to `w x h` and normalised: [3, h, w].
    /// For dense features at any input size.
    pub fn resize_to(&self, img: &RgbImage, w: u32, h: u32) -> Result<Vec<f32>, TeacherError> {
        if img.width() == 0 || img.height() == 0 {
            return Err(TeacherError::InvalidRequest("empty image".into()));
        }
        let r = if img.dimensions() == (w, h) {
            img.clone()
        } else {
            pil_resize_bicubic(img, w, h)
        };
        let plane = (w * h) as usize;
        let mut out = vec![0.0f32; 3 * plane];
        for (i, p) in r.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (p[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        Ok(out)
    }
}

/// Per output index along one axis: the first source index and the weights of the source
/// indices from there. The output pixel `o` covers `[lo + o * step, lo + (o + 1) * step]` of
/// the source (`step = (hi - lo) / out`). Shrinking (`step > 1`) averages the source pixels
/// by their overlap with that interval (an area filter, so that textures do not alias);
/// enlarging samples bilinearly at the interval's centre. Indices beyond the source are
/// clamped to its edge.
fn axis_weights(lo: f32, hi: f32, out: usize, n_in: usize) -> Vec<(usize, Vec<f32>)> {
    let step = (hi - lo) / out as f32;
    let last = n_in as i64 - 1;
    let clamp = |i: i64| i.clamp(0, last) as usize;
    (0..out)
        .map(|o| {
            let mut taps: Vec<(usize, f32)> = Vec::new();
            if step > 1.0 {
                let (a, b) = (lo + o as f32 * step, lo + (o + 1) as f32 * step);
                let mut i = a.floor() as i64;
                while (i as f32) < b {
                    let w = (b.min(i as f32 + 1.0) - a.max(i as f32)).max(0.0);
                    if w > 0.0 {
                        taps.push((clamp(i), w / step));
                    }
                    i += 1;
                }
            } else {
                let v = lo + (o as f32 + 0.5) * step - 0.5;
                let v = v.clamp(0.0, last as f32);
                let i0 = v.floor() as i64;
                let f = v - i0 as f32;
                taps.push((clamp(i0), 1.0 - f));
                taps.push((clamp(i0 + 1), f));
            }
            let first = taps.iter().map(|t| t.0).min().unwrap_or(0);
            let end = taps.iter().map(|t| t.0).max().unwrap_or(0) + 1;
            let mut w = vec![0.0f32; end - first];
            for (i, t) in taps {
                w[i - first] += t;
            }
            (first, w)
        })
        .collect()
}

/// The box [x1, y1, x2, y2] (continuous image coordinates) resampled to `out_w x out_h`
/// (area-averaged where it shrinks, bilinear where it grows; see [`axis_weights`]),
/// mirrored left-right when `flip`: [3, out_h, out_w] channel-major, values in 0..=255.
/// The box must be valid ([`check_box`]).
pub fn resample_box(
    img: &RgbImage,
    b: [f32; 4],
    out_w: usize,
    out_h: usize,
    flip: bool,
) -> Vec<f32> {
    let mut out = vec![0.0f32; 3 * out_w * out_h];
    resample_box_into(img, b, out_w, out_h, flip, &mut out);
    out
}

/// [`resample_box`] written into `out` (`3 * out_h * out_w`, every value overwritten).
fn resample_box_into(
    img: &RgbImage,
    b: [f32; 4],
    out_w: usize,
    out_h: usize,
    flip: bool,
    out: &mut [f32],
) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let xs = axis_weights(b[0], b[2], out_w, w);
    let ys = axis_weights(b[1], b[3], out_h, h);
    // Rows first: every source row the output touches, resampled horizontally.
    let y_lo = ys.iter().map(|t| t.0).min().unwrap_or(0);
    let y_hi = ys.iter().map(|t| t.0 + t.1.len()).max().unwrap_or(0);
    let mut rows = vec![0.0f32; (y_hi - y_lo) * out_w * 3];
    for y in y_lo..y_hi {
        let src = &raw[y * w * 3..(y + 1) * w * 3];
        let dst = &mut rows[(y - y_lo) * out_w * 3..(y - y_lo + 1) * out_w * 3];
        for (ox, (first, wt)) in xs.iter().enumerate() {
            let mut acc = [0.0f32; 3];
            for (k, &wk) in wt.iter().enumerate() {
                let p = &src[(first + k) * 3..(first + k) * 3 + 3];
                for c in 0..3 {
                    acc[c] += wk * p[c] as f32;
                }
            }
            let ox = if flip { out_w - 1 - ox } else { ox };
            dst[ox * 3..ox * 3 + 3].copy_from_slice(&acc);
        }
    }
    let plane = out_w * out_h;
    assert_eq!(out.len(), 3 * plane, "the output holds [3, out_h, out_w]");
    for (oy, (first, wt)) in ys.iter().enumerate() {
        for ox in 0..out_w {
            let mut acc = [0.0f32; 3];
            for (k, &wk) in wt.iter().enumerate() {
                let r = &rows[((first + k - y_lo) * out_w + ox) * 3..][..3];
                for c in 0..3 {
                    acc[c] += wk * r[c];
                }
            }
            for c in 0..3 {
                out[c * plane + oy * out_w + ox] = acc[c];
            }
        }
    }
}

/// Bilinear resize (align_corners false, edges clamped) of [3, h, w] values to [3, s, s].
pub fn resize_planes(px: &[f32], w: usize, h: usize, s: usize) -> Vec<f32> {
    let xs = axis_weights(0.0, w as f32, s, w);
    let ys = axis_weights(0.0, h as f32, s, h);
    let mut out = vec![0.0f32; 3 * s * s];
    for c in 0..3 {
        let src = &px[c * w * h..(c + 1) * w * h];
        for (oy, (fy, wy)) in ys.iter().enumerate() {
            for (ox, (fx, wx)) in xs.iter().enumerate() {
                let mut acc = 0.0;
                for (j, &a) in wy.iter().enumerate() {
                    for (i, &bw) in wx.iter().enumerate() {
                        acc += a * bw * src[(fy + j) * w + fx + i];
                    }
                }
                out[c * s * s + oy * s + ox] = acc;
            }
        }
    }
    out
}

/// A box must have positive area and lie inside the image (a margin of half a pixel for
/// rounding is allowed).
pub fn check_box(img: &RgbImage, b: [f32; 4]) -> Result<(), TeacherError> {
    let (w, h) = (img.width() as f32, img.height() as f32);
    if w == 0.0 || h == 0.0 {
        return Err(TeacherError::InvalidRequest("empty image".into()));
    }
    if b.iter().any(|v| !v.is_finite()) {
        return Err(TeacherError::InvalidRequest(format!(
            "box {b:?} is not finite"
        )));
    }
    if b[2] <= b[0] || b[3] <= b[1] {
        return Err(TeacherError::InvalidRequest(format!(
            "box {b:?} has zero area"
        )));
    }
    if b[0] < -0.5 || b[1] < -0.5 || b[2] > w + 0.5 || b[3] > h + 0.5 {
        return Err(TeacherError::InvalidRequest(format!(
            "box {b:?} lies outside the {w}x{h} image"
        )));
    }
    Ok(())
}

/// The box scaled by `factor` about its centre, clipped to the image (ViLD's 1.5x context crop).
pub fn scale_box(b: [f32; 4], factor: f32, width: u32, height: u32) -> [f32; 4] {
    let cx = 0.5 * (b[0] + b[2]);
    let cy = 0.5 * (b[1] + b[3]);
    let hw = 0.5 * (b[2] - b[0]) * factor;
    let hh = 0.5 * (b[3] - b[1]) * factor;
    [
        (cx - hw).max(0.0),
        (cy - hh).max(0.0),
        (cx + hw).min(width as f32),
        (cy + hh).min(height as f32),
    ]
}

/// PIL's bicubic filter (a = -0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output index, the first input
/// index and fixed-point weights.
fn coeffs(in_size: usize, out_size: usize) -> (Vec<(usize, usize)>, Vec<i32>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax - xmin;
        let mut w = vec![0.0f64; n];
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate() {
            *wx = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        for (x, wx) in w.iter().enumerate() {
            let v = if ww != 0.0 { wx / ww } else { *wx };
            let f = v * (1u64 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, n));
    }
    (bounds, kk, ksize)
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes an RGB image bicubically exactly as Pillow's `Image.resize(..., BICUBIC)` does for
/// 8-bit images: separable fixed-point convolution with an antialiasing support, horizontal
/// pass first, rounding to 8 bits between passes.
pub fn pil_resize_bicubic(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    let src = img.as_raw();
    let (hb, hk, hks) = coeffs(in_w, ow);
    let (vb, vk, vks) = coeffs(in_h, oh);
    let need_h = ow != in_w;
    let need_v = oh != in_h;
    // Rows of the source the vertical pass reads.
    let (y_first, y_last) = if need_v {
        (vb[0].0, vb[oh - 1].0 + vb[oh - 1].1)
    } else {
        (0, in_h)
    };
    let (tmp, tmp_h) = if need_h {
        let rows = y_last - y_first;
        let mut t = vec![0u8; rows * ow * 3];
        for y in 0..rows {
            let row = &src[(y + y_first) * in_w * 3..(y + y_first + 1) * in_w * 3];
            for (xx, &(xmin, n)) in hb.iter().enumerate() {
                let k = &hk[xx * hks..xx * hks + n];
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (x, &kx) in k.iter().enumerate() {
                        ss += row[(xmin + x) * 3 + c] as i64 * kx as i64;
                    }
                    t[(y * ow + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        (t, rows)
    } else {
        (
            src[y_first * in_w * 3..y_last * in_w * 3].to_vec(),
            y_last - y_first,
        )
    };
    let _ = tmp_h;
    let out = if need_v {
        let mut o = vec![0u8; oh * ow * 3];
        for (yy, &(ymin, n)) in vb.iter().enumerate() {
            let k = &vk[yy * vks..yy * vks + n];
            let ymin = ymin - y_first;
            for x in 0..ow {
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (y, &ky) in k.iter().enumerate() {
                        ss += tmp[((ymin + y) * ow + x) * 3 + c] as i64 * ky as i64;
                    }
                    o[(yy * ow + x) * 3 + c] = clip8(ss);
                }
            }
        }
        o
    } else {
        tmp
    };
    RgbImage::from_raw(out_w, out_h, out).expect("sizes match")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) * 3 % 256) as u8,
            ])
        })
    }

    #[test]
    fn scale_box_about_centre_and_clip() {
        assert_eq!(
            scale_box([10.0, 10.0, 20.0, 30.0], 1.5, 100, 100),
            [7.5, 5.0, 22.5, 35.0]
        );
        assert_eq!(
            scale_box([0.0, 0.0, 20.0, 10.0], 1.5, 100, 100),
            [0.0, 0.0, 25.0, 12.5]
        );
        assert_eq!(
            scale_box([90.0, 90.0, 100.0, 100.0], 1.5, 100, 100),
            [87.5, 87.5, 100.0, 100.0]
        );
    }

    #[test]
    fn crop_of_whole_image_at_its_size_is_the_image() {
        let img = gradient(16, 16);
        let p = PreprocessConfig::clip(16);
        let a = p.crop(&img, [0.0, 0.0, 16.0, 16.0]).unwrap();
        let b = p.resize_to(&img, 16, 16).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5);
        }
    }

    #[test]
    fn crop_samples_the_box_not_the_image() {
        // Left half black, right half white: a crop of the right half is all white.
        let img = RgbImage::from_fn(20, 10, |x, _| {
            if x < 10 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let p = PreprocessConfig {
            size: 8,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let v = p.crop(&img, [10.0, 0.0, 20.0, 10.0]).unwrap();
        assert!(v.iter().all(|&x| (x - 1.0).abs() < 1e-6), "{v:?}");
        let v = p.crop(&img, [0.0, 0.0, 10.0, 10.0]).unwrap();
        assert!(v.iter().all(|&x| x.abs() < 1e-6));
    }

    #[test]
    fn bad_boxes_are_rejected() {
        let img = gradient(10, 10);
        let p = PreprocessConfig::clip(4);
        assert!(p.crop(&img, [2.0, 2.0, 2.0, 5.0]).is_err());
        assert!(p.crop(&img, [2.0, 2.0, 12.0, 5.0]).is_err());
        assert!(p.crop(&img, [f32::NAN, 2.0, 3.0, 5.0]).is_err());
        assert!(p.crop(&RgbImage::new(0, 0), [0.0, 0.0, 1.0, 1.0]).is_err());
    }

    #[test]
    fn pil_resize_matches_pillow_exactly() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pil_bicubic.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let bytes = |x: &serde_json::Value| -> Vec<u8> {
            x.as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect()
        };
        let img = RgbImage::from_raw(
            v["width"].as_u64().unwrap() as u32,
            v["height"].as_u64().unwrap() as u32,
            bytes(&v["rgb"]),
        )
        .unwrap();
        for case in v["cases"].as_array().unwrap() {
            let (w, h) = (
                case["width"].as_u64().unwrap() as u32,
                case["height"].as_u64().unwrap() as u32,
            );
            let ours = pil_resize_bicubic(&img, w, h);
            assert_eq!(ours.as_raw(), &bytes(&case["rgb"]), "{w}x{h}");
        }
    }

    #[test]
    fn pil_resize_keeps_constant_images_and_sizes() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([10, 200, 77]));
        let r = pil_resize_bicubic(&img, 16, 11);
        assert_eq!(r.dimensions(), (16, 11));
        assert!(r.pixels().all(|p| p.0 == [10, 200, 77]));
        let p = PreprocessConfig::clip(8);
        let v = p.image(&gradient(30, 20)).unwrap();
        assert_eq!(v.len(), 3 * 64);
    }

    /// The parallel region crops are the serial ones, box by box, in order; a bad box is an
    /// error, not a panic in a worker.
    #[test]
    fn region_crops_are_each_box_and_its_context_in_order() {
        let img = gradient(97, 61);
        let p = PreprocessConfig::clip(16);
        let boxes = [
            [0.0, 0.0, 97.0, 61.0],
            [10.5, 3.25, 40.0, 30.0],
            [90.0, 50.0, 97.0, 61.0],
            [1.0, 40.0, 5.0, 42.0],
        ];
        let got = p.region_crops(&img, &boxes, 1.5).unwrap();
        let mut want = Vec::new();
        for b in boxes {
            want.extend(p.crop(&img, b).unwrap());
            want.extend(p.crop(&img, scale_box(b, 1.5, 97, 61)).unwrap());
        }
        assert_eq!(got, want);
        assert!(p.region_crops(&img, &[[5.0, 5.0, 5.0, 9.0]], 1.5).is_err());
        assert!(p.region_crops(&img, &[], 1.5).unwrap().is_empty());
    }
}
