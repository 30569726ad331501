//! Drawing pre-training batches from the OV-Shapes image-caption corpus: which images, which
//! texts, and augmentations that keep the texts true.
//!
//! A caption names colour, size and position as well as shape, and colour alone tells most
//! pairs of a batch apart, so a model trained on whole captions only learns to match colours
//! (the first measured run sat at chance). Shape has to be the signal that cannot be avoided:
//! most of each batch is *object crops* paired with texts that name only the shape ("a photo
//! of a star."), which only shape can match, drawn class-balanced and in groups that share a
//! colour, so that even their colour texts ("a photo of a red star.", "a photo of a red
//! heart.") differ only by shape.
//!
//! The pretrain split has no boxes, only captions that name each object's colour and class.
//! An object whose colour no other object of its image has is found by that colour: OV-Shapes
//! paints objects in saturated (or white / black) colours over muted backgrounds, so the
//! pixels near the named colour ([`ovkd_data::ov_shapes::COLOURS`]) are the object's, and their
//! (trimmed) extent is its visible box. Crops of such boxes, widened by a random context
//! factor between 1x and 1.6x as ViLD's region embeddings use 1x and 1.5x, look like the
//! region crops the teacher embeds for distillation. The rest of a batch is whole images with
//! their captions.
//!
//! Augmentations: jittered boxes and random resized crops (the texts stay true as long as the
//! object stays mostly in view), left-right mirroring with "left" and "right" swapped in the
//! text, and rendering at a lower resolution then enlarging (crops of small val objects are
//! blurry). No rotation or vertical flip: "above"/"below" and the upright heart would stop
//! being true.

use std::collections::BTreeMap;

use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::TeacherError;
use crate::preprocess::{PreprocessConfig, resample_box, resize_planes, scale_box};
use crate::shapes::{CaptionObject, CaptionPair, load_rgb};
use ovkd_data::ov_shapes::COLOURS;

/// How batches are drawn and augmented.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchConfig {
    /// Share of each batch drawn as object crops (class-balanced); the rest are whole images
    /// with their captions.
    pub object_fraction: f64,
    /// Object crops are drawn in groups of this many sharing a colour (1: no groups).
    pub colour_group: usize,
    /// For an object crop: probability of the shape-only text "a photo of a {shape}.";
    /// otherwise a text with its colour (and maybe size).
    pub shape_text: f64,
    /// Widest context of an object crop: the box is scaled about its centre by a factor drawn
    /// uniformly from [1, context_max] (clipped to the image).
    pub context_max: f64,
    /// Each side of an object's box moves by up to this fraction of the box side.
    pub box_jitter: f64,
    /// Smallest random crop side of a whole image, as a fraction of the image side.
    pub min_crop: f64,
    /// Largest aspect ratio of a random crop (and its inverse).
    pub max_aspect: f64,
    /// Mirror left-right with probability 1/2 (swapping "left" and "right" in the text).
    pub flip: bool,
    /// Probability of rendering the crop at a lower resolution and enlarging it.
    pub low_res: f64,
    /// Lowest such resolution, as a fraction of the input side.
    pub low_res_min: f64,
    /// Largest RGB distance from the named colour of a pixel counted as the object's.
    pub colour_tolerance: f64,
    /// Share of the class draws made in proportion to each class's recent training error
    /// instead of uniformly (0: class-balanced only), reached at the end of the run: it
    /// grows linearly with progress. See [`class_probabilities`].
    #[serde(default)]
    pub hard_classes: f64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            object_fraction: 0.85,
            colour_group: 4,
            shape_text: 0.7,
            context_max: 1.6,
            box_jitter: 0.08,
            min_crop: 0.6,
            max_aspect: 1.25,
            flip: true,
            low_res: 0.3,
            low_res_min: 0.3,
            colour_tolerance: 40.0,
            hard_classes: 0.0,
        }
    }
}

/// Class sampling probabilities: `1 - hard` of the mass spread evenly over the classes, `hard`
/// in proportion to `error` (each class's recent top-1 error on its training crops). A class
/// the model has given up on (the built-in teacher once classified 10% of its own training
/// hexagons right and every other class at 65-99%) then gets more of the batch and more of
/// the gradient until it is caught up. Uniform when every error is 0 or `hard` is 0.
pub fn class_probabilities(error: &[f64], hard: f64) -> Vec<f64> {
    let k = error.len();
    if k == 0 {
        return Vec::new();
    }
    let h = hard.clamp(0.0, 1.0);
    let total: f64 = error.iter().map(|e| e.max(0.0)).sum();
    if h == 0.0 || total <= 0.0 {
        return vec![1.0 / k as f64; k];
    }
    error
        .iter()
        .map(|e| (1.0 - h) / k as f64 + h * e.max(0.0) / total)
        .collect()
}

/// An index drawn with probability proportional to `w` (uniform when they are all equal or
/// sum to 0, drawn as an integer so that uniform weights reproduce the class-balanced draw's
/// random stream exactly).
fn weighted_index(w: &[f64], rng: &mut impl Rng) -> usize {
    let total: f64 = w.iter().sum();
    if total <= 0.0 || !total.is_finite() || w.iter().all(|&v| v == w[0]) {
        return rng.random_range(0..w.len());
    }
    let mut x = rng.random_range(0.0..total);
    for (i, &v) in w.iter().enumerate() {
        if x < v {
            return i;
        }
        x -= v;
    }
    w.len() - 1
}

/// One drawn batch: normalised pixels [B, 3, S, S] (host, channel-major) and B texts.
#[derive(Debug, Clone)]
pub struct Batch {
    /// [B, 3, S, S].
    pub pixels: Vec<f32>,
    /// One text per image.
    pub texts: Vec<String>,
    /// For each object crop, its class as an index into [`Corpus::classes`]; None for a
    /// whole image.
    pub classes: Vec<Option<usize>>,
}

/// One object of a pretrain image, located by its colour.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectSample {
    /// Index of its image in the corpus.
    pub image: usize,
    /// Its visible box [x1, y1, x2, y2], image pixels.
    pub bbox: [f32; 4],
    /// What the caption says about it (class and colour always present).
    pub object: CaptionObject,
}

/// The image-caption corpus in memory, indexed for sampling.
#[derive(Debug)]
pub struct Corpus {
    images: Vec<RgbImage>,
    captions: Vec<String>,
    /// Objects located by colour.
    objects: Vec<ObjectSample>,
    /// Objects by (class, colour).
    by_class_colour: BTreeMap<(String, String), Vec<usize>>,
    /// Objects by class.
    by_class: BTreeMap<String, Vec<usize>>,
}

/// The box [x1, y1, x2, y2] of the pixels within `tolerance` (RGB distance) of `rgb`, trimmed
/// by 0.5% of those pixels on each side so that stray background pixels of a similar colour do
/// not stretch it; None when fewer than `min_pixels` match.
pub fn colour_box(
    img: &RgbImage,
    rgb: [u8; 3],
    tolerance: f64,
    min_pixels: usize,
) -> Option<[f32; 4]> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut col = vec![0usize; w];
    let mut row = vec![0usize; h];
    let mut n = 0;
    let t2 = tolerance * tolerance;
    for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
        let d2: f64 = (0..3).map(|c| (p[c] as f64 - rgb[c] as f64).powi(2)).sum();
        if d2 <= t2 {
            col[i % w] += 1;
            row[i / w] += 1;
            n += 1;
        }
    }
    if n < min_pixels.max(1) {
        return None;
    }
    let trim = n / 200;
    let lo = |hist: &[usize]| {
        let mut acc = 0;
        hist.iter().position(|&c| {
            acc += c;
            acc > trim
        })
    };
    let hi = |hist: &[usize]| {
        let mut acc = 0;
        hist.iter().rposition(|&c| {
            acc += c;
            acc > trim
        })
    };
    let (x1, x2) = (lo(&col)?, hi(&col)?);
    let (y1, y2) = (lo(&row)?, hi(&row)?);
    (x2 > x1 && y2 > y1).then_some([x1 as f32, y1 as f32, (x2 + 1) as f32, (y2 + 1) as f32])
}

/// The objects of one image whose colour no other object of the image shares, with their
/// colour boxes (those with fewer than `min_pixels` pixels of their colour are left out).
pub fn locate_objects(
    image: usize,
    img: &RgbImage,
    objects: &[CaptionObject],
    tolerance: f64,
    min_pixels: usize,
) -> Vec<ObjectSample> {
    let mut out = Vec::new();
    for o in objects {
        let (Some(_), Some(colour)) = (&o.class, &o.colour) else {
            continue;
        };
        if objects
            .iter()
            .filter(|p| p.colour.as_ref() == Some(colour))
            .count()
            > 1
        {
            continue;
        }
        let Some(named) = COLOURS.iter().find(|c| c.name == colour) else {
            continue;
        };
        if let Some(bbox) = colour_box(img, named.rgb, tolerance, min_pixels) {
            out.push(ObjectSample {
                image,
                bbox,
                object: o.clone(),
            });
        }
    }
    out
}

/// "a photo of a {shape}.", the text only shape can match.
pub fn shape_text(class: &str) -> String {
    format!("a photo of a {class}.")
}

/// Texts with the object's colour: "a photo of a red star.", "a photo of a large red star.".
pub fn colour_texts(o: &CaptionObject) -> Vec<String> {
    let (Some(c), Some(col)) = (&o.class, &o.colour) else {
        return Vec::new();
    };
    let mut v = vec![format!("a photo of a {col} {c}.")];
    if let Some(sz) = &o.size {
        v.push(format!("a photo of a {sz} {col} {c}."));
    }
    v
}

/// The text as it reads after mirroring the image left-right.
pub fn mirror_text(text: &str) -> String {
    text.split(' ')
        .map(|w| match w {
            "left" => "right",
            "right" => "left",
            w => w,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Corpus {
    /// Decodes every image of `pairs` and locates its objects by colour (`tolerance`: the
    /// largest RGB distance from the named colour).
    pub fn load(pairs: &[CaptionPair], tolerance: f64) -> Result<Self, TeacherError> {
        let images = pairs
            .iter()
            .map(|p| load_rgb(&p.path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(pairs, images, tolerance))
    }

    /// From pairs and their decoded images (same order).
    pub fn new(pairs: &[CaptionPair], images: Vec<RgbImage>, tolerance: f64) -> Self {
        let objects: Vec<ObjectSample> = pairs
            .iter()
            .zip(&images)
            .enumerate()
            .flat_map(|(i, (p, img))| locate_objects(i, img, &p.objects, tolerance, MIN_PIXELS))
            .collect();
        let mut by_class_colour: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        let mut by_class: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, o) in objects.iter().enumerate() {
            let c = o.object.class.clone().unwrap_or_default();
            by_class.entry(c.clone()).or_default().push(i);
            by_class_colour
                .entry((c, o.object.colour.clone().unwrap_or_default()))
                .or_default()
                .push(i);
        }
        Self {
            images,
            captions: pairs.iter().map(|p| p.caption.clone()).collect(),
            objects,
            by_class_colour,
            by_class,
        }
    }

    /// Pairs in the corpus.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// True when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Objects located by colour.
    pub fn object_count(&self) -> usize {
        self.objects.len()
    }

    /// The objects located by colour.
    pub fn objects(&self) -> &[ObjectSample] {
        &self.objects
    }

    /// The classes of the located objects, sorted.
    pub fn classes(&self) -> Vec<String> {
        self.by_class.keys().cloned().collect()
    }

    /// Image `i` of the corpus (panics when out of range).
    pub fn image(&self, i: usize) -> &RgbImage {
        &self.images[i]
    }

    /// Every text a batch can hold (captions, both orientations, and object texts), for
    /// building the vocabulary.
    pub fn all_texts(&self) -> Vec<String> {
        let mut t: Vec<String> = self.captions.clone();
        t.extend(self.captions.iter().map(|c| mirror_text(c)));
        for o in &self.objects {
            t.extend(colour_texts(&o.object));
            if let Some(c) = &o.object.class {
                t.push(shape_text(c));
            }
        }
        t
    }

    /// Objects in a batch of `b`: `round(object_fraction * b)` (none when no object was
    /// located).
    pub fn object_slots(&self, b: usize, cfg: &BatchConfig) -> usize {
        if self.objects.is_empty() {
            0
        } else {
            ((cfg.object_fraction * b as f64).round() as usize).min(b)
        }
    }

    /// One batch's draw: object indices (a class drawn with probability `class_p[k]` for the
    /// k-th of [`Self::classes`], uniformly when `class_p` is empty, then, for groups,
    /// `colour_group - 1` more objects of that object's colour, each of a class drawn among
    /// those seen in it with the same weights) and image indices for the rest, uniform.
    pub fn draw(
        &self,
        b: usize,
        cfg: &BatchConfig,
        class_p: &[f64],
        rng: &mut impl Rng,
    ) -> (Vec<usize>, Vec<usize>) {
        let classes: Vec<&String> = self.by_class.keys().collect();
        let weight_of = |c: &String| -> f64 {
            if class_p.len() == classes.len() {
                classes
                    .iter()
                    .position(|k| *k == c)
                    .map_or(0.0, |i| class_p[i])
            } else {
                1.0
            }
        };
        let class_w: Vec<f64> = classes.iter().map(|c| weight_of(c)).collect();
        let n_obj = self.object_slots(b, cfg);
        let mut objs = Vec::with_capacity(n_obj);
        while objs.len() < n_obj {
            let c = classes[weighted_index(&class_w, rng)];
            let list = &self.by_class[c];
            let first = list[rng.random_range(0..list.len())];
            objs.push(first);
            let colour = self.objects[first]
                .object
                .colour
                .clone()
                .unwrap_or_default();
            let (same, same_w): (Vec<&Vec<usize>>, Vec<f64>) = self
                .by_class_colour
                .iter()
                .filter(|((_, col), _)| *col == colour)
                .map(|((c, _), v)| (v, weight_of(c)))
                .unzip();
            for _ in 1..cfg.colour_group.max(1) {
                if objs.len() >= n_obj {
                    break;
                }
                let list = same[weighted_index(&same_w, rng)];
                objs.push(list[rng.random_range(0..list.len())]);
            }
        }
        let imgs = (n_obj..b)
            .map(|_| rng.random_range(0..self.images.len()))
            .collect();
        (objs, imgs)
    }

    /// The text for object `k`: its shape alone, or with its colour (and maybe size).
    fn object_text(&self, k: usize, cfg: &BatchConfig, rng: &mut impl Rng) -> String {
        let o = &self.objects[k].object;
        let class = o.class.clone().unwrap_or_default();
        if rng.random_bool(cfg.shape_text.clamp(0.0, 1.0)) {
            return shape_text(&class);
        }
        let t = colour_texts(o);
        if t.is_empty() {
            shape_text(&class)
        } else {
            t[rng.random_range(0..t.len())].clone()
        }
    }

    /// Draws and augments a batch of `b` pairs at side `pre.size`: object crops first, then
    /// whole images; classes drawn with probabilities `class_p` (see [`Self::draw`]).
    pub fn batch(
        &self,
        b: usize,
        cfg: &BatchConfig,
        class_p: &[f64],
        pre: &PreprocessConfig,
        rng: &mut impl Rng,
    ) -> Batch {
        let (objs, imgs) = self.draw(b, cfg, class_p, rng);
        let class_names = self.classes();
        let classes: Vec<Option<usize>> = objs
            .iter()
            .map(|&k| {
                let c = self.objects[k].object.class.as_deref().unwrap_or_default();
                class_names.iter().position(|n| n == c)
            })
            .chain(imgs.iter().map(|_| None))
            .collect();
        let s = pre.size;
        let mut pixels = Vec::with_capacity(b * 3 * s * s);
        let mut texts = Vec::with_capacity(b);
        let mut push = |img: &RgbImage, bx: [f32; 4], text: String, rng: &mut dyn rand::RngCore| {
            let flip = cfg.flip && rng.random_bool(0.5);
            let text = if flip { mirror_text(&text) } else { text };
            let mut px = if rng.random_bool(cfg.low_res.clamp(0.0, 1.0)) {
                let lo = ((cfg.low_res_min.clamp(0.05, 1.0) * s as f64).round() as usize).max(4);
                let r = rng.random_range(lo.min(s)..=s);
                resize_planes(&resample_box(img, bx, r, r, flip), r, r, s)
            } else {
                resample_box(img, bx, s, s, flip)
            };
            pre.normalise(&mut px);
            pixels.extend(px);
            texts.push(text);
        };
        for &k in &objs {
            let o = &self.objects[k];
            let img = &self.images[o.image];
            let text = self.object_text(k, cfg, rng);
            let bx = object_crop(img, o.bbox, cfg.box_jitter, cfg.context_max, rng);
            push(img, bx, text, rng);
        }
        for &i in &imgs {
            let img = &self.images[i];
            let bx = random_crop(img, cfg.min_crop, cfg.max_aspect, rng);
            push(img, bx, self.captions[i].clone(), rng);
        }
        Batch {
            pixels,
            texts,
            classes,
        }
    }
}

/// Fewest pixels of its colour for an object to be used.
const MIN_PIXELS: usize = 12;

/// A crop around box `b`: each side moved by up to `jitter` of the box's side, then scaled
/// about its centre by a factor uniform in [1, `context_max`] and clipped to the image.
pub fn object_crop(
    img: &RgbImage,
    b: [f32; 4],
    jitter: f64,
    context_max: f64,
    rng: &mut impl Rng,
) -> [f32; 4] {
    let (w, h) = ((b[2] - b[0]) as f64, (b[3] - b[1]) as f64);
    let j = jitter.max(0.0);
    let mut d = |side: f64| {
        if j > 0.0 {
            (rng.random_range(-j..=j) * side) as f32
        } else {
            0.0
        }
    };
    let mut c = [b[0] + d(w), b[1] + d(h), b[2] + d(w), b[3] + d(h)];
    // Keep at least a pixel of extent whatever the jitter did.
    if c[2] - c[0] < 1.0 {
        let m = 0.5 * (c[0] + c[2]);
        c[0] = m - 0.5;
        c[2] = m + 0.5;
    }
    if c[3] - c[1] < 1.0 {
        let m = 0.5 * (c[1] + c[3]);
        c[1] = m - 0.5;
        c[3] = m + 0.5;
    }
    let f = rng.random_range(1.0..=context_max.max(1.0)) as f32;
    let mut out = scale_box(c, f, img.width(), img.height());
    // Clipping can leave a sliver when the box hugs an edge; keep a pixel inside.
    let (iw, ih) = (img.width() as f32, img.height() as f32);
    out[0] = out[0].min(iw - 1.0);
    out[1] = out[1].min(ih - 1.0);
    out[2] = out[2].max(out[0] + 1.0);
    out[3] = out[3].max(out[1] + 1.0);
    out
}

/// A random window [x1, y1, x2, y2] of the image: side `sqrt(area)` between `min` and 1 of the
/// image's, aspect ratio log-uniform within `max_aspect`, clipped to the image.
pub fn random_crop(img: &RgbImage, min: f64, max_aspect: f64, rng: &mut impl Rng) -> [f32; 4] {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let side = rng.random_range(min.clamp(0.05, 1.0)..=1.0);
    let la = max_aspect.max(1.0).ln();
    let aspect = if la > 0.0 {
        rng.random_range(-la..=la).exp()
    } else {
        1.0
    };
    let cw = (w * side * aspect.sqrt()).min(w);
    let ch = (h * side / aspect.sqrt()).min(h);
    let x = rng.random_range(0.0..=(w - cw));
    let y = rng.random_range(0.0..=(h - ch));
    [x as f32, y as f32, (x + cw) as f32, (y + ch) as f32]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn obj(class: &str, colour: &str) -> CaptionObject {
        CaptionObject {
            class: Some(class.into()),
            colour: Some(colour.into()),
            size: Some("large".into()),
        }
    }

    fn rgb_of(name: &str) -> [u8; 3] {
        COLOURS.iter().find(|c| c.name == name).unwrap().rgb
    }

    /// A grey 32 x 32 image with a rectangle [x1, y1, x2, y2) of each named colour.
    fn painted(rects: &[(&str, [u32; 4])]) -> RgbImage {
        let mut img = RgbImage::from_pixel(32, 32, image::Rgb([120, 118, 125]));
        for (c, [x1, y1, x2, y2]) in rects {
            for y in *y1..*y2 {
                for x in *x1..*x2 {
                    img.put_pixel(x, y, image::Rgb(rgb_of(c)));
                }
            }
        }
        img
    }

    fn corpus() -> Corpus {
        let mut pairs = Vec::new();
        let mut images = Vec::new();
        let specs = [
            ("star", "red"),
            ("heart", "red"),
            ("ring", "red"),
            ("star", "blue"),
            ("circle", "blue"),
        ];
        for (i, (c, col)) in specs.iter().enumerate() {
            pairs.push(CaptionPair {
                image_id: i as i64,
                path: Default::default(),
                caption: format!("a large {col} {c} on the left"),
                objects: vec![obj(c, col)],
            });
            images.push(painted(&[(col, [2, 4, 20, 30])]));
        }
        // Two objects of one colour: neither can be located; the green one can.
        pairs.push(CaptionPair {
            image_id: 9,
            path: Default::default(),
            caption: "a red star left of a red ring and a green cross".into(),
            objects: vec![
                obj("star", "red"),
                obj("ring", "red"),
                obj("cross", "green"),
            ],
        });
        images.push(painted(&[
            ("red", [0, 0, 8, 8]),
            ("red", [20, 20, 30, 30]),
            ("green", [10, 2, 16, 12]),
        ]));
        Corpus::new(&pairs, images, 40.0)
    }

    #[test]
    fn colour_box_finds_the_painted_object_and_ignores_strays() {
        let mut img = painted(&[("orange", [5, 7, 25, 19])]);
        assert_eq!(
            colour_box(&img, rgb_of("orange"), 40.0, 12),
            Some([5.0, 7.0, 25.0, 19.0])
        );
        // A stray pixel of the colour far away: trimmed, not a stretched box.
        img.put_pixel(31, 31, image::Rgb(rgb_of("orange")));
        assert_eq!(
            colour_box(&img, rgb_of("orange"), 40.0, 12),
            Some([5.0, 7.0, 25.0, 19.0])
        );
        // Grain within the tolerance still counts.
        img.put_pixel(5, 7, image::Rgb([235, 145, 30]));
        assert_eq!(
            colour_box(&img, rgb_of("orange"), 40.0, 12),
            Some([5.0, 7.0, 25.0, 19.0])
        );
        assert_eq!(colour_box(&img, rgb_of("blue"), 40.0, 12), None);
    }

    #[test]
    fn objects_sharing_a_colour_are_not_located() {
        let c = corpus();
        assert_eq!(c.object_count(), 6);
        let last = c.objects().last().unwrap();
        assert_eq!(last.image, 5);
        assert_eq!(last.object.class.as_deref(), Some("cross"));
        assert_eq!(last.bbox, [10.0, 2.0, 16.0, 12.0]);
    }

    #[test]
    fn mirroring_swaps_left_and_right_only() {
        assert_eq!(
            mirror_text("a red star to the left of a ring at the top right"),
            "a red star to the right of a ring at the top left"
        );
        assert_eq!(mirror_text("a star above a ring"), "a star above a ring");
    }

    #[test]
    fn colour_groups_share_a_colour_and_images_fill_the_rest() {
        let c = corpus();
        let cfg = BatchConfig {
            object_fraction: 0.5,
            colour_group: 4,
            ..BatchConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20 {
            let (objs, imgs) = c.draw(16, &cfg, &[], &mut rng);
            assert_eq!((objs.len(), imgs.len()), (8, 8));
            for g in objs.chunks(4) {
                let cols: Vec<_> = g
                    .iter()
                    .map(|&i| c.objects[i].object.colour.clone())
                    .collect();
                assert!(cols.iter().all(|x| *x == cols[0]), "{cols:?}");
            }
        }
    }

    #[test]
    fn hard_classes_shift_the_draw_towards_the_classes_it_gets_wrong() {
        let p = class_probabilities(&[0.0, 0.5, 0.0, 0.5], 0.5);
        let want = [0.125, 0.375, 0.125, 0.375];
        assert!(
            p.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12),
            "{p:?}"
        );
        assert_eq!(class_probabilities(&[0.3, 0.1], 0.0), vec![0.5, 0.5]);
        assert_eq!(class_probabilities(&[0.0, 0.0], 0.7), vec![0.5, 0.5]);
        // Classes: circle, cross, heart, ring, star. All the weight on heart: only the first
        // object of each group is drawn by class; its colour (red) mates are drawn among the
        // red classes by the same weights, so every object is the red heart.
        let c = corpus();
        assert_eq!(c.classes(), ["circle", "cross", "heart", "ring", "star"]);
        let cfg = BatchConfig {
            object_fraction: 1.0,
            colour_group: 4,
            ..BatchConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (objs, _) = c.draw(16, &cfg, &[0.0, 0.0, 1.0, 0.0, 0.0], &mut rng);
        assert!(objs.iter().all(|&k| k == 1), "{objs:?}");
        // Each object crop carries the class its text names.
        let pre = PreprocessConfig::clip(8);
        let b = c.batch(8, &cfg, &[0.2; 5], &pre, &mut rng);
        assert_eq!(b.classes.len(), 8);
        for (t, k) in b.texts.iter().zip(&b.classes) {
            let name = &c.classes()[k.expect("object crop")];
            assert!(t.ends_with(&format!("{name}.")), "{t} {name}");
        }
    }

    #[test]
    fn object_texts_name_the_shape_and_maybe_the_colour() {
        let c = corpus();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let only_shape = BatchConfig {
            shape_text: 1.0,
            ..BatchConfig::default()
        };
        assert_eq!(
            c.object_text(1, &only_shape, &mut rng),
            "a photo of a heart."
        );
        let with_colour = BatchConfig {
            shape_text: 0.0,
            ..BatchConfig::default()
        };
        for _ in 0..10 {
            let t = c.object_text(1, &with_colour, &mut rng);
            assert!(
                t == "a photo of a red heart." || t == "a photo of a large red heart.",
                "{t}"
            );
        }
    }

    #[test]
    fn object_crops_hold_the_box_and_stay_inside() {
        let img = RgbImage::new(100, 50);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..200 {
            let b = object_crop(&img, [10.0, 20.0, 30.0, 30.0], 0.0, 1.6, &mut rng);
            assert!(
                b[0] <= 10.0 && b[1] <= 20.0 && b[2] >= 30.0 && b[3] >= 30.0,
                "{b:?}"
            );
            assert!(b[2] - b[0] <= 1.6 * 20.0 + 1e-3, "{b:?}");
            let e = object_crop(&img, [0.0, 0.0, 3.0, 2.0], 0.3, 1.6, &mut rng);
            assert!(
                e[0] >= 0.0 && e[1] >= 0.0 && e[2] <= 100.0 && e[3] <= 50.0,
                "{e:?}"
            );
            assert!(e[2] - e[0] >= 1.0 && e[3] - e[1] >= 1.0, "{e:?}");
        }
    }

    #[test]
    fn batches_have_the_right_shape_and_stay_finite() {
        let c = corpus();
        let pre = PreprocessConfig::clip(8);
        let cfg = BatchConfig {
            low_res: 0.5,
            ..BatchConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let b = c.batch(6, &cfg, &[], &pre, &mut rng);
        assert_eq!(b.texts.len(), 6);
        assert_eq!(b.pixels.len(), 6 * 3 * 8 * 8);
        assert!(b.pixels.iter().all(|v| v.is_finite()));
        assert!(b.texts[..5].iter().all(|t| t.starts_with("a photo of a ")));
    }

    #[test]
    fn random_crops_stay_inside_and_respect_the_minimum() {
        let img = RgbImage::new(100, 50);
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..200 {
            let b = random_crop(&img, 0.6, 1.3, &mut rng);
            assert!(b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= 100.0 && b[3] <= 50.0);
            let (w, h) = (b[2] - b[0], b[3] - b[1]);
            assert!(w >= 0.6 * 100.0 / 1.3f32.sqrt() - 1e-3, "{b:?}");
            assert!(h >= 0.6 * 50.0 / 1.3f32.sqrt() - 1e-3, "{b:?}");
        }
    }
}
