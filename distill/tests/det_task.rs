//! The detector's training task on a tiny OV-Shapes: a few steps with ViLD-text + ViLD-image
//! run, the losses are finite, and an interrupted run resumed from its checkpoint ends with
//! the same weights and metrics as an uninterrupted one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use ovkd_data::DatasetDir;
use ovkd_data::coco::CocoDataset;
use ovkd_data::loader::{DataLoader, DetectionDataset, LoaderConfig};
use ovkd_data::ov_shapes::{Preset, SynthConfig, generate};
use ovkd_data::transforms::AugmentConfig;
use ovkd_detector::{Detector, DetectorConfig};
use ovkd_distill::det::{DetDistillConfig, DetError, DetTask, DetTaskMode, RegionSource};
use ovkd_distill::train::{LoopOptions, TrainConfig, train};

const D: usize = 16;

/// burn-flex's seed is process-wide: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn shapes(dir: &Path) -> DatasetDir {
    shapes_n(dir, 6)
}

fn shapes_n(dir: &Path, train_images: usize) -> DatasetDir {
    let mut cfg = SynthConfig::preset(Preset::Quick);
    cfg.train_images = train_images;
    cfg.val_images = 2;
    cfg.pretrain_images = 0;
    cfg.image_size = 64;
    cfg.min_object_size = 0.2;
    cfg.seed = 3;
    generate(dir.join("d"), &cfg).unwrap();
    DatasetDir::open(dir.join("d")).unwrap()
}

/// Every object of the full train annotations (novel ones too, as the cache would hold
/// proposals on them), each with a unit vector that depends on its class.
struct FakeCache {
    regions: HashMap<i64, (Vec<[f32; 4]>, Vec<f32>)>,
}

impl FakeCache {
    fn new(full: &Path) -> Self {
        let coco = CocoDataset::read(full).unwrap();
        let mut regions: HashMap<i64, (Vec<[f32; 4]>, Vec<f32>)> = HashMap::new();
        for a in &coco.annotations {
            let e = regions.entry(a.image_id as i64).or_default();
            e.0.push(a.bbox_xyxy());
            e.1.extend(class_vector(a.category_id));
        }
        Self { regions }
    }
}

/// The fake teacher's embedding of class `id`: a unit vector peaked at `id mod D`.
fn class_vector(id: u64) -> Vec<f32> {
    let mut v = vec![0.1f32; D];
    v[id as usize % D] = 1.0;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

impl RegionSource for FakeCache {
    fn dim(&self) -> usize {
        D
    }
    fn regions(&self, image_id: i64) -> Result<(Vec<[f32; 4]>, Vec<f32>), DetError> {
        Ok(self.regions.get(&image_id).cloned().unwrap_or_default())
    }
}

fn detector_config() -> DetectorConfig {
    let mut cfg = DetectorConfig::tiny(D);
    cfg.box_head.fc_dim = 32;
    cfg.box_head.image_branch = ovkd_detector::ImageBranch::SharedTrunk;
    cfg.roi_heads.batch_size_per_image = 32;
    cfg.rpn.pre_nms_top_n_train = 100;
    cfg.rpn.post_nms_top_n_train = 50;
    cfg
}

fn train_config(steps: usize) -> TrainConfig {
    let mut t: TrainConfig = toml::from_str(&format!(
        "steps = {steps}\nlr = 0.001\nbatch_size = 2\nseed = 11"
    ))
    .unwrap();
    t.checkpoint_every = 2;
    t.clip_grad_norm = Some(10.0);
    t
}

fn task(d: &DatasetDir, mode: DetTaskMode, steps: usize, device: &Device) -> DetTask {
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
                scale_jitter: Some([0.75, 1.25]),
                hflip_prob: 0.5,
                mean: [0.0; 3],
                std: [1.0; 3],
                size: None,
            },
        },
    );
    let text: Vec<f32> = (0..base.len() * D)
        .map(|k| ((k * 7919) % 13) as f32 / 13.0 - 0.4)
        .collect();
    let text = Tensor::<2>::from_data(TensorData::new(text, [base.len(), D]), device);
    let cache: Arc<dyn RegionSource> = Arc::new(FakeCache::new(&d.instances_full_path().unwrap()));
    DetTask::new(
        loader,
        Some(cache),
        DetDistillConfig {
            image_regions_per_image: 3,
            ..Default::default()
        },
        mode,
        text,
        11,
        steps,
        device.clone(),
    )
    .unwrap()
}

fn fresh(device: &Device) -> Detector {
    device.seed(5);
    detector_config().init(device).unwrap()
}

fn weights<M: Module>(m: &M) -> Vec<f32> {
    let mut out = Vec::new();
    struct Collect<'a>(&'a mut Vec<f32>);
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            self.0.extend(
                p.val()
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec::<f32>()
                    .unwrap(),
            );
        }
    }
    m.visit(&mut Collect(&mut out));
    out
}

/// Every parameter equal, bit for bit; on failure, which tensors differ and by how much.
fn assert_same_weights<M: Module>(a: &M, b: &M) {
    struct Collect(Vec<(String, Vec<f32>)>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            let v = p
                .val()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap();
            self.0.push((format!("{:?} {:?}", p.id, p.val().dims()), v));
        }
    }
    let (mut x, mut y) = (Collect(vec![]), Collect(vec![]));
    a.visit(&mut x);
    b.visit(&mut y);
    assert_eq!(x.0.len(), y.0.len());
    let bad: Vec<String> =
        x.0.iter()
            .zip(&y.0)
            .enumerate()
            .filter(|(_, (p, q))| p.1 != q.1)
            .map(|(k, (p, q))| {
                let d =
                    p.1.iter()
                        .zip(&q.1)
                        .map(|(u, v)| (u - v).abs())
                        .fold(0.0, f32::max);
                format!("#{k} {}: max diff {d:e}", p.0)
            })
            .collect();
    assert!(
        bad.is_empty(),
        "{} of {} tensors differ:\n{}",
        bad.len(),
        x.0.len(),
        bad.join("\n")
    );
}

fn strip_timing(csv: &str) -> Vec<String> {
    // The last two columns, img_per_s and seconds, are timings.
    csv.lines()
        .map(|l| l.rsplitn(3, ',').nth(2).unwrap().to_string())
        .collect()
}

#[test]
fn full_task_trains_and_resumes_exactly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let d = shapes(tmp.path());
    let device = Device::default().autodiff();
    let quiet = LoopOptions {
        progress: false,
        ..Default::default()
    };

    let a = tmp.path().join("a");
    let full = train(
        &train_config(4),
        &a,
        fresh(&device),
        &quiet,
        task(&d, DetTaskMode::Full, 4, &device),
    )
    .unwrap();
    assert_eq!(full.steps_done, 4);
    let csv = std::fs::read_to_string(a.join("metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    for col in [
        "rpn_objectness",
        "rpn_box_reg",
        "vild_text",
        "box_reg",
        "vild_image",
        "vild_regions",
    ] {
        assert!(header.contains(&col), "{header:?}");
    }
    let at = |row: &str, col: &str| -> f64 {
        let k = header.iter().position(|h| *h == col).unwrap();
        row.split(',').nth(k).unwrap().parse().unwrap()
    };
    for row in csv.lines().skip(1) {
        // ViLD-image saw regions (up to 3 per image, 2 images) and every term is finite.
        let q = at(row, "vild_regions");
        assert!(q > 0.0 && q <= 6.0, "{row}");
        assert!(at(row, "vild_image") > 0.0, "{row}");
        assert!(at(row, "loss").is_finite(), "{row}");
    }

    let b = tmp.path().join("b");
    let first = train(
        &train_config(4),
        &b,
        fresh(&device),
        &LoopOptions {
            stop_after: Some(2),
            ..quiet.clone()
        },
        task(&d, DetTaskMode::Full, 4, &device),
    )
    .unwrap();
    assert_eq!(first.steps_done, 2);
    // A different initialisation: the resume must restore the checkpoint's weights.
    device.seed(99);
    let other = detector_config().init(&device).unwrap();
    let rest = train(
        &train_config(4),
        &b,
        other,
        &LoopOptions {
            resume: true,
            ..quiet.clone()
        },
        task(&d, DetTaskMode::Full, 4, &device),
    )
    .unwrap();
    assert_eq!(rest.steps_done, 4);
    assert_same_weights(&full.model, &rest.model);
    let cb = std::fs::read_to_string(b.join("metrics.csv")).unwrap();
    assert_eq!(strip_timing(&csv), strip_timing(&cb));
}

#[test]
fn rpn_only_task_trains_only_backbone_and_rpn() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let d = shapes(tmp.path());
    let device = Device::default().autodiff();
    let model = fresh(&device);
    let head_before = weights(&model.box_head);
    let out = train(
        &train_config(2),
        &tmp.path().join("rpn"),
        model,
        &LoopOptions {
            progress: false,
            ..Default::default()
        },
        task(&d, DetTaskMode::RpnOnly, 2, &device),
    )
    .unwrap();
    let csv = std::fs::read_to_string(tmp.path().join("rpn/metrics.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(
        header.contains("rpn_objectness") && !header.contains("vild_text"),
        "{header}"
    );
    let head_after = weights(&out.model.box_head);
    assert_eq!(head_before, head_after, "the box head must not change");
}

/// The point of ViLD-image: on two training images, objects of novel classes (never boxed)
/// are learned from the cached teacher embeddings of their regions alone. (With a separate
/// image projection instead, the text projection, anchored only by the base classes, drifted
/// onto one novel class's text embedding and found none of the 10 objects.) The fake teacher's
/// text and region embeddings agree (one vector per class), as a good teacher's would.
///
/// The run is sensitive to the order of the kernels' float sums, which they split by
/// `rayon::current_num_threads()` (one thread: 0 of 2 novel objects found; two: 1 of 2), so it
/// runs in a 2-thread pool: the same run on every machine, CI's two cores included.
#[test]
fn vild_overfits_two_images_and_finds_novel_objects_through_vild_image() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap()
        .install(vild_overfits_two_images);
}

fn vild_overfits_two_images() {
    use ovkd_distill::det::{InferenceConfig, ScoreSource, detect};
    let tmp = tempfile::tempdir().unwrap();
    let d = shapes_n(tmp.path(), 2);
    let vocab = d.vocabulary().unwrap();
    let base: Vec<u64> = vocab.base().map(|c| c.id).collect();
    let all: Vec<u64> = vocab.classes.iter().map(|c| c.id).collect();
    let is_novel: Vec<bool> = vocab.classes.iter().map(|c| c.is_novel()).collect();
    let device = Device::default().autodiff();
    let ds = DetectionDataset::open(d.instances_path("train"), d.images_dir("train"))
        .unwrap()
        .with_classes(base.clone());
    let loader = DataLoader::new(
        Arc::new(ds),
        LoaderConfig {
            batch_size: 2,
            shuffle: false,
            drop_last: true,
            seed: 0,
            prefetch: 1,
            size_divisor: 32,
            augment: AugmentConfig {
                scale_jitter: None,
                hflip_prob: 0.0,
                mean: [0.0; 3],
                std: [1.0; 3],
                size: None,
            },
        },
    );
    let text = |ids: &[u64], device: &Device| {
        let v: Vec<f32> = ids.iter().flat_map(|&id| class_vector(id)).collect();
        Tensor::<2>::from_data(TensorData::new(v, [ids.len(), D]), device)
    };
    let steps = 120;
    let task = DetTask::new(
        loader,
        Some(Arc::new(FakeCache::new(&d.instances_full_path().unwrap()))),
        DetDistillConfig {
            image_regions_per_image: 64,
            image_weight: 2.0,
            ..Default::default()
        },
        DetTaskMode::Full,
        text(&base, &device),
        0,
        steps,
        device.clone(),
    )
    .unwrap()
    .with_prefetch(0);
    let mut cfg: TrainConfig =
        toml::from_str(&format!("steps = {steps}\nlr = 0.002\nbatch_size = 2")).unwrap();
    cfg.checkpoint_every = steps;
    cfg.clip_grad_norm = Some(10.0);
    let mut det_cfg = detector_config();
    det_cfg.roi_heads.batch_size_per_image = 64;
    // ViLD's single head: both losses train the one region embedding.
    det_cfg.box_head.image_branch = ovkd_detector::ImageBranch::None;
    device.seed(0);
    let model = det_cfg.init(&device).unwrap();
    let out = train(
        &cfg,
        &tmp.path().join("run"),
        model,
        &LoopOptions {
            progress: false,
            ..Default::default()
        },
        task,
    )
    .unwrap();
    let csv = std::fs::read_to_string(tmp.path().join("run/metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |row: &str, name: &str| -> f64 {
        let k = header.iter().position(|h| *h == name).unwrap();
        row.split(',').nth(k).unwrap().parse().unwrap()
    };
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    let (first, last) = (rows[0], rows[rows.len() - 1]);
    println!("first {first}\nlast {last}");
    for term in ["loss", "vild_image", "vild_text"] {
        assert!(
            col(last, term) < 0.5 * col(first, term),
            "{term} did not fall: {} -> {}",
            col(first, term),
            col(last, term)
        );
    }

    // Detect every class (base and novel) on the two training images.
    let model = out.model.valid();
    let plain = Device::default();
    let coco = CocoDataset::read(d.instances_full_path().unwrap()).unwrap();
    let mut images = coco.images.clone();
    images.sort_by_key(|i| i.id);
    let pixels: Vec<(Vec<f32>, [usize; 2])> = images
        .iter()
        .map(|im| {
            let rgb =
                ovkd_data::loader::load_rgb(&d.images_dir("train").join(&im.file_name)).unwrap();
            let (w, h) = (rgb.width() as usize, rgb.height() as usize);
            let mut v = vec![0f32; 3 * h * w];
            for (k, px) in rgb.pixels().enumerate() {
                for c in 0..3 {
                    v[c * h * w + k] = px[c] as f32 / 255.0;
                }
            }
            (v, [h, w])
        })
        .collect();
    let views: Vec<(&[f32], [usize; 2])> = pixels.iter().map(|(v, s)| (v.as_slice(), *s)).collect();
    let batch = ovkd_detector::ImageBatch::from_chw(&views, 32, &plain).unwrap();
    // Objects found (IoU >= 0.5 with the right class among all 12) by each head: [base, novel].
    let found_by = |scores: ScoreSource| {
        let inference = InferenceConfig {
            scores,
            ..Default::default()
        };
        let dets = detect(
            &model,
            &batch,
            text(&all, &plain),
            &is_novel,
            &inference,
            None,
        )
        .unwrap();
        let (mut found, mut total) = ([0usize; 2], [0usize; 2]);
        for (im, det) in images.iter().zip(&dets) {
            for a in coco.annotations.iter().filter(|a| a.image_id == im.id) {
                let novel = !base.contains(&a.category_id) as usize;
                let want = all.iter().position(|&c| c == a.category_id).unwrap();
                let g = a.bbox_xyxy();
                let hit = (0..det.len()).any(|i| {
                    det.labels[i] == want && ovkd_detector::boxes::iou(&g, &det.boxes.0[i]) >= 0.5
                });
                total[novel] += 1;
                found[novel] += hit as usize;
            }
        }
        println!(
            "{scores:?}: found base {}/{}, novel {}/{}",
            found[0], total[0], found[1], total[1]
        );
        (found, total)
    };
    let (found, total) = found_by(ScoreSource::Text);
    assert!(
        total[0] > 0 && total[1] > 0,
        "the two images need base and novel objects"
    );
    // The boxed (base) classes are learned from ViLD-text, the novel ones from ViLD-image alone.
    assert!(2 * found[0] >= total[0], "base: {found:?} of {total:?}");
    assert!(2 * found[1] >= total[1], "novel: {found:?} of {total:?}");
}
