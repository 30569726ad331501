//! Shared helpers for the teacher's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use ovkd_teacher::embed::Teacher;
use ovkd_teacher::tokenizer::{ClipTokenizer, build_word_level};
use ovkd_teacher::{ClipConfig, ClipModel, WeightMap};

pub fn tiny_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/clip/tiny")
}

pub fn tiny_model(device: &Device) -> ClipModel {
    ClipModel::load(&tiny_dir(), device).unwrap().0
}

/// The tiny fixture model with a small word-level tokenizer (ids < 500) whose end id the
/// model pools at.
pub fn tiny_teacher(device: &Device) -> (Teacher, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let words: Vec<String> = ["a photo of a red star circle square ring the small large blue"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let v = build_word_level(&words, &dir.path().join("tokenizer.json")).unwrap();
    let tok = ClipTokenizer::from_file(&dir.path().join("tokenizer.json"), 16).unwrap();
    let mut model = tiny_model(device);
    model.text_model.eos_token_id = v.eot;
    (Teacher::new(model, tok, "tiny".into(), device), dir)
}

pub fn vec2(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn tiny_config() -> ClipConfig {
    ClipConfig::from_file(&tiny_dir().join("config.json")).unwrap()
}

pub fn tiny_weights() -> WeightMap {
    WeightMap::from_safetensors(&tiny_dir().join("model.safetensors")).unwrap()
}
