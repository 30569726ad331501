//! The crate's error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in the teacher.
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file was read but its content is not what it should be.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the record and field.
        message: String,
    },
    /// A checkpoint lacks a tensor the model needs.
    #[error("{path}: missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's name in the checkpoint's own naming.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
    },
    /// A checkpoint tensor has the wrong shape.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A caller's request is invalid (bad box, empty image, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Tokenizer failure.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The batching service has stopped.
    #[error("the teacher service has stopped")]
    ServiceStopped,
    /// Reading data through ovkd-data failed (vocabulary, COCO, image, atomic write).
    #[error(transparent)]
    Data(#[from] ovkd_data::Error),
    /// A tensor could not be read back from the device.
    #[error("tensor read: {0}")]
    TensorRead(String),
}

impl TeacherError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A format error on `path`.
    pub fn format(path: &Path, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Reads a float tensor back as a `Vec<f32>`.
pub(crate) fn to_vec<const D: usize>(t: burn::tensor::Tensor<D>) -> Result<Vec<f32>, TeacherError> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| TeacherError::TensorRead(format!("{e:?}")))
}
