//! COCO instances files (with LVIS's extra fields) and COCO results files.
//!
//! The types mirror the JSON: `bbox` stays COCO's `[x, y, w, h]` (f64, as written) so that a file
//! read and written again is the same; code converts with [`CocoAnnotation::bbox_xyxy`] or
//! [`crate::boxes::Boxes::from_coco_xywh`]. Unknown fields of images and categories (COCO's
//! `coco_url`, `license`; LVIS's `synset`, `def`, ...) are kept in `extra` and written back.
//!
//! A file that does not parse is re-read loosely and checked by [`crate::validate`], so the error
//! names the record and the field (`annotation id 17 (#3), field `bbox``), not only a position.

use crate::boxes::{Xyxy, xywh_to_xyxy};
use crate::error::{Error, Result};
use crate::io;
use crate::mask::{Rle, RleError};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// A COCO (or LVIS) instances file: `{info, licenses, images, annotations, categories}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CocoDataset {
    /// Free-form `info` block, kept as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
    /// Free-form `licenses` block, kept as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licenses: Option<Value>,
    /// The images.
    pub images: Vec<CocoImage>,
    /// The annotations (absent in COCO's `image_info` test files, then empty).
    #[serde(default)]
    pub annotations: Vec<CocoAnnotation>,
    /// The categories.
    pub categories: Vec<CocoCategory>,
}

/// One image record.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CocoImage {
    /// Unique image id.
    pub id: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// File name relative to the image directory. LVIS v1 has none and gives `coco_url`
    /// instead; see [`CocoImage::file_name`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file_name: String,
    /// LVIS: categories verified absent from the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neg_category_ids: Option<Vec<u64>>,
    /// LVIS: categories present but not exhaustively annotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_exhaustive_category_ids: Option<Vec<u64>>,
    /// Any other fields, written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CocoImage {
    /// The file name: `file_name`, or the last segment of LVIS's `coco_url`.
    pub fn file_name(&self) -> Option<&str> {
        if !self.file_name.is_empty() {
            return Some(&self.file_name);
        }
        self.extra
            .get("coco_url")
            .and_then(Value::as_str)
            .and_then(|u| u.rsplit('/').next())
            .filter(|s| !s.is_empty())
    }
}

/// One annotation record.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CocoAnnotation {
    /// Unique annotation id.
    pub id: u64,
    /// The image it belongs to.
    pub image_id: u64,
    /// Its category.
    pub category_id: u64,
    /// COCO `[x, y, w, h]` in pixels.
    pub bbox: [f64; 4],
    /// Area in pixels (the mask's, when there is one).
    pub area: f64,
    /// 1 for a crowd region (LVIS omits it: 0).
    #[serde(default)]
    pub iscrowd: u8,
    /// The instance mask, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<Segmentation>,
}

impl CocoAnnotation {
    /// The box as `[x1, y1, x2, y2]`.
    pub fn bbox_xyxy(&self) -> Xyxy {
        xywh_to_xyxy(self.bbox)
    }

    /// True for a crowd region.
    pub fn is_crowd(&self) -> bool {
        self.iscrowd != 0
    }
}

/// LVIS category frequency: rare (1-10 training images), common (11-100), frequent (>100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Frequency {
    /// `"r"`: 1-10 training images; LVIS's novel classes.
    #[serde(rename = "r")]
    Rare,
    /// `"c"`: 11-100 training images.
    #[serde(rename = "c")]
    Common,
    /// `"f"`: more than 100 training images.
    #[serde(rename = "f")]
    Frequent,
}

/// One category record.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CocoCategory {
    /// Category id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// COCO supercategory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supercategory: Option<String>,
    /// LVIS frequency (`r`, `c`, `f`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency: Option<Frequency>,
    /// LVIS synonyms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synonyms: Option<Vec<String>>,
    /// Any other fields, written back unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An instance mask as COCO stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum Segmentation {
    /// One or more polygons `[x0, y0, x1, y1, ...]`.
    Polygons(Vec<Vec<f64>>),
    /// `{"size": [h, w], "counts": [...]}`: uncompressed run lengths.
    RleCounts {
        /// `[h, w]`.
        size: [u32; 2],
        /// Run lengths, column-major, starting with background.
        counts: Vec<u32>,
    },
    /// `{"size": [h, w], "counts": "..."}`: COCO's compressed string.
    RleString {
        /// `[h, w]`.
        size: [u32; 2],
        /// The compressed counts.
        counts: String,
    },
}

impl Segmentation {
    /// The compressed-RLE form of a mask (what the generator writes).
    pub fn from_rle(rle: &Rle) -> Self {
        Segmentation::RleString {
            size: [rle.height, rle.width],
            counts: rle.to_compressed_string(),
        }
    }

    /// Decodes to an [`Rle`] for an image of `height x width` (polygons are rasterised as
    /// pycocotools does; an RLE's own size must match).
    pub fn to_rle(&self, height: u32, width: u32) -> Result<Rle, SegmentationError> {
        match self {
            Segmentation::Polygons(p) => {
                if let Some((i, bad)) = p.iter().enumerate().find(|(_, p)| p.len() % 2 != 0) {
                    return Err(SegmentationError::OddPolygon {
                        index: i,
                        len: bad.len(),
                    });
                }
                Ok(Rle::from_polygons(p, height, width))
            }
            Segmentation::RleCounts { size, counts } => {
                check_size(*size, height, width)?;
                let rle = Rle {
                    height: size[0],
                    width: size[1],
                    counts: counts.clone(),
                };
                rle.check()?;
                Ok(rle)
            }
            Segmentation::RleString { size, counts } => {
                check_size(*size, height, width)?;
                Ok(Rle::from_compressed_string(counts, size[0], size[1])?)
            }
        }
    }
}

fn check_size(size: [u32; 2], height: u32, width: u32) -> Result<(), SegmentationError> {
    if size != [height, width] {
        return Err(SegmentationError::SizeMismatch {
            size,
            image: [height, width],
        });
    }
    Ok(())
}

/// Why a segmentation cannot be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SegmentationError {
    /// An RLE for a different image size.
    #[error("RLE size [{}, {}] (h, w) differs from the image's [{}, {}]", size[0], size[1], image[0], image[1])]
    SizeMismatch {
        /// The RLE's `[h, w]`.
        size: [u32; 2],
        /// The image's `[h, w]`.
        image: [u32; 2],
    },
    /// A polygon with an odd number of coordinates.
    #[error("polygon #{index} has an odd number of coordinates ({len})")]
    OddPolygon {
        /// Which polygon.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// Bad run lengths.
    #[error(transparent)]
    Rle(#[from] RleError),
}

impl Serialize for Segmentation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        match self {
            Segmentation::Polygons(p) => p.serialize(s),
            Segmentation::RleCounts { size, counts } => {
                let mut st = s.serialize_struct("Rle", 2)?;
                st.serialize_field("size", size)?;
                st.serialize_field("counts", counts)?;
                st.end()
            }
            Segmentation::RleString { size, counts } => {
                let mut st = s.serialize_struct("Rle", 2)?;
                st.serialize_field("size", size)?;
                st.serialize_field("counts", counts)?;
                st.end()
            }
        }
    }
}

enum Counts {
    List(Vec<u32>),
    Str(String),
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Counts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("RLE counts: a list of run lengths or a compressed string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Counts, E> {
                Ok(Counts::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Counts, E> {
                Ok(Counts::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Counts, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(c) = seq.next_element::<u32>()? {
                    out.push(c);
                }
                Ok(Counts::List(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Segmentation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Segmentation;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of polygons or an RLE object {size, counts}")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Segmentation, A::Error> {
                let mut polys = Vec::new();
                while let Some(p) = seq.next_element::<Vec<f64>>()? {
                    polys.push(p);
                }
                Ok(Segmentation::Polygons(polys))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Segmentation, A::Error> {
                let mut size: Option<[u32; 2]> = None;
                let mut counts: Option<Counts> = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "size" => size = Some(map.next_value()?),
                        "counts" => counts = Some(map.next_value()?),
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                let size = size.ok_or_else(|| de::Error::missing_field("size"))?;
                match counts.ok_or_else(|| de::Error::missing_field("counts"))? {
                    Counts::List(counts) => Ok(Segmentation::RleCounts { size, counts }),
                    Counts::Str(counts) => Ok(Segmentation::RleString { size, counts }),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// One detection in a COCO results file (a JSON list of these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoResult {
    /// The image.
    pub image_id: u64,
    /// The predicted category.
    pub category_id: u64,
    /// COCO `[x, y, w, h]`; absent in pure segmentation results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f64; 4]>,
    /// Confidence.
    pub score: f64,
    /// Predicted mask (segmentation results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<Segmentation>,
}

impl CocoDataset {
    /// Reads a COCO or LVIS instances file. Errors name the file, the record and the field.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = io::read_bytes(path)?;
        Self::from_slice(&bytes, path)
    }

    /// Parses instances JSON; `path` is only used in error messages.
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Self> {
        match serde_json::from_slice::<CocoDataset>(bytes) {
            Ok(d) => Ok(d),
            Err(e) => Err(explain_parse_error(bytes, path, &e, false)),
        }
    }

    /// Writes the file atomically (compact JSON).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        io::write_json_atomic(path, self, false)
    }

    /// Image id -> index into `images`.
    pub fn image_index(&self) -> HashMap<u64, usize> {
        self.images
            .iter()
            .enumerate()
            .map(|(i, im)| (im.id, i))
            .collect()
    }

    /// Category id -> index into `categories`.
    pub fn category_index(&self) -> HashMap<u64, usize> {
        self.categories
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id, i))
            .collect()
    }

    /// Image id -> indices into `annotations`, in file order.
    pub fn annotations_by_image(&self) -> HashMap<u64, Vec<usize>> {
        let mut m: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, a) in self.annotations.iter().enumerate() {
            m.entry(a.image_id).or_default().push(i);
        }
        m
    }

    /// The category with this id.
    pub fn category(&self, id: u64) -> Option<&CocoCategory> {
        self.categories.iter().find(|c| c.id == id)
    }
}

/// Reads a COCO results file (a JSON list of detections).
pub fn read_results(path: impl AsRef<Path>) -> Result<Vec<CocoResult>> {
    let path = path.as_ref();
    let bytes = io::read_bytes(path)?;
    serde_json::from_slice::<Vec<CocoResult>>(&bytes)
        .map_err(|e| explain_parse_error(&bytes, path, &e, true))
}

/// Writes a COCO results file atomically.
pub fn write_results(path: impl AsRef<Path>, results: &[CocoResult]) -> Result<()> {
    io::write_json_atomic(path, results, false)
}

/// A typed parse failed: find the record and field with the loose validator; fall back to the
/// parser's position.
fn explain_parse_error(bytes: &[u8], path: &Path, e: &serde_json::Error, results: bool) -> Error {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(syntax) => return io::json_error(path, &syntax),
    };
    let mut problems = if results {
        crate::validate::check_results_value(path, &value, None)
    } else {
        crate::validate::check_instances_value(path, &value, &Default::default())
    };
    problems.retain(|p| p.structural);
    match problems.len() {
        0 => io::json_error(path, e),
        1 => Error::invalid(problems.remove(0).problem),
        _ => Error::Problems(problems.into_iter().map(|p| p.problem).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LVIS_LIKE: &str = r#"{
      "info": {"year": 2020},
      "images": [
        {"id": 1, "width": 20, "height": 10, "coco_url": "http://x/val2017/000000000001.jpg",
         "neg_category_ids": [3], "not_exhaustive_category_ids": [1]},
        {"id": 2, "width": 8, "height": 6, "file_name": "b.jpg", "license": 4}
      ],
      "annotations": [
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1.5, 2, 3, 4], "area": 12,
         "segmentation": [[1.5, 2, 4.5, 2, 4.5, 6]]},
        {"id": 6, "image_id": 2, "category_id": 3, "bbox": [0, 0, 2, 3], "area": 5,
         "iscrowd": 1, "segmentation": {"size": [6, 8], "counts": [0, 3, 3, 2, 40]}},
        {"id": 7, "image_id": 2, "category_id": 3, "bbox": [0, 0, 1, 1], "area": 1,
         "segmentation": {"size": [6, 8], "counts": "=2c0OD0N"}}
      ],
      "categories": [
        {"id": 1, "name": "aerosol_can", "frequency": "c", "synonyms": ["spray can"],
         "synset": "can.n.01", "image_count": 64},
        {"id": 3, "name": "zebra", "supercategory": "animal", "frequency": "r"}
      ]
    }"#;

    #[test]
    fn reads_lvis_fields_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lvis.json");
        std::fs::write(&p, LVIS_LIKE).unwrap();
        let d = CocoDataset::read(&p).unwrap();
        assert_eq!(d.images[0].file_name(), Some("000000000001.jpg"));
        assert_eq!(d.images[0].neg_category_ids, Some(vec![3]));
        assert_eq!(d.images[0].not_exhaustive_category_ids, Some(vec![1]));
        assert_eq!(d.categories[1].frequency, Some(Frequency::Rare));
        assert_eq!(d.categories[0].extra["synset"], "can.n.01");
        assert_eq!(d.annotations[0].iscrowd, 0);
        assert!(d.annotations[1].is_crowd());
        assert!(matches!(
            d.annotations[2].segmentation,
            Some(Segmentation::RleString { .. })
        ));
        assert_eq!(d.annotations[0].bbox_xyxy(), [1.5, 2.0, 4.5, 6.0]);

        let q = dir.path().join("again.json");
        d.write(&q).unwrap();
        let again = CocoDataset::read(&q).unwrap();
        assert_eq!(again, d);
        // And the written file is stable byte for byte.
        let r = dir.path().join("third.json");
        again.write(&r).unwrap();
        assert_eq!(std::fs::read(&q).unwrap(), std::fs::read(&r).unwrap());
    }

    #[test]
    fn segmentations_decode() {
        let d: CocoDataset = serde_json::from_str(LVIS_LIKE).unwrap();
        let rle = d.annotations[1]
            .segmentation
            .as_ref()
            .unwrap()
            .to_rle(6, 8)
            .unwrap();
        assert_eq!(rle.area(), 5);
        let err = d.annotations[1]
            .segmentation
            .as_ref()
            .unwrap()
            .to_rle(6, 9)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "RLE size [6, 8] (h, w) differs from the image's [6, 9]"
        );
        let poly = d.annotations[0].segmentation.as_ref().unwrap();
        let m = poly.to_rle(10, 20).unwrap().decode().unwrap();
        assert!(m.area() > 0);
        // Compressed string -> RLE -> compressed string.
        let s = d.annotations[2].segmentation.as_ref().unwrap();
        let rle = s.to_rle(6, 8).unwrap();
        assert_eq!(rle.area(), 4); // pycocotools: area 4
        assert_eq!(&Segmentation::from_rle(&rle), s);
    }

    #[test]
    fn reference_fixture_round_trips() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/coco_eval");
        let dir = tempfile::tempdir().unwrap();
        for case in ["small", "crowded", "many_cats"] {
            let gt = CocoDataset::read(root.join(case).join("gt.json")).unwrap();
            assert!(!gt.annotations.is_empty());
            let p = dir.path().join(format!("{case}.json"));
            gt.write(&p).unwrap();
            assert_eq!(CocoDataset::read(&p).unwrap(), gt, "{case}");
            let dets = read_results(root.join(case).join("dets.json")).unwrap();
            let q = dir.path().join(format!("{case}-dets.json"));
            write_results(&q, &dets).unwrap();
            assert_eq!(read_results(&q).unwrap(), dets, "{case}");
            // The values survive exactly, not only approximately.
            let orig: Value =
                serde_json::from_slice(&std::fs::read(root.join(case).join("dets.json")).unwrap())
                    .unwrap();
            let ours: Value = serde_json::from_slice(&std::fs::read(&q).unwrap()).unwrap();
            assert_eq!(orig, ours, "{case}");
        }
    }

    #[test]
    fn parse_errors_name_record_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.json");
        std::fs::write(
            &p,
            r#"{"images": [{"id": 1, "width": 4, "height": 4, "file_name": "a.png"}],
                "annotations": [{"id": 9, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "area": 1}],
                "categories": [{"id": 1, "name": "a"}]}"#,
        )
        .unwrap();
        let err = CocoDataset::read(&p).unwrap_err().to_string();
        assert!(
            err.contains("bad.json: annotation id 9 (#0), field `bbox`: expected 4 numbers"),
            "{err}"
        );
        std::fs::write(&p, r#"{"images": [{"id": 1, "width": 4"#).unwrap();
        let err = CocoDataset::read(&p).unwrap_err().to_string();
        assert!(err.contains("bad.json:1:"), "{err}");
        assert!(err.contains("truncated"), "{err}");
    }
}
