//! The segmenter's inference graph at a fixed input size: image → ResNet body → dense decoder
//! → L2-normalised pixel embeddings → cosine logits against a baked-in label set (background
//! first, then the classes' text embeddings), divided by the temperature and upsampled
//! bilinearly to the input → label map.
//!
//! Graph inputs and outputs:
//!
//! ```text
//! image         float [1, 3, H, W]   RGB in [0, 1]; the graph subtracts the run's mean and
//!                                    divides by its std (`metadata_props`: pixel_mean/std)
//! logits        float [1, K+1, H, W] channel 0 background, k the k-th class
//! labels        int64 [1, H, W]      argmax of the logits
//! pixel_embeds  float [1, D, H/4, W/4]
//! ```

use burn::tensor::{Int, Tensor, TensorData};
use ovkd_segmenter::Segmenter;
use ovkd_segmenter::decoder::Decoder;

use crate::backbone::{LevelValue, normalise, resnet};
use crate::check::NamedTensor;
use crate::graph::{Graph, Value, tensor_values};
use crate::layers::{batch_norm, conv2d};
use crate::proto::{DataType, ModelProto};
use crate::{ExportError, check_size};

/// What to export besides the model.
#[derive(Clone, Debug)]
pub struct SegExport {
    /// Input `[H, W]`, multiples of 32.
    pub size: [usize; 2],
    /// Channel means of RGB in `[0, 1]` subtracted before the network.
    pub pixel_mean: [f32; 3],
    /// Channel standard deviations the inputs are divided by.
    pub pixel_std: [f32; 3],
    /// Class names, in the order of the class embeddings' rows (label `k` = name `k - 1`).
    pub class_names: Vec<String>,
}

fn decoder(g: &mut Graph, features: &[LevelValue], dec: &Decoder) -> Result<Value, ExportError> {
    if features.len() != dec.laterals.len() {
        return Err(ExportError::Model(format!(
            "decoder built for {} levels, given {}",
            dec.laterals.len(),
            features.len()
        )));
    }
    let conv_bn_relu = |g: &mut Graph, x: &Value, b: &ovkd_segmenter::decoder::ConvBnRelu| {
        let y = conv2d(g, x, &b.conv)?;
        let y = batch_norm(g, &y, &b.bn)?;
        Ok::<_, ExportError>(g.relu(&y))
    };
    let mut top: Option<Value> = None;
    for i in (0..features.len()).rev() {
        let lateral = conv2d(g, &features[i].value, &dec.laterals[i])?;
        let x = match top.take() {
            None => lateral,
            Some(t) => {
                let [h, w] = lateral.hw();
                let up = if t.hw() == [h, w] {
                    t
                } else {
                    g.resize_bilinear(&t, [h, w])
                };
                g.add(&lateral, &up)
            }
        };
        top = Some(conv_bn_relu(g, &x, &dec.fuse[i])?);
    }
    let mut x = top.ok_or_else(|| ExportError::Model("decoder without levels".into()))?;
    for b in &dec.refine {
        x = conv_bn_relu(g, &x, b)?;
    }
    let x = conv2d(g, &x, &dec.project)?;
    Ok(g.l2_normalize(&x, 1, 1e-6))
}

/// The segmenter's graph for `class_embeds` `[K, D]` (L2-normalised text embeddings).
pub fn export_segmenter(
    model: &Segmenter,
    class_embeds: Tensor<2>,
    spec: &SegExport,
) -> Result<ModelProto, ExportError> {
    let [h, w] = spec.size;
    check_size(spec.size)?;
    let [k, d] = class_embeds.dims();
    if k != spec.class_names.len() {
        return Err(ExportError::Model(format!(
            "{k} class embeddings for {} class names",
            spec.class_names.len()
        )));
    }
    if d != model.embed_dim() {
        return Err(ExportError::Model(format!(
            "class embeddings have D = {d}, the segmenter {}",
            model.embed_dim()
        )));
    }
    let mut g = Graph::new();
    let image = g.input("image", &[1, 3, h as i64, w as i64], DataType::Float);
    let x = normalise(&mut g, &image, spec.pixel_mean, spec.pixel_std);
    let feats = resnet(&mut g, &x, &model.body)?;
    let pixel_embeds = decoder(&mut g, &feats, &model.decoder)?;
    let [ph, pw] = pixel_embeds.hw();
    let (label_dims, label_values) = tensor_values(model.label_embeds(class_embeds))?;
    let labels = g.constant("label_embeds", &label_dims, &label_values);
    let flat = g.reshape(
        &pixel_embeds,
        &[1, d as i64, (ph * pw) as i64],
        vec![1, d as i64, (ph * pw) as i64],
    );
    let cos = g.matmul(&labels, &flat);
    let cos = g.reshape(
        &cos,
        &[1, (k + 1) as i64, ph as i64, pw as i64],
        vec![1, (k + 1) as i64, ph as i64, pw as i64],
    );
    let t = g.scalar("temperature", model.temperature as f32);
    let logits = g.div(&cos, &t);
    let logits = if [ph, pw] == [h, w] {
        logits
    } else {
        g.resize_bilinear(&logits, [h, w])
    };
    let label_map = g.argmax(&logits, 1);
    g.output(&logits, "logits", DataType::Float, "N");
    g.output(&label_map, "labels", DataType::Int64, "N");
    g.output(&pixel_embeds, "pixel_embeds", DataType::Float, "N");
    let mut names = vec!["background".to_string()];
    names.extend(spec.class_names.iter().cloned());
    let meta = vec![
        ("ovkd.task".into(), "seg".into()),
        ("ovkd.labels".into(), names.join("\n")),
        ("ovkd.pixel_mean".into(), format!("{:?}", spec.pixel_mean)),
        ("ovkd.pixel_std".into(), format!("{:?}", spec.pixel_std)),
        ("ovkd.temperature".into(), model.temperature.to_string()),
    ];
    Ok(g.finish(
        "ovkd_segmenter",
        "ovkd segmenter: image RGB [0,1] -> logits (background first), labels, pixel embeddings",
        meta,
    ))
}

/// What the Burn model computes for `image` `[1, 3, H, W]` (RGB in `[0, 1]`), under the graph's
/// output names: the reference the ONNX file is checked against.
pub fn reference_outputs(
    model: &Segmenter,
    class_embeds: Tensor<2>,
    spec: &SegExport,
    image: Tensor<4>,
) -> Result<Vec<NamedTensor>, ExportError> {
    let device = image.device();
    let stat =
        |v: [f32; 3]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), [1, 3, 1, 1]), &device);
    let x = image.sub(stat(spec.pixel_mean)).div(stat(spec.pixel_std));
    let out = model.forward(x, class_embeds);
    let [b, _, h, w] = out.logits.dims();
    let labels: Tensor<3, Int> = out.logits.clone().argmax(1).reshape([b, h, w]);
    Ok(vec![
        NamedTensor::from_float("logits", out.logits)?,
        NamedTensor::from_int("labels", labels)?,
        NamedTensor::from_float("pixel_embeds", out.pixel_embeds)?,
    ])
}
