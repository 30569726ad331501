//! COCO (and LVIS) ground truth: the images, categories and box annotations the evaluators
//! need, read straight from the annotation JSON. Segmentations and other fields are skipped
//! without being decoded.

use crate::error::{EvalError, Result};
use crate::json::{JsonError, Parser, as_text};
use std::path::Path;

/// An image of the ground truth, with LVIS's federated-annotation lists when present.
#[derive(Debug, Clone, PartialEq)]
pub struct GtImage {
    /// The image id.
    pub id: i64,
    /// LVIS: categories verified absent from the image.
    pub neg_category_ids: Option<Vec<i64>>,
    /// LVIS: categories present but not exhaustively annotated in the image.
    pub not_exhaustive_category_ids: Option<Vec<i64>>,
}

/// LVIS's category frequency bins (by the number of training images with the category).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Frequency {
    /// `r`: fewer than 10 images.
    Rare,
    /// `c`: 10 to 99 images.
    Common,
    /// `f`: 100 images or more.
    Frequent,
}

impl Frequency {
    /// Parses LVIS's one-letter code.
    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "r" => Some(Frequency::Rare),
            "c" => Some(Frequency::Common),
            "f" => Some(Frequency::Frequent),
            _ => None,
        }
    }

    /// LVIS's one-letter code.
    pub fn code(self) -> &'static str {
        match self {
            Frequency::Rare => "r",
            Frequency::Common => "c",
            Frequency::Frequent => "f",
        }
    }
}

/// A category of the ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct GtCategory {
    /// The category id.
    pub id: i64,
    /// Its name (empty when the file gives none).
    pub name: String,
    /// LVIS: its frequency bin.
    pub frequency: Option<Frequency>,
}

/// A box annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct GtAnnotation {
    /// The annotation id (pycocotools stores it as the match of a detection; 0 reads as "no
    /// match", a quirk reproduced here).
    pub id: i64,
    /// The image it belongs to.
    pub image_id: i64,
    /// Its category.
    pub category_id: i64,
    /// `[x, y, w, h]` as in the file. The evaluator keeps COCO's form because pycocotools
    /// computes IoU from it; converting to corners and back would change the last bit.
    pub bbox: [f64; 4],
    /// The `area` field (the segmentation's area in COCO), which decides the area range.
    pub area: f64,
    /// COCO's crowd flag: ignored by matching, IoU against it uses the detection's area.
    pub iscrowd: bool,
    /// LVIS's optional `ignore` flag.
    pub ignore: bool,
}

/// The parts of a COCO/LVIS annotation file that box evaluation uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroundTruth {
    /// `images`, in file order.
    pub images: Vec<GtImage>,
    /// `categories`, in file order.
    pub categories: Vec<GtCategory>,
    /// `annotations`, in file order.
    pub annotations: Vec<GtAnnotation>,
}

impl GroundTruth {
    /// Reads an annotation file.
    pub fn from_path(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&bytes, &path.display().to_string())
    }

    /// Parses an annotation document; `source` names it in errors.
    pub fn from_json(bytes: &[u8], source: &str) -> Result<Self> {
        let top = |e: JsonError, field: Option<&str>| json_err(source, "document", field, e);
        let mut p = Parser::new(as_text(bytes).map_err(|e| top(e, None))?);
        let mut gt = GroundTruth::default();
        p.begin_object().map_err(|e| top(e, None))?;
        let mut first = true;
        while let Some(key) = p.next_key(&mut first).map_err(|e| top(e, None))? {
            match key.as_ref() {
                "images" => read_list(&mut p, source, "images", |p, rec| {
                    gt.images.push(read_image(p, source, rec)?);
                    Ok(())
                })?,
                "categories" => read_list(&mut p, source, "categories", |p, rec| {
                    gt.categories.push(read_category(p, source, rec)?);
                    Ok(())
                })?,
                "annotations" => read_list(&mut p, source, "annotations", |p, rec| {
                    gt.annotations.push(read_annotation(p, source, rec)?);
                    Ok(())
                })?,
                other => {
                    let other = other.to_string();
                    p.skip_value().map_err(|e| top(e, Some(&other)))?
                }
            }
        }
        p.end().map_err(|e| top(e, None))?;
        Ok(gt)
    }

    /// Whether the file carries LVIS's federated fields (`neg_category_ids` on images or
    /// `frequency` on categories), which switch `ovkd eval det` to LVIS rules.
    pub fn has_lvis_fields(&self) -> bool {
        self.images
            .iter()
            .any(|i| i.neg_category_ids.is_some() || i.not_exhaustive_category_ids.is_some())
            || self.categories.iter().any(|c| c.frequency.is_some())
    }

    /// The name of a category id, if known.
    pub fn category_name(&self, id: i64) -> Option<&str> {
        self.categories
            .iter()
            .rev()
            .find(|c| c.id == id)
            .map(|c| c.name.as_str())
    }
}

pub(crate) fn json_err(file: &str, record: &str, field: Option<&str>, e: JsonError) -> EvalError {
    EvalError::Json {
        file: file.to_string(),
        record: record.to_string(),
        field: field.map(str::to_string),
        message: e.message,
        offset: e.offset,
    }
}

fn read_list<'a>(
    p: &mut Parser<'a>,
    source: &str,
    name: &str,
    mut each: impl FnMut(&mut Parser<'a>, &str) -> Result<()>,
) -> Result<()> {
    p.begin_array()
        .map_err(|e| json_err(source, name, None, e))?;
    let mut first = true;
    let mut i = 0usize;
    loop {
        let more = p
            .next_element(&mut first)
            .map_err(|e| json_err(source, &format!("{name}[{i}]"), None, e))?;
        if !more {
            return Ok(());
        }
        each(p, &format!("{name}[{i}]"))?;
        i += 1;
    }
}

/// Reads one object, calling `field` with each key; errors name `rec` and the key.
fn read_object<'a>(
    p: &mut Parser<'a>,
    source: &str,
    rec: &str,
    mut field: impl FnMut(&mut Parser<'a>, &str) -> std::result::Result<(), JsonError>,
) -> Result<()> {
    p.begin_object()
        .map_err(|e| json_err(source, rec, None, e))?;
    let mut first = true;
    while let Some(key) = p
        .next_key(&mut first)
        .map_err(|e| json_err(source, rec, None, e))?
    {
        field(p, key.as_ref()).map_err(|e| json_err(source, rec, Some(key.as_ref()), e))?;
    }
    Ok(())
}

fn missing(source: &str, rec: &str, field: &str, offset: usize) -> EvalError {
    EvalError::Json {
        file: source.to_string(),
        record: rec.to_string(),
        field: Some(field.to_string()),
        message: "missing".to_string(),
        offset,
    }
}

fn read_image(p: &mut Parser, source: &str, rec: &str) -> Result<GtImage> {
    let at = p.offset();
    let (mut id, mut neg, mut nel) = (None, None, None);
    read_object(p, source, rec, |p, key| {
        match key {
            "id" => id = Some(p.int()?),
            "neg_category_ids" => neg = Some(p.int_array()?),
            "not_exhaustive_category_ids" => nel = Some(p.int_array()?),
            _ => p.skip_value()?,
        }
        Ok(())
    })?;
    Ok(GtImage {
        id: id.ok_or_else(|| missing(source, rec, "id", at))?,
        neg_category_ids: neg,
        not_exhaustive_category_ids: nel,
    })
}

fn read_category(p: &mut Parser, source: &str, rec: &str) -> Result<GtCategory> {
    let at = p.offset();
    let (mut id, mut name, mut freq) = (None, String::new(), None);
    read_object(p, source, rec, |p, key| {
        match key {
            "id" => id = Some(p.int()?),
            "name" => name = p.string()?.into_owned(),
            "frequency" => {
                let at = p.offset();
                let code = p.string()?;
                freq = Some(Frequency::from_code(&code).ok_or_else(|| JsonError {
                    offset: at,
                    message: format!("expected one of `r`, `c`, `f`, found `{code}`"),
                })?);
            }
            _ => p.skip_value()?,
        }
        Ok(())
    })?;
    Ok(GtCategory {
        id: id.ok_or_else(|| missing(source, rec, "id", at))?,
        name,
        frequency: freq,
    })
}

fn read_annotation(p: &mut Parser, source: &str, rec: &str) -> Result<GtAnnotation> {
    let at = p.offset();
    let (mut id, mut image_id, mut category_id, mut bbox, mut area) =
        (None, None, None, None, None);
    let (mut iscrowd, mut ignore) = (false, false);
    read_object(p, source, rec, |p, key| {
        match key {
            "id" => id = Some(p.int()?),
            "image_id" => image_id = Some(p.int()?),
            "category_id" => category_id = Some(p.int()?),
            "bbox" => bbox = Some(p.f64_array::<4>()?),
            "area" => area = Some(p.f64()?),
            "iscrowd" => iscrowd = p.truthy()?,
            "ignore" => ignore = p.truthy()?,
            _ => p.skip_value()?,
        }
        Ok(())
    })?;
    let rec_named = match id {
        Some(id) => format!("{rec} (id {id})"),
        None => rec.to_string(),
    };
    Ok(GtAnnotation {
        id: id.ok_or_else(|| missing(source, &rec_named, "id", at))?,
        image_id: image_id.ok_or_else(|| missing(source, &rec_named, "image_id", at))?,
        category_id: category_id.ok_or_else(|| missing(source, &rec_named, "category_id", at))?,
        bbox: bbox.ok_or_else(|| missing(source, &rec_named, "bbox", at))?,
        area: area.ok_or_else(|| missing(source, &rec_named, "area", at))?,
        iscrowd,
        ignore,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_coco_and_lvis_fields() {
        let doc = br#"{"info": {"x": 1}, "images": [{"id": 3, "width": 4, "neg_category_ids": [2],
            "not_exhaustive_category_ids": []}, {"id": 1}],
            "annotations": [{"id": 7, "image_id": 3, "category_id": 2, "bbox": [1, 2, 3.5, 4],
              "area": 10.5, "iscrowd": 1, "segmentation": [[1, 2, 3, 4]]}],
            "categories": [{"id": 2, "name": "cat\u00e9", "frequency": "r", "synset": "x"}]}"#;
        let gt = GroundTruth::from_json(doc, "gt.json").unwrap();
        assert_eq!(gt.images.len(), 2);
        assert_eq!(gt.images[0].neg_category_ids, Some(vec![2]));
        assert_eq!(gt.images[1].neg_category_ids, None);
        assert_eq!(gt.annotations[0].bbox, [1.0, 2.0, 3.5, 4.0]);
        assert!(gt.annotations[0].iscrowd);
        assert!(!gt.annotations[0].ignore);
        assert_eq!(gt.categories[0].name, "caté");
        assert_eq!(gt.categories[0].frequency, Some(Frequency::Rare));
        assert!(gt.has_lvis_fields());
    }

    #[test]
    fn errors_name_record_and_field() {
        let doc = br#"{"images": [{"id": 1}], "categories": [{"id": 1}],
            "annotations": [{"id": 4, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1],
              "area": 1}, {"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}]}"#;
        let e = GroundTruth::from_json(doc, "gt.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("gt.json: annotations[1]: field `bbox`: expected 4 numbers, found 3"),
            "{e}"
        );
        let doc = br#"{"annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]}"#;
        let e = GroundTruth::from_json(doc, "gt.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("gt.json: annotations[0] (id 5): field `area`: missing"),
            "{e}"
        );
        let doc = br#"{"images": [{"id": "a"}]}"#;
        let e = GroundTruth::from_json(doc, "gt.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("gt.json: images[0]: field `id`: expected a number"),
            "{e}"
        );
    }
}
