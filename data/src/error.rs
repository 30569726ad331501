//! The crate's error type: every failure names the file, and where it can, the record and the field.

use std::fmt;
use std::path::{Path, PathBuf};

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in ovkd-data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was attempted, e.g. `read`, `write`, `create directory`.
        action: &'static str,
        /// The path it was attempted on.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// An image could not be decoded or encoded.
    #[error("cannot {action} image {}: {source}", path.display())]
    Image {
        /// `decode` or `encode`.
        action: &'static str,
        /// The image file.
        path: PathBuf,
        /// The codec's reason.
        #[source]
        source: image::ImageError,
    },
    /// A record in a file is invalid (bad JSON, a missing field, an unknown id, ...).
    #[error("{0}")]
    Invalid(Box<Problem>),
    /// Several problems in one file, e.g. from [`crate::validate`].
    #[error("{} problems in {}; the first: {}", .0.len(), .0[0].file.display(), .0[0])]
    Problems(Vec<Problem>),
    /// A setting or argument is invalid (an unknown preset, a malformed `key=value`, ...).
    #[error("{0}")]
    Config(String),
    /// A file or folder that must exist does not.
    #[error("{}: missing: {why}", path.display())]
    Missing {
        /// What should be there.
        path: PathBuf,
        /// What it is for.
        why: String,
    },
}

impl Error {
    /// An I/O error with its action and path.
    pub fn io(action: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// An invalid record.
    pub fn invalid(problem: Problem) -> Self {
        Self::Invalid(Box::new(problem))
    }
}

/// Which record of a file a [`Problem`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The file as a whole (e.g. a missing top-level key).
    File,
    /// A position in the text (JSON or TOML syntax errors); 1-based.
    Position {
        /// Line, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
    },
    /// An element of a list: `kind` is `image`, `annotation`, `category`, `result`, `class`,
    /// `line` (JSON lines), ...; `index` is 0-based, `id` its `id` field when it has a valid one.
    Item {
        /// What kind of record.
        kind: &'static str,
        /// 0-based index in its list.
        index: usize,
        /// Its `id`, when it has one.
        id: Option<u64>,
    },
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::File => Ok(()),
            Record::Position { line, column } => write!(f, "line {line}, column {column}"),
            Record::Item {
                kind,
                index,
                id: Some(id),
            } => write!(f, "{kind} id {id} (#{index})"),
            Record::Item {
                kind,
                index,
                id: None,
            } => write!(f, "{kind} #{index}"),
        }
    }
}

/// One problem in one file: `FILE: RECORD, field `FIELD`: MESSAGE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// The record (or position) inside it.
    pub record: Record,
    /// The field of the record, dotted for nested ones (`segmentation.counts`), if any.
    pub field: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

impl Problem {
    /// A problem with a record and a field.
    pub fn new(
        file: impl AsRef<Path>,
        record: Record,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.as_ref().to_path_buf(),
            record,
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        match &self.record {
            Record::File => {}
            Record::Position { line, column } => write!(f, ":{line}:{column}")?,
            record => write!(f, ": {record}")?,
        }
        match &self.field {
            Some(field) if matches!(self.record, Record::Item { .. }) => {
                write!(f, ", field `{field}`")?
            }
            Some(field) => write!(f, ": field `{field}`")?,
            None => {}
        }
        write!(f, ": {}", self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_file_record_and_field() {
        let p = Problem::new(
            "a/b.json",
            Record::Item {
                kind: "annotation",
                index: 3,
                id: Some(17),
            },
            Some("bbox"),
            "width -2 is negative",
        );
        assert_eq!(
            p.to_string(),
            "a/b.json: annotation id 17 (#3), field `bbox`: width -2 is negative"
        );
        let p = Problem::new(
            "x.json",
            Record::Position { line: 4, column: 9 },
            None,
            "EOF while parsing",
        );
        assert_eq!(p.to_string(), "x.json:4:9: EOF while parsing");
        let p = Problem::new("x.json", Record::File, Some("images"), "missing");
        assert_eq!(p.to_string(), "x.json: field `images`: missing");
    }
}
