//! One scene: a textured background and shapes placed with size, stretch, rotation and
//! occlusion; rendered with anti-aliased edges, with each object's visible mask.

use super::shapes::{Shape, sin_cos};
use crate::boxes::Xyxy;
use crate::mask::BitMask;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A colour objects are painted in, with the word captions use for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamedColour {
    /// The caption word.
    pub name: &'static str,
    /// sRGB.
    pub rgb: [u8; 3],
}

/// The object colours (saturated, or white / black, so they stand out from the muted
/// backgrounds).
pub const COLOURS: [NamedColour; 11] = [
    NamedColour {
        name: "red",
        rgb: [215, 38, 38],
    },
    NamedColour {
        name: "orange",
        rgb: [245, 135, 20],
    },
    NamedColour {
        name: "yellow",
        rgb: [242, 222, 35],
    },
    NamedColour {
        name: "green",
        rgb: [40, 165, 55],
    },
    NamedColour {
        name: "cyan",
        rgb: [40, 205, 215],
    },
    NamedColour {
        name: "blue",
        rgb: [35, 70, 215],
    },
    NamedColour {
        name: "purple",
        rgb: [135, 55, 190],
    },
    NamedColour {
        name: "pink",
        rgb: [248, 125, 195],
    },
    NamedColour {
        name: "brown",
        rgb: [125, 75, 35],
    },
    NamedColour {
        name: "white",
        rgb: [248, 248, 248],
    },
    NamedColour {
        name: "black",
        rgb: [18, 18, 18],
    },
];

/// Size class of an object relative to its image, as captions say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SizeWord {
    /// Spans (the longer side of its box, unoccluded) less than 22% of the image side.
    Small,
    /// In between.
    Medium,
    /// Spans more than 40% of the image side.
    Large,
}

impl SizeWord {
    /// From the object's span as a fraction of the image side.
    pub fn from_fraction(f: f64) -> Self {
        if f < 0.22 {
            SizeWord::Small
        } else if f > 0.40 {
            SizeWord::Large
        } else {
            SizeWord::Medium
        }
    }

    /// The canonical word.
    pub fn as_str(self) -> &'static str {
        match self {
            SizeWord::Small => "small",
            SizeWord::Medium => "medium",
            SizeWord::Large => "large",
        }
    }
}

/// Background texture of a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Background {
    /// One tone with grain.
    Plain,
    /// A linear blend of two tones.
    Gradient,
    /// Stripes at a random angle.
    Stripes,
    /// A turned checkerboard.
    Checker,
    /// Smooth blotches (value noise).
    Blotches,
    /// A grid of dots.
    Dots,
}

impl Background {
    /// Word for captions: "on a {word} background".
    pub fn word(self) -> &'static str {
        match self {
            Background::Plain => "plain",
            Background::Gradient => "shaded",
            Background::Stripes => "striped",
            Background::Checker => "checkered",
            Background::Blotches => "mottled",
            Background::Dots => "dotted",
        }
    }
}

const BACKGROUNDS: [Background; 6] = [
    Background::Plain,
    Background::Gradient,
    Background::Stripes,
    Background::Checker,
    Background::Blotches,
    Background::Dots,
];

/// How to lay out one scene.
#[derive(Debug, Clone)]
pub(crate) struct SceneSpec<'a> {
    pub width: usize,
    pub height: usize,
    /// How many objects to try to place (some may be dropped as too occluded).
    pub n_objects: usize,
    /// Object span range, pixels (max of the unrotated width and height).
    pub min_extent: f64,
    pub max_extent: f64,
    /// An object whose visible part is below this fraction of its own area is not drawn.
    pub min_visible: f64,
    /// Nor one with fewer visible pixels than this.
    pub min_pixels: u64,
    /// The class pool (class index i is `classes[i]`).
    pub classes: &'a [Shape],
    /// Largest grain amplitude (0..255 scale).
    pub noise: f64,
}

/// An object in a rendered scene.
#[derive(Debug, Clone)]
pub(crate) struct SceneObject {
    /// Index into the spec's `classes`.
    pub class: usize,
    /// Index into [`COLOURS`].
    pub colour: usize,
    pub size: SizeWord,
    /// Unoccluded mask (inside the image).
    pub full: BitMask,
    /// Visible mask (what the annotations use).
    pub visible: BitMask,
    /// Tight box of `visible`.
    pub bbox: Xyxy,
    pub area: u64,
}

/// A rendered scene, objects bottom to top.
pub(crate) struct Scene {
    pub width: usize,
    pub height: usize,
    /// RGB8, row-major.
    pub rgb: Vec<u8>,
    pub objects: Vec<SceneObject>,
    pub background: Background,
}

struct Placement {
    shape: Shape,
    class: usize,
    cx: f64,
    cy: f64,
    sx: f64,
    sy: f64,
    sin: f64,
    cos: f64,
    extent: f64,
}

/// Anti-aliased coverage of one object over its bounding region.
struct Coverage {
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
    cov: Vec<f32>,
}

impl Placement {
    fn local(&self, px: f64, py: f64) -> (f64, f64) {
        let dx = px - self.cx;
        let dy = py - self.cy;
        (
            (dx * self.cos + dy * self.sin) / self.sx,
            (-dx * self.sin + dy * self.cos) / self.sy,
        )
    }

    fn inside(&self, px: f64, py: f64) -> bool {
        let (u, v) = self.local(px, py);
        self.shape.contains(u, v)
    }

    fn coverage(&self, width: usize, height: usize) -> Coverage {
        let r = 1.5 * self.sx.max(self.sy);
        let x0 = (self.cx - r).floor().max(0.0) as usize;
        let y0 = (self.cy - r).floor().max(0.0) as usize;
        let x1 = ((self.cx + r).ceil().max(0.0) as usize).min(width);
        let y1 = ((self.cy + r).ceil().max(0.0) as usize).min(height);
        let (w, h) = (x1.saturating_sub(x0), y1.saturating_sub(y0));
        let mut centre = vec![false; w * h];
        for j in 0..h {
            for i in 0..w {
                centre[j * w + i] = self.inside((x0 + i) as f64 + 0.5, (y0 + j) as f64 + 0.5);
            }
        }
        let at = |i: isize, j: isize| -> bool {
            i >= 0
                && j >= 0
                && (i as usize) < w
                && (j as usize) < h
                && centre[j as usize * w + i as usize]
        };
        let mut cov = vec![0f32; w * h];
        for j in 0..h {
            for i in 0..w {
                let c = centre[j * w + i];
                let (ii, jj) = (i as isize, j as isize);
                let edge = at(ii - 1, jj) != c
                    || at(ii + 1, jj) != c
                    || at(ii, jj - 1) != c
                    || at(ii, jj + 1) != c;
                cov[j * w + i] = if edge {
                    let mut n = 0;
                    for sj in 0..4 {
                        for si in 0..4 {
                            let px = (x0 + i) as f64 + (si as f64 + 0.5) / 4.0;
                            let py = (y0 + j) as f64 + (sj as f64 + 0.5) / 4.0;
                            n += self.inside(px, py) as u32;
                        }
                    }
                    n as f32 / 16.0
                } else if c {
                    1.0
                } else {
                    0.0
                };
            }
        }
        Coverage { x0, y0, w, h, cov }
    }
}

impl Coverage {
    /// The object's mask: pixels at least half covered.
    fn mask(&self, width: usize, height: usize) -> BitMask {
        let mut m = BitMask::new(width, height);
        for j in 0..self.h {
            for i in 0..self.w {
                if self.cov[j * self.w + i] >= 0.5 {
                    m.set(self.x0 + i, self.y0 + j, true);
                }
            }
        }
        m
    }
}

fn uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// HSV (all in [0, 1]) to linear-ish RGB in [0, 255].
fn hsv(h: f64, s: f64, v: f64) -> [f64; 3] {
    let h6 = (h - h.floor()) * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match i as u32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [r * 255.0, g * 255.0, b * 255.0]
}

fn mix(a: [f64; 3], b: [f64; 3], t: f64) -> [f64; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn sq(x: f64) -> f64 {
    x * x
}

fn smoothstep(t: f64) -> f64 {
    t * t * (3.0 - 2.0 * t)
}

/// Paints the background into `img` (RGB f64) and returns its kind and mean tone.
fn paint_background(
    rng: &mut ChaCha8Rng,
    img: &mut [f64],
    width: usize,
    height: usize,
) -> (Background, [f64; 3]) {
    let kind = BACKGROUNDS[rng.random_range(0..BACKGROUNDS.len())];
    let hue = rng.random::<f64>();
    let sat = uniform(rng, 0.04, 0.32);
    let val = uniform(rng, 0.38, 0.66);
    let a = hsv(hue, sat, val);
    let dv = uniform(rng, 0.07, 0.18) * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
    let b = hsv(
        hue + uniform(rng, -0.08, 0.08),
        (sat + uniform(rng, -0.08, 0.08)).clamp(0.0, 0.4),
        (val + dv).clamp(0.25, 0.8),
    );
    let (s, c) = sin_cos(uniform(rng, 0.0, std::f64::consts::PI));
    let period = uniform(rng, 6.0, 18.0);
    let grid = rng.random_range(3..8usize);
    let nodes: Vec<f64> = (0..(grid + 1) * (grid + 1))
        .map(|_| rng.random::<f64>())
        .collect();
    let dot_r = uniform(rng, 0.15, 0.35) * period;
    let diag = (width * width + height * height) as f64;
    for y in 0..height {
        for x in 0..width {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            let t = match kind {
                Background::Plain => 0.0,
                Background::Gradient => {
                    let proj = (px - width as f64 / 2.0) * c + (py - height as f64 / 2.0) * s;
                    (proj / diag.sqrt() + 0.5).clamp(0.0, 1.0)
                }
                Background::Stripes => {
                    let u = (px * c + py * s) / period;
                    if u - u.floor() < 0.5 { 0.0 } else { 1.0 }
                }
                Background::Checker => {
                    let u = (px * c + py * s) / period;
                    let v = (-px * s + py * c) / period;
                    ((u.floor() + v.floor()).rem_euclid(2.0) != 0.0) as u8 as f64
                }
                Background::Blotches => {
                    let gx = px / width as f64 * grid as f64;
                    let gy = py / height as f64 * grid as f64;
                    let (ix, iy) = (gx.floor() as usize, gy.floor() as usize);
                    let (fx, fy) = (smoothstep(gx - ix as f64), smoothstep(gy - iy as f64));
                    let n = |i: usize, j: usize| nodes[j.min(grid) * (grid + 1) + i.min(grid)];
                    let top = n(ix, iy) + (n(ix + 1, iy) - n(ix, iy)) * fx;
                    let bot = n(ix, iy + 1) + (n(ix + 1, iy + 1) - n(ix, iy + 1)) * fx;
                    top + (bot - top) * fy
                }
                Background::Dots => {
                    let u = (px * c + py * s) / period;
                    let v = (-px * s + py * c) / period;
                    let du = (u - u.round()) * period;
                    let dv = (v - v.round()) * period;
                    (du * du + dv * dv <= dot_r * dot_r) as u8 as f64
                }
            };
            let col = mix(a, b, t);
            let k = 3 * (y * width + x);
            img[k..k + 3].copy_from_slice(&col);
        }
    }
    (kind, mix(a, b, 0.5))
}

fn colour_distance(a: [f64; 3], b: [u8; 3]) -> f64 {
    let d: f64 = (0..3).map(|i| sq(a[i] - b[i] as f64)).sum();
    d.sqrt()
}

/// Lays out, occludes and renders one scene.
pub(crate) fn render(rng: &mut ChaCha8Rng, spec: &SceneSpec) -> Scene {
    let (w, h) = (spec.width, spec.height);
    let mut img = vec![0f64; w * h * 3];
    let (background, bg_mean) = paint_background(rng, &mut img, w, h);

    // Placement: centres keep most of each shape inside the image and away from the centres
    // of earlier shapes, so that occlusion is partial.
    let mut placed: Vec<Placement> = Vec::new();
    for _ in 0..spec.n_objects {
        let class = rng.random_range(0..spec.classes.len());
        let shape = spec.classes[class];
        // Uniform in sqrt(extent): more small objects than large, as in natural scenes.
        let (lo, hi) = (spec.min_extent.sqrt(), spec.max_extent.sqrt());
        let extent = sq(uniform(rng, lo, hi));
        let (alo, ahi) = shape.aspect_range();
        let aspect = uniform(rng, alo, ahi);
        let half = extent / 2.0;
        let (sx, sy) = if aspect >= 1.0 {
            (half, half / aspect)
        } else {
            (half * aspect, half)
        };
        let max_rot = shape.max_rotation();
        let (sin, cos) = sin_cos(uniform(rng, -max_rot, max_rot));
        let margin = 0.35 * extent;
        let mut best = None;
        for _attempt in 0..12 {
            let cx = uniform(rng, margin, (w as f64 - margin).max(margin + 1.0));
            let cy = uniform(rng, margin, (h as f64 - margin).max(margin + 1.0));
            let clear = placed.iter().all(|p: &Placement| {
                let d2 = sq(p.cx - cx) + sq(p.cy - cy);
                d2 > sq(0.45 * (p.extent + extent) / 2.0)
            });
            best = Some((cx, cy));
            if clear {
                break;
            }
        }
        let (cx, cy) = best.expect("at least one attempt");
        placed.push(Placement {
            shape,
            class,
            cx,
            cy,
            sx,
            sy,
            sin,
            cos,
            extent,
        });
    }

    // Visibility, top-down: a shape hidden beyond the threshold by those above it is removed.
    let covs: Vec<Coverage> = placed.iter().map(|p| p.coverage(w, h)).collect();
    let fulls: Vec<BitMask> = covs.iter().map(|c| c.mask(w, h)).collect();
    let mut occupied = BitMask::new(w, h);
    let mut keep = vec![false; placed.len()];
    let mut visibles: Vec<Option<BitMask>> = vec![None; placed.len()];
    for i in (0..placed.len()).rev() {
        let full = &fulls[i];
        let full_area = full.area();
        let vis = BitMask::from_fn(w, h, |x, y| full.get(x, y) && !occupied.get(x, y));
        let vis_area = vis.area();
        if full_area == 0
            || vis_area < spec.min_pixels
            || (vis_area as f64) < spec.min_visible * full_area as f64
        {
            continue;
        }
        keep[i] = true;
        occupied.union_with(full);
        visibles[i] = Some(vis);
    }

    // Colours: far from the background, and unlike any overlapping shape below.
    let mut colours = vec![usize::MAX; placed.len()];
    for i in 0..placed.len() {
        if !keep[i] {
            continue;
        }
        let bi = fulls[i].bbox();
        let below: Vec<usize> = (0..i)
            .filter(|&j| keep[j])
            .filter(|&j| match (bi, fulls[j].bbox()) {
                (Some(a), Some(b)) => a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3],
                _ => false,
            })
            .map(|j| colours[j])
            .collect();
        let mut choice = rng.random_range(0..COLOURS.len());
        for _ in 0..16 {
            if colour_distance(bg_mean, COLOURS[choice].rgb) >= 90.0 && !below.contains(&choice) {
                break;
            }
            choice = rng.random_range(0..COLOURS.len());
        }
        colours[i] = choice;
    }

    // Paint bottom to top with shading.
    for (i, p) in placed.iter().enumerate() {
        if !keep[i] {
            continue;
        }
        let base = COLOURS[colours[i]].rgb.map(f64::from);
        let (gs, gc) = sin_cos(uniform(rng, -std::f64::consts::PI, std::f64::consts::PI));
        let amount = uniform(rng, 0.0, 0.28);
        let r = 1.5 * p.sx.max(p.sy);
        let c = &covs[i];
        for j in 0..c.h {
            for ii in 0..c.w {
                let a = c.cov[j * c.w + ii] as f64;
                if a <= 0.0 {
                    continue;
                }
                let (x, y) = (c.x0 + ii, c.y0 + j);
                let shade = 1.0
                    + amount * ((x as f64 + 0.5 - p.cx) * gc + (y as f64 + 0.5 - p.cy) * gs) / r;
                let k = 3 * (y * w + x);
                for ch in 0..3 {
                    let col = (base[ch] * shade).clamp(0.0, 255.0);
                    img[k + ch] = img[k + ch] * (1.0 - a) + col * a;
                }
            }
        }
    }

    // Grain on half the images (the other half stays smooth, and small on disk), then quantise.
    let amp = if rng.random_bool(0.5) {
        uniform(rng, 0.3 * spec.noise, spec.noise)
    } else {
        0.0
    };
    let mut rgb = vec![0u8; w * h * 3];
    for (px, out) in img.chunks_exact(3).zip(rgb.chunks_exact_mut(3)) {
        let g = if amp > 0.0 {
            (rng.random::<f64>() * 2.0 - 1.0) * amp
        } else {
            0.0
        };
        for ch in 0..3 {
            out[ch] = (px[ch] + g).round().clamp(0.0, 255.0) as u8;
        }
    }

    let side = w.min(h) as f64;
    let objects = placed
        .iter()
        .enumerate()
        .filter(|(i, _)| keep[*i])
        .map(|(i, p)| {
            let visible = visibles[i].take().expect("kept objects have masks");
            let bbox = visible.bbox().expect("kept objects are visible");
            let area = visible.area();
            // Size from the drawn shape (its unoccluded mask), not the nominal extent, which
            // overstates thin shapes such as the diamond.
            let fb = fulls[i].bbox().expect("kept objects are drawn");
            let span = f64::from((fb[2] - fb[0]).max(fb[3] - fb[1]));
            SceneObject {
                class: p.class,
                colour: colours[i],
                size: SizeWord::from_fraction(span / side),
                full: fulls[i].clone(),
                visible,
                bbox,
                area,
            }
        })
        .collect();
    Scene {
        width: w,
        height: h,
        rgb,
        objects,
        background,
    }
}

#[cfg(test)]
mod tests {
    use super::super::shapes::ALL_SHAPES;
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn visible_masks_partition_and_boxes_are_tight() {
        let spec = SceneSpec {
            width: 96,
            height: 80,
            n_objects: 6,
            min_extent: 12.0,
            max_extent: 50.0,
            min_visible: 0.5,
            min_pixels: 12,
            classes: &ALL_SHAPES,
            noise: 8.0,
        };
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let s = render(&mut rng, &spec);
            assert_eq!(s.rgb.len(), 96 * 80 * 3);
            assert!(!s.objects.is_empty());
            let mut owner = vec![0u8; 96 * 80];
            for o in &s.objects {
                assert_eq!(o.visible.bbox(), Some(o.bbox));
                assert!(o.area >= 12);
                assert!(o.area as f64 >= 0.5 * o.full.area() as f64);
                for (k, &v) in o.visible.as_slice().iter().enumerate() {
                    owner[k] += v;
                }
            }
            assert!(owner.iter().all(|&n| n <= 1), "visible masks overlap");
        }
    }
}
