//! Detection results in COCO's results format (`[{"image_id", "category_id", "bbox", "score"},
//! ...]`), read with a streaming parser, and checked against the ground truth.

use crate::error::{EvalError, Result};
use crate::ground_truth::json_err;
use crate::json::{Parser, as_text};
use rayon::prelude::*;
use std::path::Path;

/// One detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// The image it was made on.
    pub image_id: i64,
    /// The category it claims.
    pub category_id: i64,
    /// `[x, y, w, h]` as in COCO's results format. Kept in this form because pycocotools
    /// computes IoU and area from it (`x + w`, `w * h`); use [`Detection::from_xyxy`] to build
    /// one from corners.
    pub bbox: [f64; 4],
    /// Confidence; higher ranks first.
    pub score: f64,
}

impl Detection {
    /// A detection from a corner box `[x1, y1, x2, y2]` in image pixels (converted to COCO's
    /// `[x1, y1, x2 - x1, y2 - y1]`, as a results file would hold it).
    pub fn from_xyxy(image_id: i64, category_id: i64, xyxy: [f64; 4], score: f64) -> Self {
        Detection {
            image_id,
            category_id,
            bbox: [xyxy[0], xyxy[1], xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]],
            score,
        }
    }

    /// The box as corners `[x1, y1, x2, y2]`.
    pub fn xyxy(&self) -> [f64; 4] {
        let [x, y, w, h] = self.bbox;
        [x, y, x + w, y + h]
    }

    /// `w * h`, the area pycocotools gives a box result.
    pub fn area(&self) -> f64 {
        self.bbox[2] * self.bbox[3]
    }
}

/// Reads a results file.
pub fn load_results(path: &Path) -> Result<Vec<Detection>> {
    let bytes = std::fs::read(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_results(&bytes, &path.display().to_string())
}

/// Parses a results document; `source` names it in errors. Missing fields are errors naming the
/// record index; values are not checked here (see [`validate_detections`]).
///
/// Large documents are cut at record boundaries (found by one structural pass) and the pieces
/// parsed in parallel; if anything is wrong the whole document is parsed again in order, so
/// that the error reported is the first one, exactly as a sequential parse finds it.
pub fn parse_results(bytes: &[u8], source: &str) -> Result<Vec<Detection>> {
    let text = as_text(bytes).map_err(|e| json_err(source, "document", None, e))?;
    const MIN_PARALLEL: usize = 4 << 20;
    let threads = rayon::current_num_threads();
    if bytes.len() >= MIN_PARALLEL
        && threads > 1
        && let Some(chunks) = record_chunks(bytes, threads * 4)
    {
        let parts: Option<Vec<Vec<Detection>>> = chunks
            .par_iter()
            .map(|c| parse_chunk(text, c).ok())
            .collect();
        if let Some(parts) = parts {
            let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
            for p in parts {
                out.extend(p);
            }
            return Ok(out);
        }
    }
    parse_sequential(text, source)
}

/// A run of consecutive records: where the first starts, its index, how many there are.
struct Chunk {
    offset: usize,
    first_index: usize,
    count: usize,
    /// Whether the array's closing `]` and the end of the document follow the last record.
    last: bool,
}

/// Finds record starts of a top-level array by tracking nesting and strings, and groups the
/// records into about `n` runs of similar byte size. `None` if the structure looks wrong (the
/// sequential parser then reports the error).
fn record_chunks(bytes: &[u8], n: usize) -> Option<Vec<Chunk>> {
    let mut i = 0;
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    if bytes.get(i) != Some(&b'[') {
        return None;
    }
    i += 1;
    let target = bytes.len() / n.max(1) + 1;
    let mut chunks: Vec<Chunk> = Vec::with_capacity(n + 1);
    let mut depth = 1usize;
    let mut index = 0usize;
    let mut expect_value = true;
    while i < bytes.len() {
        let (c, start) = (bytes[i], i);
        match c {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => expect_value = true,
            _ => {}
        }
        if depth >= 1 && expect_value && !c.is_ascii_whitespace() && c != b',' {
            // `c` starts a record (at depth 1 before any bracket it opened).
            expect_value = false;
            match chunks.last_mut() {
                Some(ch) if start - ch.offset < target => ch.count += 1,
                _ => chunks.push(Chunk {
                    offset: start,
                    first_index: index,
                    count: 1,
                    last: false,
                }),
            }
            index += 1;
        }
        i += 1;
    }
    if depth != 0 || chunks.is_empty() {
        return None;
    }
    if let Some(ch) = chunks.last_mut() {
        ch.last = true;
    }
    Some(chunks)
}

fn parse_chunk(text: &str, chunk: &Chunk) -> std::result::Result<Vec<Detection>, ()> {
    let mut p = Parser::new(text);
    p.seek(chunk.offset);
    let mut out = Vec::with_capacity(chunk.count);
    for j in 0..chunk.count {
        out.push(parse_record(&mut p, "", chunk.first_index + j).map_err(|_| ())?);
        if j + 1 < chunk.count || !chunk.last {
            p.expect(b',').map_err(|_| ())?;
        }
    }
    if chunk.last {
        p.expect(b']').map_err(|_| ())?;
        p.end().map_err(|_| ())?;
    }
    Ok(out)
}

fn parse_sequential(text: &str, source: &str) -> Result<Vec<Detection>> {
    let mut p = Parser::new(text);
    p.begin_array()
        .map_err(|e| json_err(source, "document", None, e))?;
    // A record is about 100 bytes; reserving avoids regrowing a large vector.
    let mut out = Vec::with_capacity(text.len() / 110);
    let mut first = true;
    let mut index = 0usize;
    loop {
        let more = p
            .next_element(&mut first)
            .map_err(|e| json_err(source, &record_name(index), None, e))?;
        if !more {
            break;
        }
        out.push(parse_record(&mut p, source, index)?);
        index += 1;
    }
    p.end().map_err(|e| json_err(source, "document", None, e))?;
    Ok(out)
}

fn record_name(i: usize) -> String {
    format!("results record {i}")
}

/// Reads one `{"image_id", "category_id", "bbox", "score", ...}` object.
#[inline]
fn parse_record(p: &mut Parser, source: &str, index: usize) -> Result<Detection> {
    let at = p.offset();
    p.begin_object()
        .map_err(|e| json_err(source, &record_name(index), None, e))?;
    let (mut image_id, mut category_id, mut bbox, mut score) = (None, None, None, None);
    let mut first_key = true;
    loop {
        let key = p
            .next_key(&mut first_key)
            .map_err(|e| json_err(source, &record_name(index), None, e))?;
        let Some(key) = key else { break };
        let r = match key.as_ref() {
            "image_id" => p.int().map(|v| image_id = Some(v)),
            "category_id" => p.int().map(|v| category_id = Some(v)),
            "bbox" => p.f64_array::<4>().map(|v| bbox = Some(v)),
            "score" => p.f64().map(|v| score = Some(v)),
            _ => p.skip_value(),
        };
        r.map_err(|e| json_err(source, &record_name(index), Some(key.as_ref()), e))?;
    }
    let missing = |field: &str| EvalError::Json {
        file: source.to_string(),
        record: record_name(index),
        field: Some(field.to_string()),
        message: "missing".to_string(),
        offset: at,
    };
    Ok(Detection {
        image_id: image_id.ok_or_else(|| missing("image_id"))?,
        category_id: category_id.ok_or_else(|| missing("category_id"))?,
        bbox: bbox.ok_or_else(|| missing("bbox"))?,
        score: score.ok_or_else(|| missing("score"))?,
    })
}

/// Checks each detection's values: a NaN score, a box coordinate that is not finite, or a
/// negative width or height is an error naming the record index and field. (Image and
/// category ids are checked by the evaluators, which know the ground truth.)
pub fn validate_detections(dets: &[Detection]) -> Result<()> {
    for (index, d) in dets.iter().enumerate() {
        if d.score.is_nan() {
            return Err(EvalError::InvalidDetection {
                index,
                field: "score",
                message: "is NaN".into(),
            });
        }
        for (k, &v) in d.bbox.iter().enumerate() {
            if !v.is_finite() {
                return Err(EvalError::InvalidDetection {
                    index,
                    field: "bbox",
                    message: format!("bbox[{k}] is {v}, not a finite number"),
                });
            }
        }
        if d.bbox[2] < 0.0 || d.bbox[3] < 0.0 {
            return Err(EvalError::InvalidDetection {
                index,
                field: "bbox",
                message: format!(
                    "negative size (w {}, h {}) in [x, y, w, h] = {:?}",
                    d.bbox[2], d.bbox[3], d.bbox
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_and_ignores_extra_fields() {
        let doc = br#"[{"image_id": 3, "category_id": 7, "bbox": [1.5, 2, 3, 4], "score": 0.5,
            "segmentation": {"counts": "ab]c", "size": [2, 2]}},
            {"score": 1, "bbox": [0, 0, 0, 0], "category_id": 1, "image_id": 4, "id": 99}]"#;
        let d = parse_results(doc, "r.json").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].bbox, [1.5, 2.0, 3.0, 4.0]);
        assert_eq!(d[1].score, 1.0);
        assert_eq!(d[1].image_id, 4);
        assert_eq!(parse_results(b" [ ] ", "r.json").unwrap(), vec![]);
    }

    #[test]
    fn malformed_records_are_named() {
        let doc = br#"[{"image_id": 3, "category_id": 7, "bbox": [1, 2, 3, 4], "score": 0.5},
            {"image_id": 3, "category_id": 7, "bbox": [1, 2, 3, 4]}]"#;
        let e = parse_results(doc, "r.json").unwrap_err().to_string();
        assert!(
            e.starts_with("r.json: results record 1: field `score`: missing"),
            "{e}"
        );
        let doc = br#"[{"image_id": 3.5, "category_id": 7, "bbox": [1, 2, 3, 4], "score": 0.5}]"#;
        let e = parse_results(doc, "r.json").unwrap_err().to_string();
        assert!(
            e.starts_with("r.json: results record 0: field `image_id`: expected an integer"),
            "{e}"
        );
        let doc = br#"[{"image_id": 3, "category_id": 7, "bbox": [1, 2, 3, 4], "score": NaN},
            {"image_id": 3, "category_id": 7, "bbox": [1, 2, -3, 4], "score": 0.1}]"#;
        let d = parse_results(doc, "r.json").unwrap();
        let e = validate_detections(&d).unwrap_err().to_string();
        assert_eq!(e, "results record 0: field `score`: is NaN");
        let e = validate_detections(&d[1..]).unwrap_err().to_string();
        assert!(
            e.starts_with("results record 0: field `bbox`: negative size"),
            "{e}"
        );
    }

    #[test]
    fn parallel_chunks_parse_like_the_sequential_parser() {
        // Records with strings holding brackets and commas, nested values, odd spacing.
        let mut doc = String::from(" [\n");
        for i in 0..2000 {
            if i > 0 {
                doc.push_str(if i % 3 == 0 { " ,\n" } else { "," });
            }
            doc.push_str(&format!(
                r#"{{"image_id": {i}, "note": "a}},{{\"b[", "x": [{{"y": [1, {{}}]}}],
                   "category_id": {}, "bbox": [{i}.5, 1e-3, 2, 3], "score": 0.{i}}}"#,
                i % 7
            ));
        }
        doc.push_str("\n] ");
        let chunks = record_chunks(doc.as_bytes(), 16).unwrap();
        assert!(chunks.len() > 8);
        assert_eq!(chunks.iter().map(|c| c.count).sum::<usize>(), 2000);
        let mut par = Vec::new();
        for c in &chunks {
            par.extend(parse_chunk(&doc, c).unwrap());
        }
        let seq = parse_sequential(&doc, "d").unwrap();
        assert_eq!(par, seq);
        assert_eq!(seq[1999].bbox[0], 1999.5);
        // A malformed record in a large document is reported as the sequential parser finds it.
        let bad = doc.replacen("\"score\": 0.1500", "\"score\": x", 1);
        let e = parse_chunk_all(&bad).unwrap_err();
        assert!(
            e.starts_with("d: results record 1500: field `score`"),
            "{e}"
        );
    }

    fn parse_chunk_all(doc: &str) -> std::result::Result<(), String> {
        let chunks = record_chunks(doc.as_bytes(), 16).unwrap();
        let ok = chunks.iter().all(|c| parse_chunk(doc, c).is_ok());
        assert!(!ok, "a chunk should fail");
        parse_sequential(doc, "d")
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn corner_boxes_convert_to_coco_form() {
        let d = Detection::from_xyxy(1, 2, [10.0, 20.0, 15.0, 30.0], 0.9);
        assert_eq!(d.bbox, [10.0, 20.0, 5.0, 10.0]);
        assert_eq!(d.xyxy(), [10.0, 20.0, 15.0, 30.0]);
        assert_eq!(d.area(), 50.0);
    }
}
