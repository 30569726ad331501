//! Pre-training the built-in teacher: a small CLIP trained from OV-Shapes image-caption pairs
//! with the symmetric InfoNCE loss and a learned temperature, saved in the Hugging Face layout.
//!
//! Each sample is a pretrain image (randomly cropped to between `min_crop` and all of its side)
//! with its caption; for images of a single object, half the time a short text made from the
//! caption record's object ("a photo of a star.", "a photo of a red star."), so that the text
//! tower also sees the phrasing prompts use. Pairs with identical texts in a batch count as
//! positives of each other (soft targets).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::clip::{Activation, ClipConfig, ClipModel, TextConfig, VisionConfig, l2_normalize};
use crate::error::{TeacherError, to_vec};
use crate::preprocess::PreprocessConfig;
use crate::shapes::{CaptionPair, load_rgb, read_captions};
use crate::tokenizer::{ClipTokenizer, build_word_level};

/// Pre-training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    /// Preset name it came from.
    pub preset: String,
    /// Input side S.
    pub image_size: usize,
    /// Patch size p.
    pub patch_size: usize,
    /// Image tower width, depth, heads.
    pub vision_width: usize,
    /// Image tower blocks.
    pub vision_layers: usize,
    /// Image tower heads.
    pub vision_heads: usize,
    /// Text tower width.
    pub text_width: usize,
    /// Text tower blocks.
    pub text_layers: usize,
    /// Text tower heads.
    pub text_heads: usize,
    /// Context length.
    pub context_length: usize,
    /// Joint embedding size D.
    pub projection_dim: usize,
    /// Pairs per step.
    pub batch_size: usize,
    /// Optimisation steps.
    pub steps: usize,
    /// Stop early after this many seconds (0: no limit).
    pub max_seconds: u64,
    /// Peak learning rate (linear warm-up, cosine decay).
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Share of single-object samples that get a short object text instead of the caption.
    pub object_text_fraction: f64,
    /// Smallest random crop, as a fraction of the image side.
    pub min_crop: f64,
    /// Save a checkpoint every this many steps.
    pub checkpoint_every: usize,
    /// Seed.
    pub seed: u64,
}

impl PretrainConfig {
    /// `quick` (a smoke run of a minute or two), `default` (the built-in teacher, ≤ 10 minutes on
    /// two cores) or `large`.
    pub fn preset(name: &str) -> Result<Self, TeacherError> {
        let base = Self {
            preset: name.into(),
            image_size: 32,
            patch_size: 4,
            vision_width: 96,
            vision_layers: 3,
            vision_heads: 4,
            text_width: 64,
            text_layers: 2,
            text_heads: 4,
            context_length: 32,
            projection_dim: 64,
            batch_size: 64,
            steps: 1500,
            max_seconds: 540,
            lr: 1e-3,
            warmup: 100,
            weight_decay: 0.05,
            object_text_fraction: 0.5,
            min_crop: 0.7,
            checkpoint_every: 250,
            seed: 0,
        };
        match name {
            "default" => Ok(base),
            "quick" => Ok(Self {
                steps: 150,
                warmup: 20,
                max_seconds: 120,
                checkpoint_every: 50,
                ..base
            }),
            "large" => Ok(Self {
                image_size: 64,
                patch_size: 8,
                vision_width: 192,
                vision_layers: 6,
                vision_heads: 6,
                text_width: 128,
                text_layers: 4,
                text_heads: 4,
                projection_dim: 128,
                steps: 6000,
                max_seconds: 0,
                lr: 5e-4,
                ..base
            }),
            other => Err(TeacherError::InvalidRequest(format!(
                "--preset {other}: expected quick, default or large"
            ))),
        }
    }

    /// The CLIP architecture for a vocabulary of `vocab_size` ids ending with `sot`, `eot`.
    pub fn clip_config(&self, vocab_size: usize, sot: i64, eot: i64) -> ClipConfig {
        ClipConfig {
            text_config: TextConfig {
                vocab_size,
                hidden_size: self.text_width,
                intermediate_size: 4 * self.text_width,
                num_hidden_layers: self.text_layers,
                num_attention_heads: self.text_heads,
                max_position_embeddings: self.context_length,
                layer_norm_eps: 1e-5,
                hidden_act: Activation::QuickGelu,
                bos_token_id: sot,
                eos_token_id: eot,
                pad_token_id: eot,
            },
            vision_config: VisionConfig {
                hidden_size: self.vision_width,
                intermediate_size: 4 * self.vision_width,
                num_hidden_layers: self.vision_layers,
                num_attention_heads: self.vision_heads,
                num_channels: 3,
                image_size: self.image_size,
                patch_size: self.patch_size,
                layer_norm_eps: 1e-5,
                hidden_act: Activation::QuickGelu,
            },
            projection_dim: self.projection_dim,
            logit_scale_init_value: 2.6592,
            model_type: "clip".into(),
        }
    }
}

/// What a pre-training run did.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainReport {
    /// Steps run.
    pub steps: usize,
    /// Wall-clock seconds of the training loop.
    pub seconds: f64,
    /// Mean loss over the last 50 steps.
    pub final_loss: f64,
    /// Image-caption pairs read.
    pub pairs: usize,
    /// Single-object images among them.
    pub single_object: usize,
    /// Final temperature exp(logit_scale).
    pub logit_scale: f64,
    /// The settings.
    pub config: PretrainConfig,
}

/// Short texts for a single object: "a photo of a {class}.", with its colour, with its size.
fn object_texts(o: &crate::shapes::CaptionObject) -> Vec<String> {
    let Some(c) = &o.class else { return Vec::new() };
    let mut v = vec![format!("a photo of a {c}.")];
    if let Some(col) = &o.colour {
        v.push(format!("a photo of a {col} {c}."));
        if let Some(sz) = &o.size {
            v.push(format!("a photo of a {sz} {col} {c}."));
        }
    }
    v
}

/// Trains the built-in teacher on `data/pretrain` and writes `model.safetensors`,
/// `config.json`, `tokenizer.json` and `pretrain.json` into `out` (checkpoints along the way,
/// each file written atomically). `progress` is called after each step with (step, loss).
pub fn pretrain(
    data: &Path,
    out: &Path,
    cfg: &PretrainConfig,
    device: &Device,
    mut progress: impl FnMut(usize, f64),
) -> Result<PretrainReport, TeacherError> {
    let split = data.join("pretrain");
    let pairs: Vec<CaptionPair> = read_captions(&split)?;
    if pairs.is_empty() {
        return Err(TeacherError::format(
            &split.join("captions.jsonl"),
            "no image-caption pairs",
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| TeacherError::io(out, e))?;
    // The vocabulary: every word of the captions, object phrases and the eval prompt.
    let mut texts: Vec<String> = pairs.iter().map(|p| p.caption.clone()).collect();
    texts.extend(
        pairs
            .iter()
            .flat_map(|p| p.objects.iter().flat_map(object_texts)),
    );

    texts.push("a photo of a .".into());
    if let Ok(vocab) = crate::shapes::read_vocab(&data.join("vocab.toml")) {
        for c in vocab.classes {
            texts.push(c.name.clone());
            texts.extend(c.synonyms.clone());
        }
    }
    let tok_path = out.join("tokenizer.json");
    let wv = build_word_level(&texts, &tok_path)?;
    let tokenizer = ClipTokenizer::from_file(&tok_path, cfg.context_length)?;
    let clip_cfg = cfg.clip_config(wv.vocab_size, wv.sot, wv.eot);
    clip_cfg.validate().map_err(TeacherError::InvalidRequest)?;

    let images: Vec<RgbImage> = pairs
        .iter()
        .map(|p| load_rgb(&p.path))
        .collect::<Result<_, _>>()?;
    // Per image: its caption, and short object texts when it shows a single object.
    let short: Vec<Vec<String>> = pairs
        .iter()
        .map(|p| {
            if p.objects.len() == 1 {
                object_texts(&p.objects[0])
            } else {
                Vec::new()
            }
        })
        .collect();
    let single_object = short.iter().filter(|v| !v.is_empty()).count();
    let pre = PreprocessConfig::clip(cfg.image_size);
    let ad = device.clone().autodiff();
    let mut model = ClipModel::random(&clip_cfg, cfg.seed, &ad)?;
    let mut optim = AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_beta_2(0.98)
        .with_weight_decay(cfg.weight_decay as f32)
        .init();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed);
    let start = Instant::now();
    let limit = (cfg.max_seconds > 0).then(|| Duration::from_secs(cfg.max_seconds));
    let mut losses: Vec<f64> = Vec::new();
    let mut step = 0;
    let save = |model: &ClipModel,
                step: usize,
                losses: &[f64],
                seconds: f64|
     -> Result<PretrainReport, TeacherError> {
        let m = model.valid();
        m.save(out)?;
        let tail = &losses[losses.len().saturating_sub(50)..];
        let report = PretrainReport {
            steps: step,
            seconds,
            final_loss: tail.iter().sum::<f64>() / tail.len().max(1) as f64,
            pairs: pairs.len(),
            single_object,
            logit_scale: to_vec(m.logit_scale.val().exp())?
                .first()
                .copied()
                .unwrap_or(0.0) as f64,
            config: cfg.clone(),
        };
        crate::io::write_atomic(
            &out.join("pretrain.json"),
            serde_json::to_string_pretty(&report)
                .expect("json")
                .as_bytes(),
        )?;
        Ok(report)
    };
    while step < cfg.steps {
        if limit.is_some_and(|l| start.elapsed() >= l) {
            break;
        }
        let s = cfg.image_size;
        let mut px = Vec::with_capacity(cfg.batch_size * 3 * s * s);
        let mut texts = Vec::with_capacity(cfg.batch_size);
        for _ in 0..cfg.batch_size {
            let i = rng.random_range(0..pairs.len());
            let t = if !short[i].is_empty() && rng.random_bool(cfg.object_text_fraction) {
                short[i][rng.random_range(0..short[i].len())].clone()
            } else {
                pairs[i].caption.clone()
            };
            let b = random_crop(&images[i], cfg.min_crop, &mut rng);
            px.extend(pre.crop(&images[i], b)?);
            texts.push(t);
        }
        let tb = tokenizer.encode_batch(&texts)?;
        let b = texts.len();
        let pixels = Tensor::<4>::from_data(TensorData::new(px, [b, 3, s, s]), &ad);
        let img = l2_normalize(model.image_features(pixels));
        let txt = l2_normalize(model.text_features(&tb.ids, tb.batch, tb.len));
        let scale = model
            .logit_scale
            .val()
            .clamp(0.0, 100f64.ln())
            .exp()
            .unsqueeze::<2>();
        let logits = img.matmul(txt.transpose()) * scale; // [B, B]
        let mut target = vec![0.0f32; b * b];
        for i in 0..b {
            let same: Vec<usize> = (0..b).filter(|&j| texts[j] == texts[i]).collect();
            for &j in &same {
                target[i * b + j] = 1.0 / same.len() as f32;
            }
        }
        let target = Tensor::<2>::from_data(TensorData::new(target, [b, b]), &ad);
        let l_i = (log_softmax(logits.clone(), 1) * target.clone())
            .sum()
            .neg();
        let l_t = (log_softmax(logits.transpose(), 1) * target).sum().neg();
        let loss = (l_i + l_t).div_scalar(2.0 * b as f64);
        let lv = to_vec(loss.clone().detach())?
            .first()
            .copied()
            .unwrap_or(f32::NAN) as f64;
        if !lv.is_finite() {
            return Err(TeacherError::InvalidRequest(format!(
                "loss became {lv} at step {step}"
            )));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = lr_at(cfg, step);
        model = optim.step(lr, model, grads);
        losses.push(lv);
        step += 1;
        progress(step, lv);
        if cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step < cfg.steps {
            save(&model, step, &losses, start.elapsed().as_secs_f64())?;
        }
    }
    save(&model, step, &losses, start.elapsed().as_secs_f64())
}

/// Linear warm-up then cosine decay to 0.
fn lr_at(cfg: &PretrainConfig, step: usize) -> f64 {
    if step < cfg.warmup {
        return cfg.lr * (step + 1) as f64 / cfg.warmup as f64;
    }
    let t = (step - cfg.warmup) as f64 / (cfg.steps - cfg.warmup).max(1) as f64;
    cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
}

/// A random window of the image, each side between `min` and all of the image's.
fn random_crop(img: &RgbImage, min: f64, rng: &mut impl Rng) -> [f32; 4] {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let min = min.clamp(0.05, 1.0) as f32;
    let cw = w * rng.random_range(min..=1.0);
    let ch = h * rng.random_range(min..=1.0);
    let x = rng.random_range(0.0..=(w - cw));
    let y = rng.random_range(0.0..=(h - ch));
    [x, y, x + cw, y + ch]
}

/// Zero-shot top-1 accuracy of single-object crops.
#[derive(Debug, Clone, Serialize)]
pub struct ZeroShotReport {
    /// Crops scored.
    pub crops: usize,
    /// Accuracy over all crops.
    pub all: f64,
    /// Accuracy over crops of base classes.
    pub base: f64,
    /// Accuracy over crops of novel classes.
    pub novel: f64,
    /// Per class: (name, split, crops, accuracy).
    pub per_class: Vec<(String, String, usize, f64)>,
}

/// Classifies every (non-crowd) annotated object of `data/val` by its ViLD region embedding
/// (1x and 1.5x crops of its box, as the teacher embeds regions for distillation) against
/// `prompt` filled with each class name of `data/vocab.toml` (argmax over all classes).
pub fn zero_shot_eval(
    teacher: &crate::embed::Teacher,
    data: &Path,
    prompt: &str,
) -> Result<ZeroShotReport, TeacherError> {
    let vocab = crate::shapes::read_vocab(&data.join("vocab.toml"))?;
    let classes: Vec<Vec<String>> = vocab.classes.iter().map(|c| vec![c.name.clone()]).collect();
    let text = teacher.class_embeds(&classes, &[prompt.to_string()])?; // [K, D]
    let split_dir: PathBuf = data.join("val");
    let coco = crate::shapes::read_coco(&split_dir.join("instances.json"))?;
    let mut by_image: std::collections::BTreeMap<u64, Vec<&crate::shapes::CocoAnnotation>> =
        Default::default();
    for a in coco.annotations.iter().filter(|a| a.iscrowd == 0) {
        by_image.entry(a.image_id).or_default().push(a);
    }
    let k = vocab.classes.len();
    let mut hits = vec![0usize; k];
    let mut counts = vec![0usize; k];
    let class_index = |cat: u64| vocab.classes.iter().position(|c| c.id == cat);
    for img in &coco.images {
        let Some(anns) = by_image.get(&img.id) else {
            continue;
        };
        let rgb = load_rgb(&crate::shapes::image_path(&split_dir, &img.file_name))?;
        let (w, h) = (rgb.width() as f32, rgb.height() as f32);
        let mut boxes = Vec::new();
        let mut labels = Vec::new();
        for a in anns {
            let Some(ci) = class_index(a.category_id) else {
                continue;
            };
            let b = a.bbox.map(|v| v as f32);
            let b = [
                b[0].max(0.0),
                b[1].max(0.0),
                (b[0] + b[2]).min(w),
                (b[1] + b[3]).min(h),
            ];
            if b[2] - b[0] < 1.0 || b[3] - b[1] < 1.0 {
                continue;
            }
            boxes.push(b);
            labels.push(ci);
        }
        if labels.is_empty() {
            continue;
        }
        let e = teacher.region_embeds(&rgb, &boxes)?; // [N, D]
        let sims = to_vec(e.matmul(text.clone().transpose()))?; // [N, K]
        for (n, &ci) in labels.iter().enumerate() {
            let row = &sims[n * k..(n + 1) * k];
            let best = (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            counts[ci] += 1;
            hits[ci] += usize::from(best == ci);
        }
    }
    let acc = |f: &dyn Fn(&crate::shapes::VocabClass) -> bool| {
        let (h, c) = vocab
            .classes
            .iter()
            .enumerate()
            .filter(|(_, v)| f(v))
            .fold((0, 0), |(h, c), (i, _)| (h + hits[i], c + counts[i]));
        if c > 0 { h as f64 / c as f64 } else { f64::NAN }
    };
    Ok(ZeroShotReport {
        crops: counts.iter().sum(),
        all: acc(&|_| true),
        base: acc(&|v| v.is_base()),
        novel: acc(&|v| v.is_novel()),
        per_class: vocab
            .classes
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    v.name.clone(),
                    if v.is_novel() {
                        "novel".into()
                    } else {
                        "base".into()
                    },
                    counts[i],
                    if counts[i] > 0 {
                        hits[i] as f64 / counts[i] as f64
                    } else {
                        f64::NAN
                    },
                )
            })
            .collect(),
    })
}
