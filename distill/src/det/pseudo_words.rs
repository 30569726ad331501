//! BARON's student side: a region's pseudo-words (made by the box head's linear map into the
//! teacher's token-embedding space) are read by the teacher's frozen text tower as if they
//! were a caption: `[SOT] w₁ … w_k [EOT]`, pooled at `[EOT]`, projected and L2-normalised. A
//! bag's sequence holds the words of all its regions, each region's words plus a sine
//! embedding of that region's position and size inside the bag's enclosing box.
//!
//! The tower's parameters live on a plain device: on an autodiff device they are constants,
//! so gradients reach the pseudo-words (and through them the student) and nothing else.

use burn::nn::Linear;
use burn::tensor::{Int, Tensor, TensorData};
use ovkd_teacher::clip::TextTransformer;
use ovkd_teacher::embed::{Teacher, TextTeacher};

use super::DetError;

/// The sine embedding `[N * W]` (row-major) of boxes `[x1, y1, x2, y2]` given relative to an
/// enclosing box (so in `[0, 1]`): their `(cx, cy, w, h)`, each coordinate `c` by `W / 4`
/// features `sin / cos(2π c / t^(⌊k/2⌋ − W/16))` (the official code's frequencies with
/// `t = temperature`), features alternating sin, cos. `W` must be a multiple of 4.
pub fn sine_embedding(boxes: &[[f32; 4]], width: usize, temperature: f32) -> Vec<f32> {
    assert!(
        width % 4 == 0,
        "the sine embedding needs a width divisible by 4"
    );
    let f = width / 4;
    let mut out = Vec::with_capacity(boxes.len() * width);
    for b in boxes {
        let coords = [
            0.5 * (b[0] + b[2]),
            0.5 * (b[1] + b[3]),
            b[2] - b[0],
            b[3] - b[1],
        ];
        for c in coords {
            for k in 0..f {
                let exponent = (k / 2) as f32 - (f / 4) as f32;
                let x = c * std::f32::consts::TAU / temperature.powf(exponent);
                out.push(if k % 2 == 0 { x.sin() } else { x.cos() });
            }
        }
    }
    out
}

/// The frozen text tower that turns pseudo-word sequences into embeddings.
#[derive(Debug, Clone)]
pub struct PseudoWordEncoder {
    text_model: TextTransformer,
    text_projection: Linear,
    sot: Vec<f32>,
    eot: Vec<f32>,
    /// Token-embedding width W.
    pub width: usize,
    /// Longest sequence the tower takes, `[SOT]` and `[EOT]` included.
    pub context: usize,
    /// Mean L2 norm of the tower's token embeddings: the scale the position embedding is
    /// given, so it neither drowns the words nor vanishes.
    pub token_norm: f32,
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

impl PseudoWordEncoder {
    /// The text tower `text_model` and its projection, with its start and end tokens `sot`,
    /// `eot`.
    pub fn new(
        text_model: &TextTransformer,
        text_projection: &Linear,
        sot: u32,
        eot: u32,
    ) -> Result<Self, DetError> {
        let table = text_model.token_embedding.val();
        let [v, width] = table.dims();
        if sot as usize >= v || eot as usize >= v {
            return Err(DetError::Other(format!(
                "start/end tokens {sot}/{eot} outside the text tower's {v}-token vocabulary"
            )));
        }
        let rows = host(table);
        let token_norm = rows
            .chunks(width)
            .map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt())
            .sum::<f32>()
            / v as f32;
        let row = |i: u32| rows[i as usize * width..(i as usize + 1) * width].to_vec();
        Ok(Self {
            text_model: text_model.clone(),
            text_projection: text_projection.clone(),
            sot: row(sot),
            eot: row(eot),
            width,
            context: text_model.context_length(),
            token_norm,
        })
    }

    /// The tower of a loaded teacher.
    pub fn from_teacher(teacher: &Teacher) -> Result<Self, DetError> {
        Self::new(
            &teacher.model.text_model,
            &teacher.model.text_projection,
            teacher.tokenizer.sot(),
            teacher.tokenizer.eot(),
        )
    }

    /// The tower of a teacher's text half alone (an export bundle's `text/`): the same
    /// encoder as [`Self::from_teacher`] on the whole teacher.
    pub fn from_text_teacher(teacher: &TextTeacher) -> Result<Self, DetError> {
        Self::new(
            &teacher.tower.text_model,
            &teacher.tower.text_projection,
            teacher.tokenizer.sot(),
            teacher.tokenizer.eot(),
        )
    }

    /// Embeddings `[S, D]` of `sequences`, each a list of rows of `words` `[T, W]` (on any
    /// device; differentiable there) read in order between `[SOT]` and `[EOT]`.
    pub fn encode(
        &self,
        words: Tensor<2>,
        sequences: &[Vec<usize>],
    ) -> Result<Tensor<2>, DetError> {
        let [t, w] = words.dims();
        if w != self.width {
            return Err(DetError::Other(format!(
                "pseudo-words have width {w} but the text tower's tokens {}",
                self.width
            )));
        }
        let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let l = longest + 2;
        if l > self.context {
            return Err(DetError::Other(format!(
                "a pseudo-word sequence of {longest} words does not fit the text tower's context of {} (fewer words per region or smaller bags)",
                self.context
            )));
        }
        let device = words.device();
        let mut extra = self.sot.clone();
        extra.extend_from_slice(&self.eot);
        extra.extend(std::iter::repeat_n(0.0, w));
        let extra = Tensor::<2>::from_data(TensorData::new(extra, [3, w]), &device);
        let table = Tensor::cat(vec![words, extra], 0);
        let (sot, eot, pad) = (t, t + 1, t + 2);
        let s = sequences.len();
        let mut idx = Vec::with_capacity(s * l);
        let mut eots = Vec::with_capacity(s);
        for seq in sequences {
            idx.push(sot as i64);
            idx.extend(seq.iter().map(|&r| r as i64));
            idx.push(eot as i64);
            idx.extend(std::iter::repeat_n(pad as i64, l - seq.len() - 2));
            eots.push(seq.len() + 1);
        }
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [s * l]), &device);
        let x = table.select(0, idx).reshape([s, l, w]);
        let pooled = self.text_model.forward_embeds(x, &eots).pooled;
        Ok(ovkd_teacher::clip::model::l2_normalize(
            self.text_projection.forward(pooled),
        ))
    }

    /// Single regions: row `i` of `pseudo_words` `[N, P · W]` read as the sequence of its `P`
    /// words: `[N, D]`.
    pub fn encode_regions(&self, pseudo_words: Tensor<2>) -> Result<Tensor<2>, DetError> {
        let [n, pw] = pseudo_words.dims();
        let p = pw / self.width.max(1);
        if n == 0 {
            let d = self.text_projection.weight.dims()[1];
            return Ok(Tensor::zeros([0, d], &pseudo_words.device()));
        }
        let seqs: Vec<Vec<usize>> = (0..n).map(|i| (i * p..(i + 1) * p).collect()).collect();
        self.encode(pseudo_words.reshape([n * p, self.width]), &seqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sine_embedding_pairs_are_on_the_unit_circle_and_known_values() {
        let e = sine_embedding(&[[0.0, 0.0, 1.0, 0.5], [0.25, 0.0, 0.75, 0.5]], 16, 1.2);
        assert_eq!(e.len(), 32);
        // Width 16: 4 features per coordinate; k = 0, 1 use exponent 0 - 1 = -1 → period
        // 1 / 1.2 ... so the first feature of cx = 0.5 is sin(2π · 0.5 · 1.2).
        let want = (std::f32::consts::TAU * 0.5 * 1.2).sin();
        assert!((e[0] - want).abs() < 1e-6, "{} vs {want}", e[0]);
        let want = (std::f32::consts::TAU * 0.5 * 1.2).cos();
        assert!((e[1] - want).abs() < 1e-6);
        // k = 2, 3: exponent 0 → sin/cos(2π c).
        assert!((e[2] - (std::f32::consts::TAU * 0.5).sin()).abs() < 1e-6);
        for row in e.chunks(16) {
            for pair in row.chunks(2) {
                assert!((pair[0] * pair[0] + pair[1] * pair[1] - 1.0).abs() < 1e-5);
            }
        }
        // Same centre, different size: the centre features agree, the size features do not.
        assert_eq!(e[..8], e[16..24]);
        assert_ne!(e[8..16], e[24..32]);
    }
}
