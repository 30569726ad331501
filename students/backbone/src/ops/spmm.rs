//! A constant sparse matrix times a dense one, `A · X`, differentiable in `X`.
//!
//! RoIAlign is such a product: every output bin is a fixed weighted sum of feature-map pixels,
//! the weights depending on the boxes only (which get no gradient). Written with Burn's
//! generic operations it gathers an `[nnz, C]` intermediate (`select`), scales it, sums over
//! the taps, and its backward scatter-adds another `[nnz, C]` tensor: with 4,096 RoIs, 7×7
//! bins, up to 16 taps and 256 channels that is 3.3 GB moved per pass. In a profile of the
//! tiny detector's training step on burn-flex, RoIAlign's forward and backward took about a
//! fifth of the step (BENCHMARKS, Speed, session 10).
//!
//! [`sparse_matmul`] computes the product row by row without the intermediate: on burn-flex a
//! row-parallel kernel, on LibTorch `embedding_bag` (sum mode with per-sample weights, native
//! on CPU and CUDA). The backward is `Aᵀ · G` by the same kernel, with `Aᵀ` built on the host by
//! a counting sort, so it is deterministic (no atomic adds). Other backends get Burn's generic
//! form, which computes the same.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, TensorMetadata, backend_extension};
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use rayon::prelude::*;

use super::flex_f32::{contiguous_f32, from_f32, values};

/// A sparse `[rows, cols]` matrix in compressed sparse row form, with `f32` values.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseMatrix {
    rows: usize,
    cols: usize,
    /// `[rows + 1]`: row `r`'s entries are `offsets[r]..offsets[r + 1]`.
    offsets: Vec<i64>,
    /// `[nnz]` column of each entry.
    indices: Vec<i64>,
    /// `[nnz]` value of each entry.
    values: Vec<f32>,
}

impl SparseMatrix {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Stored entries.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// The most entries in one row (0 for an empty matrix).
    pub fn max_row_nnz(&self) -> usize {
        self.offsets
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0)
    }

    /// Row `r`'s `(column, value)` entries, in stored order.
    pub fn row(&self, r: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let (a, b) = (self.offsets[r] as usize, self.offsets[r + 1] as usize);
        self.indices[a..b]
            .iter()
            .zip(&self.values[a..b])
            .map(|(&j, &v)| (j as usize, v))
    }

    /// `Aᵀ` (`[cols, rows]`); each of its rows lists its entries in increasing column order.
    ///
    /// A counting sort over row blocks in parallel: each block counts its entries per column,
    /// the counts give every block its own slots in every column (blocks in row order), and the
    /// blocks fill their slots. The result is the sequential counting sort's, entry for entry.
    /// RoIAlign's backward needs it every step (3.2 million entries for R50-FPN at 512 px,
    /// batch 8: 32-45 ms on one core; BENCHMARKS, Speed, session 12).
    pub fn transpose(&self) -> SparseMatrix {
        let (rows, cols, nnz) = (self.rows, self.cols, self.nnz());
        // Each block zeroes, scans and keeps a count per column: worth it only when a block
        // holds at least as many entries as there are columns.
        let wanted = rayon::current_num_threads().min(nnz / cols.max(1)).max(1);
        let blocks = row_blocks(&self.offsets, wanted);
        // slots[b][j]: entries of block b in column j, then the next free slot of block b in
        // column j of the output.
        let mut slots: Vec<Vec<i64>> = blocks
            .par_iter()
            .map(|r| {
                let mut n = vec![0i64; cols];
                for &j in
                    &self.indices[self.offsets[r.start] as usize..self.offsets[r.end] as usize]
                {
                    n[j as usize] += 1;
                }
                n
            })
            .collect();
        let mut offsets = vec![0i64; cols + 1];
        for j in 0..cols {
            let mut next = offsets[j];
            for block in slots.iter_mut() {
                let n = block[j];
                block[j] = next;
                next += n;
            }
            offsets[j + 1] = next;
        }
        let mut indices = vec![0i64; nnz];
        let mut values = vec![0f32; nnz];
        let out = Scatter {
            indices: indices.as_mut_ptr(),
            values: values.as_mut_ptr(),
        };
        blocks
            .par_iter()
            .zip(slots.par_iter_mut())
            .for_each(|(r, next)| {
                for row in r.clone() {
                    for k in self.offsets[row] as usize..self.offsets[row + 1] as usize {
                        let j = self.indices[k] as usize;
                        let p = next[j] as usize;
                        next[j] += 1;
                        // SAFETY: `p < nnz`, and the slots of different blocks (and of one
                        // block's entries) are disjoint by construction of `slots`.
                        unsafe { out.write(p, row as i64, self.values[k]) };
                    }
                }
            });
        SparseMatrix {
            rows: cols,
            cols: rows,
            offsets,
            indices,
            values,
        }
    }

    /// The matrices' rows one after another (all must have the same number of columns); the
    /// parts are copied in parallel (RoIAlign's plan stacks 2 M entries a training step).
    ///
    /// # Panics
    /// When a part has not `cols` columns.
    pub fn vstack(parts: Vec<SparseMatrix>, cols: usize) -> SparseMatrix {
        for p in &parts {
            assert_eq!(p.cols, cols, "SparseMatrix::vstack: column counts differ");
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let nnz = parts.iter().map(SparseMatrix::nnz).sum();
        let mut offsets = vec![0i64; rows + 1];
        let mut indices = vec![0i64; nnz];
        let mut values = vec![0f32; nnz];
        // Each part's disjoint slices of the output, and where its entries start.
        let mut jobs = Vec::with_capacity(parts.len());
        let (mut o, mut i, mut v) = (&mut offsets[1..], &mut indices[..], &mut values[..]);
        let mut base = 0i64;
        for p in &parts {
            let (o_part, o_rest) = o.split_at_mut(p.rows);
            let (i_part, i_rest) = i.split_at_mut(p.nnz());
            let (v_part, v_rest) = v.split_at_mut(p.nnz());
            jobs.push((p, base, o_part, i_part, v_part));
            (o, i, v) = (o_rest, i_rest, v_rest);
            base += p.nnz() as i64;
        }
        jobs.into_par_iter().for_each(|(p, base, o, i, v)| {
            for (dst, src) in o.iter_mut().zip(&p.offsets[1..]) {
                *dst = src + base;
            }
            i.copy_from_slice(&p.indices);
            v.copy_from_slice(&p.values);
        });
        SparseMatrix {
            rows,
            cols,
            offsets,
            indices,
            values,
        }
    }

    /// The dense `[rows, cols]` matrix, row-major (for tests and small inspections).
    pub fn to_dense(&self) -> Vec<f32> {
        let mut d = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            for (j, v) in self.row(r) {
                d[r * self.cols + j] += v;
            }
        }
        d
    }
}

/// Up to `n` consecutive row ranges covering all rows, with about equal entries each.
fn row_blocks(offsets: &[i64], n: usize) -> Vec<std::ops::Range<usize>> {
    let rows = offsets.len() - 1;
    let nnz = offsets[rows] as usize;
    let per = nnz.div_ceil(n.max(1)).max(1);
    let mut blocks = Vec::with_capacity(n);
    let mut start = 0;
    while start < rows {
        // The first row boundary at or past the next multiple of `per` entries.
        let target = offsets[start] as usize + per;
        let end = match offsets[start + 1..].binary_search(&(target as i64)) {
            Ok(i) | Err(i) => (start + 1 + i).min(rows),
        };
        blocks.push(start..end.max(start + 1));
        start = end.max(start + 1);
    }
    blocks
}

/// The transposed matrix's arrays, written by several blocks at disjoint positions.
struct Scatter {
    indices: *mut i64,
    values: *mut f32,
}

// SAFETY: the blocks of `SparseMatrix::transpose` write disjoint positions only.
unsafe impl Sync for Scatter {}

impl Scatter {
    /// # Safety
    /// `p` is in bounds and written by no other thread.
    unsafe fn write(&self, p: usize, index: i64, value: f32) {
        // SAFETY: as the caller promises.
        unsafe {
            *self.indices.add(p) = index;
            *self.values.add(p) = value;
        }
    }
}

/// Builds a [`SparseMatrix`] row by row; entries that land on the same column of a row are
/// summed (in `f64`, rounded to `f32` once at [`build`](Self::build)).
#[derive(Clone, Debug)]
pub struct SparseMatrixBuilder {
    cols: usize,
    offsets: Vec<i64>,
    indices: Vec<i64>,
    values: Vec<f64>,
}

impl SparseMatrixBuilder {
    /// An empty builder for a matrix of `cols` columns.
    pub fn new(cols: usize) -> Self {
        Self {
            cols,
            offsets: vec![0],
            indices: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Adds `value` at column `col` of the current row.
    ///
    /// # Panics
    /// When `col >= cols`.
    pub fn add(&mut self, col: usize, value: f64) {
        assert!(col < self.cols, "column {col} out of {} columns", self.cols);
        let start = *self.offsets.last().expect("offsets start with 0") as usize;
        let col = col as i64;
        match self.indices[start..].iter().position(|&j| j == col) {
            Some(p) => self.values[start + p] += value,
            None => {
                self.indices.push(col);
                self.values.push(value);
            }
        }
    }

    /// Closes the current row (an empty row is a row of zeros).
    pub fn end_row(&mut self) {
        self.offsets.push(self.indices.len() as i64);
    }

    /// The matrix of the rows ended so far.
    pub fn build(self) -> SparseMatrix {
        SparseMatrix {
            rows: self.offsets.len() - 1,
            cols: self.cols,
            offsets: self.offsets,
            indices: self.indices,
            values: self.values.into_iter().map(|v| v as f32).collect(),
        }
    }
}

/// `a · x`: `a` `[R, P]` (constant), `x` `[P, C]` → `[R, C]`, differentiable in `x` (its
/// gradient is `aᵀ · g`). burn-flex and LibTorch run their own kernels; other backends Burn's
/// generic gather and scatter-add.
///
/// # Panics
/// When `x` has not `a.cols()` rows.
pub fn sparse_matmul(a: &Arc<SparseMatrix>, x: Tensor<2>) -> Tensor<2> {
    let [p, _] = x.dims();
    assert_eq!(
        p, a.cols,
        "sparse_matmul: x has {p} rows, the matrix {} columns",
        a.cols
    );
    if !super::supports(&x.device()) {
        return generic(a, x);
    }
    type D = burn::backend::Dispatch;
    Tensor::from_dispatch(<D as SpmmBackend>::sparse_matmul(
        a.clone(),
        x.into_dispatch(),
    ))
}

/// Burn's generic form: gather the `[nnz, C]` rows, scale, sum them into their output rows.
fn generic(a: &SparseMatrix, x: Tensor<2>) -> Tensor<2> {
    let device = x.device();
    let [_, c] = x.dims();
    let nnz = a.nnz();
    let int = |v: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(v, [nnz]), &device);
    let cols = int(a.indices.clone());
    let rows = int((0..a.rows)
        .flat_map(|r| {
            let n = (a.offsets[r + 1] - a.offsets[r]) as usize;
            std::iter::repeat_n(r as i64, n)
        })
        .collect());
    let w = Tensor::<2>::from_data(TensorData::new(a.values.clone(), [nnz, 1]), &device);
    Tensor::<2>::zeros([a.rows, c], &device).select_assign(
        0,
        rows,
        x.select(0, cols).mul(w),
        IndexingUpdateOp::Add,
    )
}

/// The sparse product routed to the tensor's backend.
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait SpmmBackend: Backend {
    /// `a` `[R, P]` · `x` `[P, C]` → `[R, C]`.
    fn sparse_matmul(a: Arc<SparseMatrix>, x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `aᵀ` `[P, R]` · `g` `[R, C]` → `[P, C]`: the product's backward (not differentiable).
    fn sparse_matmul_transposed(a: Arc<SparseMatrix>, g: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl SpmmBackend for Flex {
    fn sparse_matmul(a: Arc<SparseMatrix>, x: FlexTensor) -> FlexTensor {
        let dtype = x.dtype();
        let x = contiguous_f32(x);
        let c = x.shape()[1];
        from_f32(flex_kernel(&a, values(&x), c), vec![a.rows, c], dtype)
    }

    fn sparse_matmul_transposed(a: Arc<SparseMatrix>, g: FlexTensor) -> FlexTensor {
        Self::sparse_matmul(Arc::new(a.transpose()), g)
    }
}

/// `[R, C]` row-major `a · x`, rows in parallel; each row sums its entries in stored order.
fn flex_kernel(a: &SparseMatrix, x: &[f32], c: usize) -> Vec<f32> {
    let mut out = vec![0f32; a.rows * c];
    if c == 0 {
        return out;
    }
    out.par_chunks_mut(c)
        .with_min_len(64)
        .enumerate()
        .for_each(|(r, o)| {
            for (j, v) in a.row(r) {
                for (o, xi) in o.iter_mut().zip(&x[j * c..(j + 1) * c]) {
                    *o += v * xi;
                }
            }
        });
    out
}

#[cfg(feature = "tch")]
impl SpmmBackend for burn::backend::LibTorch {
    fn sparse_matmul(
        a: Arc<SparseMatrix>,
        x: burn::backend::libtorch::TchTensor,
    ) -> burn::backend::libtorch::TchTensor {
        let device = x.tensor.device();
        let uploading = super::profiler::range("ovkd::sparse_matmul::upload");
        let (indices, offsets) = (
            libtorch::upload(&a.indices, device),
            libtorch::upload(&a.offsets, device),
        );
        let w = libtorch::upload(&a.values, device);
        drop(uploading);
        burn::backend::libtorch::TchTensor::new(libtorch::embedding_bag_sum(
            &x.tensor, &indices, &offsets, &w,
        ))
    }

    /// On CUDA the transpose is made on the device from the uploaded matrix (a stable sort of
    /// the entries by column, as [`SparseMatrix::transpose`] orders them): the host transpose of
    /// RoIAlign's 2 M entries, and the device's wait for it, left the H200 idle 5-8 ms a step
    /// (BENCHMARKS, Speed, session 13). On the CPU, LibTorch's sort is slower than the host's
    /// counting sort, so the host transposes.
    fn sparse_matmul_transposed(
        a: Arc<SparseMatrix>,
        g: burn::backend::libtorch::TchTensor,
    ) -> burn::backend::libtorch::TchTensor {
        if g.tensor.device() == tch::Device::Cpu {
            return Self::sparse_matmul(Arc::new(a.transpose()), g);
        }
        burn::backend::libtorch::TchTensor::new(libtorch::transposed_product(&a, &g.tensor))
    }
}

/// The LibTorch kernels of the product: `embedding_bag` in sum mode with per-sample weights,
/// which reads the CSR arrays as they are and never materialises the `[nnz, C]` rows.
#[cfg(feature = "tch")]
pub(crate) mod libtorch {
    use super::SparseMatrix;

    /// `v` on `device`. Off the CPU the copy reads `v` where it is (a LibTorch view of the
    /// slice, copied synchronously), instead of first copying it into a LibTorch CPU tensor: on
    /// the H200 the 26 MB of RoIAlign's plan took 8 ms a step to upload that way (BENCHMARKS,
    /// Speed, session 13).
    pub fn upload<T: tch::kind::Element>(v: &[T], device: tch::Device) -> tch::Tensor {
        if device == tch::Device::Cpu || v.is_empty() {
            return tch::Tensor::from_slice(v).to_device(device);
        }
        // SAFETY: the view covers exactly `v`'s elements, contiguous, of `T`'s kind; the
        // blocking copy to the device has finished reading them when `to_device` returns, and
        // the view is dropped before `v` can be.
        let view = unsafe {
            tch::Tensor::from_blob(
                v.as_ptr().cast(),
                &[v.len() as i64],
                &[1],
                T::KIND,
                tch::Device::Cpu,
            )
        };
        view.to_device(device)
    }

    /// `[R, C]`: row `r` of the result is `Σ values[e] · x[indices[e]]` over the entries `e` in
    /// `offsets[r]..offsets[r + 1]`; all on `x`'s device.
    pub fn embedding_bag_sum(
        x: &tch::Tensor,
        indices: &tch::Tensor,
        offsets: &tch::Tensor,
        values: &tch::Tensor,
    ) -> tch::Tensor {
        // mode 0 = sum; `include_last_offset` takes the `rows + 1` CSR offsets as they are.
        let (y, _, _, _) = tch::Tensor::embedding_bag(
            x,
            indices,
            offsets,
            false,
            0,
            false,
            Some(&values.to_kind(x.kind())),
            true,
        );
        y
    }

    /// `aᵀ · g` with `aᵀ` built on `g`'s device (see [`transposed_product_of`]).
    pub fn transposed_product(a: &SparseMatrix, g: &tch::Tensor) -> tch::Tensor {
        use tch::{Kind, Tensor};
        let device = g.device();
        let nnz = a.indices.len() as i64;
        let uploading = crate::ops::profiler::range("ovkd::sparse_matmul::upload");
        let indices = upload(&a.indices, device);
        let offsets = upload(&a.offsets, device);
        let values = upload(&a.values, device);
        drop(uploading);
        let counts = offsets.slice(0, 1, None, 1) - offsets.slice(0, 0, -1, 1);
        let rows = Tensor::arange(a.rows as i64, (Kind::Int64, device))
            .repeat_interleave_self_tensor(&counts, 0, nnz);
        transposed_product_of(&indices, &rows, &values, a.cols as i64, g)
    }

    /// `aᵀ · g` for the matrix with entries `(rows[e], indices[e], values[e])` (rows ascending)
    /// and `cols` columns, on `g`'s device: the entries sorted stably by column, each keeping its
    /// row as the new column, offsets from the column counts. The same entries in the same order
    /// as [`SparseMatrix::transpose`] gives.
    pub fn transposed_product_of(
        indices: &tch::Tensor,
        rows: &tch::Tensor,
        values: &tch::Tensor,
        cols: i64,
        g: &tch::Tensor,
    ) -> tch::Tensor {
        use tch::{Kind, Tensor};
        let order = indices.argsort_stable(true, 0, false);
        let t_offsets = Tensor::cat(
            &[
                Tensor::zeros([1], (Kind::Int64, g.device())),
                indices
                    .bincount::<Tensor>(None, cols)
                    .cumsum(0, Kind::Int64),
            ],
            0,
        );
        embedding_bag_sum(
            g,
            &rows.index_select(0, &order),
            &t_offsets,
            &values.index_select(0, &order),
        )
    }
}

#[derive(Debug)]
struct SpmmBackward;

impl<B: SpmmBackend> Backward<B, 1> for SpmmBackward {
    /// The matrix of the forward.
    type State = Arc<SparseMatrix>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        if let Some(parent) = ops.parents[0].as_ref() {
            grads.register::<B>(parent.id, B::sparse_matmul_transposed(ops.state, grad));
        }
    }
}

impl<B: SpmmBackend, C: CheckpointStrategy> SpmmBackend for Autodiff<B, C> {
    fn sparse_matmul(a: Arc<SparseMatrix>, x: FloatTensor<Self>) -> FloatTensor<Self> {
        match SpmmBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::sparse_matmul(a.clone(), x.into_primitive());
                prep.finish(a, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::sparse_matmul(a, x.into_primitive())),
        }
    }

    fn sparse_matmul_transposed(_: Arc<SparseMatrix>, _: FloatTensor<Self>) -> FloatTensor<Self> {
        unreachable!("the backward runs on the inner backend")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// A `[rows, cols]` matrix with a repeated column in one row (merged by the builder), an
    /// empty row, and a column no row uses.
    fn matrix(rows: usize, cols: usize) -> SparseMatrix {
        let mut b = SparseMatrixBuilder::new(cols);
        for r in 0..rows {
            if r % 5 == 3 {
                b.end_row();
                continue;
            }
            for t in 0..(1 + r % 4) {
                let j = (r * 7 + t * 3) % (cols - 1);
                b.add(j, 0.25 + 0.1 * t as f64 - 0.05 * (r % 3) as f64);
            }
            b.add((r * 7) % (cols - 1), 0.5);
            b.end_row();
        }
        b.build()
    }

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    #[test]
    fn builder_merges_repeated_columns_and_keeps_empty_rows() {
        let mut b = SparseMatrixBuilder::new(4);
        b.add(2, 0.5);
        b.add(0, 1.0);
        b.add(2, 0.25);
        b.end_row();
        b.end_row();
        b.add(3, -1.0);
        b.end_row();
        let a = b.build();
        assert_eq!((a.rows(), a.cols(), a.nnz(), a.max_row_nnz()), (3, 4, 3, 2));
        assert_eq!(
            a.to_dense(),
            vec![1.0, 0.0, 0.75, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0]
        );
    }

    #[test]
    fn transpose_is_the_dense_transpose_and_its_own_inverse() {
        let a = matrix(23, 11);
        let at = a.transpose();
        assert_eq!((at.rows(), at.cols()), (11, 23));
        let (d, dt) = (a.to_dense(), at.to_dense());
        for r in 0..23 {
            for j in 0..11 {
                assert_eq!(d[r * 11 + j], dt[j * 23 + r]);
            }
        }
        // Entries come back sorted by column; the matrix is the same.
        assert_eq!(at.transpose().to_dense(), d);
        // Each transposed row lists its entries by increasing column (the original row), so
        // sums over it run in the same order however many blocks built it.
        for j in 0..11 {
            let cols: Vec<usize> = at.row(j).map(|(c, _)| c).collect();
            assert!(cols.windows(2).all(|w| w[0] < w[1]), "row {j}: {cols:?}");
        }
        let with_threads = |n: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .expect("a thread pool")
                .install(|| a.transpose())
        };
        let one = with_threads(1);
        assert_eq!(one, at);
        for n in [2, 3, 5, 8] {
            assert_eq!(with_threads(n), one, "{n} threads");
        }
    }

    #[test]
    fn row_blocks_cover_the_rows_in_order() {
        let a = matrix(23, 11);
        for n in 1..=30 {
            let blocks = row_blocks(&a.offsets, n);
            assert!(
                !blocks.is_empty() && blocks.len() <= n.max(1) + 1,
                "{n}: {blocks:?}"
            );
            assert_eq!(blocks[0].start, 0);
            assert_eq!(blocks.last().map(|b| b.end), Some(23));
            assert!(
                blocks
                    .windows(2)
                    .all(|w| w[0].end == w[1].start && w[0].start < w[0].end)
            );
        }
        assert!(row_blocks(&[0], 4).is_empty());
    }

    #[test]
    fn vstack_appends_rows() {
        let (a, b) = (matrix(4, 6), matrix(3, 6));
        let s = SparseMatrix::vstack(vec![a.clone(), b.clone()], 6);
        assert_eq!(s.rows(), 7);
        assert_eq!(s.to_dense(), [a.to_dense(), b.to_dense()].concat());
    }

    /// The product and the gradient of `x` equal the dense matmul's under autodiff, for a
    /// non-uniform upstream gradient; the generic form agrees too.
    fn check_on(plain: Device) {
        let device = plain.clone().autodiff();
        let (rows, cols, c) = (37, 19, 5);
        let a = Arc::new(matrix(rows, cols));
        device.seed(11);
        let x0 = Tensor::<2>::random([cols, c], Distribution::Normal(0.0, 1.0), &device);
        let up = Tensor::<2>::random([rows, c], Distribution::Normal(0.0, 1.0), &device);
        let dense = Tensor::<2>::from_data(TensorData::new(a.to_dense(), [rows, cols]), &device);
        let run = |which: u8| {
            let x = x0.clone().require_grad();
            let y = match which {
                0 => sparse_matmul(&a, x.clone()),
                1 => generic(&a, x.clone()),
                _ => dense.clone().matmul(x.clone()),
            };
            let grads = y.clone().mul(up.clone()).sum().backward();
            (values(y), values(x.grad(&grads).expect("x has a gradient")))
        };
        let (y_ref, dx_ref) = run(2);
        for which in [0, 1] {
            let (y, dx) = run(which);
            assert_close(&format!("y ({which})"), &y, &y_ref);
            assert_close(&format!("dx ({which})"), &dx, &dx_ref);
        }
        assert!(
            dx_ref.iter().any(|&v| v == 0.0),
            "an unused column gets zero gradient"
        );
        // Without autodiff.
        let x = Tensor::<2>::from_data(x0.to_data(), &plain);
        let y = values(sparse_matmul(&a, x));
        assert_close("y (inference)", &y, &y_ref);
    }

    #[test]
    fn product_and_gradient_equal_the_dense_matmul_on_burn_flex() {
        check_on(Device::flex());
    }

    #[cfg(feature = "tch")]
    #[test]
    fn product_and_gradient_equal_the_dense_matmul_on_libtorch() {
        check_on(Device::libtorch());
    }

    /// The backward's device transpose (the CUDA route) on LibTorch's CPU: the same entries in
    /// the same order as the host transpose, so the same sums bit for bit; the last column of
    /// `matrix` is never used, so its row of the result is zero.
    #[cfg(feature = "tch")]
    #[test]
    fn device_transpose_gives_the_host_transposes_product_on_libtorch() {
        let (rows, cols, c) = (37, 19, 5);
        let a = matrix(rows, cols);
        let g = tch::Tensor::randn([rows as i64, c], (tch::Kind::Float, tch::Device::Cpu));
        let at = a.transpose();
        let host = super::libtorch::embedding_bag_sum(
            &g,
            &tch::Tensor::from_slice(&at.indices),
            &tch::Tensor::from_slice(&at.offsets),
            &tch::Tensor::from_slice(&at.values),
        );
        let device = super::libtorch::transposed_product(&a, &g);
        assert_eq!(device.size(), [cols as i64, c]);
        let diff = (&device - &host).abs().max().double_value(&[]);
        assert_eq!(diff, 0.0);
        assert_eq!(
            device
                .get(cols as i64 - 1)
                .abs()
                .sum(tch::Kind::Float)
                .double_value(&[]),
            0.0
        );
    }

    /// The whole route, device transpose included, where LibTorch sees a GPU.
    #[cfg(feature = "tch")]
    #[allow(deprecated)] // burn-tch's CUDA device
    #[test]
    fn product_and_gradient_equal_the_dense_matmul_on_libtorch_cuda() {
        if !tch::Cuda::is_available() {
            eprintln!("no CUDA device: the LibTorch CUDA sparse product is not checked here");
            return;
        }
        check_on(Device::libtorch_cuda(0));
    }

    #[test]
    fn no_entries_at_all_gives_zeros() {
        let mut b = SparseMatrixBuilder::new(3);
        b.end_row();
        b.end_row();
        let a = Arc::new(b.build());
        let x = Tensor::<2>::ones([3, 4], &Device::flex());
        assert_eq!(values(sparse_matmul(&a, x)), vec![0.0; 8]);
    }
}
