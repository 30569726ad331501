//! The teacher's image tower on region crops, inference only: a ViT-B/32-sized CLIP
//! (transformers' `CLIPConfig` defaults: width 768, 12 layers, patch 32, 224 px, projection 512)
//! with random weights. `reference.py teacher` runs transformers' `CLIPModel.get_image_features`
//! on the very crops encoded here (`--dump` writes them as `pixel_values` in a safetensors file).
//!
//! The crops are ViLD's: the 1x and 1.5x views of random boxes on a noise image, cropped and
//! preprocessed by the teacher's own code. One step encodes all of them in batches of
//! `--batch` from a tensor already on the device, as the reference does; `--from-host` times
//! `embed_pixels` instead (each batch uploaded from host memory first), and `--end-to-end`
//! `region_embeds` (cropping, preprocessing, uploading, encoding and pairing from the image and
//! boxes); neither has a reference counterpart.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::{Device, Tensor, TensorData};
use ovkd_teacher::clip::{ClipConfig, ClipModel};
use ovkd_teacher::embed::{Teacher, WeightLayout};
use ovkd_teacher::precision::Precision;
use ovkd_teacher::tokenizer::{ClipTokenizer, build_word_level};
use ovkd_teacher::weights::{HostTensor, WeightMap};
use rand::{Rng, SeedableRng};

use crate::synth::ms;
use crate::{PhaseTimes, Schedule};

/// Options of the `teacher` workload.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Crops per step (two per box: the 1x and 1.5x views).
    #[arg(long, default_value_t = 64)]
    crops: usize,
    /// Crops per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Write the crops to this safetensors file (`pixel_values` `[N, 3, 224, 224]`).
    #[arg(long)]
    dump: Option<std::path::PathBuf>,
    /// Write the random model to this safetensors file under transformers' names (for
    /// `bench/teacher_half_precision.py`, which runs transformers on the same weights).
    #[arg(long)]
    dump_weights: Option<std::path::PathBuf>,
    /// Time the whole `region_embeds` (image and boxes in) instead of the model alone.
    #[arg(long, conflicts_with = "from_host")]
    end_to_end: bool,
    /// Time `embed_pixels` (crops in host memory, uploaded batch by batch) instead of the model
    /// on crops already on the device.
    #[arg(long)]
    from_host: bool,
    /// The image tower's precision: fp32, bf16 or fp16 (`reference.py teacher --dtype`).
    /// Below fp32 the output also carries `min_cosine_vs_f32`, the lowest cosine between a
    /// crop's embedding and the float32 model's (issue 8 asks > 0.999).
    #[arg(long, default_value = "fp32")]
    dtype: Precision,
    /// How the tower's linear weights are held on LibTorch: `torch` (PyTorch's `[out, in]`,
    /// what `Teacher::with_precision` does) or `burn` (Burn's `[in, out]`, before session 14),
    /// to time the two on one device.
    #[arg(long, default_value = "torch")]
    weight_layout: WeightLayout,
}

/// Runs `warmup + steps` passes over all crops; returns the timed ones (all in `forward`) and,
/// below fp32, the lowest cosine to the float32 model's embeddings.
pub fn run(args: &Args, device: &Device, schedule: &Schedule) -> Result<(PhaseTimes, Option<f32>)> {
    let (warmup, steps) = (schedule.warmup, schedule.steps);
    // transformers' CLIPConfig defaults are ViT-B/32.
    let cfg: ClipConfig = serde_json::from_str("{}")?;
    device.seed(0);
    let model = ClipModel::random(&cfg, 0, device)?;
    if let Some(path) = &args.dump_weights {
        model
            .to_weights()?
            .save_safetensors(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let dir = std::env::temp_dir().join(format!("ovkd-speed-teacher-{}", std::process::id()));
    let tok_path = dir.join("tokenizer.json");
    build_word_level(&["a photo".to_string()], &tok_path).context("tokenizer")?;
    let tok = ClipTokenizer::from_file(&tok_path, cfg.text_config.max_position_embeddings)?;
    let _ = std::fs::remove_dir_all(&dir);
    let mut teacher = Teacher::new(model, tok, "random".into(), device);
    teacher.max_batch = args.batch;

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let img = image::RgbImage::from_fn(640, 480, |_, _| {
        image::Rgb([rng.random(), rng.random(), rng.random()])
    });
    let boxes: Vec<[f32; 4]> = (0..args.crops.div_ceil(2))
        .map(|_| {
            let x1 = rng.random_range(0.0..500.0f32);
            let y1 = rng.random_range(0.0..380.0f32);
            let (w, h) = (rng.random_range(20.0..140.0), rng.random_range(20.0..100.0));
            [x1, y1, x1 + w, y1 + h]
        })
        .collect();
    let px = teacher.region_crops(&img, &boxes)?;
    let n = 2 * boxes.len();
    if let Some(path) = &args.dump {
        dump(path, &px, n, teacher.preprocess.size)?;
    }
    // The crops on the device, uploaded once before the timed steps (the tower alone is timed).
    let size = teacher.preprocess.size;
    let on_device = (!args.end_to_end && !args.from_host)
        .then(|| Tensor::<4>::from_data(TensorData::new(px.clone(), [n, 3, size, size]), device));
    let reference = (args.dtype != Precision::F32).then(|| teacher.embed_pixels(&px, n));
    let teacher = teacher.with_precision_in(args.dtype, args.weight_layout);
    let mut times = PhaseTimes::default();
    let mut last = None;
    for step in 0..warmup + steps {
        schedule.before_step(step)?;
        let t0 = Instant::now();
        let emb = match &on_device {
            Some(crops) => teacher.embed_pixel_tensor(crops.clone()),
            None if args.end_to_end => teacher.region_embeds(&img, &boxes)?,
            None => teacher.embed_pixels(&px, n),
        };
        // Reading the result back is the synchronisation point.
        let data = emb.into_data();
        let t = ms(t0);
        times.push(step >= warmup, t, 0.0, 0.0, t);
        last = Some(data);
    }
    schedule.finish()?;
    let min_cosine = match (reference, last) {
        (Some(want), Some(got)) if !args.end_to_end => {
            let want = want.into_data().try_to_vec::<f32>()?;
            let got = got.try_to_vec::<f32>()?;
            let d = want.len() / n.max(1);
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
            (0..n)
                .map(|i| {
                    let (a, b) = (&got[i * d..(i + 1) * d], &want[i * d..(i + 1) * d]);
                    dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
                })
                .reduce(f32::min)
        }
        _ => None,
    };
    Ok((times, min_cosine))
}

fn dump(path: &Path, px: &[f32], n: usize, size: usize) -> Result<()> {
    let mut m = WeightMap::new(path);
    m.insert(
        "pixel_values".into(),
        HostTensor {
            shape: vec![n, 3, size, size],
            data: px.to_vec(),
        },
    );
    m.save_safetensors(path)
        .with_context(|| format!("writing {}", path.display()))
}
