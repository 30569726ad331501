//! Drawing pre-training batches from the OV-Shapes image-caption corpus: which images, which
//! texts, and augmentations that keep the texts true.
//!
//! A caption names colour, size and position as well as shape, and colour alone tells most
//! pairs of a batch apart, so a model trained on captions only learns to match colours. Shape
//! has to be the signal that cannot be avoided: part of each batch is single-object images
//! (class-balanced) paired with texts that name only the shape ("a photo of a star."), which
//! only shape can match; and single objects are drawn in groups that share a colour, so that
//! even their colour texts ("a photo of a red star.", "a photo of a red heart.") differ only
//! by shape.
//!
//! Augmentations: random resized crops (the texts stay true as long as the object stays
//! mostly in view), left-right mirroring with "left" and "right" swapped in the text, and
//! rendering at a lower resolution then enlarging (crops of small val objects are blurry).
//! No rotation or vertical flip: "above"/"below" and the upright heart would stop being true.

use std::collections::BTreeMap;

use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::TeacherError;
use crate::preprocess::{PreprocessConfig, resample_box, resize_planes};
use crate::shapes::{CaptionObject, CaptionPair, load_rgb};

/// How batches are drawn and augmented.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchConfig {
    /// Share of each batch drawn from single-object images, class-balanced.
    pub single_fraction: f64,
    /// Single-object images are drawn in groups of this many sharing a colour (1: no groups).
    pub colour_group: usize,
    /// For a single-object sample: probability of the shape-only text "a photo of a {shape}.".
    pub shape_text: f64,
    /// Otherwise, probability of an object text with its colour (and maybe size) rather than
    /// the caption.
    pub object_text: f64,
    /// Smallest random crop side, as a fraction of the image side.
    pub min_crop: f64,
    /// Largest aspect ratio of a random crop (and its inverse).
    pub max_aspect: f64,
    /// Mirror left-right with probability 1/2 (swapping "left" and "right" in the text).
    pub flip: bool,
    /// Probability of rendering the crop at a lower resolution and enlarging it.
    pub low_res: f64,
    /// Lowest such resolution, as a fraction of the input side.
    pub low_res_min: f64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            single_fraction: 0.75,
            colour_group: 4,
            shape_text: 0.6,
            object_text: 0.5,
            min_crop: 0.6,
            max_aspect: 1.25,
            flip: true,
            low_res: 0.25,
            low_res_min: 0.3,
        }
    }
}

/// One drawn batch: normalised pixels [B, 3, S, S] (host, channel-major) and B texts.
#[derive(Debug, Clone)]
pub struct Batch {
    /// [B, 3, S, S].
    pub pixels: Vec<f32>,
    /// One text per image.
    pub texts: Vec<String>,
}

/// The image-caption corpus in memory, indexed for sampling.
#[derive(Debug)]
pub struct Corpus {
    images: Vec<RgbImage>,
    captions: Vec<String>,
    /// Per image: its object when the caption names exactly one with a class.
    single: Vec<Option<CaptionObject>>,
    /// Single-object images by (class, colour).
    by_class_colour: BTreeMap<(String, String), Vec<usize>>,
    /// Single-object images by class.
    by_class: BTreeMap<String, Vec<usize>>,
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
    /// Decodes every image of `pairs`.
    pub fn load(pairs: &[CaptionPair]) -> Result<Self, TeacherError> {
        let images = pairs
            .iter()
            .map(|p| load_rgb(&p.path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(pairs, images))
    }

    /// From pairs and their decoded images (same order).
    pub fn new(pairs: &[CaptionPair], images: Vec<RgbImage>) -> Self {
        let single: Vec<Option<CaptionObject>> = pairs
            .iter()
            .map(|p| match p.objects.as_slice() {
                [o] if o.class.is_some() => Some(o.clone()),
                _ => None,
            })
            .collect();
        let mut by_class_colour: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        let mut by_class: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, o) in single.iter().enumerate() {
            if let Some(o) = o {
                let c = o.class.clone().unwrap_or_default();
                by_class.entry(c.clone()).or_default().push(i);
                by_class_colour
                    .entry((c, o.colour.clone().unwrap_or_default()))
                    .or_default()
                    .push(i);
            }
        }
        Self {
            images,
            captions: pairs.iter().map(|p| p.caption.clone()).collect(),
            single,
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

    /// Images showing a single named object.
    pub fn single_count(&self) -> usize {
        self.single.iter().filter(|o| o.is_some()).count()
    }

    /// Every text a batch can hold (captions, both orientations, and object texts), for
    /// building the vocabulary.
    pub fn all_texts(&self) -> Vec<String> {
        let mut t: Vec<String> = self.captions.clone();
        t.extend(self.captions.iter().map(|c| mirror_text(c)));
        for o in self.single.iter().flatten() {
            t.extend(colour_texts(o));
            if let Some(c) = &o.class {
                t.push(shape_text(c));
            }
        }
        t
    }

    /// Indices of the images of one batch: `round(single_fraction * B)` single-object images,
    /// class-balanced (a class drawn uniformly, then, for groups, `colour_group` images of that
    /// colour, each of a class drawn uniformly among those shown in it), and the rest drawn
    /// uniformly from the whole corpus.
    pub fn draw(&self, b: usize, cfg: &BatchConfig, rng: &mut impl Rng) -> Vec<usize> {
        let classes: Vec<&String> = self.by_class.keys().collect();
        let n_single = if classes.is_empty() {
            0
        } else {
            ((cfg.single_fraction * b as f64).round() as usize).min(b)
        };
        let mut out = Vec::with_capacity(b);
        while out.len() < n_single {
            let c = classes[rng.random_range(0..classes.len())];
            let list = &self.by_class[c];
            let first = list[rng.random_range(0..list.len())];
            out.push(first);
            let colour = self.single[first]
                .as_ref()
                .and_then(|o| o.colour.clone())
                .unwrap_or_default();
            // The rest of the group: same colour, classes drawn uniformly among those that
            // come in that colour.
            let same: Vec<&Vec<usize>> = self
                .by_class_colour
                .iter()
                .filter(|((_, col), _)| *col == colour)
                .map(|(_, v)| v)
                .collect();
            for _ in 1..cfg.colour_group.max(1) {
                if out.len() >= n_single {
                    break;
                }
                let list = same[rng.random_range(0..same.len())];
                out.push(list[rng.random_range(0..list.len())]);
            }
        }
        while out.len() < b {
            out.push(rng.random_range(0..self.images.len()));
        }
        out
    }

    /// The text for image `i` drawn as a single-object sample (`single`) or not.
    fn text(&self, i: usize, single: bool, cfg: &BatchConfig, rng: &mut impl Rng) -> String {
        if single && let Some(o) = &self.single[i] {
            if rng.random_bool(cfg.shape_text.clamp(0.0, 1.0))
                && let Some(c) = &o.class
            {
                return shape_text(c);
            }
            let t = colour_texts(o);
            if !t.is_empty() && rng.random_bool(cfg.object_text.clamp(0.0, 1.0)) {
                return t[rng.random_range(0..t.len())].clone();
            }
        }
        self.captions[i].clone()
    }

    /// Draws and augments a batch of `b` pairs at side `pre.size`.
    pub fn batch(
        &self,
        b: usize,
        cfg: &BatchConfig,
        pre: &PreprocessConfig,
        rng: &mut impl Rng,
    ) -> Batch {
        let idx = self.draw(b, cfg, rng);
        let n_single = ((cfg.single_fraction * b as f64).round() as usize).min(b);
        let s = pre.size;
        let mut pixels = Vec::with_capacity(b * 3 * s * s);
        let mut texts = Vec::with_capacity(b);
        for (k, &i) in idx.iter().enumerate() {
            let mut t = self.text(i, k < n_single, cfg, rng);
            let flip = cfg.flip && rng.random_bool(0.5);
            if flip {
                t = mirror_text(&t);
            }
            let img = &self.images[i];
            let bx = random_crop(img, cfg.min_crop, cfg.max_aspect, rng);
            let mut px = if rng.random_bool(cfg.low_res.clamp(0.0, 1.0)) {
                let lo = ((cfg.low_res_min.clamp(0.05, 1.0) * s as f64).round() as usize).max(4);
                let r = rng.random_range(lo.min(s)..=s);
                resize_planes(&resample_box(img, bx, r, r, flip), r, r, s)
            } else {
                resample_box(img, bx, s, s, flip)
            };
            pre.normalise(&mut px);
            pixels.extend(px);
            texts.push(t);
        }
        Batch { pixels, texts }
    }
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
            images.push(RgbImage::from_pixel(
                16,
                16,
                image::Rgb([i as u8 * 40, 0, 0]),
            ));
        }
        pairs.push(CaptionPair {
            image_id: 9,
            path: Default::default(),
            caption: "a red star left of a blue ring".into(),
            objects: vec![obj("star", "red"), obj("ring", "blue")],
        });
        images.push(RgbImage::new(16, 16));
        Corpus::new(&pairs, images)
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
    fn colour_groups_share_a_colour_and_singles_come_first() {
        let c = corpus();
        assert_eq!(c.single_count(), 5);
        let cfg = BatchConfig {
            single_fraction: 0.5,
            colour_group: 4,
            ..BatchConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20 {
            let idx = c.draw(16, &cfg, &mut rng);
            assert_eq!(idx.len(), 16);
            for g in idx[..8].chunks(4) {
                let cols: Vec<_> = g
                    .iter()
                    .map(|&i| c.single[i].as_ref().unwrap().colour.clone())
                    .collect();
                assert!(cols.iter().all(|x| *x == cols[0]), "{cols:?}");
            }
        }
    }

    #[test]
    fn shape_texts_only_for_single_samples() {
        let c = corpus();
        let cfg = BatchConfig {
            shape_text: 1.0,
            ..BatchConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(c.text(1, true, &cfg, &mut rng), "a photo of a heart.");
        assert_eq!(
            c.text(1, false, &cfg, &mut rng),
            "a large red heart on the left"
        );
        assert_eq!(
            c.text(5, true, &cfg, &mut rng),
            "a red star left of a blue ring"
        );
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
        let b = c.batch(6, &cfg, &pre, &mut rng);
        assert_eq!(b.texts.len(), 6);
        assert_eq!(b.pixels.len(), 6 * 3 * 8 * 8);
        assert!(b.pixels.iter().all(|v| v.is_finite()));
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
