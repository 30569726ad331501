//! Reading OV-Shapes (the layout `ovkd data synth` writes) for the built-in teacher: the
//! vocabulary with its base/novel split, the `pretrain` image-caption pairs, and the COCO
//! annotations of a split.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::TeacherError;

/// One class of `vocab.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClassEntry {
    /// Category id (1..K).
    pub id: i64,
    /// Name used in prompts.
    pub name: String,
    /// Other names.
    #[serde(default)]
    pub synonyms: Vec<String>,
    /// `base` or `novel`.
    #[serde(default)]
    pub split: String,
}

#[derive(Debug, Deserialize)]
struct VocabFile {
    #[serde(rename = "class")]
    classes: Vec<ClassEntry>,
}

/// Reads `DIR/vocab.toml`.
pub fn read_vocab(path: &Path) -> Result<Vec<ClassEntry>, TeacherError> {
    let text = std::fs::read_to_string(path).map_err(|e| TeacherError::io(path, e))?;
    let v: VocabFile =
        toml::from_str(&text).map_err(|e| TeacherError::format(path, e.to_string()))?;
    if v.classes.is_empty() {
        return Err(TeacherError::format(path, "no [[class]] entries"));
    }
    Ok(v.classes)
}

/// One object named by a caption record.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionObject {
    /// The phrase naming it (e.g. "red star"), if the record has one.
    pub phrase: Option<String>,
    /// Its class name, if the record has one.
    pub class: Option<String>,
    /// Its box [x1, y1, x2, y2], if the record has one.
    pub bbox: Option<[f32; 4]>,
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

fn str_field(v: &serde_json::Value, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| v.get(*k).and_then(|x| x.as_str()).map(String::from))
}

fn parse_object(v: &serde_json::Value) -> CaptionObject {
    // COCO [x, y, w, h] under `bbox`, or [x1, y1, x2, y2] under `box`.
    let arr = |k: &str| -> Option<[f32; 4]> {
        let a = v.get(k)?.as_array()?;
        if a.len() != 4 {
            return None;
        }
        let f: Vec<f32> = a
            .iter()
            .filter_map(|x| x.as_f64().map(|x| x as f32))
            .collect();
        (f.len() == 4).then(|| [f[0], f[1], f[2], f[3]])
    };
    let bbox = arr("bbox")
        .map(|b| [b[0], b[1], b[0] + b[2], b[1] + b[3]])
        .or_else(|| arr("box"));
    CaptionObject {
        phrase: str_field(v, &["phrase", "description", "text"]),
        class: str_field(v, &["class", "name", "shape", "category"]),
        bbox,
    }
}

/// Reads `SPLIT/captions.jsonl` and finds each record's image in `SPLIT/images/` (by its
/// `file_name`, else the file whose name's digits are the image id).
pub fn read_captions(split_dir: &Path) -> Result<Vec<CaptionPair>, TeacherError> {
    let path = split_dir.join("captions.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| TeacherError::io(&path, e))?;
    let images_dir = split_dir.join("images");
    let mut by_id: HashMap<i64, PathBuf> = HashMap::new();
    if let Ok(rd) = std::fs::read_dir(&images_dir) {
        for e in rd.flatten() {
            let p = e.path();
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let digits: String = stem.chars().filter(|c| c.is_ascii_digit()).collect();
            if let Ok(id) = digits.parse::<i64>() {
                by_id.insert(id, p);
            }
        }
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| TeacherError::format(&path, format!("line {}: {e}", i + 1)))?;
        let image_id = v.get("image_id").and_then(|x| x.as_i64()).ok_or_else(|| {
            TeacherError::format(
                &path,
                format!("line {}: field `image_id` missing or not an integer", i + 1),
            )
        })?;
        let caption = str_field(&v, &["caption"]).ok_or_else(|| {
            TeacherError::format(&path, format!("line {}: field `caption` missing", i + 1))
        })?;
        let file = match str_field(&v, &["file_name", "image"]) {
            Some(f) => images_dir.join(Path::new(&f).file_name().unwrap_or_default()),
            None => by_id.get(&image_id).cloned().ok_or_else(|| {
                TeacherError::format(
                    &path,
                    format!(
                        "line {}: no image for image_id {image_id} in {}",
                        i + 1,
                        images_dir.display()
                    ),
                )
            })?,
        };
        let objects = v
            .get("objects")
            .and_then(|o| o.as_array())
            .map(|a| a.iter().map(parse_object).collect())
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

/// A COCO image record.
#[derive(Debug, Clone, Deserialize)]
pub struct CocoImage {
    /// Id.
    pub id: i64,
    /// File name, relative to `SPLIT/images/`.
    pub file_name: String,
}

/// A COCO annotation record (box in COCO's [x, y, w, h]).
#[derive(Debug, Clone, Deserialize)]
pub struct CocoAnnotation {
    /// Image id.
    pub image_id: i64,
    /// [x, y, w, h].
    pub bbox: [f32; 4],
    /// Category id.
    pub category_id: i64,
    /// Crowd flag.
    #[serde(default)]
    pub iscrowd: u8,
}

/// The parts of a COCO file the teacher uses.
#[derive(Debug, Clone, Deserialize)]
pub struct CocoFile {
    /// Images.
    pub images: Vec<CocoImage>,
    /// Annotations.
    #[serde(default)]
    pub annotations: Vec<CocoAnnotation>,
}

/// Reads a COCO instances file.
pub fn read_coco(path: &Path) -> Result<CocoFile, TeacherError> {
    let text = std::fs::read_to_string(path).map_err(|e| TeacherError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| TeacherError::format(path, e.to_string()))
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
    image::open(path)
        .map(|i| i.to_rgb8())
        .map_err(|e| TeacherError::format(path, format!("cannot read image: {e}")))
}
