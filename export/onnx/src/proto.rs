//! A protobuf writer for the subset of `onnx.proto` (IR version 8) the exporter needs:
//! `ModelProto`, `GraphProto`, `NodeProto`, `AttributeProto`, `TensorProto`, `ValueInfoProto`.
//!
//! Burn has no ONNX export and no Rust crate ships the ONNX message types without a code
//! generator, so the few messages are encoded by hand: varints, fixed32 floats and
//! length-delimited fields, with the field numbers of onnx.proto (cited per message). Only
//! writing is needed; the tests check the bytes against hand-encoded ones and, when the Python
//! `onnx` package is available, that `onnx.checker` accepts a model.

/// Appends protobuf fields to a byte buffer.
#[derive(Default, Debug, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

const VARINT: u32 = 0;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

impl Writer {
    /// An empty message.
    pub fn new() -> Self {
        Self::default()
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.raw_varint(((field << 3) | wire) as u64);
    }

    /// An `int64`/`int32`/enum field (negative values take ten bytes, as protobuf's
    /// two's-complement encoding).
    pub fn int(&mut self, field: u32, v: i64) {
        self.key(field, VARINT);
        self.raw_varint(v as u64);
    }

    /// A `float` field.
    pub fn float(&mut self, field: u32, v: f32) {
        self.key(field, FIXED32);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A `bytes` field (also sub-messages, already encoded).
    pub fn bytes(&mut self, field: u32, v: &[u8]) {
        self.key(field, LEN);
        self.raw_varint(v.len() as u64);
        self.buf.extend_from_slice(v);
    }

    /// A `string` field.
    pub fn string(&mut self, field: u32, v: &str) {
        self.bytes(field, v.as_bytes());
    }

    /// A packed `repeated int64` field (nothing when empty).
    pub fn packed_ints(&mut self, field: u32, vs: &[i64]) {
        if vs.is_empty() {
            return;
        }
        let mut inner = Writer::new();
        for &v in vs {
            inner.raw_varint(v as u64);
        }
        self.bytes(field, &inner.buf);
    }

    /// A packed `repeated float` field (nothing when empty).
    pub fn packed_floats(&mut self, field: u32, vs: &[f32]) {
        if vs.is_empty() {
            return;
        }
        let bytes: Vec<u8> = vs.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.bytes(field, &bytes);
    }
}

/// `TensorProto.DataType` values used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    /// `FLOAT` (1).
    Float = 1,
    /// `INT64` (7).
    Int64 = 7,
}

/// `TensorProto` (dims = 1, data_type = 2, name = 8, raw_data = 9): a constant, its values
/// little-endian in `raw_data`.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorProto {
    /// Tensor name (an initializer's name is the value name nodes read).
    pub name: String,
    /// Shape.
    pub dims: Vec<i64>,
    /// Element type.
    pub data_type: DataType,
    /// Little-endian element bytes.
    pub raw_data: Vec<u8>,
}

impl TensorProto {
    /// A float tensor.
    pub fn float(name: impl Into<String>, dims: &[usize], values: &[f32]) -> Self {
        assert_eq!(
            dims.iter().product::<usize>(),
            values.len(),
            "tensor {dims:?}"
        );
        Self {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// An int64 tensor.
    pub fn int64(name: impl Into<String>, dims: &[usize], values: &[i64]) -> Self {
        assert_eq!(
            dims.iter().product::<usize>(),
            values.len(),
            "tensor {dims:?}"
        );
        Self {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Int64,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The encoded message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.packed_ints(1, &self.dims);
        w.int(2, self.data_type as i64);
        w.string(8, &self.name);
        w.bytes(9, &self.raw_data);
        w.into_bytes()
    }
}

/// An attribute value (`AttributeProto`: name = 1, f = 2, i = 3, s = 4, t = 5, floats = 7,
/// ints = 8, type = 20 with FLOAT 1, INT 2, STRING 3, TENSOR 4, FLOATS 6, INTS 7).
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// `f`.
    Float(f32),
    /// `i`.
    Int(i64),
    /// `s`.
    String(String),
    /// `t`.
    Tensor(TensorProto),
    /// `floats`.
    Floats(Vec<f32>),
    /// `ints`.
    Ints(Vec<i64>),
}

/// A named attribute of a node.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    /// Attribute name, e.g. `strides`.
    pub name: String,
    /// Its value.
    pub value: AttrValue,
}

impl Attribute {
    /// The encoded message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.string(1, &self.name);
        let ty = match &self.value {
            AttrValue::Float(v) => {
                w.float(2, *v);
                1
            }
            AttrValue::Int(v) => {
                w.int(3, *v);
                2
            }
            AttrValue::String(s) => {
                w.string(4, s);
                3
            }
            AttrValue::Tensor(t) => {
                w.bytes(5, &t.encode());
                4
            }
            AttrValue::Floats(v) => {
                w.packed_floats(7, v);
                6
            }
            AttrValue::Ints(v) => {
                w.packed_ints(8, v);
                7
            }
        };
        w.int(20, ty);
        w.into_bytes()
    }
}

/// `NodeProto` (input = 1, output = 2, name = 3, op_type = 4, attribute = 5); the default
/// (`ai.onnx`) domain.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeProto {
    /// Input value names (`""` for an omitted optional input).
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
    /// Node name (unique in the graph).
    pub name: String,
    /// Operator, e.g. `Conv`.
    pub op_type: String,
    /// Attributes.
    pub attributes: Vec<Attribute>,
}

impl NodeProto {
    /// The encoded message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        for i in &self.inputs {
            w.string(1, i);
        }
        for o in &self.outputs {
            w.string(2, o);
        }
        w.string(3, &self.name);
        w.string(4, &self.op_type);
        for a in &self.attributes {
            w.bytes(5, &a.encode());
        }
        w.into_bytes()
    }
}

/// One axis of a value's shape: a number or a symbolic name (`TensorShapeProto.Dimension`:
/// dim_value = 1, dim_param = 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Value(i64),
    /// A size known only at run time, named (e.g. `"N"` boxes).
    Param(String),
}

/// `ValueInfoProto` (name = 1, type = 2) of a tensor: `TypeProto.tensor_type` = 1 with
/// `elem_type` = 1 and `shape` = 2 (`TensorShapeProto.dim` = 1).
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfoProto {
    /// Value name.
    pub name: String,
    /// Element type.
    pub elem_type: DataType,
    /// Shape.
    pub dims: Vec<Dim>,
}

impl ValueInfoProto {
    /// The encoded message.
    pub fn encode(&self) -> Vec<u8> {
        let mut shape = Writer::new();
        for d in &self.dims {
            let mut dim = Writer::new();
            match d {
                Dim::Value(v) => dim.int(1, *v),
                Dim::Param(p) => dim.string(2, p),
            }
            shape.bytes(1, &dim.into_bytes());
        }
        let mut tensor = Writer::new();
        tensor.int(1, self.elem_type as i64);
        tensor.bytes(2, &shape.into_bytes());
        let mut ty = Writer::new();
        ty.bytes(1, &tensor.into_bytes());
        let mut w = Writer::new();
        w.string(1, &self.name);
        w.bytes(2, &ty.into_bytes());
        w.into_bytes()
    }
}

/// `GraphProto` (node = 1, name = 2, initializer = 5, doc_string = 10, input = 11,
/// output = 12).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct GraphProto {
    /// Nodes in topological order.
    pub nodes: Vec<NodeProto>,
    /// Graph name.
    pub name: String,
    /// Constants.
    pub initializers: Vec<TensorProto>,
    /// Description.
    pub doc_string: String,
    /// Graph inputs (not including initializers).
    pub inputs: Vec<ValueInfoProto>,
    /// Graph outputs.
    pub outputs: Vec<ValueInfoProto>,
}

impl GraphProto {
    /// The encoded message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        for n in &self.nodes {
            w.bytes(1, &n.encode());
        }
        w.string(2, &self.name);
        for t in &self.initializers {
            w.bytes(5, &t.encode());
        }
        if !self.doc_string.is_empty() {
            w.string(10, &self.doc_string);
        }
        for v in &self.inputs {
            w.bytes(11, &v.encode());
        }
        for v in &self.outputs {
            w.bytes(12, &v.encode());
        }
        w.into_bytes()
    }
}

/// `ModelProto` (ir_version = 1, producer_name = 2, producer_version = 3, graph = 7,
/// opset_import = 8 with `OperatorSetIdProto` domain = 1 / version = 2, metadata_props = 14
/// with `StringStringEntryProto` key = 1 / value = 2).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelProto {
    /// IR version (8 goes with opset 17).
    pub ir_version: i64,
    /// Opset of the default domain.
    pub opset: i64,
    /// Producer name.
    pub producer_name: String,
    /// Producer version.
    pub producer_version: String,
    /// The graph.
    pub graph: GraphProto,
    /// Key-value metadata (class names, input normalisation, ...).
    pub metadata: Vec<(String, String)>,
}

impl ModelProto {
    /// The encoded message: the bytes of a `.onnx` file.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.int(1, self.ir_version);
        w.string(2, &self.producer_name);
        w.string(3, &self.producer_version);
        w.bytes(7, &self.graph.encode());
        let mut opset = Writer::new();
        opset.string(1, "");
        opset.int(2, self.opset);
        w.bytes(8, &opset.into_bytes());
        for (k, v) in &self.metadata {
            let mut e = Writer::new();
            e.string(1, k);
            e.string(2, v);
            w.bytes(14, &e.into_bytes());
        }
        w.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Varints and keys as the protobuf encoding guide spells them out: 150 → `96 01`,
    /// -1 → ten bytes, field 2 of type LEN → key `0x12`.
    #[test]
    fn varints_and_keys_match_the_protobuf_guide() {
        let mut w = Writer::new();
        w.int(1, 150);
        assert_eq!(w.clone().into_bytes(), vec![0x08, 0x96, 0x01]);
        let mut w = Writer::new();
        w.int(3, -1);
        assert_eq!(
            w.into_bytes(),
            vec![
                0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]
        );
        let mut w = Writer::new();
        w.string(2, "testing");
        assert_eq!(
            w.into_bytes(),
            vec![0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']
        );
        let mut w = Writer::new();
        w.float(2, 1.0);
        assert_eq!(w.into_bytes(), vec![0x15, 0x00, 0x00, 0x80, 0x3f]);
    }

    /// A whole small tensor and attribute, encoded by hand from onnx.proto's field numbers.
    #[test]
    fn tensor_and_attribute_bytes() {
        let t = TensorProto::int64("s", &[2], &[1, -1]);
        let mut want = vec![0x0a, 0x01, 0x02, 0x10, 0x07, 0x42, 0x01, b's', 0x4a, 0x10];
        want.extend_from_slice(&1i64.to_le_bytes());
        want.extend_from_slice(&(-1i64).to_le_bytes());
        assert_eq!(t.encode(), want);

        let a = Attribute {
            name: "pads".into(),
            value: AttrValue::Ints(vec![1, 300]),
        };
        // name, ints packed (1, 300 = ac 02), type INTS (7) as field 20 (key a0 01).
        assert_eq!(
            a.encode(),
            vec![
                0x0a, 0x04, b'p', b'a', b'd', b's', 0x42, 0x03, 0x01, 0xac, 0x02, 0xa0, 0x01, 0x07
            ]
        );
    }

    /// A value info with a fixed and a symbolic dimension.
    #[test]
    fn value_info_bytes() {
        let v = ValueInfoProto {
            name: "x".into(),
            elem_type: DataType::Float,
            dims: vec![Dim::Value(3), Dim::Param("N".into())],
        };
        let dims = [0x0a, 0x02, 0x08, 0x03, 0x0a, 0x03, 0x12, 0x01, b'N'];
        let mut tensor = vec![0x08, 0x01, 0x12, dims.len() as u8];
        tensor.extend_from_slice(&dims);
        let mut ty = vec![0x0a, tensor.len() as u8];
        ty.extend_from_slice(&tensor);
        let mut want = vec![0x0a, 0x01, b'x', 0x12, ty.len() as u8];
        want.extend_from_slice(&ty);
        assert_eq!(v.encode(), want);
    }
}
