//! Label maps for evaluation and prediction: the student's (whole-image or sliding-window
//! inference over a list of images) and the teacher's own zero-shot MaskCLIP maps, the floor a
//! distilled student must beat.

use std::path::PathBuf;

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use ovkd_data::transforms::normalise;
use ovkd_segmenter::decoder::upsample_bilinear;
use ovkd_segmenter::{InferenceMode, Segmenter, infer_logits};

use super::SegError;
use super::maskclip::{MaskClipConfig, dense_cosine, maskclip_probs};
use super::task::ZeroShotBackground;
use super::teacher::DenseMaps;

/// A predicted label map: `[height, width]` row-major label values.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Label values, row-major.
    pub labels: Vec<u16>,
}

/// Normalised pixels `[1, 3, H, W]` of an image.
pub fn image_tensor(img: &RgbImage, mean: [f32; 3], std: [f32; 3], device: &Device) -> Tensor<4> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    Tensor::from_data(
        TensorData::new(normalise(img, mean, std), [1, 3, h, w]),
        device,
    )
}

/// Runs `model` over `images` (consecutive images of equal size in batches of up to `batch`)
/// and hands each label map to `sink(index, map)`. Channel `c` of the logits becomes label
/// value `values[c]` (`values[0]` is the background's).
#[allow(clippy::too_many_arguments)]
pub fn student_label_maps(
    model: &Segmenter,
    images: &[PathBuf],
    class_embeds: Tensor<2>,
    values: &[u16],
    mode: InferenceMode,
    mean: [f32; 3],
    std: [f32; 3],
    batch: usize,
    mut sink: impl FnMut(usize, LabelMap) -> Result<(), SegError>,
) -> Result<(), SegError> {
    let device = model.background.val().device();
    let k1 = class_embeds.dims()[0] + 1;
    if values.len() != k1 {
        return Err(SegError::Config {
            field: "values".into(),
            reason: format!("{} label values for {k1} channels", values.len()),
        });
    }
    let mut start = 0;
    while start < images.len() {
        let first = ovkd_data::loader::load_rgb(&images[start])?;
        let size = first.dimensions();
        let mut group = vec![first];
        while group.len() < batch.max(1) && start + group.len() < images.len() {
            let next = ovkd_data::loader::load_rgb(&images[start + group.len()])?;
            if next.dimensions() != size {
                break;
            }
            group.push(next);
        }
        let x = Tensor::cat(
            group
                .iter()
                .map(|img| image_tensor(img, mean, std, &device))
                .collect(),
            0,
        );
        let logits = infer_logits(model, x, class_embeds.clone(), mode);
        let [b, _, h, w] = logits.dims();
        let pred = logits
            .argmax(1)
            .try_into_vec_as::<i64>()
            .map_err(|e| SegError::Teacher(format!("reading predictions: {e:?}")))?;
        for i in 0..b {
            let labels = pred[i * h * w..(i + 1) * h * w]
                .iter()
                .map(|&c| values[c as usize])
                .collect();
            sink(
                start + i,
                LabelMap {
                    width: w,
                    height: h,
                    labels,
                },
            )?;
        }
        start += b;
    }
    Ok(())
}

/// The teacher's zero-shot (MaskCLIP) label map of one image from its dense features:
/// class probabilities of `class_embeds` `[K, D]` (label values `values[1..]`), upsampled to
/// `[height, width]`, arg-maxed; background (`values[0]`) either as one more class embedded from
/// `background_embed` `[1, D]` or where the best cosine score is below a threshold.
pub fn teacher_label_map(
    cfg: &MaskClipConfig,
    maps: &DenseMaps,
    class_embeds: Tensor<2>,
    background_embed: Option<Tensor<2>>,
    background: &ZeroShotBackground,
    values: &[u16],
    [height, width]: [usize; 2],
) -> Result<LabelMap, SegError> {
    let k = class_embeds.dims()[0];
    if values.len() != k + 1 {
        return Err(SegError::Config {
            field: "values".into(),
            reason: format!(
                "{} label values for {} classes and background",
                values.len(),
                k
            ),
        });
    }
    let read = |t: Tensor<4>| -> Result<Vec<i64>, SegError> {
        t.argmax(1)
            .try_into_vec_as::<i64>()
            .map_err(|e| SegError::Teacher(format!("reading label maps: {e:?}")))
    };
    let up = |t: Tensor<3>| {
        let [c, h, w] = t.dims();
        upsample_bilinear(t.reshape([1, c, h, w]), [height, width])
    };
    let labels: Vec<u16> = match background {
        ZeroShotBackground::Text => {
            let bg = background_embed.ok_or_else(|| SegError::Config {
                field: "distill.zero_shot_background".into(),
                reason: "`text` needs the background's text embedding".into(),
            })?;
            let all = Tensor::cat(vec![bg, class_embeds], 0);
            let probs = maskclip_probs(cfg, maps.embeds.clone(), maps.keys.clone(), all);
            read(up(probs))?
                .into_iter()
                .map(|c| values[c as usize])
                .collect()
        }
        ZeroShotBackground::Threshold { min_score } => {
            let probs = maskclip_probs(
                cfg,
                maps.embeds.clone(),
                maps.keys.clone(),
                class_embeds.clone(),
            );
            let best = up(dense_cosine(maps.embeds.clone(), class_embeds))
                .max_dim(1)
                .into_data()
                .try_into_vec::<f32>()
                .map_err(|e| SegError::Teacher(format!("reading scores: {e:?}")))?;
            read(up(probs))?
                .into_iter()
                .zip(best)
                .map(|(c, s)| {
                    if (s as f64) < *min_score {
                        values[0]
                    } else {
                        values[c as usize + 1]
                    }
                })
                .collect()
        }
    };
    Ok(LabelMap {
        width,
        height,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_shot_maps_pick_the_nearest_class_or_background() {
        let device = Device::default();
        // Two patches (1 x 2 grid) with embeddings e0 and e1; classes e0, e1; background e2.
        let embeds = Tensor::<3>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0, 0.0, 0.0], [3, 1, 2]),
            &device,
        );
        let maps = DenseMaps {
            embeds,
            keys: Tensor::<3>::ones([2, 1, 2], &device),
        };
        let classes = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0], [2, 3]),
            &device,
        );
        let bg = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 0.0, 1.0], [1, 3]), &device);
        let cfg = MaskClipConfig {
            prompt_denoise: None,
            key_smooth: None,
            ..MaskClipConfig::default()
        };
        let m = teacher_label_map(
            &cfg,
            &maps,
            classes.clone(),
            Some(bg),
            &ZeroShotBackground::Text,
            &[0, 4, 9],
            [1, 4],
        )
        .unwrap();
        assert_eq!(m.labels, vec![4, 4, 9, 9]);
        // With a threshold above every score, everything is background.
        let m = teacher_label_map(
            &cfg,
            &maps,
            classes,
            None,
            &ZeroShotBackground::Threshold { min_score: 1.5 },
            &[0, 4, 9],
            [1, 4],
        )
        .unwrap();
        assert_eq!(m.labels, vec![0, 0, 0, 0]);
    }
}
