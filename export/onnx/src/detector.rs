//! The detector's inference graph at a fixed input size, up to where the CPU bookkeeping
//! starts: the dense part (normalisation, ResNet + FPN, RPN head on every level) and, for
//! boxes given as an input, the RoI head (multi-level RoIAlign with the level of each box
//! computed in the graph, the box head, cosine logits over a baked-in vocabulary).
//!
//! Anchor generation, proposal top-k, decoding, clipping and NMS stay outside the graph (they
//! are data-dependent loops the Rust side runs on CPU arrays, see `ovkd_detector::rpn`): a
//! runtime takes the RPN outputs, selects proposals, and feeds them back as `boxes`.
//!
//! ```text
//! image                 float [1, 3, H, W]    RGB in [0, 1]; the graph normalises with the
//!                                             detector's pixel_mean / pixel_std
//! boxes                 float [N, 4]          x1, y1, x2, y2 in input pixels (N ≥ 1)
//! rpn_objectness_p{l}   float [1, h*w*A]      per FPN level l (2..6), anchor order (y, x, a)
//! rpn_deltas_p{l}       float [1, h*w*A, 4]   (dx, dy, dw, dh), weights 1, 1, 1, 1
//! box_deltas            float [N, 4]          Fast R-CNN deltas (weights 10, 10, 5, 5)
//! region_embeds         float [N, D]          L2-normalised
//! class_logits          float [N, 1+C]        column 0 background, cosine / temperature
//! image_embeds          float [N, D]          only when the head has an image branch
//! ```
//!
//! RoIAlign is ONNX's (opset 16+): `avg`, `half_pixel` coordinates for `aligned = true`
//! (`output_half_pixel` otherwise), the configured sampling ratio. Each box is pooled on every
//! level and the pooled features of the level torchvision's `LevelMapper` assigns it to are
//! kept (a 0/1 mask per level), so the graph has no data-dependent control flow.

use burn::tensor::Tensor;
use ovkd_detector::box_head::{EmbeddingBoxHead, Trunk, l2_normalize};
use ovkd_detector::roi_align::Roi;
use ovkd_detector::{Detector, ImageBatch};

use crate::backbone::{LevelValue, fpn, normalise, resnet};
use crate::check::NamedTensor;
use crate::graph::{Graph, Value, int, ints, string, tensor_values};
use crate::layers::{conv2d, linear};
use crate::proto::{DataType, ModelProto, TensorProto};
use crate::{ExportError, check_size};

/// What to export besides the model.
#[derive(Clone, Debug)]
pub struct DetExport {
    /// Input `[H, W]`, multiples of 32.
    pub size: [usize; 2],
    /// Class names, in the order of the text embeddings' rows (logit column `k` = name
    /// `k - 1`).
    pub class_names: Vec<String>,
}

fn rpn_outputs(g: &mut Graph, model: &Detector, levels: &[LevelValue]) -> Result<(), ExportError> {
    let head = &model.rpn.head;
    for f in levels {
        let t = conv2d(g, &f.value, &head.conv)?;
        let t = g.relu(&t);
        let logits = conv2d(g, &t, &head.cls_logits)?;
        let deltas = conv2d(g, &t, &head.bbox_pred)?;
        let [_, a, h, w] = logits.nchw();
        let n = (h * w * a) as i64;
        let obj = g.transpose(&logits, &[0, 2, 3, 1]);
        let obj = g.reshape(&obj, &[1, n], vec![1, n]);
        let (a, h, w) = (a as i64, h as i64, w as i64);
        let del = g.reshape(&deltas, &[1, a, 4, h, w], vec![1, a, 4, h, w]);
        let del = g.transpose(&del, &[0, 3, 4, 1, 2]);
        let del = g.reshape(&del, &[1, n, 4], vec![1, n, 4]);
        let level = f.stride.trailing_zeros();
        g.output(
            &obj,
            &format!("rpn_objectness_p{level}"),
            DataType::Float,
            "N",
        );
        g.output(&del, &format!("rpn_deltas_p{level}"), DataType::Float, "N");
    }
    Ok(())
}

/// torchvision's `LevelMapper` in the graph: `[N, 4]` boxes → `[N]` float levels,
/// `clamp(floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6), k_min, k_max)`.
fn box_levels(
    g: &mut Graph,
    boxes: &Value,
    k_min: i32,
    k_max: i32,
    canonical_scale: f32,
    canonical_level: i32,
) -> Value {
    let lo = g.constant_i64("xy1", &[2], &[0, 1]);
    let hi = g.constant_i64("xy2", &[2], &[2, 3]);
    let p1 = g.node(
        "Gather",
        &[&boxes.name, &lo.name],
        vec![int("axis", 1)],
        vec![-1, 2],
    );
    let p2 = g.node(
        "Gather",
        &[&boxes.name, &hi.name],
        vec![int("axis", 1)],
        vec![-1, 2],
    );
    let wh = g.sub(&p2, &p1);
    let area = g.node(
        "ReduceProd",
        &[&wh.name],
        vec![ints("axes", &[1]), int("keepdims", 0)],
        vec![-1],
    );
    let zero = g.scalar("zero", 0.0);
    let area = g.max(&area, &zero);
    let s = g.unary("Sqrt", &area);
    let scale = g.scalar("canonical_scale", canonical_scale);
    let r = g.div(&s, &scale);
    let ln = g.unary("Log", &r);
    let ln2 = g.scalar("ln2", std::f32::consts::LN_2);
    let log2 = g.div(&ln, &ln2);
    let base = g.scalar("canonical_level", canonical_level as f32);
    let lvl = g.add(&base, &log2);
    let eps = g.scalar("level_eps", 1e-6);
    let lvl = g.add(&lvl, &eps);
    let lvl = g.unary("Floor", &lvl);
    let lo = g.scalar("k_min", k_min as f32);
    let hi = g.scalar("k_max", k_max as f32);
    let lvl = g.max(&lvl, &lo);
    g.min(&lvl, &hi)
}

fn trunk(g: &mut Graph, x: &Value, t: &Trunk) -> Result<Value, ExportError> {
    let mut x = x.clone();
    for c in &t.convs {
        let y = conv2d(g, &x, c)?;
        x = g.relu(&y);
    }
    let mut x = g.flatten(&x, 1);
    for fc in &t.fcs {
        let y = linear(g, &x, fc)?;
        x = g.relu(&y);
    }
    Ok(x)
}

/// `[1 + C, D]`: the normalised background embedding followed by the normalised text
/// embeddings, as `EmbeddingBoxHead::logits` builds it.
fn label_embeds(head: &EmbeddingBoxHead, text_embeds: Tensor<2>) -> Tensor<2> {
    let [d] = head.background.dims();
    let bg = l2_normalize(head.background.val().reshape([1, d]));
    Tensor::cat(vec![bg, l2_normalize(text_embeds)], 0)
}

fn roi_head(
    g: &mut Graph,
    model: &Detector,
    levels: &[LevelValue],
    boxes: &Value,
    text_embeds: Tensor<2>,
) -> Result<(), ExportError> {
    let cfg = &model.config.roi_align;
    let pool: Vec<&LevelValue> = levels.iter().filter(|l| l.stride <= 32).collect();
    let (first, last) = match (pool.first(), pool.last()) {
        (Some(f), Some(l)) => (f, l),
        _ => return Err(ExportError::Model("no feature level to pool from".into())),
    };
    let k_min = first.stride.trailing_zeros() as i32;
    let k_max = last.stride.trailing_zeros() as i32;
    let lvl = box_levels(
        g,
        boxes,
        k_min,
        k_max,
        cfg.canonical_scale,
        cfg.canonical_level,
    );
    // Batch index 0 for every box: ConstantOfShape(Shape(boxes)[0:1]).
    let shape = g.node("Shape", &[&boxes.name], vec![], vec![2]);
    let starts = g.constant_i64("starts", &[1], &[0]);
    let ends = g.constant_i64("ends", &[1], &[1]);
    let n = g.node(
        "Slice",
        &[&shape.name, &starts.name, &ends.name],
        vec![],
        vec![1],
    );
    let zero = crate::graph::tensor_attr("value", TensorProto::int64("zero", &[1], &[0]));
    let batch_idx = g.node("ConstantOfShape", &[&n.name], vec![zero], vec![-1]);
    let [oh, ow] = cfg.output_size;
    let mode = if cfg.aligned {
        "half_pixel"
    } else {
        "output_half_pixel"
    };
    let mut pooled: Option<Value> = None;
    for l in &pool {
        let c = l.value.dims[1];
        let p = g.node(
            "RoiAlign",
            &[&l.value.name, &boxes.name, &batch_idx.name],
            vec![
                string("coordinate_transformation_mode", mode),
                string("mode", "avg"),
                int("output_height", oh as i64),
                int("output_width", ow as i64),
                int("sampling_ratio", cfg.sampling_ratio.max(0) as i64),
                crate::graph::float("spatial_scale", 1.0 / l.stride as f32),
            ],
            vec![-1, c, oh as i64, ow as i64],
        );
        let k = g.scalar("level", l.stride.trailing_zeros() as f32);
        let is = g.equal(&lvl, &k);
        let mask = g.cast_float(&is);
        let mask = g.reshape(&mask, &[-1, 1, 1, 1], vec![-1, 1, 1, 1]);
        let term = g.mul(&p, &mask);
        pooled = Some(match pooled {
            None => term,
            Some(acc) => g.add(&acc, &term),
        });
    }
    let pooled = pooled.ok_or_else(|| ExportError::Model("no pooled level".into()))?;

    let head = &model.box_head;
    let rep = trunk(g, &pooled, &head.trunk)?;
    let deltas = linear(g, &rep, &head.bbox_pred)?;
    let proj = linear(g, &rep, &head.projection)?;
    let region = g.l2_normalize(&proj, 1, 1e-12);
    let (dims, values) = tensor_values(label_embeds(head, text_embeds).transpose())?;
    let classes_t = g.constant("class_embeds_t", &dims, &values);
    let cos = g.matmul(&region, &classes_t);
    let t = g.scalar("temperature", head.temperature);
    let logits = g.div(&cos, &t);
    g.output(&deltas, "box_deltas", DataType::Float, "N");
    g.output(&region, "region_embeds", DataType::Float, "N");
    g.output(&logits, "class_logits", DataType::Float, "N");
    if let Some(proj) = &head.image_projection {
        let rep = match &head.image_trunk {
            Some(t) => trunk(g, &pooled, t)?,
            None => rep,
        };
        let y = linear(g, &rep, proj)?;
        let img = g.l2_normalize(&y, 1, 1e-12);
        g.output(&img, "image_embeds", DataType::Float, "N");
    }
    Ok(())
}

/// The detector's graph for `text_embeds` `[C, D]` (the vocabulary's text embeddings).
pub fn export_detector(
    model: &Detector,
    text_embeds: Tensor<2>,
    spec: &DetExport,
) -> Result<ModelProto, ExportError> {
    check_size(spec.size)?;
    if model.config.box_head.pseudo_words > 0 {
        // Its region embeddings come from pseudo-words read by the teacher's text tower, which
        // is not in this graph: the head's own embedding output would score nothing it learnt.
        return Err(ExportError::Model(format!(
            "a BARON detector (box_head.pseudo_words = {}) classifies regions through the \
             teacher's text tower, which the ONNX graph does not hold; export it with \
             `ovkd export bundle` instead",
            model.config.box_head.pseudo_words
        )));
    }
    let [c, d] = text_embeds.dims();
    if c != spec.class_names.len() {
        return Err(ExportError::Model(format!(
            "{c} text embeddings for {} class names",
            spec.class_names.len()
        )));
    }
    if d != model.config.box_head.embed_dim {
        return Err(ExportError::Model(format!(
            "text embeddings have D = {d}, the detector {}",
            model.config.box_head.embed_dim
        )));
    }
    let [h, w] = spec.size;
    let mut g = Graph::new();
    let image = g.input("image", &[1, 3, h as i64, w as i64], DataType::Float);
    let boxes = g.input("boxes", &[-1, 4], DataType::Float);
    // At a fixed size that is a multiple of 32 there is no padding, so the normalisation's
    // padding mask is all ones and drops out.
    let x = normalise(
        &mut g,
        &image,
        model.config.pixel_mean,
        model.config.pixel_std,
    );
    let c_feats = resnet(&mut g, &x, &model.backbone.body)?;
    let p_feats = fpn(&mut g, &c_feats, &model.backbone.fpn)?;
    rpn_outputs(&mut g, model, &p_feats)?;
    roi_head(&mut g, model, &p_feats, &boxes, text_embeds)?;
    let mut names = vec!["background".to_string()];
    names.extend(spec.class_names.iter().cloned());
    let anchors = &model.config.rpn.anchors;
    let meta = vec![
        ("ovkd.task".into(), "det".into()),
        ("ovkd.labels".into(), names.join("\n")),
        (
            "ovkd.pixel_mean".into(),
            format!("{:?}", model.config.pixel_mean),
        ),
        (
            "ovkd.pixel_std".into(),
            format!("{:?}", model.config.pixel_std),
        ),
        ("ovkd.anchor_sizes".into(), format!("{:?}", anchors.sizes)),
        (
            "ovkd.anchor_aspect_ratios".into(),
            format!("{:?}", anchors.aspect_ratios),
        ),
        (
            "ovkd.box_coder_weights".into(),
            format!("{:?}", model.config.roi_heads.box_coder().weights),
        ),
    ];
    Ok(g.finish(
        "ovkd_detector",
        "ovkd detector: image RGB [0,1] + boxes [N,4] -> RPN outputs per level, RoI head outputs",
        meta,
    ))
}

/// What the Burn model computes for `image` `[1, 3, H, W]` (RGB in `[0, 1]`) and `boxes`
/// (at least one), under the graph's output names.
pub fn reference_outputs(
    model: &Detector,
    text_embeds: Tensor<2>,
    image: Tensor<4>,
    boxes: &[[f32; 4]],
) -> Result<Vec<NamedTensor>, ExportError> {
    if boxes.is_empty() {
        return Err(ExportError::Model(
            "the RoI head needs at least one box".into(),
        ));
    }
    let [_, _, h, w] = image.dims();
    let batch = ImageBatch {
        images: image,
        sizes: vec![[h, w]],
    };
    let features = model.features(&batch);
    let preds = model.rpn.head.forward(&features);
    let a = model.rpn.config.anchors.num_anchors_per_location();
    let mut out = Vec::new();
    let mut start = 0;
    for (i, (f, [gh, gw])) in features.iter().zip(&preds.grid_sizes).enumerate() {
        let n = gh * gw * a[i];
        let level = f.stride.trailing_zeros();
        out.push(NamedTensor::from_float(
            &format!("rpn_objectness_p{level}"),
            preds.objectness.clone().slice([0..1, start..start + n]),
        )?);
        out.push(NamedTensor::from_float(
            &format!("rpn_deltas_p{level}"),
            preds.deltas.clone().slice([0..1, start..start + n, 0..4]),
        )?);
        start += n;
    }
    let rois: Vec<Roi> = boxes.iter().map(|&bbox| Roi { batch: 0, bbox }).collect();
    let head = model.embed_regions(&features, &rois);
    let logits = model
        .box_head
        .logits(head.region_embeds.clone(), text_embeds);
    out.push(NamedTensor::from_float("box_deltas", head.box_deltas)?);
    out.push(NamedTensor::from_float(
        "region_embeds",
        head.region_embeds,
    )?);
    out.push(NamedTensor::from_float("class_logits", logits)?);
    if let Some(img) = head.image_embeds {
        out.push(NamedTensor::from_float("image_embeds", img)?);
    }
    Ok(out)
}

/// Boxes for a parity check: every `step`-th of the detector's own proposals for `image` (up
/// to `max`), plus squares of sides 24, 120, 240 and 480 pixels at the image centre so that
/// every pooling level P2..P5 is exercised whatever the image size.
pub fn check_boxes(model: &Detector, image: Tensor<4>, max: usize) -> Vec<[f32; 4]> {
    let [_, _, h, w] = image.dims();
    let batch = ImageBatch {
        images: image,
        sizes: vec![[h, w]],
    };
    let mut boxes: Vec<[f32; 4]> = model
        .propose(&batch)
        .into_iter()
        .flat_map(|(b, _)| b.0)
        .take(max)
        .collect();
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    for s in [24.0f32, 120.0, 240.0, 480.0] {
        boxes.push([cx - s / 2.0, cy - s / 2.0, cx + s / 2.0, cy + s / 2.0]);
    }
    boxes
}
