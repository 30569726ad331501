//! The teacher's embeddings, all L2-normalised: text (prompt ensembles, cached), regions
//! (ViLD's 1x + 1.5x crops), dense patch features (MaskCLIP) and text from token embeddings
//! (BARON's pseudo-words).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use sha2::{Digest, Sha256};

use crate::clip::{ClipModel, TextTower, l2_normalize};
use crate::error::{TeacherError, to_vec};
use crate::precision::{Precision, to_f32};
use crate::preprocess::PreprocessConfig;
use crate::tokenizer::ClipTokenizer;
use crate::weights::{HostTensor, WeightMap};

/// ViLD's context factor for the second crop.
pub const VILD_CONTEXT: f32 = 1.5;

/// How the image tower's linear weights are held on LibTorch, for inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightLayout {
    /// As PyTorch's `nn.Linear`: `[out, in]` row-major, the layout cuBLAS gets from
    /// transformers (the default).
    #[default]
    Torch,
    /// As Burn's `Linear`: `[in, out]` row-major.
    Burn,
}

impl std::str::FromStr for WeightLayout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "torch" => Ok(Self::Torch),
            "burn" => Ok(Self::Burn),
            other => Err(format!("weight layout `{other}`: expected torch or burn")),
        }
    }
}

/// A loaded teacher: model, tokenizer, preprocessing and the checkpoint's hash.
#[derive(Debug)]
pub struct Teacher {
    /// The CLIP model (on `device`, plain: its parameters are constants).
    pub model: ClipModel,
    /// Its tokenizer.
    pub tokenizer: ClipTokenizer,
    /// Preprocessing at the model's image size.
    pub preprocess: PreprocessConfig,
    /// Where the tensors live.
    pub device: Device,
    /// SHA-256 of the weights file (hex), the key of cached text embeddings.
    pub checkpoint_hash: String,
    /// Crops per forward pass.
    pub max_batch: usize,
    /// What the image tower computes in (set by [`Teacher::with_precision`]); the text tower
    /// stays float32, so cached text embeddings do not depend on it.
    pub precision: Precision,
}

/// MaskCLIP dense features of one image.
#[derive(Debug, Clone)]
pub struct DenseFeatures {
    /// Projected, L2-normalised per patch: [D, H/p, W/p].
    pub embeds: Tensor<3>,
    /// Key features per patch for key smoothing: [Wv, H/p, W/p].
    pub keys: Tensor<3>,
}

impl Teacher {
    /// Loads `dir` (`config.json`, `model.safetensors`, `tokenizer.json`). Returns the teacher and
    /// the checkpoint keys the model did not use.
    pub fn load(dir: &Path, device: &Device) -> Result<(Self, Vec<String>), TeacherError> {
        let (model, unused) = ClipModel::load(dir, device)?;
        let weights = if dir.is_dir() {
            dir.join("model.safetensors")
        } else {
            dir.to_path_buf()
        };
        let checkpoint_hash = file_sha256(&weights)?;
        let tokenizer = ClipTokenizer::from_file(
            &tokenizer_file(dir),
            model.config.text_config.max_position_embeddings,
        )?;
        Ok((Self::new(model, tokenizer, checkpoint_hash, device), unused))
    }

    /// Wraps an in-memory model.
    pub fn new(
        model: ClipModel,
        tokenizer: ClipTokenizer,
        checkpoint_hash: String,
        device: &Device,
    ) -> Self {
        let preprocess = PreprocessConfig::clip(model.config.vision_config.image_size);
        Self {
            model,
            tokenizer,
            preprocess,
            device: device.clone(),
            checkpoint_hash,
            max_batch: 32,
            precision: Precision::F32,
        }
    }

    /// The same teacher with its image tower (vision transformer and projection) cast to
    /// `precision` (from float32: the weights are rounded once); images go in and embeddings
    /// come out as float32 either way.
    ///
    /// Off burn-flex (LibTorch), outside autodiff, the tower's QuickGELU slope is folded into
    /// its MLP weights first (before the rounding), so each MLP runs one SiLU kernel instead of
    /// three ([`ClipMlp::fold_quick_gelu`](crate::clip::layers::ClipMlp::fold_quick_gelu));
    /// on burn-flex the tower stays as it was, so CPU embeddings are bit for bit unchanged.
    ///
    /// There, too, its linear weights are held in PyTorch's layout ([`WeightLayout::Torch`]);
    /// [`with_precision_in`](Self::with_precision_in) chooses.
    pub fn with_precision(self, precision: Precision) -> Self {
        self.with_precision_in(precision, WeightLayout::Torch)
    }

    /// [`with_precision`](Self::with_precision) with the image tower's linear weights held in
    /// `layout` off burn-flex (`ovkd-speed teacher --weight-layout` times both).
    pub fn with_precision_in(mut self, precision: Precision, layout: WeightLayout) -> Self {
        let m = &mut self.model;
        if !ovkd_backbone::ops::is_flex(&self.device) && !self.device.is_autodiff() {
            m.vision_model = m.vision_model.clone().fold_quick_gelu();
            if layout == WeightLayout::Torch {
                m.vision_model = m.vision_model.clone().with_torch_weight_layout();
                m.visual_projection =
                    ovkd_backbone::ops::with_torch_weight_layout(m.visual_projection.clone());
            }
        }
        m.vision_model = precision.cast_module(m.vision_model.clone());
        m.visual_projection = precision.cast_module(m.visual_projection.clone());
        self.precision = precision;
        self
    }

    /// Joint embedding size D.
    pub fn dim(&self) -> usize {
        self.model.embed_dim()
    }

    /// L2-normalised embeddings of texts, batched: [N, D].
    pub fn text_embeds(&self, texts: &[String]) -> Result<Tensor<2>, TeacherError> {
        embed_texts(
            &self.tokenizer,
            self.max_batch,
            self.dim(),
            &self.device,
            texts,
            |ids, b, l| self.model.text_embeds(ids, b, l),
        )
    }

    /// One embedding per class from a prompt ensemble: every (name, template) pair embedded
    /// and normalised, averaged over the class's names and templates, renormalised: [K, D].
    /// `{}` in a template is replaced by the name.
    pub fn class_embeds(
        &self,
        classes: &[Vec<String>],
        templates: &[String],
    ) -> Result<Tensor<2>, TeacherError> {
        prompt_ensemble(classes, templates, self.dim(), &self.device, |t| {
            self.text_embeds(t)
        })
    }

    /// [`Self::class_embeds`], cached in `cache_dir` under the checkpoint hash, the templates and
    /// the class names: a second call with the same inputs reads the file instead.
    pub fn class_embeds_cached(
        &self,
        classes: &[Vec<String>],
        templates: &[String],
        cache_dir: &Path,
    ) -> Result<Tensor<2>, TeacherError> {
        let path = self.text_cache_path(classes, templates, cache_dir);
        if path.exists() {
            let mut map = WeightMap::from_safetensors(&path)?;
            let t = map.take("class_embeds", &[classes.len(), self.dim()])?;
            return Ok(Tensor::from_data(
                TensorData::new(t.data, t.shape),
                &self.device,
            ));
        }
        let e = self.class_embeds(classes, templates)?;
        let mut map = WeightMap::new(&path);
        map.insert(
            "class_embeds".into(),
            HostTensor {
                shape: e.dims().to_vec(),
                data: to_vec(e.clone())?,
            },
        );
        map.save_safetensors(&path)?;
        Ok(e)
    }

    /// Where [`Self::class_embeds_cached`] keeps a vocabulary's embeddings.
    pub fn text_cache_path(
        &self,
        classes: &[Vec<String>],
        templates: &[String],
        cache_dir: &Path,
    ) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.checkpoint_hash.as_bytes());
        for t in templates {
            h.update(b"\x00t");
            h.update(t.as_bytes());
        }
        for names in classes {
            h.update(b"\x00c");
            for n in names {
                h.update(b"\x00n");
                h.update(n.as_bytes());
            }
        }
        let key = hex(&h.finalize());
        cache_dir.join(format!("text-{}.safetensors", &key[..16]))
    }

    /// Normalised image embeddings of preprocessed crops [N, 3, S, S] (host, channel-major),
    /// in batches of `max_batch`: [N, D]: each batch uploaded, then encoded as by
    /// [`Self::embed_pixel_tensor`].
    pub fn embed_pixels(&self, crops: &[f32], n: usize) -> Tensor<2> {
        let s = self.preprocess.size;
        let per = 3 * s * s;
        let parts: Vec<Tensor<2>> = (0..n)
            .step_by(self.max_batch.max(1))
            .map(|start| {
                let end = (start + self.max_batch.max(1)).min(n);
                let data = TensorData::new(
                    crops[start * per..end * per].to_vec(),
                    [end - start, 3, s, s],
                );
                self.embed_batch(Tensor::from_data(data, &self.device))
            })
            .collect();
        if parts.is_empty() {
            return Tensor::zeros([0, self.dim()], &self.device);
        }
        Tensor::cat(parts, 0)
    }

    /// Normalised image embeddings of preprocessed crops already on the teacher's device
    /// [N, 3, S, S] (float32), in batches of `max_batch`: [N, D]. The tower alone, as
    /// transformers' `get_image_features` on a device tensor.
    pub fn embed_pixel_tensor(&self, crops: Tensor<4>) -> Tensor<2> {
        let n = crops.dims()[0];
        if n == 0 {
            return Tensor::zeros([0, self.dim()], &self.device);
        }
        let step = self.max_batch.max(1);
        let parts: Vec<Tensor<2>> = (0..n)
            .step_by(step)
            .map(|start| self.embed_batch(crops.clone().narrow(0, start, step.min(n - start))))
            .collect();
        Tensor::cat(parts, 0)
    }

    /// One batch [b, 3, S, S] → [b, D], normalised.
    fn embed_batch(&self, x: Tensor<4>) -> Tensor<2> {
        // Normalised in float32: in half precision the norm itself is rounded (by up to
        // 2^-9 in bfloat16), which would leave the vectors off unit length.
        let x = self.precision.cast_in(x);
        l2_normalize(to_f32(self.model.image_features(x)))
    }

    /// The two crops (1x and 1.5x about the centre, clipped) of each box, preprocessed: host
    /// [2N, 3, S, S], box i's crops at 2i and 2i + 1. Checks every box first.
    pub fn region_crops(
        &self,
        img: &RgbImage,
        boxes: &[[f32; 4]],
    ) -> Result<Vec<f32>, TeacherError> {
        self.preprocess.region_crops(img, boxes, VILD_CONTEXT)
    }

    /// ViLD region embeddings: each box's 1x and 1.5x crops encoded, the two normalised
    /// embeddings summed and renormalised: [N, D].
    pub fn region_embeds(
        &self,
        img: &RgbImage,
        boxes: &[[f32; 4]],
    ) -> Result<Tensor<2>, TeacherError> {
        let crops = self.region_crops(img, boxes)?;
        Ok(self.embed_region_crops(&crops, boxes.len()))
    }

    /// ViLD region embeddings of `n` boxes from their [`region_crops`](Self::region_crops)
    /// (host `[2n, 3, S, S]`), for callers that make the crops ahead (`ovkd teacher embed`
    /// crops the next image while this one is embedded): [n, D].
    pub fn embed_region_crops(&self, crops: &[f32], n: usize) -> Tensor<2> {
        self.pair_sum(self.embed_pixels(crops, 2 * n))
    }

    /// [2N, D] (pairs adjacent) → normalised pair sums [N, D].
    pub fn pair_sum(&self, e: Tensor<2>) -> Tensor<2> {
        let [n2, d] = e.dims();
        if n2 == 0 {
            return Tensor::zeros([0, d], &self.device);
        }
        l2_normalize(e.reshape([n2 / 2, 2, d]).sum_dim(1).reshape([n2 / 2, d]))
    }

    /// MaskCLIP dense features on normalised pixels [B, 3, H, W] (H, W multiples of p; any
    /// size, positions interpolated bicubically): embeds [B, D, H/p, W/p] and keys
    /// [B, Wv, H/p, W/p].
    pub fn dense_pixels(&self, pixels: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let t = self
            .model
            .vision_model
            .forward_dense(self.precision.cast_in(pixels));
        let [b, n, wv] = t.values.dims();
        let [gh, gw] = t.grid;
        let proj = self
            .model
            .visual_projection
            .forward(t.values.reshape([b * n, wv]));
        let d = proj.dims()[1];
        let embeds = l2_normalize(to_f32(proj))
            .reshape([b, gh, gw, d])
            .permute([0, 3, 1, 2]);
        let keys = to_f32(t.keys)
            .reshape([b, gh, gw, wv])
            .permute([0, 3, 1, 2]);
        (embeds, keys)
    }

    /// Dense features of one image resized (PIL bicubic, no crop) to `size` = (width, height),
    /// both multiples of the patch size: [D, h/p, w/p].
    pub fn dense(&self, img: &RgbImage, size: (u32, u32)) -> Result<DenseFeatures, TeacherError> {
        let p = self.model.config.vision_config.patch_size as u32;
        if size.0 < p || size.1 < p || size.0 % p != 0 || size.1 % p != 0 {
            return Err(TeacherError::InvalidRequest(format!(
                "dense input size {}x{} must be a positive multiple of the patch size {p}",
                size.0, size.1
            )));
        }
        let px = self.preprocess.resize_to(img, size.0, size.1)?;
        let x = Tensor::<4>::from_data(
            TensorData::new(px, [1, 3, size.1 as usize, size.0 as usize]),
            &self.device,
        );
        let (e, k) = self.dense_pixels(x);
        let [_, d, h, w] = e.dims();
        let wv = k.dims()[1];
        Ok(DenseFeatures {
            embeds: e.reshape([d, h, w]),
            keys: k.reshape([wv, h, w]),
        })
    }

    /// The text tower's token embedding table: [V, Wt].
    pub fn token_embedding(&self) -> Tensor<2> {
        self.model.text_model.token_embedding.val()
    }

    /// Normalised text embeddings from token embeddings [B, L, Wt] (positions added inside;
    /// L ≤ context length), pooled at `eot[b]`: [B, D]. The tower's parameters are constants
    /// (they live on a plain device), so on an autodiff device gradients flow only into
    /// `embeds`.
    pub fn text_from_token_embeds(&self, embeds: Tensor<3>, eot: &[usize]) -> Tensor<2> {
        let pooled = self.model.text_model.forward_embeds(embeds, eot).pooled;
        l2_normalize(self.model.text_projection.forward(pooled))
    }
}

/// Only the text half of a teacher ([`TextTower`] and the tokenizer): what embeds class names
/// at inference time, e.g. from an export bundle that carries no image tower.
#[derive(Debug)]
pub struct TextTeacher {
    /// The text tower and its projection (on `device`).
    pub tower: TextTower,
    /// Its tokenizer.
    pub tokenizer: ClipTokenizer,
    /// Where the tensors live.
    pub device: Device,
    /// Texts per forward pass, divided by 4 (as [`Teacher::max_batch`]).
    pub max_batch: usize,
}

impl TextTeacher {
    /// Loads the text half of `dir` (`config.json`, `model.safetensors`, `tokenizer.json`): a
    /// whole teacher or a text-only one. Returns it and the checkpoint keys that are neither
    /// text nor image-side (the image tower is expected to be left over).
    pub fn load(dir: &Path, device: &Device) -> Result<(Self, Vec<String>), TeacherError> {
        let (tower, unused) = TextTower::load(dir, device)?;
        let tokenizer = ClipTokenizer::from_file(
            &tokenizer_file(dir),
            tower.config.text_config.max_position_embeddings,
        )?;
        let teacher = Self {
            tower,
            tokenizer,
            device: device.clone(),
            max_batch: 32,
        };
        Ok((teacher, unused))
    }

    /// Joint embedding size D.
    pub fn dim(&self) -> usize {
        self.tower.embed_dim()
    }

    /// L2-normalised embeddings of texts, batched: [N, D] (the numbers [`Teacher::text_embeds`]
    /// gives for the same weights).
    pub fn text_embeds(&self, texts: &[String]) -> Result<Tensor<2>, TeacherError> {
        embed_texts(
            &self.tokenizer,
            self.max_batch,
            self.dim(),
            &self.device,
            texts,
            |ids, b, l| self.tower.text_embeds(ids, b, l, &self.device),
        )
    }

    /// The prompt-ensemble embedding of each class, as [`Teacher::class_embeds`]: [K, D].
    pub fn class_embeds(
        &self,
        classes: &[Vec<String>],
        templates: &[String],
    ) -> Result<Tensor<2>, TeacherError> {
        prompt_ensemble(classes, templates, self.dim(), &self.device, |t| {
            self.text_embeds(t)
        })
    }
}

/// The `tokenizer.json` of a teacher checkpoint: in the folder, or beside the weights file.
pub fn tokenizer_file(checkpoint: &Path) -> PathBuf {
    let dir = if checkpoint.is_dir() {
        checkpoint.to_path_buf()
    } else {
        checkpoint
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    };
    dir.join("tokenizer.json")
}

/// Tokenises `texts` in chunks of `4 * max_batch` and embeds each chunk with `encode`
/// (ids [B, L] → [B, D]): [N, D].
fn embed_texts(
    tokenizer: &ClipTokenizer,
    max_batch: usize,
    dim: usize,
    device: &Device,
    texts: &[String],
    encode: impl Fn(&[i64], usize, usize) -> Tensor<2>,
) -> Result<Tensor<2>, TeacherError> {
    let mut parts = Vec::new();
    for chunk in texts.chunks(max_batch.max(1) * 4) {
        let b = tokenizer.encode_batch(chunk)?;
        parts.push(encode(&b.ids, b.batch, b.len));
    }
    if parts.is_empty() {
        return Ok(Tensor::zeros([0, dim], device));
    }
    Ok(Tensor::cat(parts, 0))
}

/// Every (name, template) pair of each class embedded by `text_embeds`, averaged over the
/// class's names and templates and renormalised: [K, D].
fn prompt_ensemble(
    classes: &[Vec<String>],
    templates: &[String],
    dim: usize,
    device: &Device,
    text_embeds: impl Fn(&[String]) -> Result<Tensor<2>, TeacherError>,
) -> Result<Tensor<2>, TeacherError> {
    if templates.is_empty() {
        return Err(TeacherError::InvalidRequest("no prompt templates".into()));
    }
    let mut rows = Vec::with_capacity(classes.len());
    for (k, names) in classes.iter().enumerate() {
        if names.is_empty() {
            return Err(TeacherError::InvalidRequest(format!(
                "class {k} has no name"
            )));
        }
        let texts: Vec<String> = names
            .iter()
            .flat_map(|n| templates.iter().map(move |t| fill_template(t, n)))
            .collect();
        let e = text_embeds(&texts)?; // [T, D]
        rows.push(l2_normalize(e.mean_dim(0)));
    }
    if rows.is_empty() {
        return Ok(Tensor::zeros([0, dim], device));
    }
    Ok(Tensor::cat(rows, 0))
}

/// Replaces `{}` in a template by `name` (a template without `{}` gets the name appended).
pub fn fill_template(template: &str, name: &str) -> String {
    if template.contains("{}") {
        template.replace("{}", name)
    } else {
        format!("{template} {name}")
    }
}

/// Reads prompt templates: one per line, `#` comments and blank lines skipped.
pub fn read_templates(path: &Path) -> Result<Vec<String>, TeacherError> {
    let text = std::fs::read_to_string(path).map_err(|e| TeacherError::io(path, e))?;
    let t: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    if t.is_empty() {
        return Err(TeacherError::format(path, "no templates"));
    }
    Ok(t)
}

/// SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String, TeacherError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| TeacherError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| TeacherError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
