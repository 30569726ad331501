//! Atomic file writing (temporary file in the same directory, fsync, rename) and JSON helpers.
//!
//! Every file ovkd writes goes through [`write_atomic`] or [`AtomicWriter`], so a crash or a
//! full disk never leaves a half-written file under the final name: readers see the old file or
//! the new one.

use crate::error::{Error, Problem, Record, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically. The parent directory must exist.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let mut w = AtomicWriter::create(path)?;
    w.write_all(bytes)
        .map_err(|e| Error::io("write", w.temp_path(), e))?;
    w.commit()
}

/// Like [`write_atomic`] (temporary file + rename), but without the fsync: for the thousands of
/// small files of a directory that is itself published atomically (the OV-Shapes generator
/// writes into a temporary directory and renames it into place), where one fsync per file
/// would cost more than generating it.
pub fn write_atomic_unsynced(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let mut w = AtomicWriter::create(path)?;
    w.sync = false;
    w.write_all(bytes)
        .map_err(|e| Error::io("write", w.temp_path(), e))?;
    w.commit()
}

/// Writes `path` atomically through a closure that streams into a buffered writer.
pub fn write_atomic_with<F>(path: impl AsRef<Path>, f: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    let mut w = AtomicWriter::create(path)?;
    f(&mut w).map_err(|e| Error::io("write", w.temp_path(), e))?;
    w.commit()
}

/// Serialises `value` as JSON (compact, or pretty with two-space indents) and writes it
/// atomically.
pub fn write_json_atomic<T: Serialize + ?Sized>(
    path: impl AsRef<Path>,
    value: &T,
    pretty: bool,
) -> Result<()> {
    let path = path.as_ref();
    write_atomic_with(path, |w| {
        if pretty {
            serde_json::to_writer_pretty(&mut *w, value)?;
        } else {
            serde_json::to_writer(&mut *w, value)?;
        }
        w.write_all(b"\n")
    })
}

/// Reads a whole file, naming it in the error.
pub fn read_bytes(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    fs::read(path).map_err(|e| Error::io("read", path, e))
}

/// Reads and parses a JSON file; a syntax or type error names the file, line and column.
pub fn read_json<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    serde_json::from_slice(&bytes).map_err(|e| json_error(path, &e))
}

/// Turns a serde_json error into a [`Problem`] at its line and column.
pub fn json_error(path: &Path, e: &serde_json::Error) -> Error {
    Error::invalid(json_problem(path, e))
}

/// The [`Problem`] for a serde_json error: position, and a hint when the file is truncated.
pub fn json_problem(path: &Path, e: &serde_json::Error) -> Problem {
    let mut message = format!("invalid JSON: {}", strip_position(&e.to_string()));
    if e.is_eof() {
        message.push_str(" (the file is truncated)");
    }
    Problem::new(
        path,
        Record::Position {
            line: e.line(),
            column: e.column(),
        },
        None,
        message,
    )
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Creates a directory and its parents, naming it in the error.
pub fn create_dir_all(path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    fs::create_dir_all(path).map_err(|e| Error::io("create directory", path, e))
}

/// A file being written under a temporary name next to its final path; [`AtomicWriter::commit`]
/// flushes, fsyncs and renames it into place. Dropped without commit, the temporary file is
/// removed and the final path is untouched.
pub struct AtomicWriter {
    final_path: PathBuf,
    temp_path: PathBuf,
    file: Option<BufWriter<File>>,
    sync: bool,
}

impl AtomicWriter {
    /// Opens a fresh temporary file `.NAME.PID.N.tmp` in the directory of `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let final_path = path.as_ref().to_path_buf();
        let name = final_path
            .file_name()
            .ok_or_else(|| {
                Error::io(
                    "write",
                    &final_path,
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
                )
            })?
            .to_string_lossy()
            .into_owned();
        let dir = match final_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp_path = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)
            .map_err(|e| Error::io("create", &temp_path, e))?;
        Ok(Self {
            final_path,
            temp_path,
            file: Some(BufWriter::with_capacity(1 << 16, file)),
            sync: true,
        })
    }

    /// The temporary file being written.
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    /// Flushes, fsyncs and renames the temporary file to the final path.
    pub fn commit(mut self) -> Result<()> {
        let writer = self.file.take().expect("file present until commit");
        let file = writer
            .into_inner()
            .map_err(|e| Error::io("write", &self.temp_path, e.into_error()))?;
        if self.sync {
            file.sync_all()
                .map_err(|e| Error::io("sync", &self.temp_path, e))?;
        }
        drop(file);
        fs::rename(&self.temp_path, &self.final_path)
            .map_err(|e| Error::io("rename into place", &self.final_path, e))?;
        if !self.sync {
            return Ok(());
        }
        // Make the rename itself durable; not every platform can open a directory, so a failure
        // here is not an error.
        if let Some(dir) = self.final_path.parent()
            && let Ok(d) = File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Write for AtomicWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("open").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("open").flush()
    }
}

impl Drop for AtomicWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        write_atomic_unsynced(&p, b"three").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"three");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn uncommitted_writer_leaves_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"old").unwrap();
        {
            let mut w = AtomicWriter::create(&p).unwrap();
            w.write_all(b"half").unwrap();
        }
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn json_errors_give_position_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.json");
        fs::write(&p, "{\"a\": [1,\n 2,").unwrap();
        let err = read_json::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(err.contains("t.json:2:"), "{err}");
        assert!(err.contains("truncated"), "{err}");
        let err = write_atomic(dir.path().join("missing/x"), b"").unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
