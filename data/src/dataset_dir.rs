//! A data-set folder as every student reads it: an OV-Shapes folder (`ovkd data synth`) or a
//! downloaded COCO 2017 / LVIS v1 / PASCAL VOC laid out the same way by the pipeline's `data`
//! stage.
//!
//! ```text
//! DIR/vocab.toml                       the classes with their base/novel (seen/unseen) split
//! DIR/meta.json  or  DIR/dataset.json  which kind of folder this is: OV-Shapes' generator
//!                                      record, or where a prepared data set came from
//! DIR/{train,val}/instances.json       COCO JSON (train: base classes only)
//! DIR/{train,val}/images/              the images `instances.json` names
//! DIR/{train,val}/semantic/            8-bit label PNGs named like the images (OV-Shapes,
//!                                      VOC); absent for box-only data sets (COCO, LVIS)
//! DIR/train/instances_full.json        OV-Shapes only: every object, novel ones too
//! ```
//!
//! [`DatasetDir::open`] checks that the files every student needs are there, and names the
//! first one that is not.

use crate::error::{Error, Result};
use crate::io;
use crate::ov_shapes::{OvShapesDir, SynthMeta};
use crate::vocab::Vocabulary;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file that marks a prepared (downloaded, then laid out) data set.
pub const PREPARED_FILE: &str = "dataset.json";

/// `DIR/dataset.json` of a prepared data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreparedInfo {
    /// `coco`, `lvis` or `voc`.
    pub source: String,
    /// The download it was laid out from.
    pub root: PathBuf,
    /// Images and annotations per split.
    pub splits: BTreeMap<String, SplitCount>,
}

/// Counts of one split of a prepared data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCount {
    /// Images.
    pub images: usize,
    /// Box annotations (0 for VOC segmentation).
    pub annotations: usize,
}

/// What kind of folder a [`DatasetDir`] is.
#[derive(Debug, Clone)]
pub enum DatasetKind {
    /// Generated OV-Shapes (its `meta.json`).
    OvShapes(Box<SynthMeta>),
    /// A downloaded data set laid out by the pipeline (its `dataset.json`).
    Prepared(PreparedInfo),
}

/// A data-set folder: paths of its parts.
#[derive(Debug, Clone)]
pub struct DatasetDir {
    /// The folder.
    pub root: PathBuf,
    /// OV-Shapes or prepared.
    pub kind: DatasetKind,
}

/// The splits every data-set folder has.
const SPLITS: [&str; 2] = ["train", "val"];

impl DatasetDir {
    /// Opens `root`: reads `meta.json` (OV-Shapes) or `dataset.json` (prepared), and checks that
    /// `vocab.toml` and each split's `instances.json` and `images/` exist.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(missing(&root, "no such folder"));
        }
        let kind = if root.join("meta.json").is_file() {
            DatasetKind::OvShapes(Box::new(io::read_json(root.join("meta.json"))?))
        } else if root.join(PREPARED_FILE).is_file() {
            DatasetKind::Prepared(io::read_json(root.join(PREPARED_FILE))?)
        } else {
            return Err(missing(
                &root.join("meta.json"),
                format!(
                    "{} is not a data-set folder: it has neither meta.json (OV-Shapes, from \
                     `ovkd data synth`) nor {PREPARED_FILE} (COCO, LVIS or VOC laid out by the \
                     pipeline's data stage)",
                    root.display()
                ),
            ));
        };
        let dir = Self { root, kind };
        let vocab = dir.root.join("vocab.toml");
        if !vocab.is_file() {
            return Err(missing(
                &vocab,
                "every data-set folder holds its vocabulary",
            ));
        }
        for split in SPLITS {
            let json = dir.instances_path(split);
            if !json.is_file() {
                return Err(missing(&json, format!("the {split} split's annotations")));
            }
            let images = dir.images_dir(split);
            if !images.is_dir() {
                return Err(missing(&images, format!("the {split} split's images")));
            }
        }
        Ok(dir)
    }

    /// `DIR/vocab.toml`, loaded.
    pub fn vocabulary(&self) -> Result<Vocabulary> {
        Vocabulary::load(self.root.join("vocab.toml"))
    }

    /// `ov-shapes`, or the prepared data set's source (`coco`, `lvis`, `voc`).
    pub fn source(&self) -> &str {
        match &self.kind {
            DatasetKind::OvShapes(_) => "ov-shapes",
            DatasetKind::Prepared(p) => &p.source,
        }
    }

    /// The OV-Shapes view of this folder (its meta and captions), if it is one.
    pub fn ov_shapes(&self) -> Option<OvShapesDir> {
        match &self.kind {
            DatasetKind::OvShapes(meta) => Some(OvShapesDir {
                root: self.root.clone(),
                meta: (**meta).clone(),
            }),
            DatasetKind::Prepared(_) => None,
        }
    }

    /// `DIR/{split}`.
    pub fn split_dir(&self, split: &str) -> PathBuf {
        self.root.join(split)
    }

    /// `DIR/{split}/images`.
    pub fn images_dir(&self, split: &str) -> PathBuf {
        self.split_dir(split).join("images")
    }

    /// `DIR/{split}/semantic` (it may not exist; see [`Self::require_semantic`]).
    pub fn semantic_dir(&self, split: &str) -> PathBuf {
        self.split_dir(split).join("semantic")
    }

    /// `DIR/{split}/semantic`, or an error saying that this data set has no label maps.
    pub fn require_semantic(&self, split: &str) -> Result<PathBuf> {
        let dir = self.semantic_dir(split);
        if dir.is_dir() {
            return Ok(dir);
        }
        Err(missing(
            &dir,
            format!(
                "the {split} split has no semantic label maps ({} data is boxes only; the \
                 segmenter needs OV-Shapes or VOC)",
                self.source()
            ),
        ))
    }

    /// `DIR/{split}/instances.json` (train: base classes only).
    pub fn instances_path(&self, split: &str) -> PathBuf {
        self.split_dir(split).join("instances.json")
    }

    /// `DIR/train/instances_full.json` (every object, novel ones too), where the folder has it
    /// (OV-Shapes; a downloaded data set's novel train boxes are not kept).
    pub fn instances_full_path(&self) -> Option<PathBuf> {
        Some(self.split_dir("train").join("instances_full.json")).filter(|p| p.is_file())
    }
}

fn missing(path: &Path, why: impl Into<String>) -> Error {
    Error::Missing {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

impl From<OvShapesDir> for DatasetDir {
    fn from(d: OvShapesDir) -> Self {
        Self {
            root: d.root,
            kind: DatasetKind::OvShapes(Box::new(d.meta)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coco::CocoDataset;
    use crate::ov_shapes::{Preset, SynthConfig, generate};

    fn prepared(dir: &Path) {
        for split in SPLITS {
            std::fs::create_dir_all(dir.join(split).join("images")).unwrap();
            CocoDataset::default()
                .write(dir.join(split).join("instances.json"))
                .unwrap();
        }
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/vocab/voc-zs.toml"),
            dir.join("vocab.toml"),
        )
        .unwrap();
        let info = PreparedInfo {
            source: "voc".into(),
            root: "/data/VOCdevkit".into(),
            splits: BTreeMap::new(),
        };
        io::write_json_atomic(dir.join(PREPARED_FILE), &info, true).unwrap();
    }

    #[test]
    fn ov_shapes_and_prepared_folders_open_with_the_same_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = SynthConfig::preset(Preset::Quick);
        cfg.train_images = 2;
        cfg.val_images = 1;
        cfg.pretrain_images = 0;
        cfg.image_size = 48;
        generate(tmp.path().join("shapes"), &cfg).unwrap();
        let d = DatasetDir::open(tmp.path().join("shapes")).unwrap();
        assert_eq!(d.source(), "ov-shapes");
        assert!(d.ov_shapes().is_some());
        assert!(d.instances_full_path().is_some());
        assert!(d.require_semantic("train").unwrap().is_dir());
        assert_eq!(d.vocabulary().unwrap().len(), 12);

        let p = tmp.path().join("voc");
        prepared(&p);
        let d = DatasetDir::open(&p).unwrap();
        assert_eq!(d.source(), "voc");
        assert!(d.ov_shapes().is_none() && d.instances_full_path().is_none());
        assert_eq!(d.images_dir("val"), p.join("val/images"));
        assert_eq!(d.vocabulary().unwrap().novel().count(), 5);
        let err = d.require_semantic("val").unwrap_err().to_string();
        assert!(
            err.contains("val/semantic") && err.contains("voc data is boxes only"),
            "{err}"
        );
    }

    #[test]
    fn each_missing_part_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("d");
        let err = DatasetDir::open(&p).unwrap_err().to_string();
        assert!(err.contains("no such folder"), "{err}");
        std::fs::create_dir_all(&p).unwrap();
        let err = DatasetDir::open(&p).unwrap_err().to_string();
        assert!(
            err.contains("meta.json") && err.contains(PREPARED_FILE),
            "{err}"
        );
        prepared(&p);
        for (remove, named) in [
            ("val/images", "val/images"),
            ("train/instances.json", "train/instances.json"),
            ("vocab.toml", "vocab.toml"),
        ] {
            let target = p.join(remove);
            if target.is_dir() {
                std::fs::remove_dir_all(&target).unwrap();
            } else {
                std::fs::remove_file(&target).unwrap();
            }
            let err = DatasetDir::open(&p).unwrap_err().to_string();
            assert!(err.contains(named) && err.contains("missing"), "{err}");
        }
        std::fs::write(p.join(PREPARED_FILE), "{").unwrap();
        let err = DatasetDir::open(&p).unwrap_err().to_string();
        assert!(err.contains(PREPARED_FILE), "{err}");
    }
}
