//! The segmenter's training task end to end on tiny synthetic images: it learns, pseudo-labels
//! come from a (hand-made) teacher where the ground truth is silent, and self-training switches
//! at its step in interrupted and uninterrupted runs alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use image::{Rgb, RgbImage};
use ovkd_backbone::ResNetConfig;
use ovkd_data::loader::LoaderConfig;
use ovkd_data::semantic::SemanticMask;
use ovkd_data::transforms::{AugmentConfig, IMAGENET_MEAN, IMAGENET_STD};
use ovkd_distill::seg::cache::dense_features;
use ovkd_distill::seg::dataset::{NO_LABEL, SegTrainSet};
use ovkd_distill::seg::evaluate::student_label_maps;
use ovkd_distill::seg::pseudo::teacher_pseudo_map;
use ovkd_distill::seg::regions::{RegionConfig, region_pseudo_map};
use ovkd_distill::seg::task::SegTaskInputs;
use ovkd_distill::seg::{
    DenseMaps, DenseTeacher, MaskClipConfig, PseudoLabelConfig, SegDistillConfig, SegTask,
    SelfTrainConfig,
};
use ovkd_distill::train::{
    LoopOptions, OptimizerConfig, ScheduleConfig, TrainConfig, Trained, train,
};
use ovkd_eval::SegEvaluator;
use ovkd_segmenter::{InferenceMode, Segmenter, SegmenterConfig};

const D: usize = 4;

/// A teacher that sees colour: a patch's embedding is its mean RGB (plus a constant), and a
/// class name embeds to the colour it names.
struct ColourTeacher;

fn unit(v: [f32; D]) -> [f32; D] {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.map(|x| x / n)
}

fn colour_of(name: &str) -> [f32; D] {
    match name {
        "red" => unit([1.0, 0.0, 0.0, 0.3]),
        "green" => unit([0.0, 1.0, 0.0, 0.3]),
        "blue" => unit([0.0, 0.0, 1.0, 0.3]),
        _ => unit([0.5, 0.5, 0.5, 0.3]),
    }
}

impl DenseTeacher for ColourTeacher {
    fn dim(&self) -> usize {
        D
    }
    fn patch_size(&self) -> usize {
        4
    }
    fn device(&self) -> Device {
        Device::default()
    }
    fn fingerprint(&self) -> String {
        "colour-teacher".into()
    }
    fn class_embeds(&self, classes: &[Vec<String>], _: &[String]) -> Result<Tensor<2>, String> {
        let v: Vec<f32> = classes.iter().flat_map(|n| colour_of(&n[0])).collect();
        Ok(Tensor::from_data(
            TensorData::new(v, [classes.len(), D]),
            &Device::default(),
        ))
    }
    fn region_embeds(&self, image: &RgbImage, boxes: &[[f32; 4]]) -> Result<Tensor<2>, String> {
        let mut v = Vec::new();
        for b in boxes {
            let mut m = [0f32; 3];
            let mut n = 0f32;
            for y in b[1] as u32..b[3] as u32 {
                for x in b[0] as u32..b[2] as u32 {
                    let p = image.get_pixel(x, y);
                    for c in 0..3 {
                        m[c] += p[c] as f32 / 255.0;
                    }
                    n += 1.0;
                }
            }
            v.extend(unit([m[0] / n, m[1] / n, m[2] / n, 0.3]));
        }
        Ok(Tensor::from_data(
            TensorData::new(v, [boxes.len(), D]),
            &Device::default(),
        ))
    }
    fn dense(&self, images: &[RgbImage], size: usize) -> Result<Vec<DenseMaps>, String> {
        let g = size / 4;
        Ok(images
            .iter()
            .map(|img| {
                let img = image::imageops::resize(
                    img,
                    size as u32,
                    size as u32,
                    image::imageops::FilterType::Triangle,
                );
                let mut e = vec![0f32; D * g * g];
                for gy in 0..g {
                    for gx in 0..g {
                        let mut m = [0f32; 3];
                        for y in 0..4 {
                            for x in 0..4 {
                                let p = img.get_pixel((gx * 4 + x) as u32, (gy * 4 + y) as u32);
                                for c in 0..3 {
                                    m[c] += p[c] as f32 / 255.0 / 16.0;
                                }
                            }
                        }
                        let v = unit([m[0], m[1], m[2], 0.3]);
                        for d in 0..D {
                            e[(d * g + gy) * g + gx] = v[d];
                        }
                    }
                }
                let embeds = Tensor::<3>::from_data(
                    TensorData::new(e.clone(), [D, g, g]),
                    &Device::default(),
                );
                let keys = embeds.clone();
                DenseMaps { embeds, keys }
            })
            .collect())
    }
}

/// A 32 x 32 grey image with a red square (class 1) at the top left, a blue square (class 2) at
/// the bottom right and a green square (class 3) at the top right; `novel_green` marks the
/// green one unlabelled (255) as a training split would.
fn scene(dir: &Path, name: &str, novel_green: bool) -> (PathBuf, PathBuf) {
    let mut img = RgbImage::from_pixel(32, 32, Rgb([128, 128, 128]));
    let mut lab = SemanticMask::filled(32, 32, 0);
    let squares = [
        (2u32, 2u32, [220u8, 30, 30], 1u16),
        (18, 18, [30, 30, 220], 2),
        (18, 2, [30, 200, 30], 3),
    ];
    for (x0, y0, rgb, class) in squares {
        for y in y0..y0 + 12 {
            for x in x0..x0 + 12 {
                img.put_pixel(x, y, Rgb(rgb));
                let v = if class == 3 && novel_green {
                    255
                } else {
                    class
                };
                lab.set(x as usize, y as usize, v);
            }
        }
    }
    let ip = dir.join(format!("{name}.png"));
    let lp = dir.join(format!("{name}_label.png"));
    img.save(&ip).unwrap();
    lab.write(&lp).unwrap();
    (ip, lp)
}

/// The device's random generator is shared by the tests running in parallel: seeding and
/// initialising happen under one lock so that every call builds the same weights.
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tiny_model(device: &Device) -> Segmenter {
    let _guard = INIT.lock().unwrap();
    device.seed(11);
    SegmenterConfig {
        backbone: ResNetConfig {
            widths: [8, 8, 16, 16],
            stem_channels: 8,
            ..ResNetConfig::tiny()
        },
        decoder_channels: 16,
        refine_layers: 1,
        embed_dim: D,
        ..SegmenterConfig::default()
    }
    .init(device)
    .unwrap()
}

fn train_cfg(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 2,
        lr: 0.01,
        optimizer: OptimizerConfig::default(),
        schedule: ScheduleConfig::default(),
        clip_grad_norm: Some(10.0),
        checkpoint_every: 2,
        keep_checkpoints: 2,
        seed: 5,
    }
}

fn loader(batch: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: batch,
        shuffle: true,
        seed: 5,
        augment: AugmentConfig {
            hflip_prob: 0.5,
            ..AugmentConfig::default()
        },
        ..LoaderConfig::default()
    }
}

fn names(ns: &[&str]) -> Vec<Vec<String>> {
    ns.iter().map(|n| vec![n.to_string()]).collect()
}

fn miou(model: &Segmenter, images: &[PathBuf], labels: &[PathBuf], classes: Tensor<2>) -> f64 {
    let mut ev = SegEvaluator::new(4);
    student_label_maps(
        &model.clone().valid(),
        images,
        classes,
        &[0, 1, 2, 3],
        InferenceMode::Whole,
        IMAGENET_MEAN,
        IMAGENET_STD,
        4,
        |i, map| {
            let gt = SemanticMask::read(&labels[i]).unwrap();
            ev.add("img", gt.as_slice(), &map.labels).unwrap();
            Ok(())
        },
    )
    .unwrap();
    ev.report().m_iou
}

fn quiet() -> LoopOptions {
    LoopOptions {
        progress: false,
        ..Default::default()
    }
}

#[test]
fn a_tiny_segmenter_overfits_one_image() {
    let dir = tempfile::tempdir().unwrap();
    let (ip, lp) = scene(dir.path(), "a", false);
    let teacher = ColourTeacher;
    let classes = teacher
        .class_embeds(&names(&["red", "blue", "green"]), &[])
        .unwrap();
    let device = Device::default().autodiff();
    let model = tiny_model(&device);
    let before = miou(&model, &[ip.clone()], &[lp.clone()], classes.clone());
    let cfg = SegDistillConfig {
        pseudo: PseudoLabelConfig {
            enabled: false,
            ..PseudoLabelConfig::default()
        },
        ..SegDistillConfig::default()
    };
    let task = SegTask::new(
        cfg,
        SegTaskInputs {
            dataset: SegTrainSet::new(vec![(ip.clone(), lp.clone()); 2]),
            loader: loader(2),
            class_embeds: classes.clone(),
            class_values: vec![1, 2, 3],
            candidate_values: vec![],
            teacher_features: None,
            crop: None,
            device: device.clone(),
        },
    )
    .unwrap();
    let out = train(
        &train_cfg(60),
        dir.path().join("run").as_path(),
        model,
        &quiet(),
        task,
    )
    .unwrap();
    let after = miou(&out.model, &[ip], &[lp], classes);
    assert!(
        after > 0.8 && after > before + 0.3,
        "mIoU {before} -> {after}"
    );
}

/// Pseudo-labels from the colour teacher fill exactly the unlabelled (green) pixels, with the
/// green class, and only where confident.
#[test]
fn teacher_pseudo_labels_fill_only_unlabelled_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let (ip, lp) = scene(dir.path(), "a", true);
    let teacher = ColourTeacher;
    let feats = dense_features(&teacher, &[ip.clone()], 32, 4, None, |_| {}).unwrap();
    let maps = DenseMaps {
        embeds: feats.embeds(0, &Device::default()),
        keys: feats.keys(0, &Device::default()),
    };
    let gt = SemanticMask::read(&lp).unwrap();
    let cand = teacher
        .class_embeds(&names(&["green", "red"]), &[])
        .unwrap();
    let cfg = PseudoLabelConfig {
        threshold: 0.9,
        maskclip: MaskClipConfig {
            prompt_denoise: None,
            key_smooth: None,
            ..MaskClipConfig::default()
        },
        ..PseudoLabelConfig::default()
    };
    let map = teacher_pseudo_map(&cfg, &maps, cand.clone(), &[3, 1], &gt);
    let mut filled = 0;
    for (i, (&p, &g)) in map.iter().zip(gt.as_slice()).enumerate() {
        if g != 255 {
            assert_eq!(
                p, NO_LABEL,
                "pixel {i} is labelled ({g}) but got a pseudo-label"
            );
        } else if p != NO_LABEL {
            assert_eq!(p, 3, "pixel {i}");
            filled += 1;
        }
    }
    // The square's interior (away from the bilinear blur at its edges) is confidently green.
    assert!(filled >= 100, "{filled} of 144 filled");
    // An impossible threshold fills nothing.
    let strict = PseudoLabelConfig {
        threshold: 1.01,
        ..cfg
    };
    assert!(
        teacher_pseudo_map(&strict, &maps, cand, &[3, 1], &gt)
            .iter()
            .all(|&p| p == NO_LABEL)
    );
}

#[test]
fn region_pseudo_labels_fill_each_unlabelled_region_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (ip, lp) = scene(dir.path(), "a", true);
    let img = ovkd_data::loader::load_rgb(&ip).unwrap();
    let gt = SemanticMask::read(&lp).unwrap();
    let teacher = ColourTeacher;
    let cand = teacher
        .class_embeds(&names(&["green", "red"]), &[])
        .unwrap();
    let cfg = RegionConfig::default();
    let map = region_pseudo_map(&cfg, 0.9, &teacher, &img, cand.clone(), &[3, 1], &gt).unwrap();
    for (i, (&p, &g)) in map.iter().zip(gt.as_slice()).enumerate() {
        // Every pixel of the unlabelled (green) square, edges included, and nothing else.
        let want = if g == 255 { 3 } else { NO_LABEL };
        assert_eq!(p, want, "pixel {i} (ground truth {g})");
    }
    // An impossible threshold fills nothing; regions below min_pixels are skipped.
    let none = region_pseudo_map(&cfg, 1.01, &teacher, &img, cand.clone(), &[3, 1], &gt).unwrap();
    assert!(none.iter().all(|&p| p == NO_LABEL));
    let big = RegionConfig {
        min_pixels: 145,
        ..cfg
    };
    let none = region_pseudo_map(&big, 0.9, &teacher, &img, cand, &[3, 1], &gt).unwrap();
    assert!(none.iter().all(|&p| p == NO_LABEL));
}

fn self_training_task(ip: &Path, lp: &Path, pseudo: Arc<Vec<Vec<u8>>>, device: &Device) -> SegTask {
    let teacher = ColourTeacher;
    let classes = teacher
        .class_embeds(&names(&["red", "blue", "green"]), &[])
        .unwrap();
    let cfg = SegDistillConfig {
        self_train: SelfTrainConfig {
            after_step: Some(3),
            threshold: 0.3,
            ..SelfTrainConfig::default()
        },
        ..SegDistillConfig::default()
    };
    SegTask::new(
        cfg,
        SegTaskInputs {
            dataset: SegTrainSet::new(vec![(ip.to_path_buf(), lp.to_path_buf()); 2])
                .with_pseudo(pseudo),
            // Scale jitter up to 1.5x and random 32 px crops back (the green square stays
            // partly in every window), so the resume check below covers the crops' streams.
            loader: LoaderConfig {
                augment: AugmentConfig {
                    scale_jitter: Some([1.0, 1.5]),
                    ..loader(2).augment
                },
                ..loader(2)
            },
            class_embeds: classes,
            class_values: vec![1, 2, 3],
            candidate_values: vec![3],
            teacher_features: None,
            crop: Some(32),
            device: device.clone(),
        },
    )
    .unwrap()
}

fn column(csv: &str, name: &str) -> Vec<f64> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let i = header.iter().position(|h| *h == name).unwrap();
    lines
        .map(|l| l.split(',').nth(i).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn self_training_switches_at_its_step_and_survives_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (ip, lp) = scene(dir.path(), "a", true);
    let gt = SemanticMask::read(&lp).unwrap();
    // Teacher pseudo-labels: green on every unlabelled pixel.
    let pseudo: Vec<u8> = gt
        .as_slice()
        .iter()
        .map(|&v| if v == 255 { 3 } else { NO_LABEL })
        .collect();
    let pseudo = Arc::new(vec![pseudo.clone(), pseudo]);
    let device = Device::default().autodiff();

    let full_dir = dir.path().join("full");
    let full: Trained<Segmenter> = train(
        &train_cfg(6),
        &full_dir,
        tiny_model(&device),
        &quiet(),
        self_training_task(&ip, &lp, pseudo.clone(), &device),
    )
    .unwrap();
    assert_eq!(full.steps_done, 6);

    let split_dir = dir.path().join("split");
    let opts = LoopOptions {
        stop_after: Some(2),
        ..quiet()
    };
    train(
        &train_cfg(6),
        &split_dir,
        tiny_model(&device),
        &opts,
        self_training_task(&ip, &lp, pseudo.clone(), &device),
    )
    .unwrap();
    let resumed = LoopOptions {
        resume: true,
        ..quiet()
    };
    train(
        &train_cfg(6),
        &split_dir,
        tiny_model(&device),
        &resumed,
        self_training_task(&ip, &lp, pseudo, &device),
    )
    .unwrap();

    let a = std::fs::read_to_string(full_dir.join("metrics.csv")).unwrap();
    let b = std::fs::read_to_string(split_dir.join("metrics.csv")).unwrap();
    assert_eq!(
        column(&a, "self_training"),
        vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    );
    assert_eq!(column(&a, "self_training"), column(&b, "self_training"));
    // Teacher steps label every unlabelled pixel.
    assert_eq!(column(&a, "pseudo_frac")[..3], [1.0, 1.0, 1.0]);
    for name in ["loss_lseg", "loss_pseudo", "pseudo_frac"] {
        let (x, y) = (column(&a, name), column(&b, name));
        for (s, (p, q)) in x.iter().zip(&y).enumerate() {
            assert!(
                (p - q).abs() <= 1e-6 * p.abs().max(1.0),
                "{name} step {s}: {p} vs {q}"
            );
        }
    }
}
