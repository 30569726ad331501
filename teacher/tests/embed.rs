//! Text, region, dense and token-embedding paths of the teacher.

mod common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::*;
use ovkd_teacher::clip::l2_normalize;
use ovkd_teacher::embed::{Teacher, TextTeacher};
use ovkd_teacher::preprocess::scale_box;
use ovkd_teacher::weights::read_int_tensor;

fn norms(v: &[f32], d: usize) -> Vec<f32> {
    v.chunks(d)
        .map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt())
        .collect()
}

#[test]
fn prompt_ensemble_is_the_renormalised_mean() {
    let device = Device::flex();
    let (t, _dir) = tiny_teacher(&device);
    let templates: Vec<String> = ["a photo of a {}.", "a small {}.", "the {}"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let classes = vec![
        vec!["star".to_string()],
        vec!["red circle".to_string(), "ring".to_string()],
    ];
    let e = vec2(t.class_embeds(&classes, &templates).unwrap());
    let d = t.dim();
    assert!(norms(&e, d).iter().all(|n| (n - 1.0).abs() < 1e-5));
    // By hand: class 1 averages 2 names x 3 templates.
    let texts: Vec<String> = ["red circle", "ring"]
        .iter()
        .flat_map(|n| templates.iter().map(move |t| t.replace("{}", n)))
        .collect();
    let each = vec2(t.text_embeds(&texts).unwrap());
    assert!(norms(&each, d).iter().all(|n| (n - 1.0).abs() < 1e-5));
    let mut mean = vec![0.0f32; d];
    for r in each.chunks(d) {
        for (m, x) in mean.iter_mut().zip(r) {
            *m += x / 6.0;
        }
    }
    let n = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
    let want: Vec<f32> = mean.iter().map(|x| x / n).collect();
    assert!(max_diff(&e[d..], &want) < 1e-5);
    // Cached: the second call reads the file and gives the same numbers.
    let cache = tempfile::tempdir().unwrap();
    let a = vec2(
        t.class_embeds_cached(&classes, &templates, cache.path())
            .unwrap(),
    );
    assert!(
        t.text_cache_path(&classes, &templates, cache.path())
            .exists()
    );
    let b = vec2(
        t.class_embeds_cached(&classes, &templates, cache.path())
            .unwrap(),
    );
    assert_eq!(a, b);
    assert!(max_diff(&a, &e) < 1e-6);
    let other = vec![vec!["star".to_string()]];
    assert_ne!(
        t.text_cache_path(&classes, &templates, cache.path()),
        t.text_cache_path(&other, &templates, cache.path())
    );
}

#[test]
fn region_embedding_sums_the_1x_and_1_5x_crops() {
    let device = Device::flex();
    let (t, _dir) = tiny_teacher(&device);
    let img = image::RgbImage::from_fn(50, 40, |x, y| {
        image::Rgb([(x * 5) as u8, (y * 6) as u8, ((x * y) % 256) as u8])
    });
    let boxes = [[10.0, 8.0, 30.0, 20.0], [0.0, 0.0, 12.0, 40.0]];
    let got = vec2(t.region_embeds(&img, &boxes).unwrap());
    let d = t.dim();
    assert!(norms(&got, d).iter().all(|n| (n - 1.0).abs() < 1e-5));
    for (i, b) in boxes.iter().enumerate() {
        let wide = scale_box(*b, 1.5, 50, 40);
        let mut px = t.preprocess.crop(&img, *b).unwrap();
        px.extend(t.preprocess.crop(&img, wide).unwrap());
        let e = vec2(t.embed_pixels(&px, 2));
        let sum: Vec<f32> = (0..d).map(|k| e[k] + e[d + k]).collect();
        let n = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
        let want: Vec<f32> = sum.iter().map(|x| x / n).collect();
        assert!(max_diff(&got[i * d..(i + 1) * d], &want) < 1e-5, "box {i}");
    }
    // The wide crop of the second box is clipped to the image.
    assert_eq!(scale_box(boxes[1], 1.5, 50, 40), [0.0, 0.0, 15.0, 40.0]);
    assert!(t.region_embeds(&img, &[[5.0, 5.0, 5.0, 9.0]]).is_err());
}

/// Issue 8's bar for half-precision inference: each region embedding within cosine 0.999 of
/// the float32 teacher's, though computed with every image-tower weight and activation rounded.
#[test]
fn half_precision_region_embeddings_stay_within_cosine_0_999() {
    use ovkd_teacher::precision::Precision;
    let device = Device::flex();
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 3 % 256) as u8])
    });
    let boxes = [
        [4.0, 4.0, 40.0, 30.0],
        [20.0, 10.0, 60.0, 47.0],
        [0.0, 0.0, 64.0, 48.0],
    ];
    let (t, _dir) = tiny_teacher(&device);
    let want = vec2(t.region_embeds(&img, &boxes).unwrap());
    let d = t.dim();
    for p in [Precision::Bf16, Precision::F16] {
        let (t, _dir) = tiny_teacher(&device);
        let t = t.with_precision(p);
        let got = vec2(t.region_embeds(&img, &boxes).unwrap());
        assert_ne!(got, want, "{p}: nothing was rounded");
        assert!(
            norms(&got, d).iter().all(|n| (n - 1.0).abs() < 1e-5),
            "{p}: unit length"
        );
        for i in 0..boxes.len() {
            let (a, b) = (&got[i * d..(i + 1) * d], &want[i * d..(i + 1) * d]);
            let cos: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            assert!(cos > 0.999, "{p}, box {i}: cosine {cos}");
        }
    }
}

/// Preparing the teacher for float32 inference changes its region embeddings by rounding at
/// most, in either weight layout: on burn-flex (CI) nothing changes; on LibTorch (with
/// `--features ovkd-backbone/tch`, where `Device::default()` is LibTorch's CPU) QuickGELU is
/// folded into SiLU and the linear weights take PyTorch's layout.
#[test]
fn preparing_for_float32_inference_keeps_the_region_embeddings() {
    use ovkd_teacher::embed::WeightLayout;
    use ovkd_teacher::precision::Precision;
    let device = Device::default();
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 3 % 256) as u8])
    });
    let boxes = [[4.0, 4.0, 40.0, 30.0], [20.0, 10.0, 60.0, 47.0]];
    let (t, _dir) = tiny_teacher(&device);
    let want = vec2(t.region_embeds(&img, &boxes).unwrap());
    for layout in [WeightLayout::Torch, WeightLayout::Burn] {
        let (t, _dir) = tiny_teacher(&device);
        let t = t.with_precision_in(Precision::F32, layout);
        let got = vec2(t.region_embeds(&img, &boxes).unwrap());
        assert!(max_diff(&got, &want) < 1e-5, "{layout:?}");
    }
}

#[test]
fn dense_features_at_any_size() {
    let device = Device::flex();
    let (t, _dir) = tiny_teacher(&device);
    let img = image::RgbImage::from_fn(61, 45, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
    });
    let f = t.dense(&img, (48, 40)).unwrap();
    assert_eq!(f.embeds.dims(), [32, 5, 6]);
    assert_eq!(f.keys.dims(), [64, 5, 6]);
    let e = f.embeds.permute([1, 2, 0]).reshape([30, 32]);
    assert!(norms(&vec2(e), 32).iter().all(|n| (n - 1.0).abs() < 1e-5));
    // At the training grid the positions are the learned ones; elsewhere resized bicubically
    // from them (constant embeddings stay constant, the class position is kept).
    let vm = &t.model.vision_model;
    assert_eq!(vec2(vm.positions(4, 4)), vec2(vm.position_embedding.val()));
    let p = vec2(vm.positions(5, 6));
    assert_eq!(p.len(), 31 * 64);
    assert_eq!(&p[..64], &vec2(vm.position_embedding.val())[..64]);
    assert!(t.dense(&img, (47, 40)).is_err());
}

#[test]
fn text_from_token_embeddings_equals_the_text_tower() {
    let device = Device::flex();
    let model = tiny_model(&device);
    let (shape, ids) =
        read_int_tensor(&tiny_dir().join("inputs.safetensors"), "input_ids").unwrap();
    let (b, l) = (shape[0], shape[1]);
    let (t, _dir) = {
        let (mut t, d) = tiny_teacher(&device);
        t.model = model;
        (t, d)
    };
    let eot = t.model.text_model.eot_positions(&ids, l);
    let idx = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [b, l]), &device);
    let tok = burn::tensor::module::embedding(t.token_embedding(), idx);
    let got = vec2(t.text_from_token_embeds(tok, &eot));
    let want = vec2(t.model.text_embeds(&ids, b, l));
    assert!(max_diff(&got, &want) < 1e-6);
    // And both equal transformers' text_embeds.
    let exp = ovkd_teacher::WeightMap::from_safetensors(&tiny_dir().join("expected.safetensors"))
        .unwrap();
    assert!(max_diff(&got, &exp.get("text_embeds").unwrap().data) < 1e-4);
}

#[test]
fn gradients_flow_into_token_embeddings_only() {
    let device = Device::flex();
    let (t, _dir) = tiny_teacher(&device);
    let ad = device.clone().autodiff();
    let x = Tensor::<3>::random(
        [2, 6, 48],
        burn::tensor::Distribution::Normal(0.0, 0.1),
        &ad,
    )
    .require_grad();
    let target = l2_normalize(Tensor::<2>::ones([2, 32], &ad));
    let e = t.text_from_token_embeds(x.clone(), &[5, 3]);
    let loss = (e * target).sum();
    let grads = loss.backward();
    let g = x.grad(&grads).expect("a gradient for the token embeddings");
    assert_eq!(g.dims(), [2, 6, 48]);
    let g = g
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    // Row 1 pools at position 3: under the causal mask, positions 4 and 5 cannot matter.
    let row1 = &g[6 * 48..];
    assert!(row1[..4 * 48].iter().any(|v| v.abs() > 1e-7));
    assert!(row1[4 * 48..].iter().all(|v| *v == 0.0));
    assert!(!t.model.text_model.token_embedding.val().is_autodiff());
}

#[test]
fn interpolated_positions_match_transformers() {
    // transformers' vision tower on a 40x48 input with interpolate_pos_encoding=True
    // (bench/teacher_make_interp_fixture.py).
    let device = Device::flex();
    let model = tiny_model(&device);
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/interp_pos.safetensors");
    let f = ovkd_teacher::WeightMap::from_safetensors(&path).unwrap();
    let pos = vec2(model.vision_model.positions(5, 6));
    assert!(max_diff(&pos, &f.get("positions").unwrap().data) < 1e-5);
    let px = f.get("pixel_values").unwrap();
    let x = Tensor::<4>::from_data(TensorData::new(px.data.clone(), px.shape.clone()), &device);
    let out = model.vision_model.forward(x);
    let got = out
        .last_hidden_state
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    assert!(max_diff(&got, &f.get("last_hidden_state").unwrap().data) < 1e-4);
    // The class-token-only last block (what image_features and the pre-training run) gives
    // the full forward's pooled output.
    let pooled = vec2(out.pooled);
    let x = Tensor::<4>::from_data(TensorData::new(px.data.clone(), px.shape.clone()), &device);
    let fast = vec2(model.vision_model.forward_pooled(x));
    assert_eq!(pooled.len(), fast.len());
    assert!(
        max_diff(&pooled, &fast) < 1e-5,
        "{}",
        max_diff(&pooled, &fast)
    );
}

#[test]
fn the_text_half_alone_embeds_class_names_as_the_whole_teacher() {
    let device = Device::flex();
    let (t, dir) = tiny_teacher(&device);
    let mut model = tiny_model(&device);
    let eot = t.model.text_model.eos_token_id;
    model.text_model.eos_token_id = eot;
    model.config.text_config.eos_token_id = eot;
    // A whole checkpoint beside the tokenizer: the text half loads, the image half is expected
    // to be left over and is not reported.
    model.save(dir.path()).unwrap();
    let (from_whole, unused) = TextTeacher::load(dir.path(), &device).unwrap();
    assert!(unused.is_empty(), "{unused:?}");
    let text_dir = dir.path().join("text");
    from_whole.tower.save(&text_dir).unwrap();
    std::fs::copy(
        dir.path().join("tokenizer.json"),
        text_dir.join("tokenizer.json"),
    )
    .unwrap();
    let (alone, unused) = TextTeacher::load(&text_dir, &device).unwrap();
    assert!(unused.is_empty(), "{unused:?}");
    let templates = vec!["a photo of a {}.".to_string(), "the {}".to_string()];
    let classes = vec![
        vec!["star".to_string()],
        vec!["red circle".to_string(), "ring".to_string()],
    ];
    assert_eq!(
        vec2(alone.class_embeds(&classes, &templates).unwrap()),
        vec2(t.class_embeds(&classes, &templates).unwrap())
    );
    // The whole teacher cannot load from the text half: the missing tensor is named.
    let err = Teacher::load(&text_dir, &device).unwrap_err().to_string();
    assert!(err.contains("vision_model."), "{err}");
}

#[test]
fn zero_shot_on_1x_crops_equals_vild_with_the_wide_crop_replaced_by_the_tight_one() {
    use ovkd_data::{Split, VocabClass, Vocabulary};
    use ovkd_teacher::zero_shot::{RegionCrops, ZeroShotSet};
    let device = Device::flex();
    let (t, _dir) = tiny_teacher(&device);
    let s = t.preprocess.size;
    let per = 3 * s * s;
    let names = ["star", "circle", "square", "ring"];
    let vocab = Vocabulary {
        name: "tiny".into(),
        classes: names
            .iter()
            .enumerate()
            .map(|(i, n)| VocabClass {
                id: i as u64 + 1,
                name: n.to_string(),
                synonyms: Vec::new(),
                split: if i < 3 { Split::Base } else { Split::Novel },
            })
            .collect(),
    };
    // 16 objects, each a pseudo-random tight crop and a different wide crop.
    let n = 16;
    let mut x = 12345u64;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
    };
    let crops: Vec<f32> = (0..2 * n * per).map(|_| next()).collect();
    let labels: Vec<usize> = (0..n).map(|i| i % names.len()).collect();
    let set = ZeroShotSet {
        crops: crops.clone(),
        labels: labels.clone(),
        vocab: vocab.clone(),
        size: s,
    };
    let mut doubled = Vec::with_capacity(crops.len());
    for tight in crops.chunks(per).step_by(2) {
        doubled.extend_from_slice(tight);
        doubled.extend_from_slice(tight);
    }
    let same = ZeroShotSet {
        crops: doubled,
        labels,
        vocab,
        size: s,
    };
    let prompt = "a photo of a {}.";
    let tight = set.evaluate_as(&t, prompt, RegionCrops::Tight).unwrap();
    let want = same.evaluate(&t, prompt).unwrap();
    assert_eq!(tight.crops, n);
    assert_eq!(tight.confusion, want.confusion);
    assert_eq!(tight.all, want.all);
}
