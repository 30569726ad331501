//! Atomic file writes (temporary name in the same directory, then rename).

use std::io::Write;
use std::path::Path;

use crate::error::TeacherError;

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TeacherError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| TeacherError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| TeacherError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| TeacherError::io(&tmp, e))?;
    f.sync_all().map_err(|e| TeacherError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| TeacherError::io(path, e))
}
