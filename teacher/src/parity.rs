//! `ovkd teacher parity`: run a checkpoint on reference inputs and compare every output tensor
//! with the reference values.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};

use crate::clip::ClipModel;
use crate::error::{TeacherError, to_vec};
use crate::weights::{WeightMap, read_int_tensor};

/// The largest absolute difference for one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorDiff {
    /// Tensor name, as in the expected file.
    pub name: String,
    /// Shape compared.
    pub shape: Vec<usize>,
    /// max |ours - expected|.
    pub max_abs_diff: f32,
}

/// Loads `checkpoint`, runs it on `inputs` (`pixel_values` [B, 3, S, S] normalised, `input_ids`
/// [B, L] integer) and compares each tensor of `expected` whose name it knows
/// (`image_embeds`, `text_embeds`, `image_features`, `text_features`, `logits_per_image`,
/// `vision_last_hidden_state`, `vision_pooled`, `text_last_hidden_state`, `text_pooled`).
/// Unknown names in `expected` are an error, so a typo cannot pass silently.
pub fn run_parity(
    checkpoint: &Path,
    inputs: &Path,
    expected: &Path,
    device: &Device,
) -> Result<Vec<TensorDiff>, TeacherError> {
    let (model, _unused) = ClipModel::load(checkpoint, device)?;
    let ins = WeightMap::from_safetensors(inputs)?;
    let pix = ins
        .get("pixel_values")
        .ok_or_else(|| TeacherError::format(inputs, "no tensor `pixel_values`"))?;
    if pix.shape.len() != 4 {
        return Err(TeacherError::format(
            inputs,
            format!(
                "`pixel_values` has shape {:?}, expected [B, C, H, W]",
                pix.shape
            ),
        ));
    }
    let (id_shape, ids) = read_int_tensor(inputs, "input_ids")?;
    if id_shape.len() != 2 {
        return Err(TeacherError::format(
            inputs,
            format!("`input_ids` has shape {id_shape:?}, expected [B, L]"),
        ));
    }
    let pixels =
        Tensor::<4>::from_data(TensorData::new(pix.data.clone(), pix.shape.clone()), device);
    let out = model.forward(pixels, &ids, id_shape[0], id_shape[1]);
    let exp = WeightMap::from_safetensors(expected)?;
    let mut diffs = Vec::new();
    for name in exp.names() {
        let want = exp.get(name).expect("listed");
        let (shape, got): (Vec<usize>, Vec<f32>) = match name {
            "image_embeds" => two(&out.image_embeds)?,
            "text_embeds" => two(&out.text_embeds)?,
            "image_features" => two(&out.image_features)?,
            "text_features" => two(&out.text_features)?,
            "logits_per_image" => two(&out.logits_per_image)?,
            "logits_per_text" => two(&out.logits_per_image.clone().transpose())?,
            "vision_pooled" => two(&out.vision_pooled)?,
            "text_pooled" => two(&out.text_pooled)?,
            "vision_last_hidden_state" => three(&out.vision_last_hidden_state)?,
            "text_last_hidden_state" => three(&out.text_last_hidden_state)?,
            other => {
                return Err(TeacherError::format(
                    expected,
                    format!("tensor `{other}` is not an output parity knows"),
                ));
            }
        };
        if shape != want.shape {
            return Err(TeacherError::format(
                expected,
                format!(
                    "tensor `{name}` has shape {:?}, the model gives {shape:?}",
                    want.shape
                ),
            ));
        }
        let max_abs_diff = got
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, |m, d| if d.is_nan() || d > m { d } else { m });
        diffs.push(TensorDiff {
            name: name.to_string(),
            shape,
            max_abs_diff,
        });
    }
    Ok(diffs)
}

fn two(t: &Tensor<2>) -> Result<(Vec<usize>, Vec<f32>), TeacherError> {
    Ok((t.dims().to_vec(), to_vec(t.clone())?))
}

fn three(t: &Tensor<3>) -> Result<(Vec<usize>, Vec<f32>), TeacherError> {
    Ok((t.dims().to_vec(), to_vec(t.clone())?))
}
