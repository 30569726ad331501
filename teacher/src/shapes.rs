//! Reading OV-Shapes (the layout `ovkd data synth` writes) for the built-in teacher: the
//! image-caption pairs of a split's `captions.jsonl`. The vocabulary, COCO files and images
//! are read through ovkd-data.

use std::path::{Path, PathBuf};

pub use ovkd_data::coco::{CocoAnnotation, CocoDataset, CocoImage};
pub use ovkd_data::vocab::{VocabClass, Vocabulary};

use crate::error::TeacherError;

/// One object named by a caption record.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionObject {
    /// Its class name (`class`).
    pub class: Option<String>,
    /// Its colour word (`colour`), if any.
    pub colour: Option<String>,
    /// Its size word (`size`), if any.
    pub size: Option<String>,
}

/// One image-caption pair.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionPair {
    /// Image id.
    pub image_id: i64,
    /// The image file.
    pub path: PathBuf,
    /// The caption.
    pub caption: String,
    /// The objects the caption names.
    pub objects: Vec<CaptionObject>,
}

fn str_field(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(|x| x.as_str())
        .map(String::from)
        .filter(|s| !s.is_empty())
}

/// Reads `SPLIT/captions.jsonl` (`{"image_id", "file_name", "caption", "objects": [{"class",
/// "colour", "size"}]}` per line); images are `SPLIT/images/FILE_NAME`.
pub fn read_captions(split_dir: &Path) -> Result<Vec<CaptionPair>, TeacherError> {
    let path = split_dir.join("captions.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| TeacherError::io(&path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |field: &str| {
            TeacherError::format(
                &path,
                format!("line {}: field `{field}` missing or invalid", i + 1),
            )
        };
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| TeacherError::format(&path, format!("line {}: {e}", i + 1)))?;
        let image_id = v
            .get("image_id")
            .and_then(|x| x.as_i64())
            .ok_or_else(|| at("image_id"))?;
        let caption = str_field(&v, "caption").ok_or_else(|| at("caption"))?;
        let file = match str_field(&v, "file_name") {
            Some(f) => image_path(split_dir, &f),
            None => split_dir.join("images").join(format!("{image_id:06}.png")),
        };
        let objects = v
            .get("objects")
            .and_then(|o| o.as_array())
            .map(|a| {
                a.iter()
                    .map(|o| CaptionObject {
                        class: str_field(o, "class"),
                        colour: str_field(o, "colour"),
                        size: str_field(o, "size"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(CaptionPair {
            image_id,
            path: file,
            caption,
            objects,
        });
    }
    Ok(out)
}

/// Reads `DIR/vocab.toml`.
pub fn read_vocab(path: &Path) -> Result<Vocabulary, TeacherError> {
    Ok(Vocabulary::load(path)?)
}

/// Reads a COCO instances file.
pub fn read_coco(path: &Path) -> Result<CocoDataset, TeacherError> {
    Ok(CocoDataset::read(path)?)
}

/// Resolves a COCO `file_name` inside a split directory (`SPLIT/images/NAME` or `SPLIT/NAME`).
pub fn image_path(split_dir: &Path, file_name: &str) -> PathBuf {
    let a = split_dir.join("images").join(file_name);
    if a.exists() {
        a
    } else {
        split_dir.join(file_name)
    }
}

/// Loads an image file as RGB.
pub fn load_rgb(path: &Path) -> Result<image::RgbImage, TeacherError> {
    Ok(ovkd_data::loader::load_rgb(path)?)
}
