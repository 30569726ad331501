//! The errors of the evaluators: each names the file, the record (index or id) and the field.

use std::path::PathBuf;

/// Everything that can go wrong while reading inputs, evaluating or writing reports.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A JSON document is malformed or has a value of the wrong kind.
    #[error("{file}: {record}{field}: {message} (at byte {offset})", field = field_part(.field))]
    Json {
        /// The file (or a description of the in-memory source).
        file: String,
        /// The record, e.g. `results record 17` or `annotation 3 (index 2)`.
        record: String,
        /// The field, when known.
        field: Option<String>,
        /// What is wrong.
        message: String,
        /// Byte offset in the document.
        offset: usize,
    },
    /// A detection refers to an unknown image or category, or has a NaN score or a box of
    /// negative size.
    #[error("results record {index}: field `{field}`: {message}")]
    InvalidDetection {
        /// Index of the record in the results list (0-based).
        index: usize,
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The ground truth is inconsistent (an annotation on an unknown image, a duplicate id,
    /// a missing LVIS field, ...).
    #[error("ground truth {record}: field `{field}`: {message}")]
    InvalidGroundTruth {
        /// The record, e.g. `annotation 12 (index 3)`.
        record: String,
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The vocabulary file is malformed.
    #[error("vocabulary {path}: {message}")]
    Vocabulary {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A label map is unreadable or does not fit its counterpart.
    #[error("{path}: {message}")]
    LabelMap {
        /// The file or image name.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A plot could not be drawn or encoded.
    #[error("plot {path}: {message}")]
    Plot {
        /// The file being drawn.
        path: String,
        /// What went wrong.
        message: String,
    },
}

fn field_part(field: &Option<String>) -> String {
    match field {
        Some(f) => format!(": field `{f}`"),
        None => String::new(),
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
