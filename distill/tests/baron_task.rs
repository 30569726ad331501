//! BARON on a tiny OV-Shapes with a tiny random text tower: gradients reach the student's
//! pseudo-word projection through the frozen tower (whose weights stay put), a few steps run
//! with finite bag and single-region losses, and a run interrupted and resumed (queues
//! restored from the checkpoint) ends exactly like an uninterrupted one.

use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use ovkd_data::coco::CocoDataset;
use ovkd_data::loader::{DataLoader, DetectionDataset, LoaderConfig};
use ovkd_data::ov_shapes::{OvShapesDir, Preset, SynthConfig, generate};
use ovkd_data::transforms::AugmentConfig;
use ovkd_detector::{BoxHeadConfig, Detector, DetectorConfig};
use ovkd_distill::det::bags::{bag_centers, sample_bags};
use ovkd_distill::det::{
    BagCache, BaronConfig, CachedBag, DetDistillConfig, DetTask, DetTaskMode, DistillMethod,
    PseudoWordEncoder,
};
use ovkd_distill::train::{LoopOptions, TrainConfig, train};
use ovkd_teacher::{ClipConfig, ClipModel};
use rand::SeedableRng;

/// Teacher embedding size D and token width W.
const D: usize = 16;
const W: usize = 16;

/// burn-flex's seed is process-wide: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A 1-layer CLIP with a 16-wide text tower (context 32, vocabulary 20; tokens 18 and 19
/// start and end), random weights, on the plain device.
fn tiny_tower(dir: &Path) -> PseudoWordEncoder {
    let json = r#"{
      "projection_dim": 16,
      "logit_scale_init_value": 2.6592,
      "text_config": {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
        "num_hidden_layers": 1, "max_position_embeddings": 32, "vocab_size": 20,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 16,
        "bos_token_id": 18, "eos_token_id": 19, "pad_token_id": 19},
      "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
        "num_hidden_layers": 1, "image_size": 8, "patch_size": 4, "num_channels": 3,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 16}
    }"#;
    let path = dir.join("config.json");
    std::fs::write(&path, json).unwrap();
    let cfg = ClipConfig::from_file(&path).unwrap();
    let model = ClipModel::random(&cfg, 7, &Device::flex()).unwrap();
    PseudoWordEncoder::new(&model.text_model, &model.text_projection, 18, 19).unwrap()
}

fn host<const N: usize>(t: Tensor<N>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn gradients_reach_the_pseudo_word_projection_through_the_frozen_tower() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_tower(tmp.path());
    let probe = Tensor::<2>::random([2, 3 * W], Distribution::Normal(0.0, 1.0), &Device::flex());
    let before_tower = host(enc.encode_regions(probe.clone()).unwrap());

    let device = Device::default().autodiff();
    device.seed(1);
    let cfg = BoxHeadConfig {
        pseudo_words: 3,
        word_dim: W,
        ..BoxHeadConfig::new(4, 32, D)
    };
    let head = cfg.init(&device);
    let x = Tensor::<4>::random([5, 4, 7, 7], Distribution::Default, &device);
    let words = head.forward(x.clone()).pseudo_words.unwrap();
    let emb = enc.encode_regions(words).unwrap();
    assert_eq!(emb.dims(), [5, D]);
    let target = Tensor::<2>::from_data(
        TensorData::new(
            (0..5 * D).map(|k| (k % 3) as f32).collect::<Vec<_>>(),
            [5, D],
        ),
        &device,
    );
    let loss = emb.mul(target).sum().neg();
    let grads = loss.backward();
    let proj = head.word_projection.as_ref().unwrap();
    let g = host(
        proj.weight
            .grad(&grads)
            .expect("a gradient for the projection"),
    );
    assert!(g.iter().any(|v| v.abs() > 1e-8), "zero gradient");
    assert!(g.iter().all(|v| v.is_finite()));

    // An optimiser step on the head changes the projection and not the tower.
    let before_proj = host(proj.weight.val());
    let gp = GradientsParams::from_grads(grads, &head);
    let mut sgd = SgdConfig::new().init();
    let head = sgd.step(0.1, head, gp);
    let after_proj = host(head.word_projection.as_ref().unwrap().weight.val());
    assert_ne!(before_proj, after_proj);
    assert_eq!(before_tower, host(enc.encode_regions(probe).unwrap()));
}

fn shapes(dir: &Path) -> OvShapesDir {
    let mut cfg = SynthConfig::preset(Preset::Quick);
    cfg.train_images = 4;
    cfg.val_images = 2;
    cfg.pretrain_images = 0;
    cfg.image_size = 64;
    cfg.min_object_size = 0.2;
    cfg.seed = 3;
    generate(dir.join("d"), &cfg).unwrap();
    OvShapesDir::open(dir.join("d")).unwrap()
}

/// Bags around every object of the full annotations, with made-up teacher embeddings.
fn bag_cache(d: &OvShapesDir, cfg: &BaronConfig) -> BagCache {
    let coco = CocoDataset::read(d.instances_full_path()).unwrap();
    let mut cache = BagCache {
        dim: D,
        ..Default::default()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    for im in &coco.images {
        let gt: Vec<[f32; 4]> = coco
            .annotations
            .iter()
            .filter(|a| a.image_id == im.id)
            .map(|a| a.bbox_xyxy())
            .collect();
        let size = [im.height as usize, im.width as usize];
        let bags: Vec<CachedBag> = bag_centers(&[], &[], &gt, &cfg.bags)
            .into_iter()
            .flat_map(|c| sample_bags(c, size, &cfg.bags, &mut rng))
            .enumerate()
            .map(|(i, bag)| {
                let unit = |k: usize| {
                    let mut v = vec![0.1f32; D];
                    v[k % D] = 1.0;
                    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    v.iter().map(|x| x / n).collect::<Vec<_>>()
                };
                CachedBag {
                    bag,
                    teacher_bag: unit(i + im.id as usize),
                    teacher_center: unit(3 * i + 1),
                }
            })
            .collect();
        cache.images.insert(im.id as i64, bags);
    }
    cache
}

fn distill_config() -> DetDistillConfig {
    let mut c = DetDistillConfig {
        method: DistillMethod::Baron,
        ..Default::default()
    };
    c.baron.pseudo_words = 2;
    c.baron.bags_per_image = 3;
    c.baron.queue_size = 8;
    c.baron.bags.base_probability = 0.6;
    c.baron.bags.alpha = 0.0;
    c
}

fn detector(device: &Device, seed: u64) -> Detector {
    device.seed(seed);
    let mut cfg = DetectorConfig::tiny(D);
    cfg.box_head.fc_dim = 32;
    cfg.box_head.pseudo_words = 2;
    cfg.box_head.word_dim = W;
    cfg.roi_heads.batch_size_per_image = 16;
    cfg.rpn.pre_nms_top_n_train = 60;
    cfg.rpn.post_nms_top_n_train = 30;
    cfg.init(device).unwrap()
}

fn task(d: &OvShapesDir, enc: &PseudoWordEncoder, steps: usize, device: &Device) -> DetTask {
    let vocab = d.vocabulary().unwrap();
    let base: Vec<u64> = vocab.base().map(|c| c.id).collect();
    let ds = DetectionDataset::open(d.instances_path("train"), d.images_dir("train"))
        .unwrap()
        .with_classes(base.clone());
    let loader = DataLoader::new(
        Arc::new(ds),
        LoaderConfig {
            batch_size: 2,
            shuffle: true,
            drop_last: true,
            seed: 11,
            prefetch: 1,
            size_divisor: 32,
            augment: AugmentConfig {
                scale_jitter: Some([0.8, 1.2]),
                hflip_prob: 0.5,
                mean: [0.0; 3],
                std: [1.0; 3],
                size: None,
            },
        },
    );
    let text = Tensor::<2>::random([base.len(), D], Distribution::Normal(0.0, 1.0), device);
    let text = text.clone().div(text.powi_scalar(2).sum_dim(1).sqrt());
    let cfg = distill_config();
    let bags = Arc::new(bag_cache(d, &cfg.baron));
    DetTask::new(
        loader,
        None,
        cfg,
        DetTaskMode::Full,
        text,
        11,
        steps,
        device.clone(),
    )
    .unwrap()
    .with_baron(bags, enc.clone())
    .unwrap()
}

fn weights<M: Module>(m: &M) -> Vec<f32> {
    let mut out = Vec::new();
    struct Collect<'a>(&'a mut Vec<f32>);
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const N: usize>(&mut self, p: &burn::module::Param<Tensor<N>>) {
            self.0.extend(host(p.val()));
        }
    }
    m.visit(&mut Collect(&mut out));
    out
}

fn train_config(steps: usize) -> TrainConfig {
    let mut t: TrainConfig = toml::from_str(&format!(
        "steps = {steps}\nlr = 0.001\nbatch_size = 2\nseed = 11"
    ))
    .unwrap();
    t.checkpoint_every = 2;
    t
}

#[test]
fn baron_trains_and_resumes_exactly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let d = shapes(tmp.path());
    let enc = tiny_tower(tmp.path());
    let device = Device::default().autodiff();
    let quiet = LoopOptions {
        progress: false,
        ..Default::default()
    };
    // The text embeddings are drawn from the device's seed: the same in every run.
    let mk_task = |steps| {
        device.seed(21);
        task(&d, &enc, steps, &device)
    };

    let a = tmp.path().join("a");
    let t = mk_task(4);
    let full = train(&train_config(4), &a, detector(&device, 5), &quiet, t).unwrap();
    assert_eq!(full.steps_done, 4);
    let csv = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let at = |row: &str, col: &str| -> f64 {
        let k = header
            .iter()
            .position(|h| *h == col)
            .unwrap_or_else(|| panic!("no {col} in {header:?}"));
        row.split(',').nth(k).unwrap().parse().unwrap()
    };
    for row in csv.lines().skip(1) {
        assert!(at(row, "baron_bags") > 0.0, "{row}");
        // Two orders of most bags (a lone centre has one).
        assert!(at(row, "baron_sequences") > at(row, "baron_bags"), "{row}");
        assert!(
            at(row, "baron_bag") > 0.0 && at(row, "baron_bag").is_finite(),
            "{row}"
        );
        assert!(at(row, "baron_single").is_finite(), "{row}");
        assert!(at(row, "baron_cls") > 0.0, "{row}");
    }

    let b = tmp.path().join("b");
    let t = mk_task(4);
    let first = train(
        &train_config(4),
        &b,
        detector(&device, 5),
        &LoopOptions {
            stop_after: Some(2),
            ..quiet.clone()
        },
        t,
    )
    .unwrap();
    assert_eq!(first.steps_done, 2);
    let t = mk_task(4);
    let rest = train(
        &train_config(4),
        &b,
        detector(&device, 99),
        &LoopOptions {
            resume: true,
            ..quiet.clone()
        },
        t,
    )
    .unwrap();
    assert_eq!(rest.steps_done, 4);
    assert_eq!(weights(&full.model), weights(&rest.model));
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| l.rsplitn(3, ',').nth(2).unwrap().to_string())
            .collect()
    };
    let cb = std::fs::read_to_string(b.join("metrics.csv")).unwrap();
    assert_eq!(strip(&csv), strip(&cb));
}
