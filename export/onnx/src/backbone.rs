//! The backbone of both students as ONNX nodes: the ResNet body (stem, basic or bottleneck
//! blocks, either norm) and the FPN (lateral 1x1 convs, top-down nearest upsampling, 3x3
//! output convs, P6 by a stride-2 max-pool of kernel 1).

use ovkd_backbone::resnet::Block;
use ovkd_backbone::{Fpn, ResNet};

use crate::ExportError;
use crate::graph::{Graph, Value};
use crate::layers::{conv2d, norm2d};

/// One level of a feature hierarchy in the graph.
#[derive(Clone, Debug)]
pub struct LevelValue {
    /// Input pixels per cell.
    pub stride: usize,
    /// `[1, C, H / stride, W / stride]`.
    pub value: Value,
}

fn block(g: &mut Graph, x: &Value, b: &Block) -> Result<Value, ExportError> {
    let (out, downsample) = match b {
        Block::Basic(b) => {
            let o = conv2d(g, x, &b.conv1)?;
            let o = norm2d(g, &o, &b.bn1)?;
            let o = g.relu(&o);
            let o = conv2d(g, &o, &b.conv2)?;
            (norm2d(g, &o, &b.bn2)?, &b.downsample)
        }
        Block::Bottleneck(b) => {
            let o = conv2d(g, x, &b.conv1)?;
            let o = norm2d(g, &o, &b.bn1)?;
            let o = g.relu(&o);
            let o = conv2d(g, &o, &b.conv2)?;
            let o = norm2d(g, &o, &b.bn2)?;
            let o = g.relu(&o);
            let o = conv2d(g, &o, &b.conv3)?;
            (norm2d(g, &o, &b.bn3)?, &b.downsample)
        }
    };
    let identity = match downsample {
        Some(d) => {
            let i = conv2d(g, x, &d.conv)?;
            norm2d(g, &i, &d.bn)?
        }
        None => x.clone(),
    };
    let sum = g.add(&out, &identity);
    Ok(g.relu(&sum))
}

/// `ResNet::forward`: `[1, C_in, H, W]` → C2..C5 (strides 4, 8, 16, 32).
pub fn resnet(g: &mut Graph, images: &Value, net: &ResNet) -> Result<Vec<LevelValue>, ExportError> {
    let x = conv2d(g, images, &net.conv1)?;
    let x = norm2d(g, &x, &net.bn1)?;
    let x = g.relu(&x);
    let mut x = g.max_pool(&x, [3, 3], [2, 2], [1, 1, 1, 1]);
    let mut out = Vec::with_capacity(4);
    for (i, stage) in [&net.layer1, &net.layer2, &net.layer3, &net.layer4]
        .into_iter()
        .enumerate()
    {
        for b in stage {
            x = block(g, &x, b)?;
        }
        out.push(LevelValue {
            stride: 4 << i,
            value: x.clone(),
        });
    }
    Ok(out)
}

/// `Fpn::forward`: C2..C5 → P2..P5 (+ P6).
pub fn fpn(
    g: &mut Graph,
    inputs: &[LevelValue],
    fpn: &Fpn,
) -> Result<Vec<LevelValue>, ExportError> {
    let n = inputs.len();
    if n != fpn.inner_blocks.len() {
        return Err(ExportError::Model(format!(
            "FPN built for {} levels, given {n}",
            fpn.inner_blocks.len()
        )));
    }
    let mut outs: Vec<Option<LevelValue>> = vec![None; n];
    let mut last_inner: Option<Value> = None;
    for idx in (0..n).rev() {
        let lateral = conv2d(g, &inputs[idx].value, &fpn.inner_blocks[idx])?;
        let inner = match last_inner.take() {
            None => lateral,
            Some(top) => {
                let [_, _, h, w] = lateral.nchw();
                let up = g.resize_nearest(&top, [h, w]);
                g.add(&lateral, &up)
            }
        };
        outs[idx] = Some(LevelValue {
            stride: inputs[idx].stride,
            value: conv2d(g, &inner, &fpn.layer_blocks[idx])?,
        });
        last_inner = Some(inner);
    }
    let mut outs: Vec<LevelValue> = outs.into_iter().flatten().collect();
    if fpn.extra_max_pool {
        if let Some(last) = outs.last().cloned() {
            let p6 = g.max_pool(&last.value, [1, 1], [2, 2], [0, 0, 0, 0]);
            outs.push(LevelValue {
                stride: last.stride * 2,
                value: p6,
            });
        }
    }
    Ok(outs)
}

/// Subtracts `mean` and divides by `std` per channel: `[1, 3, H, W]` RGB in `[0, 1]` → the
/// normalised input the students train on.
pub fn normalise(g: &mut Graph, images: &Value, mean: [f32; 3], std: [f32; 3]) -> Value {
    let m = g.constant("pixel_mean", &[1, 3, 1, 1], &mean);
    let s = g.constant("pixel_std", &[1, 3, 1, 1], &std);
    let x = g.sub(images, &m);
    g.div(&x, &s)
}
