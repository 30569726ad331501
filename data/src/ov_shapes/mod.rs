//! OV-Shapes: the built-in open-vocabulary benchmark, generated deterministically from a seed.
//!
//! Scenes of coloured shapes (12 classes, 11 colours) on textured, grainy backgrounds, with
//! random size, stretch, rotation and occlusion. Some classes are *novel*: in the train split
//! they appear in the images and the captions but have no boxes or masks, and their pixels are
//! 255 (ignore) in the semantic masks; val labels everything. A separate `pretrain` split is the
//! teacher's "web data": image-caption pairs of 1-3 objects of every class, no boxes.
//!
//! The same seed and config give byte-identical files: every image draws from its own ChaCha8
//! stream, seeded from SHA-256 of (seed, split, index), so the parallel generation order does
//! not matter, and the geometry uses only IEEE-exact arithmetic (no libm).
//!
//! # Layout
//!
//! ```text
//! DIR/vocab.toml                      detection classes, ids 1..K, split base/novel
//! DIR/meta.json                       seed, preset, resolved config, classes, colours, counts,
//!                                     generator version
//! DIR/{train,val}/images/NNNNNN.png   RGB; NNNNNN = image id (from 1), zero-padded to 6
//! DIR/{train,val}/instances.json      COCO; train has base-class annotations only; masks are
//!                                     compressed RLE of each object's visible pixels, bbox the
//!                                     tight box of that mask, area its pixel count
//! DIR/train/instances_full.json       every object incl. novel, same annotation ids (analysis
//!                                     only, e.g. pseudo-box precision)
//! DIR/{train,val}/semantic/NNNNNN.png 8-bit labels: 0 = background, k = class id k,
//!                                     255 = ignore (novel pixels in train)
//! DIR/{train,val}/captions.jsonl      {"image_id", "file_name", "caption", "objects": [{"class",
//!                                     "colour", "size"}]}, one line per image
//! DIR/pretrain/images/NNNNNN.png      1-3 objects of any class
//! DIR/pretrain/captions.jsonl         as above
//! ```
//!
//! [`OvShapesDir`] opens such a directory and hands out these paths and files.

mod caption;
mod scene;
mod shapes;

pub use scene::{COLOURS, NamedColour, SizeWord};
pub use shapes::{ALL_SHAPES, Shape};

use crate::boxes::xyxy_to_xywh;
use crate::coco::{CocoAnnotation, CocoCategory, CocoDataset, CocoImage, Segmentation};
use crate::error::{Error, Result};
use crate::io;
use crate::semantic::{IGNORE_INDEX, SemanticMask};
use crate::vocab::{Split, VocabClass, Vocabulary};
use caption::Style;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use scene::{SceneSpec, render};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bumped whenever the same config would give different files.
pub const GENERATOR_VERSION: u32 = 2;

/// The default novel classes: distinctive silhouettes, so distillation has a fair chance.
pub const DEFAULT_NOVEL: [&str; 4] = ["star", "heart", "crescent", "arrow"];

/// A named starting point for [`SynthConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// 64 train / 32 val / 256 pretrain images at 96 px: tests and smoke runs (well under 10 s).
    Quick,
    /// 2,000 / 300 / 10,000 at 128 px: the built-in benchmark on two CPU cores.
    Default,
    /// 10,000 / 1,000 / 50,000 at 256 px.
    Large,
}

impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quick" => Ok(Preset::Quick),
            "default" => Ok(Preset::Default),
            "large" => Ok(Preset::Large),
            other => Err(Error::Config(format!(
                "unknown preset {other:?}: expected quick, default or large"
            ))),
        }
    }
}

impl Preset {
    /// The preset's name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Quick => "quick",
            Preset::Default => "default",
            Preset::Large => "large",
        }
    }
}

/// Everything that determines a generated data set (written to `meta.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    /// The preset these values started from (informational).
    pub preset: String,
    /// Master seed.
    pub seed: u64,
    /// Images in the train split.
    pub train_images: usize,
    /// Images in the val split.
    pub val_images: usize,
    /// Image-caption pairs in the pretrain split.
    pub pretrain_images: usize,
    /// Side of the square train/val images, pixels.
    pub image_size: u32,
    /// Side of the square pretrain images, pixels.
    pub pretrain_image_size: u32,
    /// Fewest objects attempted per train/val image.
    pub min_objects: usize,
    /// Most objects attempted per train/val image (too-occluded ones are dropped).
    pub max_objects: usize,
    /// Smallest object span as a fraction of the image side (train/val).
    pub min_object_size: f64,
    /// Largest object span as a fraction of the image side (train/val).
    pub max_object_size: f64,
    /// Most objects per pretrain image (at least 1).
    pub pretrain_max_objects: usize,
    /// Share of pretrain images with exactly one object.
    pub pretrain_single_fraction: f64,
    /// Object span range in single-object pretrain images (fractions of the side).
    pub pretrain_single_size: [f64; 2],
    /// Object span range in multi-object pretrain images (fractions of the side).
    pub pretrain_multi_size: [f64; 2],
    /// An object with less than this fraction of itself visible is not drawn at all.
    pub min_visible: f64,
    /// Nor one with fewer visible pixels than this.
    pub min_visible_pixels: u64,
    /// Largest grain amplitude on the 0-255 scale (half the images get grain, each drawing its
    /// own amplitude up to this).
    pub noise: f64,
    /// Class names (shapes), in class-id order: id = position + 1.
    pub classes: Vec<String>,
    /// The novel classes (a subset of `classes`).
    pub novel: Vec<String>,
}

impl SynthConfig {
    /// The values of a preset, with seed 0.
    pub fn preset(p: Preset) -> Self {
        let (train, val, pretrain, size, min_px) = match p {
            Preset::Quick => (64, 32, 256, 96, 12),
            Preset::Default => (2000, 300, 10_000, 128, 20),
            Preset::Large => (10_000, 1000, 50_000, 256, 60),
        };
        SynthConfig {
            preset: p.name().to_string(),
            seed: 0,
            train_images: train,
            val_images: val,
            pretrain_images: pretrain,
            image_size: size,
            pretrain_image_size: size,
            min_objects: 2,
            max_objects: 6,
            // 12-70 px at 128 px.
            min_object_size: 0.094,
            max_object_size: 0.547,
            pretrain_max_objects: 3,
            pretrain_single_fraction: 0.5,
            pretrain_single_size: [0.3, 0.8],
            pretrain_multi_size: [0.15, 0.5],
            min_visible: 0.5,
            min_visible_pixels: min_px,
            noise: 8.0,
            classes: ALL_SHAPES.iter().map(|s| s.name().to_string()).collect(),
            novel: DEFAULT_NOVEL.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Overrides one setting from a `key=value` string: numbers and booleans as JSON, lists as
    /// JSON or comma-separated (`novel=star,ring`), pairs as `[a, b]` or `a,b`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let mut obj = serde_json::to_value(&*self).expect("config serialises");
        let map = obj.as_object_mut().expect("config is an object");
        let Some(old) = map.get(key) else {
            let keys: Vec<&String> = map.keys().collect();
            return Err(Error::Config(format!(
                "unknown setting {key:?}; settings are: {}",
                keys.iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let parsed: serde_json::Value = match (old, serde_json::from_str(value)) {
            (serde_json::Value::String(_), _) => serde_json::Value::String(value.to_string()),
            (serde_json::Value::Array(_), Ok(v @ serde_json::Value::Array(_))) => v,
            (serde_json::Value::Array(items), _) => {
                let parts = value.split(',').map(str::trim).filter(|s| !s.is_empty());
                let numeric = items.first().is_some_and(serde_json::Value::is_number);
                serde_json::Value::Array(
                    parts
                        .map(|p| {
                            if numeric {
                                serde_json::from_str(p)
                                    .unwrap_or(serde_json::Value::String(p.to_string()))
                            } else {
                                serde_json::Value::String(p.to_string())
                            }
                        })
                        .collect(),
                )
            }
            (_, Ok(v)) => v,
            (_, Err(_)) => serde_json::Value::String(value.to_string()),
        };
        map.insert(key.to_string(), parsed);
        *self = serde_json::from_value(obj)
            .map_err(|e| Error::Config(format!("setting {key}={value}: {e}")))?;
        Ok(())
    }

    /// Applies `key=value` overrides in order.
    pub fn apply_overrides<S: AsRef<str>>(&mut self, pairs: &[S]) -> Result<()> {
        for pair in pairs {
            let pair = pair.as_ref();
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| Error::Config(format!("--set {pair:?}: expected key=value")))?;
            self.set(k.trim(), v.trim())?;
        }
        Ok(())
    }

    /// The shapes in class order, after checking names, the novel subset and the numbers.
    pub fn shapes(&self) -> Result<Vec<Shape>> {
        let bad = |m: String| Err(Error::Config(m));
        let mut shapes = Vec::new();
        for name in &self.classes {
            match Shape::from_name(name) {
                Some(s) if !shapes.contains(&s) => shapes.push(s),
                Some(_) => return bad(format!("class {name:?} is listed twice")),
                None => {
                    return bad(format!(
                        "unknown class {name:?}; the shapes are: {}",
                        ALL_SHAPES.map(|s| s.name()).join(", ")
                    ));
                }
            }
        }
        for n in &self.novel {
            if !self.classes.contains(n) {
                return bad(format!("novel class {n:?} is not among the classes"));
            }
        }
        if shapes.is_empty() || self.novel.len() >= shapes.len() {
            return bad("there must be at least one base class".into());
        }
        if self.image_size < 16 || self.pretrain_image_size < 16 {
            return bad("image sizes must be at least 16 pixels".into());
        }
        if self.min_objects == 0 || self.min_objects > self.max_objects {
            return bad(format!(
                "objects per image: need 1 <= min_objects ({}) <= max_objects ({})",
                self.min_objects, self.max_objects
            ));
        }
        if self.pretrain_max_objects == 0 {
            return bad("pretrain_max_objects must be at least 1".into());
        }
        for (what, [lo, hi]) in [
            (
                "min/max_object_size",
                [self.min_object_size, self.max_object_size],
            ),
            ("pretrain_single_size", self.pretrain_single_size),
            ("pretrain_multi_size", self.pretrain_multi_size),
        ] {
            if !(0.0 < lo && lo <= hi && hi <= 1.0) {
                return bad(format!("{what}: need 0 < {lo} <= {hi} <= 1"));
            }
        }
        if !(0.0..=1.0).contains(&self.min_visible)
            || !(0.0..=1.0).contains(&self.pretrain_single_fraction)
        {
            return bad("min_visible and pretrain_single_fraction are fractions in [0, 1]".into());
        }
        if !(0.0..=128.0).contains(&self.noise) {
            return bad(format!("noise {} must be in [0, 128]", self.noise));
        }
        Ok(shapes)
    }

    /// The detection vocabulary: ids 1..K in class order, split base/novel.
    pub fn vocabulary(&self) -> Result<Vocabulary> {
        let shapes = self.shapes()?;
        Ok(Vocabulary {
            name: "ov-shapes".into(),
            classes: shapes
                .iter()
                .enumerate()
                .map(|(i, s)| VocabClass {
                    id: i as u64 + 1,
                    name: s.name().into(),
                    synonyms: s.synonyms().iter().map(|x| x.to_string()).collect(),
                    split: if self.novel.iter().any(|n| n == s.name()) {
                        Split::Novel
                    } else {
                        Split::Base
                    },
                })
                .collect(),
        })
    }
}

/// One object as a caption record lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptionObject {
    /// Class name.
    pub class: String,
    /// Colour word.
    pub colour: String,
    /// `small`, `medium` or `large`.
    pub size: SizeWord,
}

/// One line of `captions.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptionRecord {
    /// Image id (the same as in `instances.json` for train/val).
    pub image_id: u64,
    /// File name under the split's `images/`.
    pub file_name: String,
    /// The caption.
    pub caption: String,
    /// Every object in the image, bottom to top.
    pub objects: Vec<CaptionObject>,
}

/// Reads a `captions.jsonl` file; a bad line is an error naming its line number.
pub fn read_captions(path: impl AsRef<Path>) -> Result<Vec<CaptionRecord>> {
    let path = path.as_ref();
    let text = String::from_utf8(io::read_bytes(path)?).map_err(|_| {
        Error::invalid(crate::Problem::new(
            path,
            crate::Record::File,
            None,
            "not UTF-8",
        ))
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::invalid(crate::Problem::new(
                    path,
                    crate::Record::Position {
                        line: i + 1,
                        column: e.column(),
                    },
                    None,
                    format!("invalid caption record: {e}"),
                ))
            })
        })
        .collect()
}

/// Per-split counts in `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    /// Images.
    pub images: usize,
    /// Objects drawn.
    pub objects: usize,
    /// Annotations in `instances.json` (train: base classes only; pretrain: 0).
    pub annotations: usize,
}

/// A class in `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaClass {
    /// Category id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// `base` or `novel`.
    pub split: Split,
}

/// A colour in `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaColour {
    /// Caption word.
    pub name: String,
    /// sRGB.
    pub rgb: [u8; 3],
}

/// `DIR/meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthMeta {
    /// Always `ov-shapes`.
    pub generator: String,
    /// [`GENERATOR_VERSION`] of the generator that wrote the directory.
    pub version: u32,
    /// The master seed.
    pub seed: u64,
    /// The preset name.
    pub preset: String,
    /// The resolved config.
    pub config: SynthConfig,
    /// The classes.
    pub classes: Vec<MetaClass>,
    /// The colours.
    pub colours: Vec<MetaColour>,
    /// Counts for `train`, `val`, `pretrain`.
    pub splits: BTreeMap<String, SplitCounts>,
}

/// A generated OV-Shapes directory: paths of its parts.
#[derive(Debug, Clone)]
pub struct OvShapesDir {
    /// The directory.
    pub root: PathBuf,
    /// Its `meta.json`.
    pub meta: SynthMeta,
}

impl OvShapesDir {
    /// Opens a directory written by [`generate`] (reads `meta.json`).
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let meta: SynthMeta = io::read_json(root.join("meta.json"))?;
        Ok(Self { root, meta })
    }

    /// True when `dir` holds an OV-Shapes `meta.json`.
    pub fn is_ov_shapes(dir: &Path) -> bool {
        std::fs::read(dir.join("meta.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["generator"] == "ov-shapes")
    }

    /// `DIR/vocab.toml`, loaded.
    pub fn vocabulary(&self) -> Result<Vocabulary> {
        Vocabulary::load(self.root.join("vocab.toml"))
    }

    /// `DIR/{split}` (`train`, `val` or `pretrain`).
    pub fn split_dir(&self, split: &str) -> PathBuf {
        self.root.join(split)
    }

    /// `DIR/{split}/images`.
    pub fn images_dir(&self, split: &str) -> PathBuf {
        self.root.join(split).join("images")
    }

    /// `DIR/{split}/semantic`.
    pub fn semantic_dir(&self, split: &str) -> PathBuf {
        self.root.join(split).join("semantic")
    }

    /// `DIR/{split}/instances.json` (train: base classes only).
    pub fn instances_path(&self, split: &str) -> PathBuf {
        self.root.join(split).join("instances.json")
    }

    /// `DIR/train/instances_full.json` (every object; analysis only).
    pub fn instances_full_path(&self) -> PathBuf {
        self.root.join("train").join("instances_full.json")
    }

    /// `DIR/{split}/captions.jsonl`.
    pub fn captions_path(&self, split: &str) -> PathBuf {
        self.root.join(split).join("captions.jsonl")
    }

    /// The captions of a split.
    pub fn captions(&self, split: &str) -> Result<Vec<CaptionRecord>> {
        read_captions(self.captions_path(split))
    }
}

/// What [`generate`] made.
#[derive(Debug, Clone)]
pub struct SynthSummary {
    /// The directory written.
    pub root: PathBuf,
    /// The meta.json contents.
    pub meta: SynthMeta,
}

fn image_rng(seed: u64, split: &str, index: u64) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"ov-shapes/v1");
    h.update(seed.to_le_bytes());
    h.update(split.as_bytes());
    h.update([0u8]);
    h.update(index.to_le_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

fn encode_rgb_png(
    rgb: &[u8],
    w: usize,
    h: usize,
) -> std::result::Result<Vec<u8>, image::ImageError> {
    use image::ImageEncoder;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let mut out = Vec::new();
    // zlib's balanced level: a third smaller than the fastest setting, for little time.
    PngEncoder::new_with_quality(&mut out, CompressionType::Default, FilterType::Adaptive)
        .write_image(rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8)?;
    Ok(out)
}

fn file_name(id: u64) -> String {
    format!("{id:06}.png")
}

fn write_png(path: &Path, rgb: &[u8], w: usize, h: usize) -> Result<()> {
    let bytes = encode_rgb_png(rgb, w, h).map_err(|e| Error::Image {
        action: "encode",
        path: path.to_path_buf(),
        source: e,
    })?;
    io::write_atomic_unsynced(path, &bytes)
}

/// One generated train/val image, ready for the JSON files.
struct Generated {
    image: CocoImage,
    /// (class index, visible mask RLE, bbox xyxy, area) bottom to top.
    objects: Vec<(usize, Segmentation, [f64; 4], u64)>,
    caption: CaptionRecord,
}

/// Called once per finished image with its split (`train`, `val`, `pretrain`), from worker
/// threads; e.g. to advance a progress bar.
pub type ProgressFn<'a> = &'a (dyn Fn(&str) + Sync);

fn detection_split(
    dir: &Path,
    split: &str,
    n: usize,
    cfg: &SynthConfig,
    shapes: &[Shape],
    novel: &[bool],
    progress: ProgressFn,
) -> Result<Vec<Generated>> {
    let side = cfg.image_size as usize;
    let spec_base = SceneSpec {
        width: side,
        height: side,
        n_objects: 0,
        min_extent: cfg.min_object_size * side as f64,
        max_extent: cfg.max_object_size * side as f64,
        min_visible: cfg.min_visible,
        min_pixels: cfg.min_visible_pixels,
        classes: shapes,
        noise: cfg.noise,
    };
    let label_novel = split != "train";
    (0..n)
        .into_par_iter()
        .map(|i| {
            let mut rng = image_rng(cfg.seed, split, i as u64);
            let spec = SceneSpec {
                n_objects: rng.random_range(cfg.min_objects..=cfg.max_objects),
                ..spec_base.clone()
            };
            let scene = render(&mut rng, &spec);
            let text = caption::caption(&mut rng, &scene, shapes, Style::Plain);
            let id = i as u64 + 1;
            let name = file_name(id);
            write_png(&dir.join("images").join(&name), &scene.rgb, side, side)?;
            let mut labels = SemanticMask::filled(side, side, 0);
            for o in &scene.objects {
                let value = if novel[o.class] && !label_novel {
                    IGNORE_INDEX
                } else {
                    o.class as u16 + 1
                };
                for (k, &v) in o.visible.as_slice().iter().enumerate() {
                    if v != 0 {
                        labels.as_mut_slice()[k] = value;
                    }
                }
            }
            let label_path = dir.join("semantic").join(&name);
            let label_png = labels
                .encode_png(crate::semantic::LabelDepth::Eight)
                .map_err(|m| Error::Config(format!("{}: {m}", label_path.display())))?;
            io::write_atomic_unsynced(&label_path, &label_png)?;
            progress(split);
            let objects = scene
                .objects
                .iter()
                .map(|o| {
                    (
                        o.class,
                        Segmentation::from_rle(&o.visible.to_rle()),
                        xyxy_to_xywh(o.bbox),
                        o.area,
                    )
                })
                .collect();
            Ok(Generated {
                image: CocoImage {
                    id,
                    width: side as u32,
                    height: side as u32,
                    file_name: name.clone(),
                    ..Default::default()
                },
                objects,
                caption: CaptionRecord {
                    image_id: id,
                    file_name: name,
                    caption: text,
                    objects: caption_objects(&scene.objects, shapes),
                },
            })
        })
        .collect()
}

fn caption_objects(objects: &[scene::SceneObject], shapes: &[Shape]) -> Vec<CaptionObject> {
    objects
        .iter()
        .map(|o| CaptionObject {
            class: shapes[o.class].name().into(),
            colour: COLOURS[o.colour].name.into(),
            size: o.size,
        })
        .collect()
}

fn write_captions(path: &Path, records: impl Iterator<Item = CaptionRecord>) -> Result<()> {
    let mut text = Vec::new();
    for r in records {
        serde_json::to_writer(&mut text, &r).expect("caption serialises");
        text.write_all(b"\n").expect("in memory");
    }
    io::write_atomic(path, &text)
}

fn coco_for(
    generated: &[Generated],
    categories: &[CocoCategory],
    keep: impl Fn(usize) -> bool,
) -> CocoDataset {
    let mut annotations = Vec::new();
    let mut next_id = 1u64;
    for g in generated {
        for (class, seg, bbox, area) in &g.objects {
            let id = next_id;
            next_id += 1;
            if !keep(*class) {
                continue;
            }
            annotations.push(CocoAnnotation {
                id,
                image_id: g.image.id,
                category_id: *class as u64 + 1,
                bbox: *bbox,
                area: *area as f64,
                iscrowd: 0,
                segmentation: Some(seg.clone()),
            });
        }
    }
    CocoDataset {
        info: Some(serde_json::json!({
            "description": "OV-Shapes (ovkd synthetic open-vocabulary benchmark)",
            "version": GENERATOR_VERSION,
        })),
        licenses: None,
        images: generated.iter().map(|g| g.image.clone()).collect(),
        annotations,
        categories: categories.to_vec(),
    }
}

/// Generates an OV-Shapes data set into `out` (see the module docs for the layout).
///
/// Everything is written into a sibling temporary directory and renamed into place at the end,
/// so `out` is either the old data set or the complete new one. An existing `out` is replaced
/// only if it is empty or an earlier OV-Shapes directory; anything else is an error.
pub fn generate(out: impl AsRef<Path>, cfg: &SynthConfig) -> Result<SynthSummary> {
    generate_with_progress(out, cfg, &|_| {})
}

/// [`generate`], calling `progress` after each image.
pub fn generate_with_progress(
    out: impl AsRef<Path>,
    cfg: &SynthConfig,
    progress: ProgressFn,
) -> Result<SynthSummary> {
    let out = out.as_ref().to_path_buf();
    let shapes = cfg.shapes()?;
    let vocab = cfg.vocabulary()?;
    let novel: Vec<bool> = vocab.classes.iter().map(|c| c.is_novel()).collect();
    if out.exists() {
        let empty = std::fs::read_dir(&out)
            .map_err(|e| Error::io("read directory", &out, e))?
            .next()
            .is_none();
        if !empty && !OvShapesDir::is_ov_shapes(&out) {
            return Err(Error::Config(format!(
                "{} exists and is not an OV-Shapes directory (no meta.json from `ovkd data \
                 synth`); choose another --out",
                out.display()
            )));
        }
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    io::create_dir_all(&parent)?;
    let base = out
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ov-shapes".into());
    let tmp = parent.join(format!(".{base}.partial-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io("remove", &tmp, e))?;
    }
    let result = generate_into(&tmp, cfg, &shapes, &vocab, &novel, progress);
    let meta = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| Error::io("replace", &out, e))?;
    }
    std::fs::rename(&tmp, &out).map_err(|e| Error::io("rename into place", &out, e))?;
    Ok(SynthSummary { root: out, meta })
}

fn generate_into(
    dir: &Path,
    cfg: &SynthConfig,
    shapes: &[Shape],
    vocab: &Vocabulary,
    novel: &[bool],
    progress: ProgressFn,
) -> Result<SynthMeta> {
    for sub in [
        "train/images",
        "train/semantic",
        "val/images",
        "val/semantic",
        "pretrain/images",
    ] {
        io::create_dir_all(dir.join(sub))?;
    }
    let categories: Vec<CocoCategory> = vocab
        .classes
        .iter()
        .map(|c| CocoCategory {
            id: c.id,
            name: c.name.clone(),
            supercategory: Some("shape".into()),
            ..Default::default()
        })
        .collect();
    let mut splits = BTreeMap::new();
    for (split, n) in [("train", cfg.train_images), ("val", cfg.val_images)] {
        let sdir = dir.join(split);
        let generated = detection_split(&sdir, split, n, cfg, shapes, novel, progress)?;
        let objects: usize = generated.iter().map(|g| g.objects.len()).sum();
        let labelled = if split == "train" {
            let full = coco_for(&generated, &categories, |_| true);
            full.write(sdir.join("instances_full.json"))?;
            coco_for(&generated, &categories, |c| !novel[c])
        } else {
            coco_for(&generated, &categories, |_| true)
        };
        labelled.write(sdir.join("instances.json"))?;
        write_captions(
            &sdir.join("captions.jsonl"),
            generated.into_iter().map(|g| g.caption),
        )?;
        splits.insert(
            split.to_string(),
            SplitCounts {
                images: n,
                objects,
                annotations: labelled.annotations.len(),
            },
        );
    }

    // The teacher's image-caption corpus.
    let side = cfg.pretrain_image_size as usize;
    let pdir = dir.join("pretrain");
    let records: Vec<(CaptionRecord, usize)> = (0..cfg.pretrain_images)
        .into_par_iter()
        .map(|i| {
            let mut rng = image_rng(cfg.seed, "pretrain", i as u64);
            let single = rng.random_bool(cfg.pretrain_single_fraction);
            let (n, [lo, hi], min_visible) = if single || cfg.pretrain_max_objects == 1 {
                (1, cfg.pretrain_single_size, cfg.min_visible)
            } else {
                (
                    rng.random_range(2..=cfg.pretrain_max_objects),
                    cfg.pretrain_multi_size,
                    cfg.min_visible.max(0.7),
                )
            };
            let spec = SceneSpec {
                width: side,
                height: side,
                n_objects: n,
                min_extent: lo * side as f64,
                max_extent: hi * side as f64,
                min_visible,
                min_pixels: cfg.min_visible_pixels,
                classes: shapes,
                noise: cfg.noise,
            };
            let scene = render(&mut rng, &spec);
            let text = caption::caption(&mut rng, &scene, shapes, Style::Varied);
            let id = i as u64 + 1;
            let name = file_name(id);
            write_png(&pdir.join("images").join(&name), &scene.rgb, side, side)?;
            progress("pretrain");
            let objects = caption_objects(&scene.objects, shapes);
            let count = objects.len();
            Ok((
                CaptionRecord {
                    image_id: id,
                    file_name: name,
                    caption: text,
                    objects,
                },
                count,
            ))
        })
        .collect::<Result<_>>()?;
    splits.insert(
        "pretrain".into(),
        SplitCounts {
            images: cfg.pretrain_images,
            objects: records.iter().map(|r| r.1).sum(),
            annotations: 0,
        },
    );
    write_captions(
        &pdir.join("captions.jsonl"),
        records.into_iter().map(|r| r.0),
    )?;

    vocab.save(dir.join("vocab.toml"))?;
    let meta = SynthMeta {
        generator: "ov-shapes".into(),
        version: GENERATOR_VERSION,
        seed: cfg.seed,
        preset: cfg.preset.clone(),
        config: cfg.clone(),
        classes: vocab
            .classes
            .iter()
            .map(|c| MetaClass {
                id: c.id,
                name: c.name.clone(),
                split: c.split,
            })
            .collect(),
        colours: COLOURS
            .iter()
            .map(|c| MetaColour {
                name: c.name.into(),
                rgb: c.rgb,
            })
            .collect(),
        splits,
    };
    io::write_json_atomic(dir.join("meta.json"), &meta, true)?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(seed: u64) -> SynthConfig {
        let mut c = SynthConfig::preset(Preset::Quick);
        c.seed = seed;
        c.train_images = 6;
        c.val_images = 4;
        c.pretrain_images = 8;
        c.image_size = 64;
        c.pretrain_image_size = 48;
        c
    }

    fn hash_tree(root: &Path) -> BTreeMap<String, [u8; 32]> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(root).unwrap().display().to_string();
                    out.insert(rel, Sha256::digest(std::fs::read(&p).unwrap()).into());
                }
            }
        }
        out
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("nested/b"),
            dir.path().join("c"),
        );
        generate(&a, &tiny(7)).unwrap();
        generate(&b, &tiny(7)).unwrap();
        generate(&c, &tiny(8)).unwrap();
        let (ha, hb, hc) = (hash_tree(&a), hash_tree(&b), hash_tree(&c));
        assert_eq!(ha.len(), 3 + 6 * 2 + 4 * 2 + 8 + 2 + 2 + 1);
        assert_eq!(ha, hb);
        assert_ne!(ha["train/images/000001.png"], hc["train/images/000001.png"]);
        // No temporary directories are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        // Regenerating over an OV-Shapes directory replaces it; another directory is refused.
        generate(&a, &tiny(8)).unwrap();
        assert_eq!(hash_tree(&a), hc);
        std::fs::write(dir.path().join("x.txt"), b"x").unwrap();
        let err = generate(dir.path(), &tiny(1)).unwrap_err().to_string();
        assert!(err.contains("is not an OV-Shapes directory"), "{err}");
    }

    #[test]
    fn train_hides_novel_val_labels_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = tiny(3);
        cfg.train_images = 12;
        let out = dir.path().join("d");
        generate(&out, &cfg).unwrap();
        let d = OvShapesDir::open(&out).unwrap();
        let vocab = d.vocabulary().unwrap();
        assert_eq!(vocab.len(), 12);
        assert_eq!(vocab.novel().count(), 4);
        let novel_ids: Vec<u64> = vocab.novel().map(|c| c.id).collect();
        let train = CocoDataset::read(d.instances_path("train")).unwrap();
        let full = CocoDataset::read(d.instances_full_path()).unwrap();
        let val = CocoDataset::read(d.instances_path("val")).unwrap();
        assert!(
            train
                .annotations
                .iter()
                .all(|a| !novel_ids.contains(&a.category_id))
        );
        assert!(
            full.annotations
                .iter()
                .any(|a| novel_ids.contains(&a.category_id))
        );
        assert_eq!(val.images.len(), 4);
        let caps = d.captions("train").unwrap();
        assert_eq!(caps.len(), 12);
        let mut saw_novel_pixels = false;
        for img in &full.images {
            let sem = SemanticMask::read(d.semantic_dir("train").join(&img.file_name)).unwrap();
            let cap = caps.iter().find(|c| c.image_id == img.id).unwrap();
            let anns: Vec<&CocoAnnotation> = full
                .annotations
                .iter()
                .filter(|a| a.image_id == img.id)
                .collect();
            assert_eq!(cap.objects.len(), anns.len());
            for (a, o) in anns.iter().zip(&cap.objects) {
                assert_eq!(vocab.class(a.category_id).unwrap().name, o.class);
                assert!(cap.caption.contains(&format!("{} {}", o.colour, o.class)));
                let rle = a
                    .segmentation
                    .as_ref()
                    .unwrap()
                    .to_rle(img.height, img.width)
                    .unwrap();
                let m = rle.decode().unwrap();
                assert_eq!(m.area() as f64, a.area);
                assert_eq!(crate::boxes::xyxy_to_xywh(m.bbox().unwrap()), a.bbox);
                let want = if novel_ids.contains(&a.category_id) {
                    saw_novel_pixels = true;
                    255
                } else {
                    a.category_id as u16
                };
                for y in 0..m.height() {
                    for x in 0..m.width() {
                        if m.get(x, y) {
                            assert_eq!(sem.get(x, y), want);
                        }
                    }
                }
            }
            let labelled: u64 = anns.iter().map(|a| a.area as u64).sum();
            let nonzero = sem.as_slice().iter().filter(|&&v| v != 0).count() as u64;
            assert_eq!(labelled, nonzero);
        }
        assert!(saw_novel_pixels);
        for report in crate::validate::validate_ov_shapes_dir(&out) {
            assert!(
                report.is_ok(),
                "{}: {:?}",
                report.file.display(),
                report.problems
            );
        }
        // A broken semantic mask is caught, naming both sizes.
        SemanticMask::filled(5, 5, 0)
            .write(d.semantic_dir("val").join("000002.png"))
            .unwrap();
        let bad: Vec<String> = crate::validate::validate_ov_shapes_dir(&out)
            .into_iter()
            .flat_map(|r| r.problems)
            .map(|p| p.to_string())
            .collect();
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(
            bad[0].contains("label mask is 5x5 but its image"),
            "{bad:?}"
        );
        let pre = d.captions("pretrain").unwrap();
        assert_eq!(pre.len(), 8);
        assert!(pre.iter().all(|r| (1..=3).contains(&r.objects.len())));
    }

    #[test]
    fn every_generated_caption_names_every_object() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = tiny(5);
        cfg.train_images = 60;
        cfg.val_images = 20;
        cfg.pretrain_images = 80;
        let out = dir.path().join("d");
        generate(&out, &cfg).unwrap();
        let d = OvShapesDir::open(&out).unwrap();
        let mut by_count = BTreeMap::new();
        for (split, style) in [
            ("train", Style::Plain),
            ("val", Style::Plain),
            ("pretrain", Style::Varied),
        ] {
            for r in d.captions(split).unwrap() {
                let objects: Vec<(SizeWord, &str, &str)> = r
                    .objects
                    .iter()
                    .map(|o| (o.size, o.colour.as_str(), o.class.as_str()))
                    .collect();
                *by_count.entry(objects.len()).or_insert(0) += 1;
                if let Err(e) = caption::check_caption(&r.caption, &objects, style) {
                    panic!("{split} image {}: {e}", r.image_id);
                }
            }
        }
        // Two-object scenes (where the first phrase used to go missing) are common.
        assert!(by_count.get(&2).copied().unwrap_or(0) >= 10, "{by_count:?}");
        assert!(by_count.keys().any(|&n| n >= 4), "{by_count:?}");
    }

    #[test]
    fn overrides() {
        let mut c = SynthConfig::preset(Preset::Default);
        c.apply_overrides(&[
            "train_images=10",
            "novel=ring, cross",
            "noise=0",
            "pretrain_single_size=0.2,0.4",
        ])
        .unwrap();
        assert_eq!(c.train_images, 10);
        assert_eq!(c.novel, vec!["ring", "cross"]);
        assert_eq!(c.noise, 0.0);
        assert_eq!(c.pretrain_single_size, [0.2, 0.4]);
        let err = c.set("trian_images", "3").unwrap_err().to_string();
        assert!(err.contains("unknown setting \"trian_images\""), "{err}");
        let err = c.set("train_images", "many").unwrap_err().to_string();
        assert!(err.contains("train_images=many"), "{err}");
        c.set("novel", "blob").unwrap();
        assert!(
            c.shapes()
                .unwrap_err()
                .to_string()
                .contains("novel class \"blob\"")
        );
    }
}
