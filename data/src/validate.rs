//! Validation of COCO/LVIS instances files and COCO results files: every problem at once, each
//! naming the file, the record (id and index) and the field.
//!
//! The checks run on the loosely parsed JSON, so one bad record does not hide the others:
//! truncated or invalid JSON (line and column), missing or mistyped fields, duplicate ids,
//! annotations pointing at unknown images or categories, boxes with negative size or outside
//! their image, malformed polygons and RLEs, and (given the image directory) missing image files
//! and images whose size differs from the record.

use crate::coco::CocoDataset;
use crate::error::{Problem, Record};
use crate::io;
use crate::mask::Rle;
use rayon::prelude::*;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What to check besides the file itself.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// Directory the images' `file_name`s are relative to; when set, each image file must exist
    /// and have the size its record gives.
    pub images_dir: Option<PathBuf>,
    /// How far (pixels) a box may stick out of its image before it is a problem; COCO's own
    /// files have boxes that overshoot by a fraction of a pixel.
    pub box_tolerance: f64,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        Self {
            images_dir: None,
            box_tolerance: 1.0,
        }
    }
}

/// Which kind of file was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// An instances file (`{images, annotations, categories}`).
    Instances,
    /// A results file (a list of detections).
    Results,
    /// Neither could be told (unreadable or invalid JSON, or another top-level value).
    Unknown,
}

/// The outcome of validating one file.
#[derive(Debug, Clone)]
pub struct Report {
    /// The file.
    pub file: PathBuf,
    /// What it looked like.
    pub kind: FileKind,
    /// Every problem found, in file order within each section.
    pub problems: Vec<Problem>,
    /// Number of image records (instances files).
    pub images: usize,
    /// Number of annotations, or of detections in a results file.
    pub annotations: usize,
    /// Number of categories (instances files).
    pub categories: usize,
}

impl Report {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A problem, and whether it is one of shape/type (which makes the typed reader fail) rather
/// than of meaning (an unknown id, a duplicate, a box outside its image).
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub problem: Problem,
    pub structural: bool,
}

/// Validates a COCO instances or results file (told apart by the top-level value). `gt` is the
/// ground truth a results file refers to, if known.
pub fn validate_file(
    path: impl AsRef<Path>,
    opts: &ValidateOptions,
    gt: Option<&CocoDataset>,
) -> Report {
    let path = path.as_ref();
    let mut report = Report {
        file: path.to_path_buf(),
        kind: FileKind::Unknown,
        problems: Vec::new(),
        images: 0,
        annotations: 0,
        categories: 0,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            report.problems.push(Problem::new(
                path,
                Record::File,
                None,
                format!("cannot read: {e}"),
            ));
            return report;
        }
    };
    let value: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            report.problems.push(io::json_problem(path, &e));
            return report;
        }
    };
    let findings = match &value {
        Value::Array(items) => {
            report.kind = FileKind::Results;
            report.annotations = items.len();
            check_results_value(path, &value, gt)
        }
        Value::Object(o) => {
            report.kind = FileKind::Instances;
            let len = |k: &str| o.get(k).and_then(Value::as_array).map_or(0, Vec::len);
            report.images = len("images");
            report.annotations = len("annotations");
            report.categories = len("categories");
            check_instances_value(path, &value, opts)
        }
        _ => {
            report.problems.push(Problem::new(
                path,
                Record::File,
                None,
                "expected a JSON object (instances: images, annotations, categories) or a list \
                 (results)",
            ));
            return report;
        }
    };
    report.problems = findings.into_iter().map(|f| f.problem).collect();
    report
}

/// Validates a whole OV-Shapes directory: the vocabulary, every instances file (with its
/// image files), every semantic mask (size equal to its image, labels 0, 255 or a class id) and
/// every captions file. Returns one report per file checked (semantic masks are reported
/// against their split's `semantic/` directory).
pub fn validate_ov_shapes_dir(dir: impl AsRef<Path>) -> Vec<Report> {
    let dir = dir.as_ref();
    let mut reports = Vec::new();
    let blank = |file: PathBuf| Report {
        file,
        kind: FileKind::Unknown,
        problems: Vec::new(),
        images: 0,
        annotations: 0,
        categories: 0,
    };
    let vocab_path = dir.join("vocab.toml");
    let mut vr = blank(vocab_path.clone());
    let mut class_ids: HashSet<u64> = HashSet::new();
    match crate::vocab::Vocabulary::load(&vocab_path) {
        Ok(v) => {
            vr.categories = v.len();
            class_ids = v.ids().into_iter().collect();
        }
        Err(crate::Error::Problems(ps)) => vr.problems = ps,
        Err(crate::Error::Invalid(p)) => vr.problems.push(*p),
        Err(e) => vr
            .problems
            .push(Problem::new(&vocab_path, Record::File, None, e.to_string())),
    }
    reports.push(vr);
    for split in ["train", "val"] {
        let sdir = dir.join(split);
        let opts = ValidateOptions {
            images_dir: Some(sdir.join("images")),
            box_tolerance: 0.0,
        };
        let mut files = vec![sdir.join("instances.json")];
        if split == "train" {
            files.push(sdir.join("instances_full.json"));
        }
        for f in &files {
            reports.push(validate_file(f, &opts, None));
        }
        // Semantic masks against the images of instances.json.
        let sem_dir = sdir.join("semantic");
        let mut sr = blank(sem_dir.clone());
        if let Ok(coco) = CocoDataset::read(&files[0]) {
            sr.images = coco.images.len();
            let found: Vec<Vec<Problem>> = coco
                .images
                .par_iter()
                .map(|im| {
                    let name = im.file_name().unwrap_or_default();
                    let stem = Path::new(name).file_stem().unwrap_or_default();
                    let lp = sem_dir.join(format!("{}.png", stem.to_string_lossy()));
                    let ip = sdir.join("images").join(name);
                    let sem = match crate::semantic::SemanticMask::read_for_image(
                        &lp,
                        &ip,
                        (im.width as usize, im.height as usize),
                    ) {
                        Ok(m) => m,
                        Err(crate::Error::Invalid(p)) => return vec![*p],
                        Err(e) => {
                            return vec![Problem::new(&lp, Record::File, None, e.to_string())];
                        }
                    };
                    let bad: Vec<u16> = sem
                        .counts()
                        .into_keys()
                        .filter(|&v| {
                            v != 0
                                && v != crate::semantic::IGNORE_INDEX
                                && !class_ids.contains(&(v as u64))
                        })
                        .collect();
                    if bad.is_empty() {
                        Vec::new()
                    } else {
                        vec![Problem::new(
                            &lp,
                            Record::File,
                            None,
                            format!("labels {bad:?} are neither 0, 255 nor a class id"),
                        )]
                    }
                })
                .collect();
            sr.problems = found.into_iter().flatten().collect();
        }
        reports.push(sr);
    }
    for split in ["train", "val", "pretrain"] {
        let cp = dir.join(split).join("captions.jsonl");
        let mut cr = blank(cp.clone());
        match crate::ov_shapes::read_captions(&cp) {
            Ok(recs) => {
                cr.images = recs.len();
                let images = dir.join(split).join("images");
                for (i, r) in recs.iter().enumerate() {
                    if !images.join(&r.file_name).is_file() {
                        cr.problems.push(Problem::new(
                            &cp,
                            Record::Item {
                                kind: "line",
                                index: i,
                                id: Some(r.image_id),
                            },
                            Some("file_name"),
                            format!(
                                "image file {} does not exist",
                                images.join(&r.file_name).display()
                            ),
                        ));
                    }
                }
            }
            Err(crate::Error::Invalid(p)) => cr.problems.push(*p),
            Err(e) => cr
                .problems
                .push(Problem::new(&cp, Record::File, None, e.to_string())),
        }
        reports.push(cr);
    }
    reports
}

/// Collects problems for one file.
struct Checker<'a> {
    file: &'a Path,
    out: Vec<Finding>,
}

impl Checker<'_> {
    fn push(&mut self, record: Record, field: Option<&str>, msg: String, structural: bool) {
        self.out.push(Finding {
            problem: Problem::new(self.file, record, field, msg),
            structural,
        });
    }

    /// A required non-negative integer field.
    fn uint(&mut self, obj: &Map<String, Value>, rec: &Record, field: &str) -> Option<u64> {
        match obj.get(field) {
            None => {
                self.push(rec.clone(), Some(field), "missing".into(), true);
                None
            }
            Some(v) => match as_uint(v) {
                Some(n) => Some(n),
                None => {
                    self.push(
                        rec.clone(),
                        Some(field),
                        format!("expected a non-negative integer, found {}", short(v)),
                        true,
                    );
                    None
                }
            },
        }
    }

    /// A required finite number.
    fn number(&mut self, obj: &Map<String, Value>, rec: &Record, field: &str) -> Option<f64> {
        match obj.get(field) {
            None => {
                self.push(rec.clone(), Some(field), "missing".into(), true);
                None
            }
            Some(v) => match v.as_f64().filter(|x| x.is_finite()) {
                Some(x) => Some(x),
                None => {
                    self.push(
                        rec.clone(),
                        Some(field),
                        format!("expected a number, found {}", short(v)),
                        true,
                    );
                    None
                }
            },
        }
    }

    /// Four finite numbers `[x, y, w, h]` with w, h >= 0.
    fn bbox(&mut self, v: &Value, rec: &Record) -> Option<[f64; 4]> {
        let nums: Option<Vec<f64>> = v.as_array().filter(|a| a.len() == 4).and_then(|a| {
            a.iter()
                .map(|x| x.as_f64().filter(|x| x.is_finite()))
                .collect()
        });
        let Some(b) = nums else {
            self.push(
                rec.clone(),
                Some("bbox"),
                format!("expected 4 numbers [x, y, w, h], found {}", short(v)),
                true,
            );
            return None;
        };
        let b = [b[0], b[1], b[2], b[3]];
        if b[2] < 0.0 || b[3] < 0.0 {
            self.push(
                rec.clone(),
                Some("bbox"),
                format!(
                    "negative size: width {}, height {} in {}",
                    b[2],
                    b[3],
                    fmt_box(b)
                ),
                false,
            );
        }
        Some(b)
    }

    /// A list of known category ids.
    fn id_list(&mut self, v: &Value, rec: &Record, field: &str, known: &HashSet<u64>) {
        let Some(items) = v.as_array() else {
            self.push(
                rec.clone(),
                Some(field),
                format!("expected a list of category ids, found {}", short(v)),
                true,
            );
            return;
        };
        for item in items {
            match as_uint(item) {
                None => self.push(
                    rec.clone(),
                    Some(field),
                    format!("expected category ids, found {}", short(item)),
                    true,
                ),
                Some(id) if !known.contains(&id) => self.push(
                    rec.clone(),
                    Some(field),
                    format!("category id {id} is not among the categories"),
                    false,
                ),
                Some(_) => {}
            }
        }
    }

    fn segmentation(&mut self, v: &Value, rec: &Record, size: Option<(u64, u64)>) {
        match v {
            Value::Array(polys) => {
                for (i, p) in polys.iter().enumerate() {
                    let field = format!("segmentation[{i}]");
                    let Some(coords) = p.as_array() else {
                        self.push(
                            rec.clone(),
                            Some(&field),
                            format!(
                                "expected a polygon [x0, y0, x1, y1, ...], found {}",
                                short(p)
                            ),
                            true,
                        );
                        continue;
                    };
                    if coords
                        .iter()
                        .any(|c| !c.as_f64().is_some_and(f64::is_finite))
                    {
                        self.push(
                            rec.clone(),
                            Some(&field),
                            "polygon coordinates must be numbers".into(),
                            true,
                        );
                    } else if coords.len() % 2 != 0 || coords.len() < 6 {
                        self.push(
                            rec.clone(),
                            Some(&field),
                            format!(
                                "a polygon needs an even number of coordinates, at least 6 \
                                 (3 points); found {}",
                                coords.len()
                            ),
                            false,
                        );
                    }
                }
            }
            Value::Object(o) => {
                let rle_size = match o.get("size") {
                    None => {
                        self.push(
                            rec.clone(),
                            Some("segmentation.size"),
                            "missing".into(),
                            true,
                        );
                        None
                    }
                    Some(s) => {
                        let hw: Option<Vec<u64>> =
                            s.as_array().filter(|a| a.len() == 2).and_then(|a| {
                                a.iter()
                                    .map(|x| as_uint(x).filter(|&x| x <= u32::MAX as u64))
                                    .collect()
                            });
                        match hw {
                            Some(hw) => Some((hw[0], hw[1])),
                            None => {
                                self.push(
                                    rec.clone(),
                                    Some("segmentation.size"),
                                    format!("expected [height, width], found {}", short(s)),
                                    true,
                                );
                                None
                            }
                        }
                    }
                };
                if let (Some((rh, rw)), Some((ih, iw))) = (rle_size, size)
                    && (rh, rw) != (ih, iw)
                {
                    self.push(
                        rec.clone(),
                        Some("segmentation.size"),
                        format!(
                            "RLE size [{rh}, {rw}] (h, w) differs from the image's [{ih}, {iw}]"
                        ),
                        false,
                    );
                }
                let counts = o.get("counts");
                let (h, w) = rle_size.map_or((0, 0), |(h, w)| (h as u32, w as u32));
                match counts {
                    None => self.push(
                        rec.clone(),
                        Some("segmentation.counts"),
                        "missing".into(),
                        true,
                    ),
                    Some(Value::String(s)) => {
                        if rle_size.is_some()
                            && let Err(e) = Rle::from_compressed_string(s, h, w)
                        {
                            self.push(
                                rec.clone(),
                                Some("segmentation.counts"),
                                e.to_string(),
                                false,
                            );
                        }
                    }
                    Some(Value::Array(a)) => {
                        let counts: Option<Vec<u32>> = a
                            .iter()
                            .map(|x| as_uint(x).and_then(|x| u32::try_from(x).ok()))
                            .collect();
                        match counts {
                            None => self.push(
                                rec.clone(),
                                Some("segmentation.counts"),
                                "run lengths must be non-negative integers".into(),
                                true,
                            ),
                            Some(counts) if rle_size.is_some() => {
                                let rle = Rle {
                                    height: h,
                                    width: w,
                                    counts,
                                };
                                if let Err(e) = rle.check() {
                                    self.push(
                                        rec.clone(),
                                        Some("segmentation.counts"),
                                        e.to_string(),
                                        false,
                                    );
                                }
                            }
                            Some(_) => {}
                        }
                    }
                    Some(other) => self.push(
                        rec.clone(),
                        Some("segmentation.counts"),
                        format!(
                            "expected a list of run lengths or a compressed string, found {}",
                            short(other)
                        ),
                        true,
                    ),
                }
            }
            other => self.push(
                rec.clone(),
                Some("segmentation"),
                format!(
                    "expected polygons (a list) or an RLE {{size, counts}}, found {}",
                    short(other)
                ),
                true,
            ),
        }
    }
}

fn as_uint(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        // Some writers emit integral floats (`3.0`); COCO tools accept them.
        v.as_f64()
            .filter(|x| x.fract() == 0.0 && *x >= 0.0 && *x < 9.0e15)
            .map(|x| x as u64)
    })
}

fn short(v: &Value) -> String {
    let s = match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(a) => format!("a list of {}", a.len()),
        Value::Object(_) => "an object".to_string(),
    };
    if s.len() > 60 {
        format!("{}...", &s[..57])
    } else {
        s
    }
}

fn fmt_box(b: [f64; 4]) -> String {
    format!("[{}, {}, {}, {}]", b[0], b[1], b[2], b[3])
}

fn item(kind: &'static str, index: usize, obj: Option<&Map<String, Value>>) -> Record {
    Record::Item {
        kind,
        index,
        id: obj.and_then(|o| o.get("id")).and_then(as_uint),
    }
}

fn list<'v>(
    c: &mut Checker,
    top: &'v Map<String, Value>,
    key: &str,
    required: bool,
) -> &'v [Value] {
    match top.get(key) {
        Some(Value::Array(a)) => a,
        Some(other) => {
            c.push(
                Record::File,
                Some(key),
                format!("expected a list, found {}", short(other)),
                true,
            );
            &[]
        }
        None => {
            if required {
                c.push(Record::File, Some(key), "missing".into(), true);
            }
            &[]
        }
    }
}

/// All problems of an instances file given as loose JSON.
pub(crate) fn check_instances_value(
    path: &Path,
    value: &Value,
    opts: &ValidateOptions,
) -> Vec<Finding> {
    let mut c = Checker {
        file: path,
        out: Vec::new(),
    };
    let Some(top) = value.as_object() else {
        c.push(
            Record::File,
            None,
            "expected a JSON object with images, annotations and categories".into(),
            true,
        );
        return c.out;
    };
    let images = list(&mut c, top, "images", true);
    let annotations = list(&mut c, top, "annotations", false);
    let categories = list(&mut c, top, "categories", true);

    // Categories first: images and annotations refer to them.
    let mut cat_ids: HashMap<u64, usize> = HashMap::new();
    let mut cat_names: HashMap<String, u64> = HashMap::new();
    for (i, v) in categories.iter().enumerate() {
        let Some(obj) = v.as_object() else {
            c.push(
                item("category", i, None),
                None,
                format!("expected an object, found {}", short(v)),
                true,
            );
            continue;
        };
        let rec = item("category", i, Some(obj));
        let id = c.uint(obj, &rec, "id");
        if let Some(id) = id {
            if let Some(&first) = cat_ids.get(&id) {
                c.push(
                    rec.clone(),
                    Some("id"),
                    format!("duplicate category id {id} (also category #{first})"),
                    false,
                );
            } else {
                cat_ids.insert(id, i);
            }
        }
        match obj.get("name") {
            Some(Value::String(n)) if !n.trim().is_empty() => {
                if let Some(other) = cat_names.get(n) {
                    c.push(
                        rec.clone(),
                        Some("name"),
                        format!("duplicate category name {n:?} (also category id {other})"),
                        false,
                    );
                } else if let Some(id) = id {
                    cat_names.insert(n.clone(), id);
                }
            }
            Some(Value::String(_)) => c.push(rec.clone(), Some("name"), "empty".into(), false),
            Some(other) => c.push(
                rec.clone(),
                Some("name"),
                format!("expected a string, found {}", short(other)),
                true,
            ),
            None => c.push(rec.clone(), Some("name"), "missing".into(), true),
        }
        if let Some(f) = obj.get("frequency")
            && !matches!(f.as_str(), Some("r" | "c" | "f"))
        {
            c.push(
                rec.clone(),
                Some("frequency"),
                format!("expected \"r\", \"c\" or \"f\" (LVIS), found {}", short(f)),
                true,
            );
        }
    }
    let known_cats: HashSet<u64> = cat_ids.keys().copied().collect();

    // Images.
    struct ImageInfo {
        index: usize,
        width: Option<u64>,
        height: Option<u64>,
        file_name: Option<String>,
    }
    let mut image_ids: HashMap<u64, ImageInfo> = HashMap::new();
    // (record index, image id, file name, (width, height) from the record)
    type ImageFile = (usize, Option<u64>, String, Option<(u64, u64)>);
    let mut image_files: Vec<ImageFile> = Vec::new();
    for (i, v) in images.iter().enumerate() {
        let Some(obj) = v.as_object() else {
            c.push(
                item("image", i, None),
                None,
                format!("expected an object, found {}", short(v)),
                true,
            );
            continue;
        };
        let rec = item("image", i, Some(obj));
        let id = c.uint(obj, &rec, "id");
        let mut dims = [None, None];
        for (k, field) in ["width", "height"].into_iter().enumerate() {
            if let Some(n) = c.uint(obj, &rec, field) {
                if n == 0 || n > u32::MAX as u64 {
                    c.push(
                        rec.clone(),
                        Some(field),
                        format!("must be a positive pixel count, found {n}"),
                        false,
                    );
                } else {
                    dims[k] = Some(n);
                }
            }
        }
        let file_name = match obj.get("file_name") {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::String(_)) => {
                c.push(rec.clone(), Some("file_name"), "empty".into(), false);
                None
            }
            Some(other) => {
                c.push(
                    rec.clone(),
                    Some("file_name"),
                    format!("expected a string, found {}", short(other)),
                    true,
                );
                None
            }
            None => match obj.get("coco_url").and_then(Value::as_str) {
                Some(url) => url.rsplit('/').next().map(str::to_string),
                None => {
                    c.push(
                        rec.clone(),
                        Some("file_name"),
                        "missing (and no LVIS coco_url)".into(),
                        false,
                    );
                    None
                }
            },
        };
        for field in ["neg_category_ids", "not_exhaustive_category_ids"] {
            if let Some(v) = obj.get(field) {
                c.id_list(v, &rec, field, &known_cats);
            }
        }
        if let Some(id) = id {
            if let Some(first) = image_ids.get(&id) {
                c.push(
                    rec.clone(),
                    Some("id"),
                    format!("duplicate image id {id} (also image #{})", first.index),
                    false,
                );
            } else {
                image_ids.insert(
                    id,
                    ImageInfo {
                        index: i,
                        width: dims[0],
                        height: dims[1],
                        file_name: file_name.clone(),
                    },
                );
            }
        }
        if let Some(f) = file_name {
            let size = dims[0].zip(dims[1]);
            image_files.push((i, id, f, size));
        }
    }
    if let Some(dir) = &opts.images_dir {
        let file_problems: Vec<Finding> = image_files
            .par_iter()
            .filter_map(|(i, id, name, size)| {
                let p = dir.join(name);
                let rec = Record::Item {
                    kind: "image",
                    index: *i,
                    id: *id,
                };
                let msg = match image::image_dimensions(&p) {
                    Err(image::ImageError::IoError(e))
                        if e.kind() == std::io::ErrorKind::NotFound =>
                    {
                        format!("image file {} does not exist", p.display())
                    }
                    Err(e) => format!("image file {} cannot be read: {e}", p.display()),
                    Ok((w, h)) => match size {
                        Some((rw, rh)) if (w as u64, h as u64) != (*rw, *rh) => format!(
                            "image file {} is {w}x{h} but the record says {rw}x{rh}",
                            p.display()
                        ),
                        _ => return None,
                    },
                };
                Some(Finding {
                    problem: Problem::new(path, rec, Some("file_name"), msg),
                    structural: false,
                })
            })
            .collect();
        c.out.extend(file_problems);
    }

    // Annotations.
    let mut ann_ids: HashMap<u64, usize> = HashMap::new();
    for (i, v) in annotations.iter().enumerate() {
        let Some(obj) = v.as_object() else {
            c.push(
                item("annotation", i, None),
                None,
                format!("expected an object, found {}", short(v)),
                true,
            );
            continue;
        };
        let rec = item("annotation", i, Some(obj));
        if let Some(id) = c.uint(obj, &rec, "id") {
            if let Some(&first) = ann_ids.get(&id) {
                c.push(
                    rec.clone(),
                    Some("id"),
                    format!("duplicate annotation id {id} (also annotation #{first})"),
                    false,
                );
            } else {
                ann_ids.insert(id, i);
            }
        }
        let image = match c.uint(obj, &rec, "image_id") {
            Some(iid) => {
                let found = image_ids.get(&iid);
                if found.is_none() {
                    c.push(
                        rec.clone(),
                        Some("image_id"),
                        format!("image id {iid} is not among the images"),
                        false,
                    );
                }
                found
            }
            None => None,
        };
        if let Some(cid) = c.uint(obj, &rec, "category_id")
            && !known_cats.contains(&cid)
        {
            c.push(
                rec.clone(),
                Some("category_id"),
                format!("category id {cid} is not among the categories"),
                false,
            );
        }
        let size = image.and_then(|im| im.width.zip(im.height));
        match obj.get("bbox") {
            None => c.push(rec.clone(), Some("bbox"), "missing".into(), true),
            Some(b) => {
                if let Some(b) = c.bbox(b, &rec)
                    && let Some((w, h)) = size
                {
                    let tol = opts.box_tolerance;
                    let (w, h) = (w as f64, h as f64);
                    let mut out = Vec::new();
                    if b[0] < -tol {
                        out.push(format!("x = {} < 0", b[0]));
                    }
                    if b[1] < -tol {
                        out.push(format!("y = {} < 0", b[1]));
                    }
                    if b[0] + b[2] > w + tol {
                        out.push(format!("x + w = {} > width {w}", b[0] + b[2]));
                    }
                    if b[1] + b[3] > h + tol {
                        out.push(format!("y + h = {} > height {h}", b[1] + b[3]));
                    }
                    if !out.is_empty() {
                        let name = image
                            .and_then(|im| im.file_name.as_deref())
                            .unwrap_or("the image");
                        c.push(
                            rec.clone(),
                            Some("bbox"),
                            format!(
                                "box {} lies outside the {w}x{h} image {name}: {}",
                                fmt_box(b),
                                out.join(", ")
                            ),
                            false,
                        );
                    }
                }
            }
        }
        if let Some(area) = c.number(obj, &rec, "area")
            && area < 0.0
        {
            c.push(
                rec.clone(),
                Some("area"),
                format!("negative area {area}"),
                false,
            );
        }
        if let Some(v) = obj.get("iscrowd")
            && !matches!(as_uint(v), Some(0 | 1))
        {
            c.push(
                rec.clone(),
                Some("iscrowd"),
                format!("expected 0 or 1, found {}", short(v)),
                true,
            );
        }
        if let Some(seg) = obj.get("segmentation") {
            let hw = size.map(|(w, h)| (h, w));
            c.segmentation(seg, &rec, hw);
        }
    }
    c.out
}

/// All problems of a results file given as loose JSON; with `gt`, image and category ids must
/// exist there.
pub(crate) fn check_results_value(
    path: &Path,
    value: &Value,
    gt: Option<&CocoDataset>,
) -> Vec<Finding> {
    let mut c = Checker {
        file: path,
        out: Vec::new(),
    };
    let Some(items) = value.as_array() else {
        c.push(
            Record::File,
            None,
            "expected a JSON list of detections".into(),
            true,
        );
        return c.out;
    };
    let images = gt.map(|g| g.image_index());
    let cats: Option<HashSet<u64>> = gt.map(|g| g.categories.iter().map(|c| c.id).collect());
    for (i, v) in items.iter().enumerate() {
        let rec = Record::Item {
            kind: "result",
            index: i,
            id: None,
        };
        let Some(obj) = v.as_object() else {
            c.push(
                rec,
                None,
                format!("expected an object, found {}", short(v)),
                true,
            );
            continue;
        };
        let image = c.uint(obj, &rec, "image_id");
        if let (Some(iid), Some(idx)) = (image, &images)
            && !idx.contains_key(&iid)
        {
            c.push(
                rec.clone(),
                Some("image_id"),
                format!("image id {iid} is not in the ground truth"),
                false,
            );
        }
        if let (Some(cid), Some(known)) = (c.uint(obj, &rec, "category_id"), &cats)
            && !known.contains(&cid)
        {
            c.push(
                rec.clone(),
                Some("category_id"),
                format!("category id {cid} is not in the ground truth"),
                false,
            );
        }
        c.number(obj, &rec, "score");
        match (obj.get("bbox"), obj.get("segmentation")) {
            (Some(b), _) => {
                c.bbox(b, &rec);
            }
            (None, Some(_)) => {}
            (None, None) => c.push(
                rec.clone(),
                Some("bbox"),
                "missing (and no segmentation)".into(),
                true,
            ),
        }
        if let Some(seg) = obj.get("segmentation") {
            let size = match (image, gt, &images) {
                (Some(iid), Some(g), Some(idx)) => idx
                    .get(&iid)
                    .map(|&k| (g.images[k].height as u64, g.images[k].width as u64)),
                _ => None,
            };
            c.segmentation(seg, &rec, size);
        }
    }
    c.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(v: Value, opts: &ValidateOptions) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("inst.json");
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        let r = validate_file(&p, opts, None);
        r.problems
            .iter()
            .map(|p| {
                p.to_string()
                    .replace(&dir.path().display().to_string(), "D")
            })
            .collect()
    }

    fn good() -> Value {
        json!({
            "images": [{"id": 1, "width": 10, "height": 8, "file_name": "a.png"},
                       {"id": 2, "width": 10, "height": 8, "file_name": "b.png"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2],
                             "area": 4, "iscrowd": 0,
                             "segmentation": {"size": [8, 10], "counts": [9, 2, 69]}}],
            "categories": [{"id": 3, "name": "cat"}]
        })
    }

    #[test]
    fn a_good_file_has_no_problems() {
        assert!(run(good(), &Default::default()).is_empty());
    }

    #[test]
    fn every_problem_at_once_with_its_message() {
        let mut v = good();
        v["images"][1]["id"] = json!(1); // duplicate image id
        v["images"][0]["neg_category_ids"] = json!([3, 44]);
        let anns = v["annotations"].as_array_mut().unwrap();
        let a = anns[0].clone();
        let mut b = a.clone();
        b["image_id"] = json!(7); // unknown image
        let mut c = a.clone();
        c["id"] = json!(2);
        c["category_id"] = json!(9); // unknown category
        c["bbox"] = json!([1, 1, -2, 3]); // negative width
        let mut d = a.clone();
        d["id"] = json!(3);
        d["bbox"] = json!([5, 6, 7, 4]); // outside a 10x8 image
        d["segmentation"] = json!({"size": [8, 11], "counts": "0"});
        let mut e = a.clone();
        e["id"] = json!(4);
        e.as_object_mut().unwrap().remove("area");
        e["segmentation"] = json!([[1, 2, 3]]);
        anns.extend([b, c, d, e]);
        v["categories"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": 3, "name": "dog", "frequency": "x"}));
        let got = run(v, &Default::default());
        let want = [
            "D/inst.json: category id 3 (#1), field `id`: duplicate category id 3 (also category #0)",
            "D/inst.json: category id 3 (#1), field `frequency`: expected \"r\", \"c\" or \"f\" (LVIS), found the string \"x\"",
            "D/inst.json: image id 1 (#0), field `neg_category_ids`: category id 44 is not among the categories",
            "D/inst.json: image id 1 (#1), field `id`: duplicate image id 1 (also image #0)",
            "D/inst.json: annotation id 1 (#1), field `id`: duplicate annotation id 1 (also annotation #0)",
            "D/inst.json: annotation id 1 (#1), field `image_id`: image id 7 is not among the images",
            "D/inst.json: annotation id 2 (#2), field `category_id`: category id 9 is not among the categories",
            "D/inst.json: annotation id 2 (#2), field `bbox`: negative size: width -2, height 3 in [1, 1, -2, 3]",
            "D/inst.json: annotation id 3 (#3), field `bbox`: box [5, 6, 7, 4] lies outside the 10x8 image a.png: x + w = 12 > width 10, y + h = 10 > height 8",
            "D/inst.json: annotation id 3 (#3), field `segmentation.size`: RLE size [8, 11] (h, w) differs from the image's [8, 10]",
            "D/inst.json: annotation id 3 (#3), field `segmentation.counts`: run lengths sum to 0, but size 8x11 has 88 pixels",
            "D/inst.json: annotation id 4 (#4), field `area`: missing",
            "D/inst.json: annotation id 4 (#4), field `segmentation[0]`: a polygon needs an even number of coordinates, at least 6 (3 points); found 3",
        ];
        assert_eq!(got, want, "got:\n{}", got.join("\n"));
    }

    #[test]
    fn boxes_left_of_or_above_the_image_and_negative_heights() {
        let mut v = good();
        v["annotations"][0]["bbox"] = json!([-3, 1, 2, 2]);
        let mut b = v["annotations"][0].clone();
        b["id"] = json!(2);
        b["bbox"] = json!([1, -2, 2, -1]);
        v["annotations"].as_array_mut().unwrap().push(b);
        let got = run(v, &Default::default());
        assert_eq!(
            got,
            [
                "D/inst.json: annotation id 1 (#0), field `bbox`: box [-3, 1, 2, 2] lies outside the 10x8 image a.png: x = -3 < 0",
                "D/inst.json: annotation id 2 (#1), field `bbox`: negative size: width 2, height -1 in [1, -2, 2, -1]",
                "D/inst.json: annotation id 2 (#1), field `bbox`: box [1, -2, 2, -1] lies outside the 10x8 image a.png: y = -2 < 0",
            ],
            "got:\n{}",
            got.join("\n")
        );
    }

    #[test]
    fn truncated_and_invalid_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.json");
        let text = serde_json::to_string_pretty(&good()).unwrap();
        std::fs::write(&p, &text[..text.len() / 2]).unwrap();
        let r = validate_file(&p, &Default::default(), None);
        assert_eq!(r.problems.len(), 1);
        let msg = r.problems[0].to_string();
        assert!(msg.contains("t.json:"), "{msg}");
        assert!(msg.contains("(the file is truncated)"), "{msg}");
        std::fs::write(&p, "{\"images\": [1,,]}").unwrap();
        let r = validate_file(&p, &Default::default(), None);
        assert!(
            r.problems[0]
                .to_string()
                .ends_with("t.json:1:15: invalid JSON: expected value"),
            "{}",
            r.problems[0]
        );
        let r = validate_file(dir.path().join("none.json"), &Default::default(), None);
        assert!(r.problems[0].to_string().contains("cannot read"));
    }

    #[test]
    fn missing_and_mis_sized_image_files() {
        let dir = tempfile::tempdir().unwrap();
        image::RgbImage::new(10, 8)
            .save(dir.path().join("a.png"))
            .unwrap();
        let mut v = good();
        v["images"][1]["width"] = json!(12);
        let mut v2 = v.clone();
        v2["images"][1]["file_name"] = json!("a.png");
        let opts = ValidateOptions {
            images_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let d = dir.path().display().to_string();
        let got = run(v, &opts);
        assert_eq!(
            got,
            vec![format!(
                "D/inst.json: image id 2 (#1), field `file_name`: image file {d}/b.png does not exist"
            )]
        );
        let got = run(v2, &opts);
        assert_eq!(
            got,
            vec![format!(
                "D/inst.json: image id 2 (#1), field `file_name`: image file {d}/a.png is 10x8 but the record says 12x8"
            )]
        );
    }

    #[test]
    fn results_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        let v = json!([
            {"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5},
            {"image_id": 5, "category_id": 3, "bbox": [0, 0, 1], "score": 0.5},
            {"image_id": 1, "category_id": 4, "score": "high"}
        ]);
        std::fs::write(&p, v.to_string()).unwrap();
        let gt: CocoDataset = serde_json::from_value(good()).unwrap();
        let r = validate_file(&p, &Default::default(), Some(&gt));
        assert_eq!(r.kind, FileKind::Results);
        let got: Vec<String> = r
            .problems
            .iter()
            .map(|p| {
                p.to_string()
                    .replace(&dir.path().display().to_string(), "D")
            })
            .collect();
        assert_eq!(
            got,
            vec![
                "D/r.json: result #1, field `image_id`: image id 5 is not in the ground truth",
                "D/r.json: result #1, field `bbox`: expected 4 numbers [x, y, w, h], found a list of 3",
                "D/r.json: result #2, field `category_id`: category id 4 is not in the ground truth",
                "D/r.json: result #2, field `score`: expected a number, found the string \"high\"",
                "D/r.json: result #2, field `bbox`: missing (and no segmentation)",
            ]
        );
    }
}
