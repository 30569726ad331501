//! Drawings for people: each image with its boxes, class names and instance masks, the
//! semantic mask beside it, and the caption below.

use crate::coco::{CocoAnnotation, CocoDataset};
use crate::error::{Error, Result};
use crate::io;
use crate::loader::load_rgb;
use crate::ov_shapes::{CaptionRecord, OvShapesDir, read_captions};
use crate::semantic::{IGNORE_INDEX, SemanticMask};
use ab_glyph::{FontRef, PxScale};
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_text_mut, text_size};
use imageproc::rect::Rect;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// DejaVu Sans, embedded so drawings work on machines without fonts.
pub static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The embedded font.
pub fn font() -> FontRef<'static> {
    FontRef::try_from_slice(FONT_BYTES).expect("the embedded DejaVu Sans parses")
}

/// What to draw.
#[derive(Debug, Clone)]
pub struct ShowOptions {
    /// For an OV-Shapes directory: `train`, `val` or `pretrain` (default `train`).
    pub split: Option<String>,
    /// At most this many images (in file order).
    pub limit: usize,
    /// Image directory for a JSON input (default: `images/` beside the JSON, else its folder).
    pub images_dir: Option<PathBuf>,
    /// Draw the images at roughly this many pixels on the longer side (nearest upscaling).
    pub target_size: u32,
}

impl Default for ShowOptions {
    fn default() -> Self {
        Self {
            split: None,
            limit: 16,
            images_dir: None,
            target_size: 384,
        }
    }
}

/// A distinct colour per class id (golden-ratio hues).
pub fn class_colour(id: u64) -> Rgb<u8> {
    let h = (id as f64 * 0.618_033_988_749_895).fract();
    let (s, v) = (0.75, 0.95);
    let h6 = h * 6.0;
    let f = h6 - h6.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match h6.floor() as u32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    Rgb([(r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8])
}

/// Where the pieces of one input are.
struct Source {
    coco: Option<CocoDataset>,
    /// Objects that exist but carry no label here (OV-Shapes train: the novel ones).
    unlabelled: Option<CocoDataset>,
    images_dir: PathBuf,
    semantic_dir: Option<PathBuf>,
    captions: HashMap<u64, CaptionRecord>,
    names: HashMap<u64, String>,
    novel: HashSet<u64>,
    /// For caption-only splits: the image files in order.
    files: Vec<(u64, String)>,
}

fn resolve(input: &Path, opts: &ShowOptions) -> Result<Source> {
    if input.is_dir() {
        let d = OvShapesDir::open(input)?;
        let split = opts.split.clone().unwrap_or_else(|| "train".into());
        if !["train", "val", "pretrain"].contains(&split.as_str()) {
            return Err(Error::Config(format!(
                "--split {split}: expected train, val or pretrain"
            )));
        }
        let vocab = d.vocabulary()?;
        let names = vocab
            .classes
            .iter()
            .map(|c| (c.id, c.name.clone()))
            .collect();
        let novel = vocab.novel().map(|c| c.id).collect();
        let captions: HashMap<u64, CaptionRecord> = d
            .captions(&split)?
            .into_iter()
            .map(|r| (r.image_id, r))
            .collect();
        if split == "pretrain" {
            let mut files: Vec<(u64, String)> = captions
                .values()
                .map(|r| (r.image_id, r.file_name.clone()))
                .collect();
            files.sort();
            return Ok(Source {
                coco: None,
                unlabelled: None,
                images_dir: d.images_dir(&split),
                semantic_dir: None,
                captions,
                names,
                novel,
                files,
            });
        }
        let coco = CocoDataset::read(d.instances_path(&split))?;
        let unlabelled = if split == "train" {
            let full = CocoDataset::read(d.instances_full_path())?;
            let have: HashSet<u64> = coco.annotations.iter().map(|a| a.id).collect();
            let mut rest = full.clone();
            rest.annotations.retain(|a| !have.contains(&a.id));
            Some(rest)
        } else {
            None
        };
        return Ok(Source {
            coco: Some(coco),
            unlabelled,
            images_dir: d.images_dir(&split),
            semantic_dir: Some(d.semantic_dir(&split)),
            captions,
            names,
            novel,
            files: Vec::new(),
        });
    }
    let coco = CocoDataset::read(input)?;
    let parent = input.parent().unwrap_or(Path::new(".")).to_path_buf();
    let images_dir = opts.images_dir.clone().unwrap_or_else(|| {
        let beside = parent.join("images");
        if beside.is_dir() {
            beside
        } else {
            parent.clone()
        }
    });
    let sem = parent.join("semantic");
    let cap = parent.join("captions.jsonl");
    let captions = if cap.is_file() {
        read_captions(&cap)?
            .into_iter()
            .map(|r| (r.image_id, r))
            .collect()
    } else {
        HashMap::new()
    };
    let names = coco
        .categories
        .iter()
        .map(|c| (c.id, c.name.clone()))
        .collect();
    Ok(Source {
        coco: Some(coco),
        unlabelled: None,
        images_dir,
        semantic_dir: sem.is_dir().then_some(sem),
        captions,
        names,
        novel: HashSet::new(),
        files: Vec::new(),
    })
}

fn blend(p: &mut Rgb<u8>, c: Rgb<u8>, a: f32) {
    for k in 0..3 {
        p[k] = (p[k] as f32 * (1.0 - a) + c[k] as f32 * a).round() as u8;
    }
}

fn upscale(img: &RgbImage, k: u32) -> RgbImage {
    image::imageops::resize(
        img,
        img.width() * k,
        img.height() * k,
        image::imageops::FilterType::Nearest,
    )
}

/// Draws a rectangle outline just outside the box `[x1, y1, x2, y2]` (upscaled by `k`), so a
/// tight box hugs its object without covering it.
fn draw_box(canvas: &mut RgbImage, b: [f32; 4], k: u32, colour: Rgb<u8>, thick: i32) {
    let k = k as f32;
    let (x1, y1) = ((b[0] * k).round() as i32, (b[1] * k).round() as i32);
    let (x2, y2) = ((b[2] * k).round() as i32, (b[3] * k).round() as i32);
    let (w, h) = (canvas.width() as i32, canvas.height() as i32);
    let mut put = |x: i32, y: i32| {
        if x >= 0 && y >= 0 && x < w && y < h {
            canvas.put_pixel(x as u32, y as u32, colour);
        }
    };
    for t in 1..=thick {
        for x in (x1 - t)..=(x2 - 1 + t) {
            put(x, y1 - t);
            put(x, y2 - 1 + t);
        }
        for y in (y1 - t)..=(y2 - 1 + t) {
            put(x1 - t, y);
            put(x2 - 1 + t, y);
        }
    }
}

fn draw_label(canvas: &mut RgbImage, font: &FontRef, text: &str, x: i32, y: i32, bg: Rgb<u8>) {
    let scale = PxScale::from(14.0);
    let (tw, th) = text_size(scale, font, text);
    let y = if y - th as i32 - 4 < 0 {
        y + 2
    } else {
        y - th as i32 - 4
    };
    let x = x.clamp(0, (canvas.width() as i32 - tw as i32 - 4).max(0));
    draw_filled_rect_mut(canvas, Rect::at(x, y).of_size(tw + 4, th + 4), bg);
    let luma = 0.299 * bg[0] as f32 + 0.587 * bg[1] as f32 + 0.114 * bg[2] as f32;
    let fg = if luma > 140.0 {
        Rgb([0, 0, 0])
    } else {
        Rgb([255, 255, 255])
    };
    draw_text_mut(canvas, fg, x + 2, y + 1, scale, font, text);
}

/// The text of a novel object's tag.
fn novel_tag_text(name: &str) -> String {
    format!("{name}: novel, no box")
}

/// Where the tag of an unlabelled object goes (panel pixels): centred on the pixel of its mask
/// nearest the mask's centroid (inside the shape even for a crescent), kept inside the panel.
fn novel_tag_rect(
    a: &CocoAnnotation,
    h: u32,
    w: u32,
    k: u32,
    font: &FontRef,
    name: &str,
    panel_w: u32,
) -> Option<Rect> {
    let mask = a.segmentation.as_ref()?.to_rle(h, w).ok()?.decode().ok()?;
    let pixels: Vec<(usize, usize)> = (0..h as usize)
        .flat_map(|y| (0..w as usize).map(move |x| (x, y)))
        .filter(|&(x, y)| mask.get(x, y))
        .collect();
    if pixels.is_empty() {
        return None;
    }
    let n = pixels.len() as f64;
    let cx = pixels.iter().map(|p| p.0 as f64).sum::<f64>() / n;
    let cy = pixels.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let d = |p: &&(usize, usize)| (p.0 as f64 - cx).powi(2) + (p.1 as f64 - cy).powi(2);
    let &(x, y) = pixels.iter().min_by(|p, q| d(p).total_cmp(&d(q)))?;
    let (tw, th) = text_size(PxScale::from(13.0), font, &novel_tag_text(name));
    let (rw, rh) = (tw + 4, th + 4);
    let px = ((x as u32 * k + k / 2) as i32 - rw as i32 / 2)
        .clamp(0, (panel_w as i32 - rw as i32).max(0));
    let py = ((y as u32 * k + k / 2) as i32 - rh as i32 / 2)
        .clamp(0, (h as i32 * k as i32 - rh as i32).max(0));
    Some(Rect::at(px, py).of_size(rw, rh))
}

fn draw_tag(canvas: &mut RgbImage, font: &FontRef, name: &str, rect: Rect) {
    draw_filled_rect_mut(canvas, rect, Rgb([225, 225, 225]));
    draw_text_mut(
        canvas,
        Rgb([40, 40, 40]),
        rect.left() + 2,
        rect.top() + 1,
        PxScale::from(13.0),
        font,
        &novel_tag_text(name),
    );
}

fn wrap(text: &str, font: &FontRef, scale: PxScale, width: u32) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let candidate = if line.is_empty() {
            word.to_string()
        } else {
            format!("{line} {word}")
        };
        if text_size(scale, font, &candidate).0 > width && !line.is_empty() {
            lines.push(std::mem::take(&mut line));
            line = word.to_string();
        } else {
            line = candidate;
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn overlay_instances(
    panel: &mut RgbImage,
    anns: &[&CocoAnnotation],
    h: u32,
    w: u32,
    k: u32,
    fill_alpha: f32,
) -> Result<()> {
    for a in anns {
        let colour = class_colour(a.category_id);
        let Some(seg) = &a.segmentation else { continue };
        let Ok(mask) = seg.to_rle(h, w).and_then(|r| Ok(r.decode()?)) else {
            continue;
        };
        for y in 0..h as usize {
            for x in 0..w as usize {
                if !mask.get(x, y) {
                    continue;
                }
                let edge = x == 0
                    || y == 0
                    || x + 1 == w as usize
                    || y + 1 == h as usize
                    || !mask.get(x - 1, y)
                    || !mask.get(x + 1, y)
                    || !mask.get(x, y - 1)
                    || !mask.get(x, y + 1);
                for dy in 0..k {
                    for dx in 0..k {
                        let (px, py) = (x as u32 * k + dx, y as u32 * k + dy);
                        // The fill is striped so the object's own colour shows between the
                        // stripes (a solid tint can turn, say, a green shape grey).
                        let a = if edge {
                            0.8
                        } else if (px + py) % 6 < 3 {
                            fill_alpha
                        } else {
                            continue;
                        };
                        blend(panel.get_pixel_mut(px, py), colour, a);
                    }
                }
            }
        }
    }
    Ok(())
}

fn semantic_panel(sem: &SemanticMask, k: u32, novel: &HashSet<u64>) -> RgbImage {
    let (w, h) = (sem.width() as u32, sem.height() as u32);
    let mut img = RgbImage::new(w * k, h * k);
    for y in 0..h * k {
        for x in 0..w * k {
            let v = sem.get((x / k) as usize, (y / k) as usize);
            let c = match v {
                0 => Rgb([20, 20, 20]),
                IGNORE_INDEX => {
                    // Hatched grey: "ignore".
                    if (x + y) % 8 < 4 {
                        Rgb([200, 200, 200])
                    } else {
                        Rgb([120, 120, 120])
                    }
                }
                id => {
                    let c = class_colour(id as u64);
                    if novel.contains(&(id as u64)) && (x + y) % 6 < 2 {
                        Rgb([255, 255, 255])
                    } else {
                        c
                    }
                }
            };
            img.put_pixel(x, y, c);
        }
    }
    img
}

/// Draws up to `opts.limit` images of `input` (an OV-Shapes directory or a COCO JSON file) into
/// `out_dir` as PNGs, one per image, and returns their paths.
pub fn show(input: &Path, out_dir: &Path, opts: &ShowOptions) -> Result<Vec<PathBuf>> {
    let src = resolve(input, opts)?;
    io::create_dir_all(out_dir)?;
    let font = font();
    let mut items: Vec<(u64, String)> = match &src.coco {
        Some(c) => c
            .images
            .iter()
            .map(|im| (im.id, im.file_name().unwrap_or_default().to_string()))
            .collect(),
        None => src.files.clone(),
    };
    items.truncate(opts.limit);
    let by_image = src.coco.as_ref().map(|c| c.annotations_by_image());
    let hidden = src.unlabelled.as_ref().map(|c| c.annotations_by_image());
    let mut written = Vec::new();
    for (id, file) in items {
        let ipath = src.images_dir.join(&file);
        let img = load_rgb(&ipath)?;
        let (w, h) = (img.width(), img.height());
        let k = (opts.target_size as f32 / w.max(h) as f32).round().max(1.0) as u32;
        let raw = upscale(&img, k);
        let mut panel = raw.clone();
        let annotated = src.coco.is_some();
        let anns: Vec<&CocoAnnotation> = match (&src.coco, &by_image) {
            (Some(c), Some(m)) => m
                .get(&id)
                .map(|v| v.iter().map(|&i| &c.annotations[i]).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let hidden_anns: Vec<&CocoAnnotation> = match (&src.unlabelled, &hidden) {
            (Some(c), Some(m)) => m
                .get(&id)
                .map(|v| v.iter().map(|&i| &c.annotations[i]).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        overlay_instances(&mut panel, &anns, h, w, k, 0.6)?;
        for a in &anns {
            draw_box(&mut panel, a.bbox_xyxy(), k, class_colour(a.category_id), 2);
        }
        let name_of = |a: &CocoAnnotation| {
            src.names
                .get(&a.category_id)
                .cloned()
                .unwrap_or_else(|| format!("category {}", a.category_id))
        };
        for a in &anns {
            let b = a.bbox_xyxy();
            let mut label = name_of(a);
            if src.novel.contains(&a.category_id) {
                label.push_str(" (novel)");
            }
            draw_label(
                &mut panel,
                &font,
                &label,
                (b[0] * k as f32) as i32 - 2,
                (b[1] * k as f32) as i32 - 2,
                class_colour(a.category_id),
            );
        }
        // Novel objects in train have no box and no mask: they get only a grey tag on the
        // object, so one sees they are there and unlabelled.
        for a in &hidden_anns {
            if let Some(rect) = novel_tag_rect(a, h, w, k, &font, &name_of(a), panel.width()) {
                draw_tag(&mut panel, &font, &name_of(a), rect);
            }
        }

        // Semantic mask beside the image, when there is one.
        let stem = Path::new(&file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sem_panel = match &src.semantic_dir {
            Some(dir) if dir.join(format!("{stem}.png")).is_file() => {
                let sem = SemanticMask::read_for_image(
                    dir.join(format!("{stem}.png")),
                    &ipath,
                    (w as usize, h as usize),
                )?;
                Some(semantic_panel(&sem, k, &src.novel))
            }
            _ => None,
        };
        let gap = 8;
        // [image | image with boxes and masks | semantic mask]; caption-only splits show the
        // image alone.
        let mut panels: Vec<&RgbImage> = vec![&raw];
        if annotated {
            panels.push(&panel);
        }
        if let Some(sp) = &sem_panel {
            panels.push(sp);
        }
        let panels_w =
            panels.iter().map(|p| p.width()).sum::<u32>() + gap * (panels.len() as u32 - 1);
        let scale = PxScale::from(15.0);
        let caption = src.captions.get(&id).map(|r| r.caption.clone());
        let mut text_lines = vec![format!("{file}  (image id {id}, {w}x{h})")];
        if let Some(c) = &caption {
            text_lines.extend(wrap(
                &format!("\u{201c}{c}\u{201d}"),
                &font,
                scale,
                panels_w - 8,
            ));
        }
        if annotated {
            let mut legend =
                "left: image; middle: boxes, class names and instance masks".to_string();
            if sem_panel.is_some() {
                legend.push_str(
                    "; right: semantic mask (black = background, grey hatching = ignore 255)",
                );
            }
            if src.unlabelled.is_some() {
                legend.push_str("; grey tags: novel objects, which have no box or mask in train");
            }
            text_lines.extend(wrap(&legend, &font, scale, panels_w - 8));
        }
        let line_h = 19;
        let text_h = text_lines.len() as u32 * line_h + 8;
        let mut canvas =
            RgbImage::from_pixel(panels_w, panel.height() + text_h, Rgb([255, 255, 255]));
        let mut x = 0i64;
        for p in &panels {
            image::imageops::replace(&mut canvas, *p, x, 0);
            x += (p.width() + gap) as i64;
        }
        for (i, line) in text_lines.iter().enumerate() {
            draw_text_mut(
                &mut canvas,
                Rgb([0, 0, 0]),
                4,
                (panel.height() + 4 + i as u32 * line_h) as i32,
                scale,
                &font,
                line,
            );
        }
        let out = out_dir.join(format!("{stem}.png"));
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(canvas)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .map_err(|e| Error::Image {
                action: "encode",
                path: out.clone(),
                source: e,
            })?;
        io::write_atomic(&out, &bytes)?;
        written.push(out);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ov_shapes::{Preset, SynthConfig, generate};

    #[test]
    fn novel_objects_in_train_get_no_box_or_mask() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = SynthConfig::preset(Preset::Quick);
        cfg.train_images = 8;
        cfg.val_images = 1;
        cfg.pretrain_images = 0;
        cfg.image_size = 64;
        cfg.seed = 2;
        // Every class but the circle is novel, so most train images have no labels at all.
        cfg.novel = cfg
            .classes
            .iter()
            .filter(|c| *c != "circle")
            .cloned()
            .collect();
        let root = tmp.path().join("d");
        generate(&root, &cfg).unwrap();
        let d = OvShapesDir::open(&root).unwrap();
        let train = CocoDataset::read(d.instances_path("train")).unwrap();
        let full = CocoDataset::read(d.instances_full_path()).unwrap();
        let out = tmp.path().join("show");
        let opts = ShowOptions {
            split: Some("train".into()),
            limit: 8,
            ..Default::default()
        };
        let files = show(&root, &out, &opts).unwrap();
        let font = font();
        let (k, side) = (6u32, 64u32 * 6);
        let mut checked = 0;
        for (img, file) in full.images.iter().zip(&files) {
            if train.annotations.iter().any(|a| a.image_id == img.id) {
                continue;
            }
            let novel: Vec<&CocoAnnotation> = full
                .annotations
                .iter()
                .filter(|a| a.image_id == img.id)
                .collect();
            assert!(!novel.is_empty());
            let tags: Vec<Rect> = novel
                .iter()
                .map(|a| {
                    let name = &full.category(a.category_id).unwrap().name;
                    novel_tag_rect(a, 64, 64, k, &font, name, side).unwrap()
                })
                .collect();
            let drawn = image::open(file).unwrap().to_rgb8();
            let mut tagged = 0;
            for y in 0..side {
                for x in 0..side {
                    let raw = drawn.get_pixel(x, y);
                    let annotated = drawn.get_pixel(side + 8 + x, y);
                    let in_tag = tags.iter().any(|r| {
                        (x as i32) >= r.left()
                            && (x as i32) <= r.right()
                            && (y as i32) >= r.top()
                            && (y as i32) <= r.bottom()
                    });
                    if in_tag {
                        tagged += (raw != annotated) as u32;
                    } else {
                        assert_eq!(raw, annotated, "{file:?}: drawn at ({x}, {y}) outside tags");
                    }
                }
            }
            assert!(tagged > 0, "{file:?}: no tag drawn");
            checked += 1;
        }
        assert!(checked >= 2, "only {checked} label-free images");
    }

    #[test]
    fn draws_every_split_with_masks_and_boxes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = SynthConfig::preset(Preset::Quick);
        cfg.train_images = 3;
        cfg.val_images = 2;
        cfg.pretrain_images = 2;
        cfg.image_size = 64;
        generate(tmp.path().join("d"), &cfg).unwrap();
        for split in ["train", "val", "pretrain"] {
            let out = tmp.path().join(format!("show-{split}"));
            let opts = ShowOptions {
                split: Some(split.into()),
                limit: 2,
                ..Default::default()
            };
            let files = show(&tmp.path().join("d"), &out, &opts).unwrap();
            assert_eq!(files.len(), 2);
            let img = image::open(&files[0]).unwrap().to_rgb8();
            // 64 px drawn at 6x; train/val add the annotated and semantic panels beside it.
            let panels = if split == "pretrain" { 1 } else { 3 };
            assert!(img.width() >= panels * 384 && img.width() < (panels + 1) * 384);
        }
        // A JSON file works too, finding images/ and semantic/ beside it.
        let out = tmp.path().join("show-json");
        let files = show(
            &tmp.path().join("d/val/instances.json"),
            &out,
            &ShowOptions::default(),
        )
        .unwrap();
        assert_eq!(files.len(), 2);
        let err = show(
            &tmp.path().join("d"),
            &out,
            &ShowOptions {
                split: Some("test".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("expected train, val or pretrain"));
    }
}
