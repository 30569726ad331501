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
//! - [`dataset_dir`]: [`DatasetDir`], the folder every student reads: OV-Shapes, or COCO / LVIS /
//!   VOC laid out the same way by the pipeline's data stage.
//! - [`transforms`], [`loader`]: decoding, augmentation with boxes and masks kept consistent,
//!   normalisation, padded Burn batches, a prefetching iterator.
//! - [`show`], [`stats`]: drawings and counts for people to look at.
//!
//! Errors are [`Error`]; bad input names the file, the record (id or index) and the field, e.g.
//! `val.json: annotation id 17 (#3), field `bbox`: negative size: width -2, height 3 in [...]`.
//!
//! # The OV-Shapes directory (`ovkd data synth --out DIR`)
//!
//! ```text
//! DIR/vocab.toml                      detection classes, ids 1..K, split base/novel
//! DIR/meta.json                       seed, preset, resolved config, classes, colours, counts,
//!                                     generator version
//! DIR/{train,val}/images/NNNNNN.png   RGB, NNNNNN = image id from 1
//! DIR/{train,val}/instances.json      COCO; train has base-class annotations only; masks are
//!                                     compressed RLE of the visible pixels, bbox their tight box
//! DIR/train/instances_full.json       every object incl. novel, same ids (analysis only)
//! DIR/{train,val}/semantic/NNNNNN.png 8-bit: 0 = background, k = class id k,
//!                                     255 = ignore (novel pixels in train)
//! DIR/{train,val}/captions.jsonl      {"image_id", "file_name", "caption",
//!                                      "objects": [{"class", "colour", "size"}]}
//! DIR/pretrain/images/NNNNNN.png      the teacher's image-caption corpus: 1-3 objects of any
//! DIR/pretrain/captions.jsonl         class, no boxes
//! ```
//!
//! Open one with [`DatasetDir`] (or [`ov_shapes::OvShapesDir`] for its meta and captions); batch
//! it with [`loader::DetectionDataset::of_dir`] and [`loader::DataLoader`].

pub mod boxes;
pub mod coco;
pub mod dataset_dir;
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
pub use dataset_dir::DatasetDir;
pub use error::{Error, Problem, Record, Result};
pub use vocab::{Split, VocabClass, Vocabulary};
