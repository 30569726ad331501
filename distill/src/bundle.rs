//! Export bundles: a folder holding everything `ovkd predict --bundle` needs to run a student
//! for any class names, and nothing that points outside it.
//!
//! ```text
//! B/bundle.json               the manifest: format and version, task, ovkd version, the
//!                             inference settings, the prompt templates, every other file
//!                             with its size and SHA-256
//! B/student.safetensors       the student's weights (Burn's module paths)
//! B/student.json              the student's architecture config
//! B/vocab.toml                the vocabulary it was trained and evaluated with
//! B/vocab_embeds.safetensors  `class_embeds` [K, D]: that vocabulary's text embeddings
//! B/text/config.json          the teacher's config (transformers layout)
//! B/text/model.safetensors    the teacher's text tower only, under transformers' names
//! B/text/tokenizer.json       the teacher's tokenizer
//! ```
//!
//! A bundle is written into a temporary sibling folder and renamed into place, so a reader
//! never sees half of one; [`Bundle::open`] checks every listed file against its hash before
//! anything is loaded, naming the file that is missing or differs.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What `bundle.json`'s `format` says.
pub const FORMAT: &str = "ovkd-bundle";
/// The layout version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's file name.
pub const MANIFEST: &str = "bundle.json";
/// The student's weights.
pub const STUDENT_WEIGHTS: &str = "student.safetensors";
/// The student's architecture config.
pub const STUDENT_CONFIG: &str = "student.json";
/// The vocabulary.
pub const VOCAB: &str = "vocab.toml";
/// The vocabulary's text embeddings (tensor `class_embeds`, [K, D]).
pub const VOCAB_EMBEDS: &str = "vocab_embeds.safetensors";
/// The teacher's text half (`config.json`, `model.safetensors`, `tokenizer.json`).
pub const TEXT_DIR: &str = "text";

/// Errors writing or reading a bundle; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file the manifest lists (or the manifest itself) is not there.
    #[error("{}: missing from the bundle", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file's content differs from what the manifest recorded.
    #[error("{}: corrupt (SHA-256 {found}, the manifest says {expected})", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The manifest's hash.
        expected: String,
        /// The file's hash.
        found: String,
    },
    /// A file is there but not what it should be.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl BundleError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Self::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                Self::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        }
    }

    fn format(path: &Path, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Which student a bundle holds.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BundleTask {
    /// The detector (`ovkd predict --task det`).
    Det,
    /// The segmenter (`ovkd predict --task seg`).
    Seg,
}

impl BundleTask {
    /// `det` or `seg`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Det => "det",
            Self::Seg => "seg",
        }
    }
}

/// One file of a bundle.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Bytes.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// `bundle.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// Which student.
    pub task: BundleTask,
    /// The ovkd version that wrote it.
    pub ovkd_version: String,
    /// The checkpoint it was exported from (for the record; never read back).
    pub source: String,
    /// Joint embedding size D of the student and the text tower.
    pub embed_dim: usize,
    /// Prompt templates (`{}` is the class name), averaged per class.
    pub templates: Vec<String>,
    /// What inference needs besides the weights (the task's own settings: score source,
    /// thresholds, input size, normalisation, ...).
    pub inference: serde_json::Value,
    /// Every other file, by its path inside the bundle (`/`-separated).
    pub files: BTreeMap<String, FileEntry>,
}

/// SHA-256 (hex) and size of a file.
fn hash_file(path: &Path) -> Result<FileEntry, BundleError> {
    let mut f = std::fs::File::open(path).map_err(BundleError::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(BundleError::io(path))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        h.update(&buf[..n]);
    }
    let sha256 = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(FileEntry { bytes, sha256 })
}

/// Every file under `dir`, as `/`-separated paths relative to `root`.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), BundleError> {
    for e in std::fs::read_dir(dir).map_err(BundleError::io(dir))? {
        let e = e.map_err(BundleError::io(dir))?;
        let path = e.path();
        if path.is_dir() {
            list_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}

/// A bundle being written: files go into a temporary sibling of the final folder, which
/// [`BundleWriter::finish`] hashes, describes in `bundle.json` and renames into place. Dropped
/// unfinished, the temporary folder is removed and the final one is untouched.
#[derive(Debug)]
pub struct BundleWriter {
    out: PathBuf,
    tmp: PathBuf,
    done: bool,
}

impl BundleWriter {
    /// Starts a bundle that will end up at `out` (replacing a bundle there when finished).
    pub fn create(out: &Path) -> Result<Self, BundleError> {
        let name = out
            .file_name()
            .ok_or_else(|| BundleError::format(out, "not a folder name"))?
            .to_string_lossy()
            .into_owned();
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(BundleError::io(&parent))?;
        let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(BundleError::io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(BundleError::io(&tmp))?;
        Ok(Self {
            out: out.to_path_buf(),
            tmp,
            done: false,
        })
    }

    /// The temporary folder the files go into.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// Writes `value` as pretty JSON to `name`.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), BundleError> {
        let path = self.tmp.join(name);
        let text = serde_json::to_vec_pretty(value)
            .map_err(|e| BundleError::format(&path, e.to_string()))?;
        std::fs::write(&path, text).map_err(BundleError::io(&path))
    }

    /// Writes a module's parameters and buffers to `name` as safetensors.
    pub fn write_module<M: Module>(&self, name: &str, model: &M) -> Result<(), BundleError> {
        let path = self.tmp.join(name);
        let mut store = SafetensorsStore::from_file(&path);
        model
            .save_into(&mut store)
            .map_err(|e| BundleError::format(&path, e.to_string()))
    }

    /// Writes a `[K, D]` host matrix as the tensor `class_embeds` of a safetensors file.
    pub fn write_embeds(&self, name: &str, data: &[f32], k: usize) -> Result<(), BundleError> {
        let path = self.tmp.join(name);
        let d = if k == 0 { 0 } else { data.len() / k };
        if k * d != data.len() {
            return Err(BundleError::format(
                &path,
                format!("{} values are not {k} rows", data.len()),
            ));
        }
        let mut map = ovkd_teacher::WeightMap::new(&path);
        map.insert(
            "class_embeds".into(),
            ovkd_teacher::HostTensor {
                shape: vec![k, d],
                data: data.to_vec(),
            },
        );
        map.save_safetensors(&path)
            .map_err(|e| BundleError::format(&path, e.to_string()))
    }

    /// Copies a file into the bundle as `name`.
    pub fn copy(&self, from: &Path, name: &str) -> Result<(), BundleError> {
        let to = self.tmp.join(name);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(BundleError::io(dir))?;
        }
        std::fs::copy(from, &to).map_err(BundleError::io(from))?;
        Ok(())
    }

    /// Lists and hashes every file written, stores `manifest` (its `files` replaced by them)
    /// as `bundle.json`, and moves the folder into place. Returns the manifest written.
    pub fn finish(mut self, mut manifest: Manifest) -> Result<Manifest, BundleError> {
        let mut names = Vec::new();
        list_files(&self.tmp, &self.tmp, &mut names)?;
        names.retain(|n| n != MANIFEST);
        manifest.files = names
            .into_iter()
            .map(|n| Ok((n.clone(), hash_file(&self.tmp.join(&n))?)))
            .collect::<Result<_, BundleError>>()?;
        self.write_json(MANIFEST, &manifest)?;
        for n in manifest.files.keys().map(String::as_str).chain([MANIFEST]) {
            let p = self.tmp.join(n);
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(BundleError::io(&p))?;
        }
        // A bundle already at `out` is moved aside first and removed once the new one is in
        // place: a reader sees the old bundle or the new one, never a mix.
        let old = self.tmp.with_extension("old");
        if self.out.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(BundleError::io(&old))?;
            }
            std::fs::rename(&self.out, &old).map_err(BundleError::io(&self.out))?;
        }
        std::fs::rename(&self.tmp, &self.out).map_err(BundleError::io(&self.out))?;
        self.done = true;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(BundleError::io(&old))?;
        }
        Ok(manifest)
    }
}

impl Drop for BundleWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// An opened, verified bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Its folder.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl Bundle {
    /// Reads `dir/bundle.json`, checks the format and version, and checks that every file it
    /// lists (and every file a bundle must have) is there with the recorded hash.
    pub fn open(dir: &Path) -> Result<Self, BundleError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read(&path).map_err(BundleError::io(&path))?;
        let value: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| BundleError::format(&path, format!("not JSON: {e}")))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(BundleError::format(
                &path,
                format!("not an ovkd bundle manifest (`format` is not \"{FORMAT}\")"),
            ));
        }
        let version = value.get("format_version").and_then(|v| v.as_u64());
        if version != Some(FORMAT_VERSION as u64) {
            return Err(BundleError::format(
                &path,
                format!(
                    "format_version {version:?}; this ovkd reads version {FORMAT_VERSION}: re-export the bundle"
                ),
            ));
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| BundleError::format(&path, e.to_string()))?;
        let required = [
            STUDENT_WEIGHTS.to_string(),
            STUDENT_CONFIG.into(),
            VOCAB.into(),
            VOCAB_EMBEDS.into(),
            format!("{TEXT_DIR}/config.json"),
            format!("{TEXT_DIR}/model.safetensors"),
            format!("{TEXT_DIR}/tokenizer.json"),
        ];
        for r in &required {
            if !manifest.files.contains_key(r) {
                return Err(BundleError::format(
                    &path,
                    format!("`files` does not list {r}"),
                ));
            }
        }
        for (name, want) in &manifest.files {
            let p = dir.join(name);
            let got = hash_file(&p)?;
            if got.sha256 != want.sha256 {
                return Err(BundleError::Corrupt {
                    path: p,
                    expected: want.sha256.clone(),
                    found: got.sha256,
                });
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The path of a file of the bundle.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The folder holding the teacher's text half.
    pub fn text_dir(&self) -> PathBuf {
        self.dir.join(TEXT_DIR)
    }

    /// Reads a JSON file of the bundle.
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<T, BundleError> {
        let path = self.file(name);
        let text = std::fs::read(&path).map_err(BundleError::io(&path))?;
        serde_json::from_slice(&text).map_err(|e| BundleError::format(&path, e.to_string()))
    }

    /// The task's inference settings from the manifest.
    pub fn inference<T: DeserializeOwned>(&self) -> Result<T, BundleError> {
        serde_json::from_value(self.manifest.inference.clone())
            .map_err(|e| BundleError::format(&self.file(MANIFEST), format!("`inference`: {e}")))
    }

    /// Loads the student's weights into a freshly built `model`; a tensor missing from the
    /// file, one the model lacks, or one of the wrong shape is an error naming it.
    pub fn load_student<M: Module>(&self, mut model: M) -> Result<M, BundleError> {
        let path = self.file(STUDENT_WEIGHTS);
        let mut store = SafetensorsStore::from_file(&path);
        let result = model
            .load_from(&mut store)
            .map_err(|e| BundleError::format(&path, e.to_string()))?;
        let mut problems = Vec::new();
        if !result.missing.is_empty() {
            let names: Vec<&str> = result.missing.iter().map(|(n, _)| n.as_str()).collect();
            problems.push(format!("missing tensors {names:?}"));
        }
        if !result.unused.is_empty() {
            problems.push(format!(
                "tensors the model does not have {:?}",
                result.unused
            ));
        }
        if !result.errors.is_empty() {
            problems.push(format!("{:?}", result.errors));
        }
        if !problems.is_empty() {
            return Err(BundleError::format(&path, problems.join("; ")));
        }
        Ok(model)
    }

    /// The vocabulary's text embeddings, row-major `[K, D]`, and K.
    pub fn vocab_embeds(&self) -> Result<(Vec<f32>, usize), BundleError> {
        let path = self.file(VOCAB_EMBEDS);
        let err = |e: ovkd_teacher::TeacherError| BundleError::format(&path, e.to_string());
        let map = ovkd_teacher::WeightMap::from_safetensors(&path).map_err(err)?;
        let t = map
            .get("class_embeds")
            .ok_or_else(|| BundleError::format(&path, "no tensor `class_embeds`"))?;
        if t.shape.len() != 2 || t.shape[1] != self.manifest.embed_dim {
            return Err(BundleError::format(
                &path,
                format!(
                    "`class_embeds` has shape {:?}, expected [K, {}]",
                    t.shape, self.manifest.embed_dim
                ),
            ));
        }
        Ok((t.data.clone(), t.shape[0]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Device, Tensor};

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            task: BundleTask::Det,
            ovkd_version: "0".into(),
            source: "test".into(),
            embed_dim: 3,
            templates: vec!["a {}".into()],
            inference: serde_json::json!({"size": 64}),
            files: BTreeMap::new(),
        }
    }

    fn write(out: &Path, model: &Linear) -> Manifest {
        let w = BundleWriter::create(out).unwrap();
        w.write_module(STUDENT_WEIGHTS, model).unwrap();
        w.write_json(STUDENT_CONFIG, &serde_json::json!({"d": 3}))
            .unwrap();
        w.write_embeds(VOCAB_EMBEDS, &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], 2)
            .unwrap();
        for f in [
            VOCAB.to_string(),
            format!("{TEXT_DIR}/config.json"),
            format!("{TEXT_DIR}/model.safetensors"),
            format!("{TEXT_DIR}/tokenizer.json"),
        ] {
            let p = w.dir().join(&f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f.as_bytes()).unwrap();
        }
        w.finish(manifest()).unwrap()
    }

    #[test]
    fn a_bundle_round_trips_and_names_a_missing_or_corrupt_file() {
        let device = Device::flex();
        let model = LinearConfig::new(3, 2).init(&device);
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("b");
        let m = write(&out, &model);
        assert_eq!(m.files.len(), 7, "{:?}", m.files.keys());
        // Only the bundle is left in the parent: the temporary folder was renamed.
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1);

        let b = Bundle::open(&out).unwrap();
        assert_eq!(b.manifest, m);
        let loaded = b
            .load_student(LinearConfig::new(3, 2).init(&device))
            .unwrap();
        let x = Tensor::<2>::from_data([[1.0f32, 2.0, 3.0]], &device);
        assert_eq!(
            model.forward(x.clone()).into_data(),
            loaded.forward(x).into_data()
        );
        let (e, k) = b.vocab_embeds().unwrap();
        assert_eq!((e.len(), k), (6, 2));
        let s: serde_json::Value = b.inference().unwrap();
        assert_eq!(s["size"], 64);
        // A student of another shape is refused, naming the file.
        let err = b
            .load_student(LinearConfig::new(4, 2).init(&device))
            .unwrap_err()
            .to_string();
        assert!(err.contains(STUDENT_WEIGHTS), "{err}");

        // Rewriting replaces the bundle whole.
        write(&out, &model);
        Bundle::open(&out).unwrap();

        // A changed byte, then a missing file: each named.
        let p = out.join(TEXT_DIR).join("tokenizer.json");
        std::fs::write(&p, b"changed").unwrap();
        let err = Bundle::open(&out).unwrap_err().to_string();
        assert!(
            err.contains("text/tokenizer.json") && err.contains("corrupt"),
            "{err}"
        );
        std::fs::remove_file(&p).unwrap();
        let err = Bundle::open(&out).unwrap_err().to_string();
        assert!(
            err.contains("text/tokenizer.json") && err.contains("missing"),
            "{err}"
        );
        std::fs::remove_file(out.join(MANIFEST)).unwrap();
        let err = Bundle::open(&out).unwrap_err().to_string();
        assert!(err.contains("bundle.json: missing"), "{err}");
    }

    #[test]
    fn another_format_version_is_refused() {
        let device = Device::flex();
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("b");
        write(&out, &LinearConfig::new(3, 2).init(&device));
        let p = out.join(MANIFEST);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v["format_version"] = 99.into();
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        let err = Bundle::open(&out).unwrap_err().to_string();
        assert!(
            err.contains("format_version") && err.contains("re-export"),
            "{err}"
        );
    }
}
