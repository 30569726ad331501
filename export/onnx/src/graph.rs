//! A graph builder: values with known shapes, constants as initializers, one helper per ONNX
//! operator the students need (opset 17), and the finished [`ModelProto`].
//!
//! Shapes are tracked while building (`-1` for an axis known only at run time, such as the
//! number of boxes) because some attributes depend on them: `Same` conv padding, resize
//! targets, reshape targets.

use burn::tensor::Tensor;

use crate::ExportError;
use crate::proto::{
    AttrValue, Attribute, DataType, Dim, GraphProto, ModelProto, NodeProto, TensorProto,
    ValueInfoProto,
};

/// The opset the exporter writes (RoiAlign's `coordinate_transformation_mode` needs ≥ 16).
pub const OPSET: i64 = 17;
/// The IR version that goes with [`OPSET`].
pub const IR_VERSION: i64 = 8;

/// A value in the graph: its name and shape (`-1` = dynamic axis).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// Name nodes refer to it by.
    pub name: String,
    /// Shape, `-1` for axes known only at run time.
    pub dims: Vec<i64>,
}

impl Value {
    /// `[N, C, H, W]` as numbers (panics on a dynamic axis: only used on image tensors, whose
    /// size is fixed at export).
    pub fn nchw(&self) -> [usize; 4] {
        assert_eq!(self.dims.len(), 4, "{}: not 4-D", self.name);
        let d = |i: usize| {
            usize::try_from(self.dims[i]).unwrap_or_else(|_| panic!("{}: dynamic axis", self.name))
        };
        [d(0), d(1), d(2), d(3)]
    }

    /// `[H, W]` of an `[N, C, H, W]` value whose batch axis may be dynamic.
    pub fn hw(&self) -> [usize; 2] {
        assert_eq!(self.dims.len(), 4, "{}: not 4-D", self.name);
        let d = |i: usize| {
            usize::try_from(self.dims[i]).unwrap_or_else(|_| panic!("{}: dynamic axis", self.name))
        };
        [d(2), d(3)]
    }
}

/// Builds an ONNX graph.
#[derive(Debug, Default)]
pub struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    counter: usize,
}

fn attr(name: &str, value: AttrValue) -> Attribute {
    Attribute {
        name: name.into(),
        value,
    }
}

/// An `ints` attribute.
pub fn ints(name: &str, v: &[i64]) -> Attribute {
    attr(name, AttrValue::Ints(v.to_vec()))
}

/// An `int` attribute.
pub fn int(name: &str, v: i64) -> Attribute {
    attr(name, AttrValue::Int(v))
}

/// A `float` attribute.
pub fn float(name: &str, v: f32) -> Attribute {
    attr(name, AttrValue::Float(v))
}

/// A `string` attribute.
pub fn string(name: &str, v: &str) -> Attribute {
    attr(name, AttrValue::String(v.into()))
}

/// A `tensor` attribute.
pub fn tensor_attr(name: &str, t: TensorProto) -> Attribute {
    attr(name, AttrValue::Tensor(t))
}

/// Numpy broadcasting of two shapes (`-1` stays dynamic unless the other side fixes it).
fn broadcast(a: &[i64], b: &[i64]) -> Vec<i64> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let x = if i + a.len() >= n {
                a[i + a.len() - n]
            } else {
                1
            };
            let y = if i + b.len() >= n {
                b[i + b.len() - n]
            } else {
                1
            };
            match (x, y) {
                (1, y) => y,
                (x, 1) => x,
                (-1, y) => y,
                (x, _) => x,
            }
        })
        .collect()
}

/// The values of a Burn float tensor.
pub fn tensor_values<const D: usize>(t: Tensor<D>) -> Result<(Vec<usize>, Vec<f32>), ExportError> {
    let dims = t.dims().to_vec();
    let v = t
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| ExportError::Tensor(format!("{e:?}")))?;
    Ok((dims, v))
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// A graph input.
    pub fn input(&mut self, name: &str, dims: &[i64], elem_type: DataType) -> Value {
        self.inputs.push(value_info(name, dims, elem_type, "N"));
        Value {
            name: name.into(),
            dims: dims.to_vec(),
        }
    }

    /// Exposes `v` as graph output `name` (through an `Identity`, so any value can be named);
    /// a dynamic axis is called `dyn_name`.
    pub fn output(&mut self, v: &Value, name: &str, elem_type: DataType, dyn_name: &str) {
        self.nodes.push(NodeProto {
            inputs: vec![v.name.clone()],
            outputs: vec![name.into()],
            name: format!("{name}_identity"),
            op_type: "Identity".into(),
            attributes: vec![],
        });
        self.outputs
            .push(value_info(name, &v.dims, elem_type, dyn_name));
    }

    /// A float constant (initializer).
    pub fn constant(&mut self, hint: &str, dims: &[usize], values: &[f32]) -> Value {
        let name = self.fresh(hint);
        self.initializers
            .push(TensorProto::float(name.clone(), dims, values));
        Value {
            name,
            dims: dims.iter().map(|&d| d as i64).collect(),
        }
    }

    /// An int64 constant (initializer).
    pub fn constant_i64(&mut self, hint: &str, dims: &[usize], values: &[i64]) -> Value {
        let name = self.fresh(hint);
        self.initializers
            .push(TensorProto::int64(name.clone(), dims, values));
        Value {
            name,
            dims: dims.iter().map(|&d| d as i64).collect(),
        }
    }

    /// A float constant from a Burn tensor (a weight).
    pub fn param<const D: usize>(
        &mut self,
        hint: &str,
        t: Tensor<D>,
    ) -> Result<Value, ExportError> {
        let (dims, v) = tensor_values(t)?;
        Ok(self.constant(hint, &dims, &v))
    }

    /// A scalar float constant, shape `[]`, for broadcasting.
    pub fn scalar(&mut self, hint: &str, v: f32) -> Value {
        self.constant(hint, &[], &[v])
    }

    /// Adds a node with one output of shape `dims`.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<Attribute>,
        dims: Vec<i64>,
    ) -> Value {
        let out = self.fresh(&op.to_lowercase());
        self.nodes.push(NodeProto {
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![out.clone()],
            name: format!("{out}_node"),
            op_type: op.into(),
            attributes,
        });
        Value { name: out, dims }
    }

    fn binary(&mut self, op: &str, a: &Value, b: &Value) -> Value {
        let dims = broadcast(&a.dims, &b.dims);
        self.node(op, &[&a.name, &b.name], vec![], dims)
    }

    /// `a + b` (broadcasting).
    pub fn add(&mut self, a: &Value, b: &Value) -> Value {
        self.binary("Add", a, b)
    }

    /// `a - b` (broadcasting).
    pub fn sub(&mut self, a: &Value, b: &Value) -> Value {
        self.binary("Sub", a, b)
    }

    /// `a * b` (broadcasting).
    pub fn mul(&mut self, a: &Value, b: &Value) -> Value {
        self.binary("Mul", a, b)
    }

    /// `a / b` (broadcasting).
    pub fn div(&mut self, a: &Value, b: &Value) -> Value {
        self.binary("Div", a, b)
    }

    /// Element-wise maximum (broadcasting).
    pub fn max(&mut self, a: &Value, b: &Value) -> Value {
        self.binary("Max", a, b)
    }

    /// Element-wise minimum (broadcasting).
    pub fn min(&mut self, a: &Value, b: &Value) -> Value {
        self.binary("Min", a, b)
    }

    /// `a == b` → bool (broadcasting).
    pub fn equal(&mut self, a: &Value, b: &Value) -> Value {
        self.binary("Equal", a, b)
    }

    /// An element-wise unary operator (`Relu`, `Sqrt`, `Log`, `Floor`, ...).
    pub fn unary(&mut self, op: &str, x: &Value) -> Value {
        let dims = x.dims.clone();
        self.node(op, &[&x.name], vec![], dims)
    }

    /// `max(x, 0)`.
    pub fn relu(&mut self, x: &Value) -> Value {
        self.unary("Relu", x)
    }

    /// Casts to float (`Cast` to FLOAT).
    pub fn cast_float(&mut self, x: &Value) -> Value {
        let dims = x.dims.clone();
        self.node("Cast", &[&x.name], vec![int("to", 1)], dims)
    }

    /// 2-D convolution: `x` `[N, Ci, H, W]`, weight `[Co, Ci/g, kh, kw]`, optional bias `[Co]`;
    /// `pads` = `[top, left, bottom, right]`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        x: &Value,
        weight: &Value,
        bias: Option<&Value>,
        strides: [usize; 2],
        pads: [usize; 4],
        dilations: [usize; 2],
        group: usize,
    ) -> Value {
        let [h, w] = x.hw();
        let n = x.dims[0];
        let [co, _, kh, kw] = [0, 1, 2, 3].map(|i| weight.dims[i] as usize);
        let out = |size: usize, p0: usize, p1: usize, k: usize, s: usize, d: usize| {
            (size + p0 + p1 - d * (k - 1) - 1) / s + 1
        };
        let oh = out(h, pads[0], pads[2], kh, strides[0], dilations[0]);
        let ow = out(w, pads[1], pads[3], kw, strides[1], dilations[1]);
        let mut inputs = vec![x.name.as_str(), weight.name.as_str()];
        if let Some(b) = bias {
            inputs.push(&b.name);
        }
        let u = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        self.node(
            "Conv",
            &inputs,
            vec![
                ints("kernel_shape", &[kh as i64, kw as i64]),
                ints("strides", &u(&strides)),
                ints("pads", &u(&pads)),
                ints("dilations", &u(&dilations)),
                int("group", group as i64),
            ],
            vec![n, co as i64, oh as i64, ow as i64],
        )
    }

    /// Inference batch normalisation over axis 1: `(x - mean) / sqrt(var + eps) * scale + bias`,
    /// each parameter `[C]`.
    pub fn batch_norm(
        &mut self,
        x: &Value,
        [scale, bias, mean, var]: [&Value; 4],
        epsilon: f64,
    ) -> Value {
        let dims = x.dims.clone();
        self.node(
            "BatchNormalization",
            &[&x.name, &scale.name, &bias.name, &mean.name, &var.name],
            vec![float("epsilon", epsilon as f32)],
            dims,
        )
    }

    /// Max pooling, `pads` = `[top, left, bottom, right]`, floor rounding.
    pub fn max_pool(
        &mut self,
        x: &Value,
        kernel: [usize; 2],
        strides: [usize; 2],
        pads: [usize; 4],
    ) -> Value {
        let [h, w] = x.hw();
        let (n, c) = (x.dims[0], x.dims[1]);
        let oh = (h + pads[0] + pads[2] - kernel[0]) / strides[0] + 1;
        let ow = (w + pads[1] + pads[3] - kernel[1]) / strides[1] + 1;
        let u = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        self.node(
            "MaxPool",
            &[&x.name],
            vec![
                ints("kernel_shape", &u(&kernel)),
                ints("strides", &u(&strides)),
                ints("pads", &u(&pads)),
            ],
            vec![n, c, oh as i64, ow as i64],
        )
    }

    /// PyTorch's `interpolate(mode="nearest")` to `size`: `Resize` with asymmetric
    /// coordinates and floor rounding (`src = floor(dst * in / out)`).
    pub fn resize_nearest(&mut self, x: &Value, size: [usize; 2]) -> Value {
        self.resize(
            x,
            size,
            vec![
                string("mode", "nearest"),
                string("coordinate_transformation_mode", "asymmetric"),
                string("nearest_mode", "floor"),
            ],
        )
    }

    /// Bilinear resize with half-pixel centres (`align_corners=False`) to `size`.
    pub fn resize_bilinear(&mut self, x: &Value, size: [usize; 2]) -> Value {
        self.resize(
            x,
            size,
            vec![
                string("mode", "linear"),
                string("coordinate_transformation_mode", "half_pixel"),
            ],
        )
    }

    fn resize(&mut self, x: &Value, size: [usize; 2], attrs: Vec<Attribute>) -> Value {
        let [n, c, _, _] = x.nchw();
        let sizes = self.constant_i64(
            "resize_sizes",
            &[4],
            &[n as i64, c as i64, size[0] as i64, size[1] as i64],
        );
        self.node(
            "Resize",
            &[&x.name, "", "", &sizes.name],
            attrs,
            vec![n as i64, c as i64, size[0] as i64, size[1] as i64],
        )
    }

    /// `x @ w + b` for `x` `[M, K]`, `w` `[K, N]` (Burn's `Linear` layout), `b` `[N]`.
    pub fn gemm(&mut self, x: &Value, w: &Value, b: Option<&Value>) -> Value {
        let mut inputs = vec![x.name.as_str(), w.name.as_str()];
        if let Some(b) = b {
            inputs.push(&b.name);
        }
        let dims = vec![x.dims[0], w.dims[1]];
        self.node("Gemm", &inputs, vec![], dims)
    }

    /// Matrix product with numpy broadcasting of the batch axes.
    pub fn matmul(&mut self, a: &Value, b: &Value) -> Value {
        let (ra, rb) = (a.dims.len(), b.dims.len());
        let batch = broadcast(&a.dims[..ra - 2], &b.dims[..rb - 2]);
        let mut dims = batch;
        dims.push(a.dims[ra - 2]);
        dims.push(b.dims[rb - 1]);
        self.node("MatMul", &[&a.name, &b.name], vec![], dims)
    }

    /// Reshape to `dims` (`-1` inferred, `0` copies the input's axis, as ONNX); `out_dims` is
    /// the shape as tracked.
    pub fn reshape(&mut self, x: &Value, dims: &[i64], out_dims: Vec<i64>) -> Value {
        let shape = self.constant_i64("shape", &[dims.len()], dims);
        self.node("Reshape", &[&x.name, &shape.name], vec![], out_dims)
    }

    /// Axis permutation.
    pub fn transpose(&mut self, x: &Value, perm: &[usize]) -> Value {
        let dims = perm.iter().map(|&p| x.dims[p]).collect();
        let perm: Vec<i64> = perm.iter().map(|&p| p as i64).collect();
        self.node("Transpose", &[&x.name], vec![ints("perm", &perm)], dims)
    }

    /// Flattens axes `axis..` into one: `[d0, .., d_{axis-1}, prod]`, as ONNX `Flatten` (2-D).
    pub fn flatten(&mut self, x: &Value, axis: usize) -> Value {
        let lead: i64 = x.dims[..axis].iter().product();
        let rest: i64 = x.dims[axis..].iter().product();
        let dims = vec![
            if x.dims[..axis].contains(&-1) {
                -1
            } else {
                lead
            },
            if x.dims[axis..].contains(&-1) {
                -1
            } else {
                rest
            },
        ];
        self.node("Flatten", &[&x.name], vec![int("axis", axis as i64)], dims)
    }

    /// Argmax over `axis`, axis dropped, int64.
    pub fn argmax(&mut self, x: &Value, axis: usize) -> Value {
        let mut dims = x.dims.clone();
        dims.remove(axis);
        self.node(
            "ArgMax",
            &[&x.name],
            vec![int("axis", axis as i64), int("keepdims", 0)],
            dims,
        )
    }

    /// Divides `x` by its L2 norm over `axis`, the norm floored at `eps` (as the students'
    /// `l2_normalize*`: `x / max(sqrt(sum(x^2)), eps)`).
    pub fn l2_normalize(&mut self, x: &Value, axis: usize, eps: f32) -> Value {
        let mut dims = x.dims.clone();
        dims[axis] = 1;
        let sq = self.node(
            "ReduceSumSquare",
            &[&x.name],
            vec![ints("axes", &[axis as i64]), int("keepdims", 1)],
            dims,
        );
        let norm = self.unary("Sqrt", &sq);
        let floor = self.scalar("eps", eps);
        let norm = self.max(&norm, &floor);
        self.div(x, &norm)
    }

    /// The finished model, with `metadata` as `metadata_props`.
    pub fn finish(self, name: &str, doc: &str, metadata: Vec<(String, String)>) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            opset: OPSET,
            producer_name: "ovkd".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: GraphProto {
                nodes: self.nodes,
                name: name.into(),
                initializers: self.initializers,
                doc_string: doc.into(),
                inputs: self.inputs,
                outputs: self.outputs,
            },
            metadata,
        }
    }
}

fn value_info(name: &str, dims: &[i64], elem_type: DataType, dyn_name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        elem_type,
        dims: dims
            .iter()
            .map(|&d| {
                if d < 0 {
                    Dim::Param(dyn_name.into())
                } else {
                    Dim::Value(d)
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast(&[1, 3, 4, 5], &[1, 3, 1, 1]), vec![1, 3, 4, 5]);
        assert_eq!(broadcast(&[-1, 1, 1, 1], &[-1, 8, 7, 7]), vec![-1, 8, 7, 7]);
        assert_eq!(broadcast(&[], &[2, 3]), vec![2, 3]);
        assert_eq!(broadcast(&[-1], &[1]), vec![-1]);
    }

    /// Conv and pooling output sizes follow ONNX's floor formula.
    #[test]
    fn conv_and_pool_shapes() {
        let mut g = Graph::new();
        let x = g.input("x", &[1, 3, 64, 96], DataType::Float);
        let w = g.constant("w", &[8, 3, 3, 3], &[0.0; 8 * 27]);
        let y = g.conv(&x, &w, None, [2, 2], [1, 1, 1, 1], [1, 1], 1);
        assert_eq!(y.dims, vec![1, 8, 32, 48]);
        let p = g.max_pool(&y, [3, 3], [2, 2], [1, 1, 1, 1]);
        assert_eq!(p.dims, vec![1, 8, 16, 24]);
        let p6 = g.max_pool(&p, [1, 1], [2, 2], [0, 0, 0, 0]);
        assert_eq!(p6.dims, vec![1, 8, 8, 12]);
        let f = g.flatten(&p6, 1);
        assert_eq!(f.dims, vec![1, 8 * 8 * 12]);
    }
}
