//! Helpers shared by the integration tests: fixture loading.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

/// A float32 tensor read from a safetensors file.
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub fn crate_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn read_safetensors(path: &PathBuf) -> HashMap<String, Array> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(
                view.dtype(),
                safetensors::Dtype::F32,
                "{name}: expected F32"
            );
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (
                name,
                Array {
                    shape: view.shape().to_vec(),
                    data,
                },
            )
        })
        .collect()
}

pub fn read_json(rel: &str) -> serde_json::Value {
    let path = crate_path(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn boxes(v: &serde_json::Value) -> Vec<[f32; 4]> {
    v.as_array()
        .expect("a list of boxes")
        .iter()
        .map(|b| {
            let b = b.as_array().expect("a box");
            [0, 1, 2, 3].map(|i| b[i].as_f64().expect("a number") as f32)
        })
        .collect()
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

pub fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|x| x.as_i64().expect("an integer"))
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
