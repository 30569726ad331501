//! Atomic file writes, through ovkd-data's shared helper.

use std::path::Path;

use crate::error::TeacherError;

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename
/// (`ovkd_data::io::write_atomic`), creating the directory first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TeacherError> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| TeacherError::io(dir, e))?;
    }
    Ok(ovkd_data::io::write_atomic(path, bytes)?)
}
