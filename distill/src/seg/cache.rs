//! The teacher's dense features of every training image, computed once and kept in a
//! safetensors file: they are deterministic (a frozen teacher, a fixed resize), so over many
//! epochs the cache saves every teacher forward pass after the first.
//!
//! The file is keyed by the teacher's fingerprint, the input size and the SHA-256 of every image
//! file in order; a cache made for other images or another teacher is recomputed, never reused.
//! Values are stored as f16 (half the disk and memory; the features are unit vectors whose
//! f16 rounding error, ~5e-4, is far below anything the pseudo-labels react to).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use half::f16;
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};

use super::SegError;
use super::teacher::{DenseMaps, DenseTeacher};

/// Dense features of `n` images: embeddings `[n, D, h, w]` and keys `[n, Dk, h, w]`.
#[derive(Debug, Clone)]
pub struct TeacherFeatures {
    /// Images.
    pub n: usize,
    /// Embedding dimension D.
    pub dim: usize,
    /// Key dimension Dk.
    pub key_dim: usize,
    /// Grid `[h, w]`.
    pub grid: [usize; 2],
    embeds: Vec<f16>,
    keys: Vec<f16>,
}

fn to_f16(t: Tensor<3>) -> Result<Vec<f16>, SegError> {
    let v = t
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| SegError::Teacher(format!("reading dense features: {e:?}")))?;
    Ok(v.into_iter().map(f16::from_f32).collect())
}

impl TeacherFeatures {
    /// Assembles features from per-image maps (all of one shape).
    pub fn from_maps(maps: Vec<DenseMaps>) -> Result<Self, SegError> {
        let n = maps.len();
        let (dim, key_dim, grid) = match maps.first() {
            Some(m) => {
                let [d, h, w] = m.embeds.dims();
                (d, m.keys.dims()[0], [h, w])
            }
            None => (0, 0, [0, 0]),
        };
        let mut embeds = Vec::with_capacity(n * dim * grid[0] * grid[1]);
        let mut keys = Vec::with_capacity(n * key_dim * grid[0] * grid[1]);
        for (i, m) in maps.into_iter().enumerate() {
            let [d, h, w] = m.embeds.dims();
            let [dk, kh, kw] = m.keys.dims();
            if d != dim || dk != key_dim || [h, w] != grid || [kh, kw] != grid {
                return Err(SegError::Teacher(format!(
                    "image {i}: dense features [{d}, {h}, {w}] / keys [{dk}, {kh}, {kw}] differ from the first image's"
                )));
            }
            embeds.extend(to_f16(m.embeds)?);
            keys.extend(to_f16(m.keys)?);
        }
        Ok(Self {
            n,
            dim,
            key_dim,
            grid,
            embeds,
            keys,
        })
    }

    fn slice(data: &[f16], i: usize, c: usize, grid: [usize; 2], device: &Device) -> Tensor<3> {
        let per = c * grid[0] * grid[1];
        let v: Vec<f32> = data[i * per..(i + 1) * per]
            .iter()
            .map(|x| x.to_f32())
            .collect();
        Tensor::from_data(TensorData::new(v, [c, grid[0], grid[1]]), device)
    }

    /// Image `i`'s embeddings `[D, h, w]`.
    pub fn embeds(&self, i: usize, device: &Device) -> Tensor<3> {
        Self::slice(&self.embeds, i, self.dim, self.grid, device)
    }

    /// Image `i`'s keys `[Dk, h, w]`.
    pub fn keys(&self, i: usize, device: &Device) -> Tensor<3> {
        Self::slice(&self.keys, i, self.key_dim, self.grid, device)
    }

    /// The mean embedding over every image and position `[D]` (what
    /// [`crate::seg::MaskClipConfig::center`] removes).
    pub fn mean_embed(&self, device: &Device) -> Tensor<1> {
        let per = self.grid[0] * self.grid[1];
        let mut sum = vec![0f64; self.dim];
        for img in self.embeds.chunks_exact((self.dim * per).max(1)) {
            for (d, plane) in img.chunks_exact(per.max(1)).enumerate() {
                sum[d] += plane.iter().map(|x| x.to_f32() as f64).sum::<f64>();
            }
        }
        let n = (self.n * per).max(1) as f64;
        let v: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
        Tensor::from_data(TensorData::new(v, [self.dim]), device)
    }

    /// Writes the features with their cache key (atomically).
    pub fn save(&self, path: &Path, key: &str) -> Result<(), SegError> {
        let bytes = |v: &[f16]| -> Vec<u8> { bytemuck::cast_slice(v).to_vec() };
        let (eb, kb) = (bytes(&self.embeds), bytes(&self.keys));
        let [h, w] = self.grid;
        let cache_err = |e: safetensors::SafeTensorError| SegError::Cache {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let views = vec![
            (
                "embeds",
                TensorView::new(Dtype::F16, vec![self.n, self.dim, h, w], &eb)
                    .map_err(cache_err)?,
            ),
            (
                "keys",
                TensorView::new(Dtype::F16, vec![self.n, self.key_dim, h, w], &kb)
                    .map_err(cache_err)?,
            ),
        ];
        let meta = HashMap::from([("key".to_string(), key.to_string())]);
        let buf = safetensors::serialize(views, Some(meta)).map_err(cache_err)?;
        ovkd_data::io::write_atomic(path, &buf)?;
        Ok(())
    }

    /// Reads features saved with `key`; `Ok(None)` when the file is missing or was made with
    /// another key.
    pub fn load(path: &Path, key: &str) -> Result<Option<Self>, SegError> {
        let Ok(buf) = std::fs::read(path) else {
            return Ok(None);
        };
        let bad = |message: String| SegError::Cache {
            path: path.to_path_buf(),
            message,
        };
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&buf).map_err(|e| bad(e.to_string()))?;
        let stored = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("key").cloned())
            .unwrap_or_default();
        if stored != key {
            return Ok(None);
        }
        let st = safetensors::SafeTensors::deserialize(&buf).map_err(|e| bad(e.to_string()))?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f16>), SegError> {
            let t = st.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
            if t.dtype() != Dtype::F16 || t.shape().len() != 4 {
                return Err(bad(format!("{name}: expected a 4-d f16 tensor")));
            }
            let v: Vec<f16> = t
                .data()
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]))
                .collect();
            Ok((t.shape().to_vec(), v))
        };
        let (es, embeds) = read("embeds")?;
        let (ks, keys) = read("keys")?;
        if es[0] != ks[0] || es[2..] != ks[2..] {
            return Err(bad(format!("embeds {es:?} and keys {ks:?} disagree")));
        }
        Ok(Some(Self {
            n: es[0],
            dim: es[1],
            key_dim: ks[1],
            grid: [es[2], es[3]],
            embeds,
            keys,
        }))
    }
}

/// The cache key of `images` under `teacher` at input side `size`.
pub fn cache_key(fingerprint: &str, size: usize, images: &[PathBuf]) -> Result<String, SegError> {
    let mut h = Sha256::new();
    h.update(b"ovkd-seg-teacher-dense-v1\0");
    h.update(fingerprint.as_bytes());
    h.update(b"\0");
    h.update((size as u64).to_le_bytes());
    for p in images {
        let bytes = std::fs::read(p).map_err(|source| SegError::Io {
            path: p.clone(),
            source,
        })?;
        h.update(Sha256::digest(&bytes));
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The teacher's dense features of `images` at side `size`: read from `cache` when it holds
/// them under the same key, otherwise computed in batches of `batch` (calling `progress(done)`)
/// and written there.
pub fn dense_features(
    teacher: &dyn DenseTeacher,
    images: &[PathBuf],
    size: usize,
    batch: usize,
    cache: Option<&Path>,
    mut progress: impl FnMut(usize),
) -> Result<TeacherFeatures, SegError> {
    let p = teacher.patch_size();
    if size == 0 || size % p != 0 {
        return Err(SegError::Config {
            field: "distill.teacher_size".into(),
            reason: format!("{size} is not a positive multiple of the teacher's patch size {p}"),
        });
    }
    let key = cache_key(&teacher.fingerprint(), size, images)?;
    if let Some(path) = cache {
        if let Some(f) = TeacherFeatures::load(path, &key)? {
            if f.n == images.len() {
                tracing::info!("teacher features read from {}", path.display());
                return Ok(f);
            }
        }
    }
    let mut maps = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch.max(1)) {
        let imgs = chunk
            .iter()
            .map(|p| ovkd_data::loader::load_rgb(p))
            .collect::<Result<Vec<_>, _>>()?;
        maps.extend(teacher.dense(&imgs, size).map_err(SegError::Teacher)?);
        progress(maps.len());
    }
    let f = TeacherFeatures::from_maps(maps)?;
    if let Some(path) = cache {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| SegError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        f.save(path, &key)?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn maps(n: usize, device: &Device) -> Vec<DenseMaps> {
        (0..n)
            .map(|_| DenseMaps {
                embeds: Tensor::random([3, 2, 4], Distribution::Default, device),
                keys: Tensor::random([5, 2, 4], Distribution::Default, device),
            })
            .collect()
    }

    #[test]
    fn round_trips_through_the_file_and_checks_the_key() {
        let device = Device::default();
        let m = maps(3, &device);
        let want = m[1]
            .embeds
            .clone()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let f = TeacherFeatures::from_maps(m).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dense.safetensors");
        f.save(&path, "k1").unwrap();
        assert!(TeacherFeatures::load(&path, "other").unwrap().is_none());
        let g = TeacherFeatures::load(&path, "k1").unwrap().unwrap();
        assert_eq!((g.n, g.dim, g.key_dim, g.grid), (3, 3, 5, [2, 4]));
        let got = g
            .embeds(1, &device)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        assert_eq!(g.keys(2, &device).dims(), [5, 2, 4]);
        // The mean embedding is the mean over images and positions, per channel.
        let all: Vec<f32> = (0..3)
            .flat_map(|i| {
                g.embeds(i, &device)
                    .into_data()
                    .try_into_vec::<f32>()
                    .unwrap()
            })
            .collect();
        let mean = g
            .mean_embed(&device)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(mean.len(), 3);
        for (d, m) in mean.iter().enumerate() {
            let want: f32 = (0..3)
                .map(|i| {
                    all[i * 24 + d * 8..i * 24 + (d + 1) * 8]
                        .iter()
                        .sum::<f32>()
                })
                .sum::<f32>()
                / 24.0;
            assert!((m - want).abs() < 1e-4, "{m} vs {want}");
        }
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let device = Device::default();
        let mut m = maps(2, &device);
        m[1].keys = Tensor::random([4, 2, 4], Distribution::Default, &device);
        let err = TeacherFeatures::from_maps(m).unwrap_err().to_string();
        assert!(err.contains("image 1"), "{err}");
    }
}
