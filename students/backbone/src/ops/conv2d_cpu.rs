//! The CPU convolution kernels behind [`super::Conv2d`] on burn-flex: forward, input gradient,
//! weight gradient and bias gradient of a 2-D convolution in float32, on contiguous NCHW
//! buffers, by im2col + GEMM (the `gemm` crate burn-flex itself uses).
//!
//! Why not burn-flex's own ops: its forward builds the im2col matrix in 512-pixel tiles with one
//! small GEMM per tile, and it has no backward at all, so the autodiff graph falls back to
//! Burn's generic rules, which compute the weight gradient as a convolution whose kernel is the
//! whole output-gradient map and the input gradient as a transposed convolution. Here every pass
//! is one GEMM per image and group over the full output plane, on a *patch-major* im2col matrix
//! `col` (`P × K`: one row per output pixel, `K = kh·kw·Ci/g` ordered kernel row, kernel column,
//! channel) built from the image in NHWC:
//!
//! - forward: `yᵀ (P × Co) = col · W'ᵀ`, then transposed into NCHW (`W'` is the weight with its
//!   trailing dimensions reordered to `kh, kw, Ci`)
//! - input gradient: `dcol (P × K) = dyᵀ · W'`, added back into the NHWC image gradient
//!   (`col2im`), then transposed into NCHW
//! - weight gradient: `dW'ᵀ (K × Co) += colᵀ · dyᵀ`, one accumulator per worker, summed and
//!   reordered at the end
//!
//! These orientations keep the GEMM's long dimension on the output pixels; the `gemm` crate is
//! two to three times slower on this machine when the small channel count (32, 64) is the
//! dimension it vectorises (see BENCHMARKS.md, "Speed").
//!
//! Images run in parallel (one worker per image, single-threaded GEMM) when the batch has at
//! least as many images as there are threads; otherwise the images run in turn and the GEMM
//! itself is parallel. A 1×1 convolution with stride 1 and no padding skips im2col: the NHWC
//! image is already `col`.

use std::cell::RefCell;

use rayon::prelude::*;

/// The shapes and options of one 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Batch size.
    pub batch: usize,
    /// Input channels (all groups).
    pub channels_in: usize,
    /// Input height and width.
    pub in_hw: [usize; 2],
    /// Output channels (all groups).
    pub channels_out: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride (height, width).
    pub stride: [usize; 2],
    /// Padding before the first row / column (the end padding only changes `out_hw`).
    pub pad_begin: [usize; 2],
    /// Dilation (height, width).
    pub dilation: [usize; 2],
    /// Groups; `channels_in` and `channels_out` are multiples of it.
    pub groups: usize,
    /// Output height and width.
    pub out_hw: [usize; 2],
}

impl ConvGeometry {
    /// Input channels per group.
    fn cin_g(&self) -> usize {
        self.channels_in / self.groups
    }

    /// Output channels per group.
    fn cout_g(&self) -> usize {
        self.channels_out / self.groups
    }

    /// Columns of one group's im2col matrix: `kh · kw · Ci/g`.
    fn k_g(&self) -> usize {
        self.cin_g() * self.kernel[0] * self.kernel[1]
    }

    /// Output pixels per image.
    fn p(&self) -> usize {
        self.out_hw[0] * self.out_hw[1]
    }

    /// Input elements per image.
    fn in_len(&self) -> usize {
        self.channels_in * self.in_hw[0] * self.in_hw[1]
    }

    /// Output elements per image.
    fn out_len(&self) -> usize {
        self.channels_out * self.p()
    }

    /// Weight elements.
    pub fn weight_len(&self) -> usize {
        self.channels_out * self.k_g()
    }

    /// A 1×1 kernel, stride 1, no padding: the image itself is the im2col matrix.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.pad_begin == [0, 0] && {
            self.out_hw == self.in_hw
        }
    }

    /// Whether images run in parallel (else the GEMMs do).
    fn parallel_images(&self) -> bool {
        self.batch >= rayon::current_num_threads() && self.batch > 1
    }
}

// Scratch buffers reused across calls on the same thread (they are large, and fresh
// allocations of this size cost page faults). Taken out while in use, so a re-entrant call
// (rayon work stealing during a parallel GEMM) gets its own.
thread_local! {
    static SCRATCH: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a scratch buffer of at least `len` elements, contents unspecified.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|s| s.borrow_mut().pop()).unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < 4 {
            s.push(buf);
        }
    });
    r
}

/// `dst[p·c + ch] = src[ch·hw + p]`: one image from CHW to HWC.
fn chw_to_hwc(src: &[f32], c: usize, hw: usize, dst: &mut [f32]) {
    transpose(src, c, hw, None, dst);
}

/// `dst[ch·hw + p] = src[p·c + ch] (+ bias[ch])`: one image from HWC to CHW.
fn hwc_to_chw(src: &[f32], c: usize, hw: usize, bias: Option<&[f32]>, dst: &mut [f32]) {
    transpose(src, hw, c, bias, dst);
}

/// `dst (cols × rows) = srcᵀ (+ bias per destination row)` for a row-major `src` (`rows ×
/// cols`), in 8 × 8 blocks read into registers row by row and written out column by column.
fn transpose(src: &[f32], rows: usize, cols: usize, bias: Option<&[f32]>, dst: &mut [f32]) {
    const B: usize = 8;
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    let (rb, cb) = (rows / B * B, cols / B * B);
    for r0 in (0..rb).step_by(B) {
        for c0 in (0..cb).step_by(B) {
            let mut blk = [[0.0f32; B]; B];
            for (i, row) in blk.iter_mut().enumerate() {
                row.copy_from_slice(&src[(r0 + i) * cols + c0..][..B]);
            }
            for j in 0..B {
                let add = bias.map_or(0.0, |b| b[c0 + j]);
                let out: &mut [f32; B] =
                    (&mut dst[(c0 + j) * rows + r0..][..B]).try_into().unwrap();
                for i in 0..B {
                    out[i] = blk[i][j] + add;
                }
            }
        }
    }
    // The ragged right and bottom edges.
    for r in 0..rows {
        let cs = if r < rb { cb } else { 0 };
        for c in cs..cols {
            dst[c * rows + r] = src[r * cols + c] + bias.map_or(0.0, |b| b[c]);
        }
    }
}

/// Fills `col` (`P × K_g`, row-major) with the patches of channels `c0..c0 + Ci/g` of one
/// NHWC image `x` (`H × W × Ci`); columns ordered (kernel row, kernel column, channel).
fn im2col(x: &[f32], g: &ConvGeometry, c0: usize, col: &mut [f32]) {
    let [h, w] = g.in_hw;
    let [oh, ow] = g.out_hw;
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.pad_begin;
    let [dh, dw] = g.dilation;
    let (ci, cg, k) = (g.channels_in, g.cin_g(), g.k_g());
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut col[(oy * ow + ox) * k..][..k];
            for i in 0..kh {
                let iy = (oy * sh + i * dh) as isize - ph as isize;
                let seg = &mut row[i * kw * cg..][..kw * cg];
                if iy < 0 || iy >= h as isize {
                    seg.fill(0.0);
                    continue;
                }
                let line = &x[iy as usize * w * ci..][..w * ci];
                for j in 0..kw {
                    let ix = (ox * sw + j * dw) as isize - pw as isize;
                    let dst = &mut seg[j * cg..][..cg];
                    if ix < 0 || ix >= w as isize {
                        dst.fill(0.0);
                    } else {
                        dst.copy_from_slice(&line[ix as usize * ci + c0..][..cg]);
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds `col` (`P × K_g`) back into channels `c0..c0 + Ci/g` of
/// the NHWC image gradient `dx` (`H × W × Ci`).
fn col2im_add(col: &[f32], g: &ConvGeometry, c0: usize, dx: &mut [f32]) {
    let [h, w] = g.in_hw;
    let [oh, ow] = g.out_hw;
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.pad_begin;
    let [dh, dw] = g.dilation;
    let (ci, cg, k) = (g.channels_in, g.cin_g(), g.k_g());
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &col[(oy * ow + ox) * k..][..k];
            for i in 0..kh {
                let iy = (oy * sh + i * dh) as isize - ph as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let line = &mut dx[iy as usize * w * ci..][..w * ci];
                for j in 0..kw {
                    let ix = (ox * sw + j * dw) as isize - pw as isize;
                    if ix < 0 || ix >= w as isize {
                        continue;
                    }
                    let src = &row[(i * kw + j) * cg..][..cg];
                    let dst = &mut line[ix as usize * ci + c0..][..cg];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += *s;
                    }
                }
            }
        }
    }
}

/// A matrix view for [`matmul`]: element `(r, c)` is at `ptr + r·rs + c·cs`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

/// `dst (m × n, element (r, c) at r·dst_rs + c) = [dst +] lhs (m × k) · rhs (k × n)`.
///
/// # Safety
/// `lhs`, `rhs` and `dst` must cover the index ranges their strides describe.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    threads: usize,
) {
    let parallelism = if threads > 1 && m * n * k >= 64 * 64 * 64 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Threads a GEMM may use when images run one after another.
fn gemm_threads(g: &ConvGeometry) -> usize {
    if g.parallel_images() {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// Runs `f(b, out_chunk)` for every image, in parallel when the batch allows.
fn for_each_image(
    g: &ConvGeometry,
    out: &mut [f32],
    len: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    if g.parallel_images() {
        out.par_chunks_mut(len)
            .enumerate()
            .for_each(|(b, chunk)| f(b, chunk));
    } else {
        for (b, chunk) in out.chunks_mut(len).enumerate() {
            f(b, chunk);
        }
    }
}

/// The weight `[Co, Ci/g, kh, kw]` with its trailing dimensions reordered to `[Co, kh, kw, Ci/g]`,
/// the column order of [`im2col`].
fn weight_to_patch_order(w: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let (cg, ks) = (g.cin_g(), g.kernel[0] * g.kernel[1]);
    let mut out = vec![0.0f32; w.len()];
    for co in 0..g.channels_out {
        let src = &w[co * cg * ks..][..cg * ks];
        let dst = &mut out[co * cg * ks..][..cg * ks];
        for c in 0..cg {
            for s in 0..ks {
                dst[s * cg + c] = src[c * ks + s];
            }
        }
    }
    out
}

/// The matrix `col` of image `xh` (NHWC) for group `grp`: a view into `xh` itself when the
/// convolution is pointwise, else built into `buf`.
fn patches(xh: &[f32], g: &ConvGeometry, grp: usize, buf: &mut [f32]) -> Mat {
    let c0 = grp * g.cin_g();
    if g.is_pointwise() {
        Mat {
            ptr: xh[c0..].as_ptr(),
            rs: g.channels_in as isize,
            cs: 1,
        }
    } else {
        im2col(xh, g, c0, buf);
        Mat {
            ptr: buf.as_ptr(),
            rs: g.k_g() as isize,
            cs: 1,
        }
    }
}

/// Forward convolution. `x`: `[B, Ci, H, W]`, `weight`: `[Co, Ci/g, kh, kw]`, `bias`: `[Co]`;
/// returns `[B, Co, oh, ow]`, contiguous.
pub fn conv2d_forward(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
) -> Vec<f32> {
    let (p, k_g, cout_g, hw) = (g.p(), g.k_g(), g.cout_g(), g.in_hw[0] * g.in_hw[1]);
    let threads = gemm_threads(g);
    let wp = weight_to_patch_order(weight, g);
    let mut out = vec![0.0f32; g.batch * g.out_len()];
    let col_len = if g.is_pointwise() { 0 } else { p * k_g };
    for_each_image(g, &mut out, g.out_len(), |b, y| {
        with_scratch(g.in_len() + col_len + g.out_len(), |buf| {
            let (xh, rest) = buf.split_at_mut(g.in_len());
            let (col, yh) = rest.split_at_mut(col_len);
            chw_to_hwc(&x[b * g.in_len()..][..g.in_len()], g.channels_in, hw, xh);
            for grp in 0..g.groups {
                let lhs = patches(xh, g, grp, col);
                let w = &wp[grp * cout_g * k_g..][..cout_g * k_g];
                // SAFETY: col is p × k_g, W'ᵀ is k_g × cout_g, dst is p × cout_g inside the
                // p × Co buffer yh.
                unsafe {
                    matmul(
                        p,
                        cout_g,
                        k_g,
                        yh[grp * cout_g..].as_mut_ptr(),
                        g.channels_out as isize,
                        false,
                        lhs,
                        Mat {
                            ptr: w.as_ptr(),
                            rs: 1,
                            cs: k_g as isize,
                        },
                        threads,
                    );
                }
            }
            hwc_to_chw(yh, g.channels_out, p, bias, y);
        });
    });
    out
}

/// Gradient with respect to the input: `[B, Ci, H, W]`, from `weight` and `grad_out`
/// (`[B, Co, oh, ow]`).
pub fn conv2d_input_grad(weight: &[f32], grad_out: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let (p, k_g, cout_g, hw) = (g.p(), g.k_g(), g.cout_g(), g.in_hw[0] * g.in_hw[1]);
    let threads = gemm_threads(g);
    let wp = weight_to_patch_order(weight, g);
    let mut dx = vec![0.0f32; g.batch * g.in_len()];
    let col_len = if g.is_pointwise() { 0 } else { p * k_g };
    for_each_image(g, &mut dx, g.in_len(), |b, dxb| {
        let dy = &grad_out[b * g.out_len()..][..g.out_len()];
        with_scratch(g.in_len() + col_len, |buf| {
            let (dxh, col) = buf.split_at_mut(g.in_len());
            dxh.fill(0.0);
            for grp in 0..g.groups {
                let w = &wp[grp * cout_g * k_g..][..cout_g * k_g];
                // dyᵀ: p × cout_g, read from the CHW gradient.
                let lhs = Mat {
                    ptr: dy[grp * cout_g * p..].as_ptr(),
                    rs: 1,
                    cs: p as isize,
                };
                let rhs = Mat {
                    ptr: w.as_ptr(),
                    rs: k_g as isize,
                    cs: 1,
                };
                if g.is_pointwise() {
                    let c0 = grp * g.cin_g();
                    // SAFETY: dst is the p × Ci/g block of the p × Ci buffer dxh.
                    unsafe {
                        matmul(
                            p,
                            k_g,
                            cout_g,
                            dxh[c0..].as_mut_ptr(),
                            g.channels_in as isize,
                            false,
                            lhs,
                            rhs,
                            threads,
                        )
                    };
                } else {
                    // SAFETY: dst is the p × k_g buffer col.
                    unsafe {
                        matmul(
                            p,
                            k_g,
                            cout_g,
                            col.as_mut_ptr(),
                            k_g as isize,
                            false,
                            lhs,
                            rhs,
                            threads,
                        )
                    };
                    col2im_add(col, g, grp * g.cin_g(), dxh);
                }
            }
            hwc_to_chw(dxh, g.channels_in, hw, None, dxb);
        });
    });
    dx
}

/// Gradient with respect to the weight: `[Co, Ci/g, kh, kw]`, from `x` and `grad_out`.
pub fn conv2d_weight_grad(x: &[f32], grad_out: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let (p, k_g, cout_g, hw) = (g.p(), g.k_g(), g.cout_g(), g.in_hw[0] * g.in_hw[1]);
    let wlen = g.weight_len();
    let col_len = if g.is_pointwise() { 0 } else { p * k_g };
    // Adds image b's contribution into `dwt` (per group: k_g × cout_g, i.e. dW'ᵀ).
    let add_image = |b: usize, dwt: &mut [f32], threads: usize| {
        let dy = &grad_out[b * g.out_len()..][..g.out_len()];
        with_scratch(g.in_len() + col_len, |buf| {
            let (xh, col) = buf.split_at_mut(g.in_len());
            chw_to_hwc(&x[b * g.in_len()..][..g.in_len()], g.channels_in, hw, xh);
            for grp in 0..g.groups {
                let cols = patches(xh, g, grp, col);
                // colᵀ: k_g × p.
                let lhs = Mat {
                    ptr: cols.ptr,
                    rs: cols.cs,
                    cs: cols.rs,
                };
                // dyᵀ: p × cout_g.
                let rhs = Mat {
                    ptr: dy[grp * cout_g * p..].as_ptr(),
                    rs: 1,
                    cs: p as isize,
                };
                let dst = &mut dwt[grp * k_g * cout_g..][..k_g * cout_g];
                // SAFETY: dst is k_g × cout_g, contiguous.
                unsafe {
                    matmul(
                        k_g,
                        cout_g,
                        p,
                        dst.as_mut_ptr(),
                        cout_g as isize,
                        true,
                        lhs,
                        rhs,
                        threads,
                    )
                };
            }
        });
    };
    let dwt = if g.parallel_images() {
        let workers = rayon::current_num_threads().min(g.batch);
        let per = g.batch.div_ceil(workers);
        (0..workers)
            .into_par_iter()
            .map(|t| {
                let mut dwt = vec![0.0f32; wlen];
                for b in t * per..((t + 1) * per).min(g.batch) {
                    add_image(b, &mut dwt, 1);
                }
                dwt
            })
            .reduce_with(|mut a, b| {
                for (u, v) in a.iter_mut().zip(&b) {
                    *u += *v;
                }
                a
            })
            .unwrap_or_else(|| vec![0.0; wlen])
    } else {
        let mut dwt = vec![0.0f32; wlen];
        let threads = rayon::current_num_threads();
        for b in 0..g.batch {
            add_image(b, &mut dwt, threads);
        }
        dwt
    };
    // dW'ᵀ (per group k_g × cout_g, k = (s, c)) → dW [Co, Ci/g, kh·kw].
    let (cg, ks) = (g.cin_g(), g.kernel[0] * g.kernel[1]);
    let mut dw = vec![0.0f32; wlen];
    for grp in 0..g.groups {
        let src = &dwt[grp * k_g * cout_g..][..k_g * cout_g];
        for co in 0..cout_g {
            let dst = &mut dw[(grp * cout_g + co) * cg * ks..][..cg * ks];
            for c in 0..cg {
                for s in 0..ks {
                    dst[c * ks + s] = src[(s * cg + c) * cout_g + co];
                }
            }
        }
    }
    dw
}

/// Gradient with respect to the bias: `[Co]`, the sum of `grad_out` over batch and pixels.
pub fn conv2d_bias_grad(grad_out: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let p = g.p();
    (0..g.channels_out)
        .into_par_iter()
        .map(|co| {
            let mut acc = 0.0f64;
            for b in 0..g.batch {
                let plane = &grad_out[(b * g.channels_out + co) * p..][..p];
                // Pairwise-ish: f32 partial sums per plane, f64 across planes.
                acc += plane.iter().sum::<f32>() as f64;
            }
            acc as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct (seven loops) convolution, the definition.
    fn naive_forward(x: &[f32], w: &[f32], g: &ConvGeometry) -> Vec<f32> {
        let [h, wd] = g.in_hw;
        let [oh, ow] = g.out_hw;
        let mut y = vec![0.0f32; g.batch * g.out_len()];
        for b in 0..g.batch {
            for co in 0..g.channels_out {
                let grp = co / g.cout_g();
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0.0f32;
                        for ci in 0..g.cin_g() {
                            for i in 0..g.kernel[0] {
                                for j in 0..g.kernel[1] {
                                    let iy = (oy * g.stride[0] + i * g.dilation[0]) as isize
                                        - g.pad_begin[0] as isize;
                                    let ix = (ox * g.stride[1] + j * g.dilation[1]) as isize
                                        - g.pad_begin[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xv = x[((b * g.channels_in + grp * g.cin_g() + ci) * h
                                        + iy as usize)
                                        * wd
                                        + ix as usize];
                                    let wv = w[((co * g.cin_g() + ci) * g.kernel[0] + i)
                                        * g.kernel[1]
                                        + j];
                                    acc += xv * wv;
                                }
                            }
                        }
                        y[((b * g.channels_out + co) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn transposes_ragged_shapes_with_bias() {
        for (rows, cols) in [(1, 1), (3, 17), (8, 8), (19, 24), (40, 3)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let bias: Vec<f32> = (0..cols).map(|i| 1000.0 * i as f32).collect();
            let mut dst = vec![0.0; rows * cols];
            transpose(&src, rows, cols, Some(&bias), &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(dst[c * rows + r], src[r * cols + c] + bias[c]);
                }
            }
        }
    }

    #[test]
    fn forward_matches_the_definition_with_groups_and_asymmetric_output() {
        let g = ConvGeometry {
            batch: 3,
            channels_in: 4,
            in_hw: [7, 6],
            channels_out: 6,
            kernel: [3, 2],
            stride: [2, 1],
            pad_begin: [1, 2],
            dilation: [1, 2],
            groups: 2,
            out_hw: [4, 6],
        };
        let x: Vec<f32> = (0..g.batch * g.in_len())
            .map(|i| ((i * 7919) % 13) as f32 - 6.0)
            .collect();
        let w: Vec<f32> = (0..g.weight_len())
            .map(|i| ((i * 104729) % 11) as f32 * 0.25 - 1.0)
            .collect();
        let y = conv2d_forward(&x, &w, None, &g);
        let want = naive_forward(&x, &w, &g);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
