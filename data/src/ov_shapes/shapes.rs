//! The shape classes: geometry in a local frame (u right, v down, nominal half-size 1), and
//! how each may be stretched and turned without becoming another class.

use serde::{Deserialize, Serialize};

/// One OV-Shapes class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// A disc (or a slight ellipse).
    Circle,
    /// A square, turned at most 15 degrees so it never reads as a diamond.
    Square,
    /// A triangle, any orientation.
    Triangle,
    /// A five-pointed star.
    Star,
    /// A regular hexagon.
    Hexagon,
    /// A plus-shaped cross, turned at most 20 degrees so it never reads as an X.
    Cross,
    /// A disc with a hole.
    Ring,
    /// A heart, roughly upright.
    Heart,
    /// A tall rhombus, roughly upright.
    Diamond,
    /// A regular pentagon.
    Pentagon,
    /// A crescent moon.
    Crescent,
    /// An arrow (shaft and head), any direction.
    Arrow,
}

/// Every shape, in class-id order (id = position + 1).
pub const ALL_SHAPES: [Shape; 12] = [
    Shape::Circle,
    Shape::Square,
    Shape::Triangle,
    Shape::Star,
    Shape::Hexagon,
    Shape::Cross,
    Shape::Ring,
    Shape::Heart,
    Shape::Diamond,
    Shape::Pentagon,
    Shape::Crescent,
    Shape::Arrow,
];

impl Shape {
    /// Its class name.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Hexagon => "hexagon",
            Shape::Cross => "cross",
            Shape::Ring => "ring",
            Shape::Heart => "heart",
            Shape::Diamond => "diamond",
            Shape::Pentagon => "pentagon",
            Shape::Crescent => "crescent",
            Shape::Arrow => "arrow",
        }
    }

    /// Other names (vocabulary synonyms).
    pub fn synonyms(self) -> &'static [&'static str] {
        match self {
            Shape::Circle => &["disc", "disk"],
            Shape::Square => &[],
            Shape::Triangle => &[],
            Shape::Star => &["five-pointed star"],
            Shape::Hexagon => &[],
            Shape::Cross => &["plus sign"],
            Shape::Ring => &["annulus", "hoop"],
            Shape::Heart => &[],
            Shape::Diamond => &["rhombus", "lozenge"],
            Shape::Pentagon => &[],
            Shape::Crescent => &["crescent moon"],
            Shape::Arrow => &[],
        }
    }

    /// Looks a shape up by name.
    pub fn from_name(name: &str) -> Option<Shape> {
        ALL_SHAPES.into_iter().find(|s| s.name() == name.trim())
    }

    /// Largest rotation (radians, either way) that keeps the class recognisable.
    pub fn max_rotation(self) -> f64 {
        let deg: f64 = match self {
            Shape::Square | Shape::Diamond => 15.0,
            Shape::Cross => 20.0,
            Shape::Heart => 25.0,
            _ => 180.0,
        };
        deg.to_radians()
    }

    /// Range of the width/height stretch.
    pub fn aspect_range(self) -> (f64, f64) {
        match self {
            Shape::Square => (0.9, 1.1),
            Shape::Circle | Shape::Ring | Shape::Hexagon | Shape::Pentagon | Shape::Star => {
                (0.85, 1.18)
            }
            _ => (0.75, 1.33),
        }
    }

    /// True when local point `(u, v)` (v down) is inside the shape.
    pub fn contains(self, u: f64, v: f64) -> bool {
        match self {
            Shape::Circle => u * u + v * v <= 1.0,
            Shape::Square => u.abs() <= 0.9 && v.abs() <= 0.9,
            Shape::Triangle => in_convex(&TRIANGLE, u, v),
            Shape::Star => in_polygon(&STAR, u, v),
            Shape::Hexagon => in_convex(&HEXAGON, u, v),
            Shape::Cross => {
                (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0)
            }
            Shape::Ring => {
                let r2 = u * u + v * v;
                (0.3025..=1.0).contains(&r2)
            }
            Shape::Heart => {
                let x = u * 1.14;
                let y = -v * 1.12 + 0.12;
                let a = x * x + y * y - 1.0;
                a * a * a - x * x * y * y * y <= 0.0
            }
            Shape::Diamond => u.abs() / 0.62 + v.abs() <= 1.0,
            Shape::Pentagon => in_convex(&PENTAGON, u, v),
            Shape::Crescent => u * u + v * v <= 1.0 && (u - 0.42) * (u - 0.42) + v * v > 0.8 * 0.8,
            Shape::Arrow => {
                ((-1.0..=0.15).contains(&u) && v.abs() <= 0.24)
                    || ((0.15..=1.0).contains(&u) && v.abs() <= 0.75 * (1.0 - u) / 0.85)
            }
        }
    }
}

const TRIANGLE: [(f64, f64); 3] = [(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)];

// Regular polygons with a vertex up, radius 1 (angles -90 + k * 360/n degrees).
const PENTAGON: [(f64, f64); 5] = [
    (0.0, -1.0),
    (0.951_056_516_295_153_5, -0.309_016_994_374_947_4),
    (0.587_785_252_292_473_1, 0.809_016_994_374_947_5),
    (-0.587_785_252_292_473_1, 0.809_016_994_374_947_5),
    (-0.951_056_516_295_153_5, -0.309_016_994_374_947_4),
];
const HEXAGON: [(f64, f64); 6] = [
    (0.0, -1.0),
    (0.866_025_403_784_438_6, -0.5),
    (0.866_025_403_784_438_6, 0.5),
    (0.0, 1.0),
    (-0.866_025_403_784_438_6, 0.5),
    (-0.866_025_403_784_438_6, -0.5),
];
// Outer radius 1 at -90 + 72k degrees, inner radius 0.42 at -54 + 72k.
const STAR: [(f64, f64); 10] = [
    (0.0, -1.0),
    (0.246_869_805_962_838_7, -0.339_787_137_637_477_9),
    (0.951_056_516_295_153_5, -0.309_016_994_374_947_4),
    (0.399_443_736_843_964_45, 0.129_787_137_637_477_9),
    (0.587_785_252_292_473_1, 0.809_016_994_374_947_5),
    (0.0, 0.42),
    (-0.587_785_252_292_473_1, 0.809_016_994_374_947_5),
    (-0.399_443_736_843_964_45, 0.129_787_137_637_477_9),
    (-0.951_056_516_295_153_5, -0.309_016_994_374_947_4),
    (-0.246_869_805_962_838_7, -0.339_787_137_637_477_9),
];

/// Point in a convex polygon with clockwise vertices (in v-down coordinates).
fn in_convex(poly: &[(f64, f64)], u: f64, v: f64) -> bool {
    let n = poly.len();
    (0..n).all(|i| {
        let (x0, y0) = poly[i];
        let (x1, y1) = poly[(i + 1) % n];
        (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0.0
    })
}

/// Even-odd point in polygon.
fn in_polygon(poly: &[(f64, f64)], u: f64, v: f64) -> bool {
    let mut inside = false;
    let n = poly.len();
    let mut j = n - 1;
    for i in 0..n {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// sin and cos from basic arithmetic only, so that scenes are bit-identical on every platform
/// (libm's `sin` may differ in the last bit between systems).
pub(crate) fn sin_cos(x: f64) -> (f64, f64) {
    use std::f64::consts::{FRAC_PI_2, PI};
    // Reduce to [-pi, pi], then to [-pi/2, pi/2] with sin(pi - x) = sin x, cos(pi - x) = -cos x.
    let tau = 2.0 * PI;
    let mut r = x - tau * (x / tau).round();
    let mut cos_sign = 1.0;
    if r > FRAC_PI_2 {
        r = PI - r;
        cos_sign = -1.0;
    } else if r < -FRAC_PI_2 {
        r = -PI - r;
        cos_sign = -1.0;
    }
    // Taylor series to x^17 / x^18: error below 1e-12 on [-pi/2, pi/2].
    let r2 = r * r;
    let mut s = 0.0;
    let mut c = 0.0;
    let mut term_s = r;
    let mut term_c = 1.0;
    for k in 0..9 {
        s += term_s;
        c += term_c;
        let k = k as f64;
        term_s *= -r2 / ((2.0 * k + 2.0) * (2.0 * k + 3.0));
        term_c *= -r2 / ((2.0 * k + 1.0) * (2.0 * k + 2.0));
    }
    (s, cos_sign * c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sin_cos_is_accurate() {
        for i in -100..=100 {
            let x = i as f64 * 0.0731;
            let (s, c) = sin_cos(x);
            assert!((s - x.sin()).abs() < 1e-12, "{x}");
            assert!((c - x.cos()).abs() < 1e-12, "{x}");
        }
    }

    #[test]
    fn polygon_constants_are_right() {
        for (k, &(x, y)) in PENTAGON.iter().enumerate() {
            let a = (-90.0 + 72.0 * k as f64).to_radians();
            assert!((x - a.cos()).abs() < 1e-12 && (y - a.sin()).abs() < 1e-12);
        }
        for (k, &(x, y)) in STAR.iter().enumerate() {
            let a = (-90.0 + 36.0 * k as f64).to_radians();
            let r = if k % 2 == 0 { 1.0 } else { 0.42 };
            assert!((x - r * a.cos()).abs() < 1e-12 && (y - r * a.sin()).abs() < 1e-12);
        }
        for (k, &(x, y)) in HEXAGON.iter().enumerate() {
            let a = (-90.0 + 60.0 * k as f64).to_radians();
            assert!((x - a.cos()).abs() < 1e-12 && (y - a.sin()).abs() < 1e-12);
        }
    }

    #[test]
    fn shapes_have_their_holes_and_bodies() {
        for s in ALL_SHAPES {
            assert!(!s.contains(1.3, 1.3), "{s:?}");
            let filled = (0..400)
                .filter(|i| {
                    s.contains((i % 20) as f64 / 10.0 - 0.95, (i / 20) as f64 / 10.0 - 0.95)
                })
                .count();
            assert!((40..400).contains(&filled), "{s:?}: {filled}");
        }
        assert!(Shape::Circle.contains(0.0, 0.0));
        assert!(!Shape::Ring.contains(0.0, 0.0));
        assert!(!Shape::Crescent.contains(0.3, 0.0));
        assert!(Shape::Crescent.contains(-0.8, 0.0));
        assert!(Shape::Heart.contains(0.0, 0.3));
        assert!(!Shape::Heart.contains(0.0, -0.95) && Shape::Heart.contains(0.55, -0.9));
        assert!(Shape::Arrow.contains(0.9, 0.0) && !Shape::Arrow.contains(0.9, 0.5));
        assert!(Shape::Star.contains(0.0, -0.9) && !Shape::Star.contains(0.5, -0.6));
        assert_eq!(Shape::from_name("ring"), Some(Shape::Ring));
    }
}
