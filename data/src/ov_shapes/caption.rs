//! Captions that name every object with its colour, size and position:
//! "a small red star left of a large blue ring and a medium white heart below the blue ring".

use super::scene::{COLOURS, Scene, SceneObject, SizeWord};
use super::shapes::Shape;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Caption style: `Plain` for train/val (one consistent grammar), `Varied` for the pretraining
/// corpus (prefixes, synonyms for sizes, absolute positions, background words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Plain,
    Varied,
}

fn pick<'a>(rng: &mut ChaCha8Rng, words: &[&'a str]) -> &'a str {
    words[rng.random_range(0..words.len())]
}

fn size_word(rng: &mut ChaCha8Rng, s: SizeWord, style: Style) -> &'static str {
    match (style, s) {
        (Style::Plain, s) => s.as_str(),
        (Style::Varied, SizeWord::Small) => pick(rng, &["small", "small", "little", "tiny"]),
        (Style::Varied, SizeWord::Medium) => pick(rng, &["medium", "medium-sized", "mid-sized"]),
        (Style::Varied, SizeWord::Large) => pick(rng, &["large", "large", "big"]),
    }
}

fn centre(o: &SceneObject) -> (f64, f64) {
    let b = o.bbox;
    (
        (b[0] as f64 + b[2] as f64) / 2.0,
        (b[1] as f64 + b[3] as f64) / 2.0,
    )
}

fn overlaps(a: &SceneObject, b: &SceneObject) -> bool {
    a.full
        .as_slice()
        .iter()
        .zip(b.full.as_slice())
        .any(|(&x, &y)| x & y != 0)
}

/// How `a` sits relative to `b`; `a_above` says whether `a` is drawn over `b`.
fn relation(rng: &mut ChaCha8Rng, a: &SceneObject, b: &SceneObject, a_above: bool) -> &'static str {
    if overlaps(a, b) {
        return if a_above { "in front of" } else { "behind" };
    }
    let (ax, ay) = centre(a);
    let (bx, by) = centre(b);
    let (dx, dy) = (ax - bx, ay - by);
    if dx.abs() >= dy.abs() {
        if dx < 0.0 {
            pick(rng, &["left of", "to the left of"])
        } else {
            pick(rng, &["right of", "to the right of"])
        }
    } else if dy < 0.0 {
        "above"
    } else {
        pick(rng, &["below", "under"])
    }
}

fn absolute_position(o: &SceneObject, w: usize, h: usize) -> &'static str {
    let (x, y) = centre(o);
    let col = ((x / w as f64 * 3.0).floor() as usize).min(2);
    let row = ((y / h as f64 * 3.0).floor() as usize).min(2);
    [
        ["at the top left", "at the top", "at the top right"],
        ["on the left", "in the centre", "on the right"],
        ["at the bottom left", "at the bottom", "at the bottom right"],
    ][row][col]
}

/// The caption of a scene; `names` are the class names by class index.
pub(crate) fn caption(
    rng: &mut ChaCha8Rng,
    scene: &Scene,
    classes: &[Shape],
    style: Style,
) -> String {
    let objs = &scene.objects;
    let n = objs.len();
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    let phrase = |rng: &mut ChaCha8Rng, k: usize| -> String {
        let o = &objs[k];
        format!(
            "a {} {} {}",
            size_word(rng, o.size, style),
            COLOURS[o.colour].name,
            classes[o.class].name()
        )
    };
    let short = |k: usize| -> String {
        let o = &objs[k];
        format!("the {} {}", COLOURS[o.colour].name, classes[o.class].name())
    };
    let body = match n {
        0 => "an empty background".to_string(),
        1 => {
            let mut s = phrase(rng, order[0]);
            if style == Style::Varied && rng.random_bool(0.5) {
                s.push(' ');
                s.push_str(absolute_position(
                    &objs[order[0]],
                    scene.width,
                    scene.height,
                ));
            }
            s
        }
        _ => {
            // Objects are indexed bottom to top, so `a > b` means a is drawn over b.
            let (a, b) = (order[0], order[1]);
            let rel = relation(rng, &objs[a], &objs[b], a > b);
            let first = format!("{} {rel} {}", phrase(rng, a), phrase(rng, b));
            let mut clauses = vec![first];
            for m in 2..n {
                let k = order[m];
                let (kx, ky) = centre(&objs[k]);
                let reference = order[..m]
                    .iter()
                    .copied()
                    .min_by(|&p, &q| {
                        let d = |i: usize| {
                            let (x, y) = centre(&objs[i]);
                            (x - kx) * (x - kx) + (y - ky) * (y - ky)
                        };
                        d(p).total_cmp(&d(q))
                    })
                    .expect("earlier objects exist");
                let rel = relation(rng, &objs[k], &objs[reference], k > reference);
                clauses.push(format!("{} {rel} {}", phrase(rng, k), short(reference)));
            }
            let last = clauses.pop().expect("two or more clauses");
            format!("{} and {last}", clauses.join(", "))
        }
    };
    match style {
        Style::Plain => body,
        Style::Varied => {
            let prefix = pick(
                rng,
                &[
                    "",
                    "",
                    "a photo of ",
                    "a picture of ",
                    "an image of ",
                    "a drawing of ",
                    "a rendering of ",
                    "there is ",
                ],
            );
            let mut s = format!("{prefix}{body}");
            if rng.random_bool(0.3) {
                s.push_str(&format!(
                    " against a {} background",
                    scene.background.word()
                ));
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::scene::{SceneSpec, render};
    use super::super::shapes::ALL_SHAPES;
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn captions_name_every_object_with_colour_and_size() {
        let spec = SceneSpec {
            width: 128,
            height: 128,
            n_objects: 5,
            min_extent: 12.0,
            max_extent: 70.0,
            min_visible: 0.5,
            min_pixels: 16,
            classes: &ALL_SHAPES,
            noise: 6.0,
        };
        for seed in 0..30 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let scene = render(&mut rng, &spec);
            for style in [Style::Plain, Style::Varied] {
                let c = caption(&mut rng, &scene, &ALL_SHAPES, style);
                for o in &scene.objects {
                    let name = ALL_SHAPES[o.class].name();
                    let colour = COLOURS[o.colour].name;
                    assert!(c.contains(&format!("{colour} {name}")), "{c}");
                }
                if style == Style::Plain {
                    let words = c
                        .split(' ')
                        .filter(|w| ["small", "medium", "large"].contains(w));
                    assert_eq!(words.count(), scene.objects.len(), "{c}");
                }
                if scene.objects.len() >= 2 {
                    assert!(
                        [
                            "left of",
                            "right of",
                            "above",
                            "below",
                            "under",
                            "in front of",
                            "behind"
                        ]
                        .iter()
                        .any(|r| c.contains(r)),
                        "{c}"
                    );
                }
            }
        }
    }
}
