//! Checkpoint loading: error messages, unused keys, and the OpenAI / OpenCLIP layout.

mod common;

use burn::tensor::Device;
use common::*;
use ovkd_teacher::parity::run_parity;
use ovkd_teacher::{ClipModel, HostTensor, TeacherError, WeightMap};

#[test]
fn a_missing_tensor_is_named_with_its_shape() {
    let mut map = tiny_weights();
    map.remove("vision_model.encoder.layers.1.mlp.fc2.weight");
    let err = ClipModel::from_weights(&tiny_config(), &mut map, &Device::flex()).unwrap_err();
    assert!(matches!(err, TeacherError::MissingTensor { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("vision_model.encoder.layers.1.mlp.fc2.weight"),
        "{msg}"
    );
    assert!(msg.contains("[64, 256]"), "{msg}");
}

#[test]
fn a_misshapen_tensor_is_named_with_both_shapes() {
    let mut map = tiny_weights();
    map.insert(
        "text_projection.weight".into(),
        HostTensor {
            shape: vec![48, 32],
            data: vec![0.0; 48 * 32],
        },
    );
    let err = ClipModel::from_weights(&tiny_config(), &mut map, &Device::flex()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("text_projection.weight"), "{msg}");
    assert!(
        msg.contains("[48, 32]") && msg.contains("[32, 48]"),
        "{msg}"
    );
}

#[test]
fn unused_keys_are_reported() {
    let mut map = tiny_weights();
    map.insert(
        "text_model.embeddings.position_ids".into(),
        HostTensor {
            shape: vec![1, 16],
            data: vec![0.0; 16],
        },
    );
    ClipModel::from_weights(&tiny_config(), &mut map, &Device::flex()).unwrap();
    assert_eq!(
        map.unused(),
        vec!["text_model.embeddings.position_ids".to_string()]
    );
}

/// Builds an OpenAI-layout state dict from the transformers fixture: q/k/v concatenated into
/// `in_proj_weight`, projections transposed, OpenAI names.
fn to_openai(hf: &WeightMap) -> WeightMap {
    let mut out = WeightMap::new(std::path::Path::new("openai"));
    let cfg = tiny_config();
    let get = |k: &str| hf.get(k).unwrap().clone();
    for (tower, prefix, layers) in [
        (
            "vision_model",
            "visual.",
            cfg.vision_config.num_hidden_layers,
        ),
        ("text_model", "", cfg.text_config.num_hidden_layers),
    ] {
        for i in 0..layers {
            let hp = format!("{tower}.encoder.layers.{i}");
            let op = format!("{prefix}transformer.resblocks.{i}");
            for kind in ["weight", "bias"] {
                let parts: Vec<HostTensor> = ["q_proj", "k_proj", "v_proj"]
                    .iter()
                    .map(|q| get(&format!("{hp}.self_attn.{q}.{kind}")))
                    .collect();
                let mut shape = parts[0].shape.clone();
                shape[0] *= 3;
                let data = parts.iter().flat_map(|p| p.data.clone()).collect();
                out.insert(
                    format!("{op}.attn.in_proj_{kind}"),
                    HostTensor { shape, data },
                );
                for (h, o) in [
                    ("self_attn.out_proj", "attn.out_proj"),
                    ("layer_norm1", "ln_1"),
                    ("layer_norm2", "ln_2"),
                    ("mlp.fc1", "mlp.c_fc"),
                    ("mlp.fc2", "mlp.c_proj"),
                ] {
                    out.insert(format!("{op}.{o}.{kind}"), get(&format!("{hp}.{h}.{kind}")));
                }
            }
        }
    }
    let pairs = [
        (
            "vision_model.embeddings.class_embedding",
            "visual.class_embedding",
        ),
        (
            "vision_model.embeddings.position_embedding.weight",
            "visual.positional_embedding",
        ),
        (
            "vision_model.embeddings.patch_embedding.weight",
            "visual.conv1.weight",
        ),
        ("vision_model.pre_layrnorm.weight", "visual.ln_pre.weight"),
        ("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"),
        (
            "vision_model.post_layernorm.weight",
            "visual.ln_post.weight",
        ),
        ("vision_model.post_layernorm.bias", "visual.ln_post.bias"),
        (
            "text_model.embeddings.token_embedding.weight",
            "token_embedding.weight",
        ),
        (
            "text_model.embeddings.position_embedding.weight",
            "positional_embedding",
        ),
        ("text_model.final_layer_norm.weight", "ln_final.weight"),
        ("text_model.final_layer_norm.bias", "ln_final.bias"),
        ("logit_scale", "logit_scale"),
    ];
    for (h, o) in pairs {
        out.insert(o.into(), get(h));
    }
    out.insert(
        "visual.proj".into(),
        get("visual_projection.weight").transposed(),
    );
    out.insert(
        "text_projection".into(),
        get("text_projection.weight").transposed(),
    );
    out.insert(
        "attn_mask".into(),
        HostTensor {
            shape: vec![16, 16],
            data: vec![0.0; 256],
        },
    );
    out
}

#[test]
fn openai_layout_gives_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let openai = to_openai(&tiny_weights());
    openai
        .save_safetensors(&dir.path().join("model.safetensors"))
        .unwrap();
    // The tiny heads (16 wide) differ from OpenAI's 64, so the architecture comes from config.json.
    std::fs::copy(
        tiny_dir().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let (cfg, mut map) = ovkd_teacher::load_checkpoint(dir.path(), None).unwrap();
    assert_eq!(cfg, tiny_config());
    let model = ClipModel::from_weights(&cfg, &mut map, &Device::flex()).unwrap();
    assert_eq!(map.unused(), vec!["attn_mask".to_string()]);
    let reference = tiny_model(&Device::flex());
    let (a, b) = (model.to_weights().unwrap(), reference.to_weights().unwrap());
    for name in b.names() {
        assert_eq!(a.get(name), b.get(name), "{name}");
    }
    let diffs = run_parity(
        dir.path(),
        &tiny_dir().join("inputs.safetensors"),
        &tiny_dir().join("expected.safetensors"),
        &Device::flex(),
    )
    .unwrap();
    assert!(diffs.iter().all(|d| d.max_abs_diff <= 1e-4), "{diffs:?}");
    // Without config.json the architecture is inferred from shapes (heads = width / 64).
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let (inferred, _) = ovkd_teacher::load_checkpoint(dir.path(), None).unwrap();
    assert_eq!(inferred.vision_config.num_hidden_layers, 2);
    assert_eq!(inferred.vision_config.image_size, 32);
    assert_eq!(inferred.vision_config.patch_size, 8);
    assert_eq!(inferred.text_config.max_position_embeddings, 16);
    assert_eq!(inferred.text_config.vocab_size, 500);
    assert_eq!(inferred.projection_dim, 32);
}

#[test]
fn save_and_reload_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(&Device::flex());
    model.save(dir.path()).unwrap();
    let (again, unused) = ClipModel::load(dir.path(), &Device::flex()).unwrap();
    assert!(unused.is_empty(), "{unused:?}");
    let (a, b) = (model.to_weights().unwrap(), again.to_weights().unwrap());
    for name in a.names() {
        assert_eq!(a.get(name), b.get(name), "{name}");
    }
}
