//! ovkd-data: the data layer of ovkd.
//!
//! - [`io`]: atomic writes (temporary file + fsync + rename) used for every file ovkd writes.
//! - [`boxes`]: [`Boxes`], `[x1, y1, x2, y2]` in image pixels; COCO's `[x, y, w, h]` only at the
//!   file boundary.
//! - [`coco`]: COCO/LVIS instances and COCO results files; [`validate`]: every problem in a file,
//!   each naming the file, the record and the field; [`mask`]: RLE (plain and compressed),
//!   polygons, mask <-> box, as pycocotools computes them.
//! - [`semantic`]: label PNGs (8/16-bit, palette), ignore index 255, `reduce_zero_label`.
//! - [`vocab`]: [`Vocabulary`] with its base/novel (seen/unseen) split, TOML files in
//!   `configs/vocab/`.
//! - [`ov_shapes`]: the OV-Shapes generator and its directory layout ([`ov_shapes::OvShapesDir`]).
//! - [`transforms`], [`loader`]: decoding, augmentation with boxes and masks kept consistent,
//!   normalisation, padded Burn batches, a prefetching iterator.
//! - [`show`], [`stats`]: drawings and counts for people to look at.

pub mod boxes;
pub mod coco;
pub mod error;
pub mod io;
pub mod loader;
pub mod mask;
pub mod ov_shapes;
pub mod semantic;
pub mod show;
pub mod stats;
pub mod transforms;
pub mod validate;
pub mod vocab;

pub use boxes::Boxes;
pub use error::{Error, Problem, Record, Result};
pub use vocab::{Split, VocabClass, Vocabulary};
