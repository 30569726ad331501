//! Burn layers as ONNX nodes: the fast `Conv2d` of `ovkd-backbone`, Burn's `BatchNorm` (in
//! inference), `FrozenBatchNorm2d`, the `Norm2d` switch and `Linear`.

use burn::nn::{BatchNorm, Linear};
use ovkd_backbone::ops::Conv2d;
use ovkd_backbone::{FrozenBatchNorm2d, Norm2d};

use crate::ExportError;
use crate::graph::{Graph, Value};

/// `Conv2d::forward`: `[N, Ci, H, W]` → `[N, Co, oh, ow]`, with the padding its config gives for
/// this input size (explicit, valid or Burn's `Same` split).
pub fn conv2d(g: &mut Graph, x: &Value, conv: &Conv2d) -> Result<Value, ExportError> {
    let [h, w] = x.hw();
    let opts = conv.options(h, w);
    let weight = g.param("conv_w", conv.weight.val())?;
    let bias = match &conv.bias {
        Some(b) => Some(g.param("conv_b", b.val())?),
        None => None,
    };
    let [(top, bottom), (left, right)] = opts.padding;
    Ok(g.conv(
        x,
        &weight,
        bias.as_ref(),
        opts.stride,
        [top, left, bottom, right],
        opts.dilation,
        opts.groups,
    ))
}

/// Burn's `BatchNorm` as it runs in inference (running statistics).
pub fn batch_norm(g: &mut Graph, x: &Value, bn: &BatchNorm) -> Result<Value, ExportError> {
    let scale = g.param("bn_scale", bn.gamma.val())?;
    let bias = g.param("bn_bias", bn.beta.val())?;
    let mean = g.param("bn_mean", bn.running_mean.value())?;
    let var = g.param("bn_var", bn.running_var.value())?;
    Ok(g.batch_norm(x, [&scale, &bias, &mean, &var], bn.epsilon))
}

/// `FrozenBatchNorm2d`: the same affine as inference batch norm with its statistics.
pub fn frozen_batch_norm(
    g: &mut Graph,
    x: &Value,
    bn: &FrozenBatchNorm2d,
) -> Result<Value, ExportError> {
    let scale = g.param("fbn_scale", bn.weight.val())?;
    let bias = g.param("fbn_bias", bn.bias.val())?;
    let mean = g.param("fbn_mean", bn.running_mean.val())?;
    let var = g.param("fbn_var", bn.running_var.val())?;
    Ok(g.batch_norm(x, [&scale, &bias, &mean, &var], bn.epsilon))
}

/// Either norm.
pub fn norm2d(g: &mut Graph, x: &Value, norm: &Norm2d) -> Result<Value, ExportError> {
    match norm {
        Norm2d::Frozen(bn) => frozen_batch_norm(g, x, bn),
        Norm2d::Batch(bn) => batch_norm(g, x, bn),
    }
}

/// `Linear::forward` on `[M, d_in]` → `[M, d_out]` (Burn stores the weight `[d_in, d_out]`).
pub fn linear(g: &mut Graph, x: &Value, fc: &Linear) -> Result<Value, ExportError> {
    let w = g.param("fc_w", fc.weight.val())?;
    let b = match &fc.bias {
        Some(b) => Some(g.param("fc_b", b.val())?),
        None => None,
    };
    Ok(g.gemm(x, &w, b.as_ref()))
}
