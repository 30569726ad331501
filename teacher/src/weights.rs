//! Checkpoint files: transformers' CLIP safetensors, and OpenAI / OpenCLIP state dicts mapped
//! onto transformers' names.
//!
//! A [`WeightMap`] holds host tensors under transformers' names in PyTorch layout (Linear
//! weights [out, in]); the model takes from it what it needs, so whatever is left over is the
//! list of unused keys. A missing tensor or a wrong shape is an error naming the tensor and
//! both shapes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};

use crate::clip::{ClipConfig, ClipModel};
use crate::error::TeacherError;

/// A float tensor on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions; empty for a scalar.
    pub shape: Vec<usize>,
    /// Values, `shape.iter().product()` of them (1 for a scalar).
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Swaps the two dimensions of a matrix.
    pub fn transposed(&self) -> Self {
        assert_eq!(self.shape.len(), 2, "transpose needs a matrix");
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                data[j * r + i] = self.data[i * c + j];
            }
        }
        Self {
            shape: vec![c, r],
            data,
        }
    }

    /// Rows `start..end` of the first dimension.
    pub fn rows(&self, start: usize, end: usize) -> Self {
        let inner: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Self {
            shape,
            data: self.data[start * inner..end * inner].to_vec(),
        }
    }
}

/// Named host tensors, remembering which ones the model took.
#[derive(Debug, Clone)]
pub struct WeightMap {
    path: PathBuf,
    tensors: BTreeMap<String, HostTensor>,
    taken: BTreeSet<String>,
}

impl WeightMap {
    /// An empty map; `path` names the source in error messages.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            tensors: BTreeMap::new(),
            taken: BTreeSet::new(),
        }
    }

    /// The file the tensors came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every floating-point tensor of a safetensors file (f32, f16, bf16, f64 → f32).
    /// Integer tensors are skipped (they are buffers such as `position_ids`) and reported
    /// as unused.
    pub fn from_safetensors(path: &Path) -> Result<Self, TeacherError> {
        let bytes = std::fs::read(path).map_err(|e| TeacherError::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| TeacherError::format(path, format!("not a safetensors file: {e}")))?;
        let mut map = Self::new(path);
        for (name, view) in st.iter() {
            let shape = view.shape().to_vec();
            match decode_float(view.dtype(), view.data()) {
                Some(data) => {
                    map.tensors
                        .insert(name.to_string(), HostTensor { shape, data });
                }
                None => {
                    // Keep a record so that it shows up as unused.
                    map.tensors.insert(
                        name.to_string(),
                        HostTensor {
                            shape,
                            data: Vec::new(),
                        },
                    );
                }
            }
        }
        Ok(map)
    }

    /// Writes all tensors as f32 into a safetensors file (atomically).
    pub fn save_safetensors(&self, path: &Path) -> Result<(), TeacherError> {
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    bytemuck::cast_slice(&t.data).to_vec(),
                    t.shape.clone(),
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(k, b, s)| {
                let v = safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                    .map_err(|e| TeacherError::format(path, format!("tensor `{k}`: {e}")))?;
                Ok((k.clone(), v))
            })
            .collect::<Result<_, TeacherError>>()?;
        let mut info = std::collections::HashMap::new();
        info.insert("format".to_string(), "pt".to_string());
        let out = safetensors::serialize(views, Some(info))
            .map_err(|e| TeacherError::format(path, e.to_string()))?;
        crate::io::write_atomic(path, &out)
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: String, t: HostTensor) {
        self.tensors.insert(name, t);
    }

    /// Looks a tensor up without taking it.
    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }

    /// Removes a tensor (e.g. to test a missing key).
    pub fn remove(&mut self, name: &str) -> Option<HostTensor> {
        self.tensors.remove(name)
    }

    /// All names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    /// Takes `name`, checking its shape (a scalar may be stored as [] or [1]).
    pub fn take(&mut self, name: &str, expected: &[usize]) -> Result<HostTensor, TeacherError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| TeacherError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
            })?;
        let scalar_ok = expected.is_empty() && t.shape.iter().product::<usize>() == 1;
        if t.shape != expected && !scalar_ok || t.data.len() != expected.iter().product::<usize>() {
            return Err(TeacherError::ShapeMismatch {
                path: self.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: t.shape.clone(),
            });
        }
        self.taken.insert(name.to_string());
        Ok(t.clone())
    }

    /// Keys never taken, sorted.
    pub fn unused(&self) -> Vec<String> {
        self.tensors
            .keys()
            .filter(|k| !self.taken.contains(*k))
            .cloned()
            .collect()
    }

    /// Random weights for `c`, initialised as transformers' `CLIPPreTrainedModel._init_weights`.
    pub fn random(c: &ClipConfig, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut map = Self::new(Path::new("<random>"));
        for (name, shape) in ClipModel::expected_shapes(c) {
            let n: usize = shape.iter().product();
            let tower_width = |name: &str| {
                if name.starts_with("vision_model") {
                    (
                        c.vision_config.hidden_size,
                        c.vision_config.num_hidden_layers,
                    )
                } else {
                    (c.text_config.hidden_size, c.text_config.num_hidden_layers)
                }
            };
            let (w, depth) = tower_width(&name);
            let (w, depth) = (w as f32, depth as f32);
            let std = if name == "logit_scale" {
                None
            } else if name.contains("layer_norm") || name.contains("layrnorm") {
                None
            } else if name.ends_with(".bias") {
                Some(0.0)
            } else if name.contains("self_attn.out_proj") {
                Some(w.powf(-0.5))
            } else if name.contains("self_attn") {
                Some(w.powf(-0.5) * (2.0 * depth).powf(-0.5))
            } else if name.contains("mlp.fc1") {
                Some((2.0 * w).powf(-0.5))
            } else if name.contains("mlp.fc2") {
                Some(w.powf(-0.5) * (2.0 * depth).powf(-0.5))
            } else if name == "vision_model.embeddings.class_embedding" {
                Some(w.powf(-0.5))
            } else if name == "visual_projection.weight" {
                Some((c.vision_config.hidden_size as f32).powf(-0.5))
            } else if name == "text_projection.weight" {
                Some((c.text_config.hidden_size as f32).powf(-0.5))
            } else {
                Some(0.02)
            };
            let data = match std {
                Some(0.0) => vec![0.0; n],
                Some(s) => (0..n).map(|_| normal(&mut rng) * s).collect(),
                None if name == "logit_scale" => vec![c.logit_scale_init_value as f32],
                None if name.ends_with(".weight") => vec![1.0; n],
                None => vec![0.0; n],
            };
            map.insert(name, HostTensor { shape, data });
        }
        map
    }
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn decode_float(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Reads one integer tensor (i64, i32, u8, ...) of a safetensors file as i64, with its shape.
pub fn read_int_tensor(path: &Path, name: &str) -> Result<(Vec<usize>, Vec<i64>), TeacherError> {
    let bytes = std::fs::read(path).map_err(|e| TeacherError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| TeacherError::format(path, format!("not a safetensors file: {e}")))?;
    let view = st
        .tensor(name)
        .map_err(|_| TeacherError::format(path, format!("no tensor `{name}`")))?;
    let b = view.data();
    let data: Vec<i64> = match view.dtype() {
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        Dtype::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
            .collect(),
        Dtype::U8 => b.iter().map(|&v| v as i64).collect(),
        other => {
            return Err(TeacherError::format(
                path,
                format!("tensor `{name}` has dtype {other:?}, expected an integer type"),
            ));
        }
    };
    Ok((view.shape().to_vec(), data))
}

/// Whether a state dict uses OpenAI / OpenCLIP names (`visual.conv1.weight`, ...).
pub fn is_openai_layout(map: &WeightMap) -> bool {
    map.get("visual.conv1.weight").is_some()
}

/// Infers the architecture of an OpenAI / OpenCLIP state dict from its shapes (heads = width
/// / 64, as OpenAI's and OpenCLIP's models use; quick_gelu; eps 1e-5).
pub fn infer_openai_config(map: &WeightMap) -> Result<ClipConfig, TeacherError> {
    let need = |name: &str| {
        map.get(name).ok_or_else(|| TeacherError::MissingTensor {
            path: map.path().to_path_buf(),
            name: name.to_string(),
            expected: vec![],
        })
    };
    let conv = need("visual.conv1.weight")?;
    let vpos = need("visual.positional_embedding")?;
    let tok = need("token_embedding.weight")?;
    let tpos = need("positional_embedding")?;
    let proj = need("text_projection")?;
    let count = |prefix: &str| {
        (0..)
            .take_while(|i| map.get(&format!("{prefix}.{i}.ln_1.weight")).is_some())
            .count()
    };
    let vw = conv.shape[0];
    let tw = tok.shape[1];
    let grid = ((vpos.shape[0] - 1) as f64).sqrt().round() as usize;
    let vfc = need("visual.transformer.resblocks.0.mlp.c_fc.weight")?;
    let tfc = need("transformer.resblocks.0.mlp.c_fc.weight")?;
    let mut c = ClipConfig {
        text_config: Default::default(),
        vision_config: Default::default(),
        projection_dim: proj.shape[1],
        logit_scale_init_value: 2.6592,
        model_type: "clip".into(),
    };
    c.vision_config.hidden_size = vw;
    c.vision_config.num_attention_heads = (vw / 64).max(1);
    c.vision_config.num_hidden_layers = count("visual.transformer.resblocks");
    c.vision_config.intermediate_size = vfc.shape[0];
    c.vision_config.patch_size = conv.shape[2];
    c.vision_config.num_channels = conv.shape[1];
    c.vision_config.image_size = grid * conv.shape[2];
    c.text_config.hidden_size = tw;
    c.text_config.num_attention_heads = (tw / 64).max(1);
    c.text_config.num_hidden_layers = count("transformer.resblocks");
    c.text_config.intermediate_size = tfc.shape[0];
    c.text_config.vocab_size = tok.shape[0];
    c.text_config.max_position_embeddings = tpos.shape[0];
    c.text_config.eos_token_id = (tok.shape[0] - 1) as i64;
    c.text_config.bos_token_id = (tok.shape[0] - 2) as i64;
    Ok(c)
}

/// Renames an OpenAI / OpenCLIP state dict to transformers' names: `in_proj_weight` split into
/// q/k/v, `visual.proj` and `text_projection` ([W, D]) transposed into Linear weights [D, W].
/// Keys it does not know (e.g. `attn_mask`, `input_resolution`) are kept under their own
/// names so that they are reported as unused.
pub fn openai_to_hf(src: &WeightMap) -> Result<WeightMap, TeacherError> {
    let mut out = WeightMap::new(src.path());
    for name in src.names() {
        let t = src.get(name).expect("listed").clone();
        let key = name.strip_prefix("module.").unwrap_or(name);
        let (tower, rest) = if let Some(r) = key.strip_prefix("visual.") {
            ("vision_model", r)
        } else {
            ("text_model", key)
        };
        let simple = |to: &str| Some(to.to_string());
        let mapped: Option<String> = match (tower, rest) {
            ("vision_model", "class_embedding") => {
                simple("vision_model.embeddings.class_embedding")
            }
            ("vision_model", "positional_embedding") => {
                simple("vision_model.embeddings.position_embedding.weight")
            }
            ("vision_model", "conv1.weight") => {
                simple("vision_model.embeddings.patch_embedding.weight")
            }
            ("vision_model", "ln_pre.weight") => simple("vision_model.pre_layrnorm.weight"),
            ("vision_model", "ln_pre.bias") => simple("vision_model.pre_layrnorm.bias"),
            ("vision_model", "ln_post.weight") => simple("vision_model.post_layernorm.weight"),
            ("vision_model", "ln_post.bias") => simple("vision_model.post_layernorm.bias"),
            ("vision_model", "proj") => {
                out.insert("visual_projection.weight".into(), t.transposed());
                continue;
            }
            ("text_model", "token_embedding.weight") => {
                simple("text_model.embeddings.token_embedding.weight")
            }
            ("text_model", "positional_embedding") => {
                simple("text_model.embeddings.position_embedding.weight")
            }
            ("text_model", "ln_final.weight") => simple("text_model.final_layer_norm.weight"),
            ("text_model", "ln_final.bias") => simple("text_model.final_layer_norm.bias"),
            ("text_model", "text_projection") => {
                out.insert("text_projection.weight".into(), t.transposed());
                continue;
            }
            ("text_model", "logit_scale") => simple("logit_scale"),
            (tower, r) => match r.strip_prefix("transformer.resblocks.") {
                Some(block) => {
                    let (idx, field) = block.split_once('.').unwrap_or((block, ""));
                    let p = format!("{tower}.encoder.layers.{idx}");
                    match field {
                        "attn.in_proj_weight" | "attn.in_proj_bias" => {
                            let kind = if field.ends_with("weight") {
                                "weight"
                            } else {
                                "bias"
                            };
                            if t.shape.is_empty() || t.shape[0] % 3 != 0 {
                                return Err(TeacherError::format(
                                    src.path(),
                                    format!(
                                        "tensor `{name}` has shape {:?}, expected [3W, ..]",
                                        t.shape
                                    ),
                                ));
                            }
                            let w = t.shape[0] / 3;
                            for (i, q) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                                out.insert(
                                    format!("{p}.self_attn.{q}.{kind}"),
                                    t.rows(i * w, (i + 1) * w),
                                );
                            }
                            continue;
                        }
                        "attn.out_proj.weight" => Some(format!("{p}.self_attn.out_proj.weight")),
                        "attn.out_proj.bias" => Some(format!("{p}.self_attn.out_proj.bias")),
                        "ln_1.weight" => Some(format!("{p}.layer_norm1.weight")),
                        "ln_1.bias" => Some(format!("{p}.layer_norm1.bias")),
                        "ln_2.weight" => Some(format!("{p}.layer_norm2.weight")),
                        "ln_2.bias" => Some(format!("{p}.layer_norm2.bias")),
                        "mlp.c_fc.weight" => Some(format!("{p}.mlp.fc1.weight")),
                        "mlp.c_fc.bias" => Some(format!("{p}.mlp.fc1.bias")),
                        "mlp.c_proj.weight" => Some(format!("{p}.mlp.fc2.weight")),
                        "mlp.c_proj.bias" => Some(format!("{p}.mlp.fc2.bias")),
                        _ => None,
                    }
                }
                None => None,
            },
        };
        out.insert(mapped.unwrap_or_else(|| name.to_string()), t);
    }
    Ok(out)
}

/// Opens a checkpoint: `path` is a directory holding `model.safetensors` (and `config.json`),
/// or a `.safetensors` file. An OpenAI / OpenCLIP state dict is renamed to transformers' names;
/// its architecture comes from `config` if given, else a `config.json` beside it, else its
/// shapes. Returns the config and the transformers-named weights.
pub fn load_checkpoint(
    path: &Path,
    config: Option<ClipConfig>,
) -> Result<(ClipConfig, WeightMap), TeacherError> {
    let (file, dir) = if path.is_dir() {
        (path.join("model.safetensors"), path.to_path_buf())
    } else {
        (
            path.to_path_buf(),
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
        )
    };
    let raw = WeightMap::from_safetensors(&file)?;
    let cfg_file = dir.join("config.json");
    let file_config = || -> Result<Option<ClipConfig>, TeacherError> {
        if cfg_file.exists() {
            Ok(Some(ClipConfig::from_file(&cfg_file)?))
        } else {
            Ok(None)
        }
    };
    if is_openai_layout(&raw) {
        let cfg = match config {
            Some(c) => c,
            None => match file_config()? {
                Some(c) => c,
                None => infer_openai_config(&raw)?,
            },
        };
        Ok((cfg, openai_to_hf(&raw)?))
    } else {
        let cfg = match config {
            Some(c) => c,
            None => file_config()?.ok_or_else(|| {
                TeacherError::format(
                    &cfg_file,
                    "missing: a transformers checkpoint needs its config.json",
                )
            })?,
        };
        Ok((cfg, raw))
    }
}
